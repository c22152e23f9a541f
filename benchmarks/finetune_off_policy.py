"""Off-policy fine-tuning from an IQL policy on Hopper-v5: start, dip, final, gain, wall time per method.

The dataset and starting policy are made as ``hybridrl demo`` makes them: a PPO behaviour policy, then random +
behaviour data, then IQL (beta 3) on it. Each method (IQL online, Cal-QL, RLPD, FamO2O) then fine-tunes that policy
for ``--online-steps`` env steps (100k: the issue's budget), evaluated every ``--eval-every`` steps.

    start = deterministic return of the IQL policy (``--eval-episodes`` episodes)
    dip   = lowest evaluation in the first 20% of the online budget / start   (< 1: the policy got worse)
    gain  = final evaluation / start

Full budget (not in CI): ``python benchmarks/finetune_off_policy.py``. Reduced budgets take the same flags.
Results: ``benchmarks/results/finetune_off_policy[_<tag>].json`` (never overwritten unless ``--overwrite``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, save_json

from hybridrl.data.collect import collect
from hybridrl.data.dataset import Dataset
from hybridrl.loops import finetune_off_policy as ft
from hybridrl.loops.evaluate import evaluate_policy
from hybridrl.loops.train import train
from hybridrl.nn import load_policy

METHODS = ("iql", "calql", "rlpd", "famo2o")


def _overrides(items: list[str], method: str) -> list[str]:
    """``key=value`` items for every method plus ``method:key=value`` items for this one."""
    out = []
    for item in items:
        head, sep, rest = item.partition(":")
        if not sep or "=" in head:
            out.append(item)
        elif head == method:
            out.append(rest)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--behavior-steps", type=int, default=60_000)
    p.add_argument("--random-data", type=int, default=5_000)
    p.add_argument("--behavior-data", type=int, default=30_000)
    p.add_argument("--iql-steps", type=int, default=3_000)
    p.add_argument("--online-steps", type=int, default=100_000)
    p.add_argument("--eval-every", type=int, default=5_000)
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--set", nargs="*", default=[],
                   help="overrides: key=value for every method, or method:key=value for one (e.g. calql:n_actions=2)")
    p.add_argument("--tag", default="")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()
    out = Path("benchmarks/results") / f"finetune_off_policy{'_' + args.tag if args.tag else ''}.json"
    if out.exists() and not args.overwrite:
        sys.exit(f"{out} exists; pass --overwrite or another --tag")
    torch.set_num_threads(1)
    results = {"machine": machine(threads=1), "args": vars(args), "runs": []}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            brun = train("ppo", Path(tmp) / "behavior", args.behavior_steps, env_id=args.env, seed=seed,
                         eval_episodes=0, progress=False)
            behavior = load_policy(brun.policy_dir, args.env)
            data = Dataset.concatenate([collect(args.env, None, args.random_data, seed=seed, progress=False),
                                        collect(args.env, behavior, args.behavior_data, seed=seed + 1000,
                                                progress=False)])
            crun = train("iql", Path(tmp) / "iql", args.iql_steps, dataset=data, env_id=args.env, seed=seed,
                         overrides=["beta=3.0"], eval_episodes=0, progress=False)
            start_policy = load_policy(crun.policy_dir, args.env)
            prep = time.perf_counter() - t0
            start = evaluate_policy(start_policy, args.env, args.eval_episodes, seed=10_000)["mean"]
            print(f"seed {seed}: IQL start {start:.1f} (data + offline {prep:.0f} s)", flush=True)
            for method in args.methods:
                curve: list[tuple[int, float]] = []

                def callback(step: int, policy, curve=curve) -> None:
                    if step % args.eval_every == 0 or step == args.online_steps:
                        curve.append((step, evaluate_policy(policy, args.env, args.eval_episodes,
                                                            seed=10_000)["mean"]))

                t1 = time.perf_counter()
                ft_fn = getattr(ft, f"finetune_{method}")
                ft_fn(start_policy, env_id=args.env, dataset=data, steps=args.online_steps, run=None, seed=seed,
                      overrides=[f"callback_every={min(1000, args.eval_every)}", *_overrides(args.set, method)],
                      callback=callback, progress=False)
                wall = time.perf_counter() - t1
                early = [r for s, r in curve if s <= 0.2 * args.online_steps] or [curve[0][1]]
                row = {"seed": seed, "method": method, "start": start, "dip": min(early) / start,
                       "final": curve[-1][1], "gain": curve[-1][1] / start, "wall_s": wall, "curve": curve}
                results["runs"].append(row)
                print(f"  {method:7s} start {start:7.1f} dip {row['dip']:.2f} final {row['final']:7.1f} gain "
                      f"{row['gain']:.2f} wall {wall:.0f} s  curve {[(s, round(r)) for s, r in curve]}", flush=True)
                save_json(results, str(out))
    for method in args.methods:
        rows = [r for r in results["runs"] if r["method"] == method]
        print(f"{method:7s} gain {np.mean([r['gain'] for r in rows]):.2f} dip {np.mean([r['dip'] for r in rows]):.2f}"
              f" over {len(rows)} seed(s)")


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    main()
