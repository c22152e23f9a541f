"""Text (causal-LM) benchmark: the `hybridrl text demo` comparison over several seeds and at larger budgets, plus
generation and training tokens/s of the tiny model. Not a test; run from the repository root:

    # the demo's own budget (60 updates), seeds 0-2
    .venv/bin/python benchmarks/text_lm.py --seeds 0 1 2 --rl-steps 60 --out benchmarks/results/text_lm.json
    # the issue-11 targets at a larger budget (one standard replay setting for every replay variant)
    .venv/bin/python benchmarks/text_lm.py --seeds 0 --rl-steps 400 --lr 1e-3 --replay 8 --eval-every 25 \\
        --methods grpo replay-none replay-ppo replay-tis replay-rec naive topr positive small-topr small-positive \\
        --out benchmarks/results/text_targets_seed0.json
    # DPO beta x learning-rate grid on the corpus's within-group pairs
    .venv/bin/python benchmarks/text_lm.py --seeds 0 --rl-steps 400 --methods dpo-grid --betas 0.03 0.1 0.3 \\
        --pair-lrs 3e-5 1e-4 3e-4 --out benchmarks/results/text_targets_dpo_seed0.json

Per seed the SFT model and the logged corpus are built once (``hybridrl.text.demo.prepare``) and every method starts
from them (``run_method``), so the methods of one seed share the start. ``--lr`` is the learning rate of every
policy-gradient method alike; ``--replay`` the k of every replay variant alike. ``small-*`` train on the first
``--small-corpus`` prompts (× group) of the corpus. The JSON is rewritten after every method (a killed run keeps
the finished ones). ``--speed`` times ``CausalLMPolicy.sample`` (64 prompts × 4 tokens) and one GRPO update
(64 completions) after warm-up, median of 5.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import machine, save_json  # noqa: E402

NAIVE = {"loss": "reinforce", "baseline": "none", "scale": "none", "aggregation": "seq-sum"}


def method_table(k: int) -> dict[str, tuple[str, str, str, dict]]:
    """key -> (display name, data, learner, config overrides); the replay variants all use ``replay=k``."""
    return {
        "grpo": ("GRPO on-policy", "online", "text_pg", {"loss": "grpo"}),
        "replay-none": (f"replay k={k}, no correction", "online", "text_pg",
                        {"loss": "reinforce", "correction": "none", "replay": k}),
        "replay-ppo": (f"replay k={k}, PPO-clip", "online", "text_pg", {"loss": "grpo", "replay": k}),
        "replay-tis": (f"replay k={k}, truncated IS", "online", "text_pg",
                       {"loss": "reinforce", "correction": "truncate", "replay": k}),
        "replay-rec": (f"replay k={k}, REC one-side mask", "online", "text_pg",
                       {"loss": "reinforce", "correction": "mask", "replay": k}),
        "naive": ("corpus: naive REINFORCE ±1", "corpus", "text_pg", NAIVE),
        "topr": ("corpus: TOPR", "corpus", "text_pg", {"loss": "topr"}),
        "positive": ("corpus: positive-only", "corpus", "text_pg", {"loss": "sft_positive"}),
        "asymre": ("corpus: AsymRE δ=-0.1", "corpus", "text_pg", {"loss": "asymre", "delta": -0.1}),
        "dpo": ("corpus: DPO β=0.1", "corpus", "text_pair", {"loss": "dpo", "beta": 0.1}),
        "small-topr": ("small corpus: TOPR", "small", "text_pg", {"loss": "topr"}),
        "small-positive": ("small corpus: positive-only", "small", "text_pg", {"loss": "sft_positive"}),
    }


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


def first_groups(corpus, n: int):
    """The rows of the first ``n`` groups (by id) of a corpus."""
    groups = np.unique(corpus.group.numpy())[:n]
    return corpus.select(torch.from_numpy(np.isin(corpus.group.numpy(), groups)))


def run_seed(seed: int, args, settings, results: dict) -> None:
    from hybridrl.text.demo import prepare, run_method

    table = method_table(args.replay)
    s = replace(settings, seed=seed)
    res = results["seeds"].setdefault(str(seed), {"runs": {}})
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        prep = prepare(Path(d), s)
        small = first_groups(prep["corpus"], args.small_corpus)
        res.update(start=prep["start"], corpus_rows=len(prep["corpus"]), corpus_correct=prep["corpus_correct"],
                   small_corpus_rows=len(small), small_corpus_correct=float((small.reward > 0).float().mean()))
        jobs = []
        for key in args.methods:
            if key == "dpo-grid":
                jobs += [(f"DPO β={b} lr={lr:g}", "corpus", "text_pair", {"loss": "dpo", "beta": b, "lr": lr})
                         for b in args.betas for lr in args.pair_lrs]
            else:
                jobs.append(table[key])
        for name, data, algo, overrides in jobs:
            r = run_method(prep, "corpus" if data == "small" else data, algo, overrides, s,
                           corpus=small if data == "small" else None)
            r["data"] = data
            res["runs"][name] = r
            res["wall_s"] = time.perf_counter() - t0
            print(f"seed {seed} {name:34s} accuracy {r['accuracy']:.3f} well-formed {r['well_formed']:.3f} "
                  f"[{r['seconds']:.0f} s]", flush=True)
            save_json(results, args.out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--rl-steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=3e-4, help="learning rate of every policy-gradient method")
    ap.add_argument("--pair-lr", type=float, default=1e-4, help="DPO learning rate (outside the grid)")
    ap.add_argument("--replay", type=int, default=4, help="k: replay of the last k generations (all variants)")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--corpus-prompts", type=int, default=512)
    ap.add_argument("--small-corpus", type=int, default=64, help="prompts (groups) of the small corpus")
    ap.add_argument("--methods", nargs="+", default=list(method_table(4))[:10],
                    choices=[*method_table(4), "dpo-grid"])
    ap.add_argument("--betas", type=float, nargs="+", default=[0.03, 0.1, 0.3])
    ap.add_argument("--pair-lrs", type=float, nargs="+", default=[3e-5, 1e-4, 3e-4])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/text_lm.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from hybridrl.text.demo import DemoSettings

    settings = DemoSettings(rl_steps=args.rl_steps, rl_lr=args.lr, pair_lr=args.pair_lr, eval_every=args.eval_every,
                            corpus_prompts=args.corpus_prompts)
    results = {"machine": machine(args.threads), "settings": asdict(settings), "replay": args.replay,
               "small_corpus_prompts": args.small_corpus, "seeds": {}}
    if args.speed:
        results["speed"] = speed(args.threads)
        print(results["speed"])
    for seed in args.seeds:
        run_seed(seed, args, settings, results)
    seeds = list(results["seeds"].values())
    print("| method | final accuracy (mean ± s.e.) | well-formed | seeds |\n|---|---|---|---|")
    table = {}
    for name in seeds[0]["runs"]:
        acc = [r["runs"][name]["accuracy"] for r in seeds if name in r["runs"]]
        well = [r["runs"][name]["well_formed"] for r in seeds if name in r["runs"]]
        se = statistics.stdev(acc) / len(acc) ** 0.5 if len(acc) > 1 else float("nan")
        table[name] = {"accuracy_mean": statistics.mean(acc), "accuracy_se": se, "well_formed": statistics.mean(well)}
        print(f"| {name} | {statistics.mean(acc):.3f} ± {se:.3f} | {statistics.mean(well):.3f} | {len(acc)} |")
    print(f"start (SFT) accuracy: {statistics.mean(r['start']['accuracy'] for r in seeds):.3f}")
    results["table"] = table
    save_json(results, args.out)


if __name__ == "__main__":
    main()
