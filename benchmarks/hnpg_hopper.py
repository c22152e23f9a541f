"""HNPG vs PPO on MuJoCo (default Hopper-v5) with a medium-quality offline dataset collected by hybridrl.

Steps (one process, same thread count throughout):
  1. behaviour: PPO (``PPOConfig()``) trained for ``--behavior-steps`` env steps (seed 1000), evaluated (10 episodes);
  2. dataset: ``collect(env, behaviour, --dataset-steps)`` samples the behaviour's stochastic policy (seed 0);
  3. per seed, HNPG (``HNPGConfig()`` + ``--hnpg-set`` overrides, ``offline=dataset.transitions()``) then PPO
     (``PPOConfig()``, no offline data): learning curve = mean return of the last 20 training episodes after every
     rollout vs env steps, and a final deterministic evaluation (10 episodes, reset seeds 10000..10009).

"Medium" here means whatever the behaviour reaches in ``--behavior-steps`` (D4RL's medium level is about a third
of expert); the dataset's mean return is recorded and printed. The JSON is rewritten after every run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--env", default="Hopper-v5")
p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
p.add_argument("--steps", type=int, default=1_000_000, help="env steps per HNPG / PPO run")
p.add_argument("--behavior-steps", type=int, default=300_000, help="PPO steps for the behaviour policy")
p.add_argument("--dataset-steps", type=int, default=100_000, help="offline dataset size (whole episodes)")
p.add_argument("--dataset", default=None, help="use this saved dataset instead of steps 1-2")
p.add_argument("--save-dataset", default=None, help="also save the collected dataset here (Minari dir name-v0)")
p.add_argument("--hnpg-set", nargs="*", default=[], help="HNPGConfig overrides key=value")
p.add_argument("--algos", nargs="+", default=["hnpg", "ppo"], choices=["hnpg", "ppo"])
p.add_argument("--threads", type=int, default=1)
p.add_argument("--eval-episodes", type=int, default=10)
p.add_argument("--curve-points", type=int, default=5, help="columns of the return-vs-steps table")
p.add_argument("--out", default="benchmarks/results/hnpg_hopper.json")
args = p.parse_args()
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import machine, save_json  # noqa: E402

from hybridrl.algos.hnpg import HNPGConfig  # noqa: E402
from hybridrl.algos.ppo import PPOConfig  # noqa: E402
from hybridrl.data import Dataset  # noqa: E402
from hybridrl.data.collect import collect  # noqa: E402
from hybridrl.loops.evaluate import evaluate_policy  # noqa: E402
from hybridrl.loops.on_policy import train_on_policy  # noqa: E402
from hybridrl.runs import RunDir, apply_overrides, read_metrics  # noqa: E402

torch.set_num_threads(args.threads)
EVAL_SEED = 10_000


def curve_of(run: RunDir) -> list[tuple[int, float]]:
    m = read_metrics(run.metrics_csv)
    ok = ~np.isnan(m.get("episode_return", np.full(len(m["step"]), np.nan)))
    return list(zip(m["step"][ok].astype(int).tolist(), m["episode_return"][ok].tolist()))


def at(curve: list, step: int) -> float:
    """Training return of the last rollout at or before ``step`` (NaN if none)."""
    vals = [r for s, r in curve if s <= step]
    return vals[-1] if vals else float("nan")


def mean_se(xs: list[float]) -> str:
    m = float(np.mean(xs))
    return f"{m:,.1f} ± {float(np.std(xs, ddof=1)) / len(xs) ** 0.5:,.1f}" if len(xs) > 1 else f"{m:,.1f} (1 seed)"


def main() -> None:
    results: dict = {"machine": machine(args.threads), "args": vars(args), "behavior": {}, "dataset": {}, "runs": []}
    tmp = tempfile.mkdtemp(prefix="hybridrl_hnpg_bench_")
    t0 = time.perf_counter()
    if args.dataset:
        data = Dataset.load(args.dataset)
        ev = {"mean": float("nan"), "std": float("nan")}
        results["behavior"] = {
            "algo": f"from dataset {args.dataset}",
            "steps": 0,
            "eval_mean": ev["mean"],
            "eval_std": ev["std"],
            "wall_s": 0.0,
        }
    else:
        behavior = train_on_policy(args.env, PPOConfig(), args.behavior_steps, seed=1000, progress=False).policy
        ev = evaluate_policy(behavior, args.env, args.eval_episodes, seed=EVAL_SEED)
        results["behavior"] = {
            "algo": "ppo",
            "steps": args.behavior_steps,
            "eval_mean": ev["mean"],
            "eval_std": ev["std"],
            "wall_s": time.perf_counter() - t0,
        }
        t0 = time.perf_counter()
        data = collect(args.env, behavior, args.dataset_steps, seed=0, progress=False)
        if args.save_dataset:
            data.save(args.save_dataset, overwrite=True)
    rets = data.episode_returns(1.0)
    results["dataset"] = {
        "steps": int(len(data.rewards)),
        "episodes": int(data.n_episodes),
        "mean_return": float(rets.mean()),
        "std_return": float(rets.std()),
        "wall_s": time.perf_counter() - t0,
    }
    print(
        f"[data] behaviour {results['behavior']['algo']} {results['behavior']['steps']:,} steps: "
        f"eval {ev['mean']:,.1f}; dataset {len(data.rewards):,} "
        f"steps, {data.n_episodes} episodes, mean return {rets.mean():,.1f}",
        flush=True,
    )
    save_json(results, args.out)
    offline = data.transitions()
    hnpg_cfg = apply_overrides(HNPGConfig(), args.hnpg_set)
    results["hnpg_config"] = {k: getattr(hnpg_cfg, k) for k in hnpg_cfg.__dataclass_fields__}
    for seed in args.seeds:
        for algo in args.algos:
            run = RunDir(os.path.join(tmp, f"{algo}_{seed}"))
            t0 = time.perf_counter()
            learner = train_on_policy(
                args.env,
                hnpg_cfg if algo == "hnpg" else PPOConfig(),
                args.steps,
                run=run,
                seed=seed,
                progress=False,
                algo=algo,
                offline=offline if algo == "hnpg" else None,
            )
            wall = time.perf_counter() - t0
            curve = curve_of(run)
            final = evaluate_policy(learner.policy, args.env, args.eval_episodes, seed=EVAL_SEED)["mean"]
            results["runs"].append(
                {
                    "algo": algo,
                    "seed": seed,
                    "steps": curve[-1][0] if curve else args.steps,
                    "wall_s": wall,
                    "final_eval_mean": final,
                    "curve": curve,
                }
            )
            save_json(results, args.out)
            print(
                f"[{algo}] seed {seed}: {wall / 60:.1f} min, final eval {final:,.1f}, last training return "
                f"{curve[-1][1] if curve else float('nan'):,.1f}",
                flush=True,
            )
    report(results)
    print(f"\nwrote {args.out}")


def report(results: dict) -> None:
    m, b, d = results["machine"], results["behavior"], results["dataset"]
    print(
        f"\n{m['date']} | {m['cpu']}, {m['cores']} cores, {m['threads']} thread(s) | torch {m['torch']}, "
        f"gymnasium {m['gymnasium']}, mujoco {m['mujoco']}\n`{m['command']}`\n"
    )
    print(
        f"Behaviour: {b['algo']} {b['steps']:,} steps, deterministic eval {b['eval_mean']:,.1f}. "
        f"Dataset: {d['steps']:,} "
        f"steps, {d['episodes']} episodes, mean return {d['mean_return']:,.1f} ± {d['std_return']:,.1f} (std).\n"
    )
    marks = np.linspace(args.steps / args.curve_points, args.steps, args.curve_points).astype(int)
    print(
        "| algo | seeds | " + " | ".join(f"return @ {s:,}" for s in marks) + " | final deterministic eval | wall min |"
    )
    print("| --- | --- | " + " | ".join("---" for _ in marks) + " | --- | --- |")
    for algo in args.algos:
        rs = [r for r in results["runs"] if r["algo"] == algo]
        if not rs:
            continue
        cols = [mean_se([at(r["curve"], s) for r in rs]) for s in marks]
        print(
            f"| {algo} | {len(rs)} | " + " | ".join(cols) + f" | {mean_se([r['final_eval_mean'] for r in rs])} | "
            f"{np.mean([r['wall_s'] for r in rs]) / 60:.1f} |"
        )


if __name__ == "__main__":
    main()
