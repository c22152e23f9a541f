"""Offline-to-online fine-tuning on MuJoCo (issue 8): start from IQL trained on a dataset collected the way the demo
collects it (random + a briefly trained PPO behaviour policy), fine-tune online, next to PPO (and optionally SAC) from
scratch at the same online budget.

Per seed and method it records the starting return (deterministic and stochastic), the dip (lowest evaluation in the
first 20% of the budget / start), the final return, the gain (final / start) and the wall time; PPO from scratch
records its final returns and wall time. Full budget (not in CI; hours on 2 cores)::

    .venv/bin/python benchmarks/finetune_mujoco.py --env Hopper-v5 --seeds 0 1 2 --online-steps 100000 \\
        --out benchmarks/results/finetune_hopper.json

Tiny check that it runs (minutes)::

    .venv/bin/python benchmarks/finetune_mujoco.py --env Hopper-v5 --seeds 0 --online-steps 4096 \\
        --behavior-steps 4096 --collect-steps 2000 --offline-steps 200 --eval-episodes 2 \\
        --out /tmp/finetune_tiny.json --work /tmp/finetune_tiny
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import machine, save_json

from hybridrl.data.collect import collect
from hybridrl.data.dataset import Dataset
from hybridrl.loops.evaluate import evaluate_policy
from hybridrl.loops.finetune_run import EVAL_SEED, FINETUNE_METHODS, finetune_run
from hybridrl.loops.train import train
from hybridrl.nn import load_policy


def dataset_for(env: str, seed: int, work: Path, behavior_steps: int, random_steps: int, behavior_data: int) -> Path:
    """The demo's collection: ``random_steps`` random steps + ``behavior_data`` steps of a PPO policy trained for
    ``behavior_steps`` (reused when already there)."""
    path = work / f"data-seed{seed}" / f"{env.split('-')[0].lower()}-mixed-v0"
    if (path / "hybridrl.json").exists():
        return path
    brun = train("ppo", work / f"behavior-seed{seed}", behavior_steps, env_id=env, seed=seed, eval_episodes=0,
                 progress=False, overwrite=True)
    behavior = load_policy(brun.policy_dir, env)
    ds = Dataset.concatenate([collect(env, None, random_steps, seed=seed, progress=False),
                              collect(env, behavior, behavior_data, seed=seed + 1000, progress=False)])
    ds.save(path, overwrite=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="Hopper-v5")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--online-steps", type=int, default=100_000)
    ap.add_argument("--methods", nargs="+", default=["ppo"], help=f"of {sorted(FINETUNE_METHODS)}")
    ap.add_argument("--set", action="append", default=[], metavar="METHOD:KEY=VALUE",
                    help="override for one method, e.g. ppo:lr=3e-5 (repeatable)")
    ap.add_argument("--scratch", nargs="*", default=["ppo"], choices=["ppo", "sac"],
                    help="algorithms run from scratch for the same online budget (none: --scratch with no value)")
    ap.add_argument("--behavior-steps", type=int, default=60_000)
    ap.add_argument("--random-steps", type=int, default=5_000)
    ap.add_argument("--collect-steps", type=int, default=30_000, help="behaviour-policy steps in the dataset")
    ap.add_argument("--offline-steps", type=int, default=100_000, help="IQL gradient steps")
    ap.add_argument("--iql-set", nargs="*", default=["beta=3.0"])
    ap.add_argument("--starts", nargs="+", default=["iql"], choices=["iql", "unio4"],
                    help="offline learners whose policies are fine-tuned (unio4: Uni-O4's offline stage)")
    ap.add_argument("--unio4-steps", type=int, default=None, help="Uni-O4 gradient steps (default --offline-steps)")
    ap.add_argument("--unio4-set", nargs="*", default=[])
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="benchmarks/results/finetune_work")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    results = {"machine": machine(args.threads), "args": vars(args), "eval_seed_of_episode_0": EVAL_SEED, "runs": []}
    for seed in args.seeds:
        data = dataset_for(args.env, seed, work, args.behavior_steps, args.random_steps, args.collect_steps)
        for start in args.starts:
            t0 = time.perf_counter()
            steps = args.offline_steps if start == "iql" or args.unio4_steps is None else args.unio4_steps
            offline = train(start, work / f"{start}-seed{seed}", steps, dataset=data, seed=seed,
                            overrides=args.iql_set if start == "iql" else args.unio4_set, eval_episodes=0,
                            progress=False, overwrite=True)
            offline_s = time.perf_counter() - t0
            for method in args.methods:
                sets = [s.split(":", 1)[1] for s in args.set if s.startswith(method + ":")]
                t0 = time.perf_counter()
                tag = method if start == "iql" else f"{method}-from-{start}"
                run = finetune_run(offline.policy_dir, work / f"ft-{tag}-seed{seed}", algo=method, env_id=args.env,
                                   dataset=data, steps=args.online_steps, seed=seed, overrides=sets,
                                   eval_episodes=args.eval_episodes, progress=False, overwrite=True)
                r = json.loads((run.path / "eval.json").read_text())
                results["runs"].append({"seed": seed, "method": method, "start_from": start,
                                        "offline_wall_s": offline_s, "wall_s": time.perf_counter() - t0,
                                        "overrides": sets,
                                        **{k: r[k] for k in ("start", "final", "dip", "dip_return", "gain", "curve",
                                                             "lost_start")}})
                save_json(results, args.out)
        for algo in args.scratch:
            t0 = time.perf_counter()
            name = "scratch" if algo == "ppo" else f"scratch-{algo}"
            srun = train(algo, work / f"{name}-seed{seed}", args.online_steps, env_id=args.env, seed=seed,
                         eval_episodes=0, progress=False, overwrite=True)
            pol = load_policy(srun.policy_dir, args.env)
            final = {m: evaluate_policy(pol, args.env, args.eval_episodes, seed=EVAL_SEED,
                                        deterministic=m == "deterministic")["mean"]
                     for m in ("deterministic", "stochastic")}
            results["runs"].append({"seed": seed, "method": f"{algo}-scratch", "final": final,
                                    "wall_s": time.perf_counter() - t0})
            save_json(results, args.out)
    for r in results["runs"]:
        print(r["method"], "from", r.get("start_from", "-"), "seed", r["seed"], "start", r.get("start"),
              "final", r["final"], "dip", r.get("dip"),
              "gain", r.get("gain"), f"wall {r['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
