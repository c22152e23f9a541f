"""MDPO on Hopper-v5: on-policy MDPO vs PPO (and optionally off-policy MDPO vs SAC), side by side.

Protocol: docs/benchmarks.md. For every seed the algorithms run one after the other (A B A B) with their
default configs (MDPOConfig = official mdpo_on settings, PPOConfig = CleanRL settings; MDPOOffConfig = official
mdpo_off settings, SACConfig = paper v2 settings), same env version and thread count. Reported per algorithm: final
deterministic evaluation (10 episodes, reset seeds 10000..), mean of the last 20 training episodes at the end, the
mean training return over the run (sample-efficiency figure) and wall-clock env steps/s with the per-pair ratio.
Mean +- standard error over seeds. The JSON is rewritten after every run. Full budget (1M steps, 3 seeds) takes
hours per algorithm on a 2-core machine: start it in the background.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--env", default="Hopper-v5")
p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
p.add_argument("--steps", type=int, default=1_000_000, help="env steps per run")
p.add_argument("--algos", nargs="+", default=["mdpo", "ppo"], help="any of mdpo, ppo, mdpo_off, sac")
p.add_argument("--learning-starts", type=int, default=None, help="override learning_starts of mdpo_off/sac")
p.add_argument("--official-schedule", action="store_true",
               help="MDPO: t_k over K = 10M/2048 iterations as the official script, not over the run")
p.add_argument("--threads", type=int, default=1)
p.add_argument("--eval-episodes", type=int, default=10)
p.add_argument("--report", default=None, help="only print the table of an existing results JSON")
p.add_argument("--out", default="benchmarks/results/mdpo_hopper.json")
args = p.parse_args()
os.environ["OMP_NUM_THREADS"] = str(args.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import machine  # noqa: E402

from hybridrl.algos import get_algo  # noqa: E402
from hybridrl.loops.evaluate import evaluate_policy  # noqa: E402
from hybridrl.loops.off_policy import train_off_policy  # noqa: E402
from hybridrl.loops.on_policy import train_on_policy  # noqa: E402
from hybridrl.runs import RunDir, read_metrics  # noqa: E402

torch.set_num_threads(args.threads)


def config(algo: str):
    spec = get_algo(algo)
    kwargs = {}
    if algo == "mdpo" and args.official_schedule:
        kwargs["schedule_iterations"] = 4882
    if spec.regime == "off_policy" and args.learning_starts is not None:
        kwargs["learning_starts"] = args.learning_starts
    return spec, spec.config_cls(**kwargs)


def run_one(algo: str, seed: int) -> dict:
    spec, cfg = config(algo)
    train = train_on_policy if spec.regime == "on_policy" else train_off_policy
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir.create(os.path.join(tmp, "run"))
        t0 = time.perf_counter()
        learner = train(args.env, cfg, args.steps, run=run, seed=seed, progress=False, algo=algo)
        wall = time.perf_counter() - t0
        m = read_metrics(run.metrics_csv)
    ev = evaluate_policy(learner.policy, args.env, args.eval_episodes, seed=10_000)
    ret = m.get("episode_return", np.array([np.nan]))
    ok = ~np.isnan(ret)
    return {"algo": algo, "seed": seed, "steps": int(m["step"].max()), "final_eval": ev["mean"],
            "final_train": float(ret[ok][-1]) if ok.any() else float("nan"),
            "mean_train_return": float(np.mean(ret[ok])) if ok.any() else float("nan"),
            "steps_per_s": args.steps / wall,
            "curve": {"step": m["step"][ok].tolist(), "episode_return": ret[ok].tolist()}}


def mean_se(xs: list[float]) -> str:
    xs = [x for x in xs if np.isfinite(x)]
    if not xs:
        return "-"
    se = np.std(xs, ddof=1) / np.sqrt(len(xs)) if len(xs) > 1 else 0.0
    return f"{np.mean(xs):.1f} ± {se:.1f}"


def table(results: list[dict]) -> str:
    lines = [f"| algo | seeds | steps | final eval | last-20 train return | mean train return | env steps/s | "
             f"speed ratio vs {args.algos[0]} (median) |", "|---|---|---|---|---|---|---|---|"]
    first = {r["seed"]: r["steps_per_s"] for r in results if r["algo"] == args.algos[0]}
    for algo in args.algos:
        rs = [r for r in results if r["algo"] == algo]
        if not rs:
            continue
        ratios = [r["steps_per_s"] / first[r["seed"]] for r in rs if r["seed"] in first]
        ratio = f"{statistics.median(ratios):.2f}" if ratios else "-"
        lines.append(f"| {algo} | {len(rs)} | {rs[0]['steps']} | {mean_se([r['final_eval'] for r in rs])} | "
                     f"{mean_se([r['final_train'] for r in rs])} | {mean_se([r['mean_train_return'] for r in rs])} | "
                     f"{mean_se([r['steps_per_s'] for r in rs])} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    if args.report:
        with open(args.report) as f:
            done = json.load(f)
        print(f"\n`{done['machine']['command']}` ({len(done['results'])} runs)\n")
        print(table(done["results"]))
        return
    out = {"machine": machine(args.threads), "results": []}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for seed in args.seeds:
        for algo in args.algos:
            r = run_one(algo, seed)
            out["results"].append(r)
            print(f"{algo} seed {seed}: final eval {r['final_eval']:.1f}, last train {r['final_train']:.1f}, "
                  f"{r['steps_per_s']:.0f} steps/s", flush=True)
            with open(args.out, "w") as f:
                json.dump(out, f, indent=1)
    print(f"\n`{out['machine']['command']}`\n")
    print(table(out["results"]))


if __name__ == "__main__":
    main()
