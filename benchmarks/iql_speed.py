"""IQL gradient steps/s: batch 256, 256x256 networks, Hopper-v5 shapes (obs 11, action 3), synthetic data.

Thread counts are alternated inside one process (1 2 1 2 ...) with ``torch.set_num_threads``; each
repeat times ``--steps`` calls of ``IQLLearner.update`` on batches drawn (before timing) from a random
dataset, after ``--warmup`` untimed updates. Medians over ``--repeats``.

Side-by-side anchor (same run, alternating): Stable-Baselines3 SAC ``train()`` gradient steps with the
same batch size and 256x256 networks (a different algorithm of similar cost: actor + twin critics,
entropy tuning; IQL adds a value net). d3rlpy is not installed here: its IQL figure (d3rlpy 2.8.0,
update-only, measured 2026-11-21 on a 2-core AMD EPYC VM and recorded in docs/benchmarks.md) is printed as an
external reference, not measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone

import gymnasium as gym
import numpy as np
import torch
from common import cpu_model

from hybridrl.algos.iql import IQLConfig, IQLLearner
from hybridrl.data.batches import Transitions

# d3rlpy 2.8.0 IQL update-only gradient steps/s, batch 256 (measured 2026-11-21 on a 2-core AMD EPYC VM).
D3RLPY_REFERENCE = {1: 90.1, 2: 123.2}
OBS_DIM, ACT_DIM = 11, 3  # Hopper-v5


def synthetic(n: int, rng: np.random.Generator) -> Transitions:
    return Transitions(
        obs=rng.standard_normal((n, OBS_DIM), np.float32),
        action=rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
        reward=rng.standard_normal(n, np.float32),
        next_obs=rng.standard_normal((n, OBS_DIM), np.float32),
        terminated=rng.random(n) < 0.01,
        truncated=np.zeros(n, bool),
    )


def iql_runner(args, spaces, data: Transitions):
    learner = IQLLearner(IQLConfig(batch_size=args.batch, hidden=(256, 256), reward_scale=1.0), *spaces, seed=0)
    g = torch.Generator().manual_seed(0)
    batches = [data.index(torch.randint(len(data), (args.batch,), generator=g)) for _ in range(args.steps)]

    def run(n_steps: int) -> None:
        for i in range(n_steps):
            learner.update(batches[i % len(batches)])

    return run


def sac_runner(args, env_id: str, rng: np.random.Generator):
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import configure

    model = SAC(
        "MlpPolicy",
        gym.make(env_id),
        batch_size=args.batch,
        learning_starts=0,
        buffer_size=20_000,
        policy_kwargs=dict(net_arch=[256, 256]),
        device="cpu",
        seed=0,
        verbose=0,
    )
    model.set_logger(configure(None, []))
    for _ in range(20_000):
        model.replay_buffer.add(
            rng.standard_normal((1, OBS_DIM)),
            rng.standard_normal((1, OBS_DIM)),
            rng.uniform(-1, 1, (1, ACT_DIM)),
            rng.standard_normal(1),
            rng.random(1) < 0.01,
            [{}],
        )
    return lambda n_steps: model.train(gradient_steps=n_steps, batch_size=args.batch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=300, help="timed gradient steps per repeat")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dataset", type=int, default=100_000, help="synthetic transitions")
    p.add_argument("--no-sac", action="store_true", help="skip the SB3 SAC anchor")
    p.add_argument("--out", default="benchmarks/results/iql_speed.json")
    args = p.parse_args()
    env_id = "Hopper-v5"
    env = gym.make(env_id)
    spaces = (env.observation_space, env.action_space)
    assert spaces[0].shape == (OBS_DIM,) and spaces[1].shape == (ACT_DIM,)
    rng = np.random.default_rng(0)
    runners = {"hybridrl IQL": iql_runner(args, spaces, synthetic(args.dataset, rng))}
    if not args.no_sac:
        runners["SB3 SAC (anchor)"] = sac_runner(args, env_id, rng)
    times: dict = {(name, t): [] for name in runners for t in args.threads}
    for run in runners.values():  # warm-up at every thread count
        for t in args.threads:
            torch.set_num_threads(t)
            run(args.warmup)
    for r in range(args.repeats):  # alternate thread counts and libraries: A1 B1 A2 B2 A1 B1 ...
        for t in args.threads:
            torch.set_num_threads(t)
            for name, run in runners.items():
                t0 = time.perf_counter()
                run(args.steps)
                times[(name, t)].append(args.steps / (time.perf_counter() - t0))
        print(f"repeat {r}: " + ", ".join(f"{n} {t}T {v[-1]:.1f}" for (n, t), v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    import stable_baselines3

    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "batch": args.batch,
        "hidden": [256, 256],
        "steps_per_repeat": args.steps,
        "repeats": args.repeats,
        "steps_per_s": {f"{n} | {t} threads": v for (n, t), v in times.items()},
        "median": {f"{n} | {t} threads": v for (n, t), v in med.items()},
        "external_reference_not_side_by_side": {"d3rlpy 2.8.0 IQL (2026-11-21, 2-core AMD EPYC)": D3RLPY_REFERENCE},
    }
    if not args.no_sac:
        results["ratio_iql_over_sac_median"] = {
            t: statistics.median(a / b for a, b in zip(times[("hybridrl IQL", t)], times[("SB3 SAC (anchor)", t)]))
            for t in args.threads
        }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(
        f"\n`{results['command']}` ({results['date']}, {results['cpu']}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, SB3 {stable_baselines3.__version__})\n"
    )
    print(
        f"| gradient steps/s (median of {args.repeats} x {args.steps} steps) | "
        + " | ".join(f"{t} thread{'s' * (t > 1)}" for t in args.threads)
        + " |"
    )
    print("| --- |" + " --- |" * len(args.threads))
    for name in runners:
        print(f"| {name} | " + " | ".join(f"{med[(name, t)]:.1f}" for t in args.threads) + " |")
    if not args.no_sac:
        print(
            "| ratio IQL / SAC per repeat, median | "
            + " | ".join(f"{results['ratio_iql_over_sac_median'][t]:.2f}" for t in args.threads)
            + " |"
        )
    print(
        "| d3rlpy 2.8.0 IQL: external reference, NOT measured side by side (2026-11-21, 2-core AMD EPYC) | "
        + " | ".join(str(D3RLPY_REFERENCE.get(t, "-")) for t in args.threads)
        + " |"
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
