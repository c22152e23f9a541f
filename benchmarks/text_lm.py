"""Text (causal-LM) benchmark: the `hybridrl text demo` comparison over several seeds, plus generation and training
tokens/s of the tiny model. Not a test; run from the repository root:

    .venv/bin/python benchmarks/text_lm.py --seeds 0 1 2 --rl-steps 60 --out benchmarks/results/text_lm.json

Writes per-seed results and mean ± standard error per method (accuracy, well-formed) to ``--out`` and prints a
markdown table. Speed: ``--speed`` times ``CausalLMPolicy.sample`` (64 prompts × 4 tokens) and one GRPO update
(64 completions) after warm-up, median of 5.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import machine, save_json  # noqa: E402


def speed(threads: int) -> dict:
    from hybridrl.algos import get_algo
    from hybridrl.text.tasks import AdditionTask, rollout
    from hybridrl.text.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as d:
        model = build_tiny_model(Path(d) / "m")
        spec = get_algo("grpo")
        learner = spec.make(spec.config_cls(model=str(model)), seed=0)
        task = AdditionTask(max_operand=19)
        gen = torch.Generator().manual_seed(0)
        rng = np.random.default_rng(0)
        gen_t, upd_t, gen_tok, upd_tok = [], [], 0, 0
        for i in range(6):
            t0 = time.perf_counter()
            batch = rollout(learner.policy, task, task.problems(16, rng), 4, 1.0, gen)
            t1 = time.perf_counter()
            batch = batch.replace(reward=torch.tensor([1.0, -1.0, -1.0, -1.0] * 16))
            learner.update(batch)
            t2 = time.perf_counter()
            if i:
                gen_t.append(t1 - t0)
                upd_t.append(t2 - t1)
                gen_tok = int(batch.completion_mask.sum())
                upd_tok = gen_tok + int(batch.prompt_mask.sum())
    return {"generation_tokens_per_s": gen_tok / statistics.median(gen_t),
            "training_tokens_per_s": upd_tok / statistics.median(upd_t), "batch_rows": 64, "threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--rl-steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/text_lm.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from hybridrl.text.demo import DemoSettings, run_demo

    results = {"machine": machine(args.threads), "seeds": {}}
    if args.speed:
        results["speed"] = speed(args.threads)
        print(results["speed"])
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            res = run_demo(Path(d) / "demo", replace(DemoSettings(rl_steps=args.rl_steps), seed=seed))
            res["wall_s"] = time.perf_counter() - t0
        results["seeds"][seed] = res
        save_json(results, args.out)
    names = list(next(iter(results["seeds"].values()))["runs"])
    table = {}
    print("| method | accuracy (mean ± s.e.) | well-formed | seeds |\n|---|---|---|---|")
    for name in names:
        acc = [r["runs"][name]["accuracy"] for r in results["seeds"].values()]
        well = [r["runs"][name]["well_formed"] for r in results["seeds"].values()]
        se = statistics.stdev(acc) / len(acc) ** 0.5 if len(acc) > 1 else float("nan")
        table[name] = {"accuracy_mean": statistics.mean(acc), "accuracy_se": se, "well_formed": statistics.mean(well)}
        print(f"| {name} | {statistics.mean(acc):.3f} ± {se:.3f} | {statistics.mean(well):.3f} | {len(acc)} |")
    starts = [r["start"]["accuracy"] for r in results["seeds"].values()]
    print(f"start (SFT) accuracy: {statistics.mean(starts):.3f}")
    results["table"] = table
    save_json(results, args.out)


if __name__ == "__main__":
    main()
