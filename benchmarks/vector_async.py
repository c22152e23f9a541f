"""Env-steps/s of Gymnasium's SyncVectorEnv vs AsyncVectorEnv (same-step autoreset) for 1, 2 and 8 envs.

Random actions (drawn before timing), the vector envs made by :func:`hybridrl.envs.make_vec_env` exactly as
``hybridrl train --vector sync|async`` makes them. Sync and async alternate (A B A B) for each env count; the table
gives the median env-steps/s over the repeats and the ratio async/sync per pair (median). From the measured costs it
also records CPU seconds per vector step (insensitive to other jobs on a shared machine): sync, all in this process;
async, this process's share ``d`` (sending actions, receiving results) and each env subprocess's share ``e`` per env
step (``getrusage`` of the exited children, less a no-step baseline). From these it *plans* (does not measure)
env-steps/s on ``--plan-cores`` free cores: ``sync(n) = n / cpu_sync(n)`` (one process, however many cores) and
``async(n) = n / (d(n) + e(n) * ceil(n / cores))`` (the driver waits for the slowest core's envs each step).

    python benchmarks/vector_async.py --env Hopper-v5 --envs 1 2 8 --seconds 3 --repeats 3 \
        --out benchmarks/results/vector_async_hopper.json
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import machine, save_json  # noqa: E402

from hybridrl.envs import make_vec_env  # noqa: E402


def measure(env_id: str, n: int, vector: str, seconds: float, seed: int = 0) -> dict:
    """Wall-clock env-steps/s, and CPU seconds per vector step in this process and in its env subprocesses.

    The subprocesses' CPU comes from ``getrusage(RUSAGE_CHILDREN)`` after ``close()`` (they have exited), minus the
    same run with no timed steps (start-up, reset, warm-up); ``seconds=0`` measures only that baseline.
    """
    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    envs = make_vec_env(env_id, n, seed=seed, vector=vector)
    envs.reset(seed=seed)
    rng = np.random.default_rng(seed)
    space = envs.single_action_space
    actions = rng.uniform(space.low, space.high, (512, n, *space.shape)).astype(space.dtype) \
        if hasattr(space, "low") else rng.integers(0, space.n, (512, n))
    for t in range(20):  # warm-up
        envs.step(actions[t])
    steps, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        for t in range(64):
            envs.step(actions[(steps + t) % 512])
        steps += 64
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    envs.close()
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = child1.ru_utime + child1.ru_stime - child0.ru_utime - child0.ru_stime
    return {"steps": steps, "rate": steps * n / wall if steps else 0.0, "cpu_main": cpu, "cpu_children": child}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--envs", type=int, nargs="+", default=[1, 2, 8])
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    p.add_argument("--repeats", type=int, default=3, help="A B pairs per env count")
    p.add_argument("--plan-cores", type=int, default=8)
    p.add_argument("--out", default="benchmarks/results/vector_async.json")
    args = p.parse_args()
    info = machine(threads=1)
    rows = {}
    for n in args.envs:
        sync, asyn = [], []
        for _ in range(args.repeats):
            sync.append(measure(args.env, n, "sync", args.seconds))
            asyn.append(measure(args.env, n, "async", args.seconds))
        base = measure(args.env, n, "async", 0.0)["cpu_children"]
        rows[n] = {"sync": statistics.median(r["rate"] for r in sync),
                   "async": statistics.median(r["rate"] for r in asyn),
                   "ratio": statistics.median(a["rate"] / s["rate"] for a, s in zip(asyn, sync)),
                   # CPU seconds per vector step: sync (all in this process); async, this process and per env
                   "sync_cpu_per_step": statistics.median(r["cpu_main"] / r["steps"] for r in sync),
                   "async_main_cpu_per_step": statistics.median(r["cpu_main"] / r["steps"] for r in asyn),
                   "async_env_cpu_per_env_step": statistics.median(max(r["cpu_children"] - base, 0.0) / r["steps"] / n
                                                                   for r in asyn),
                   "runs": {"sync": sync, "async": asyn, "async_baseline_children_cpu": base}}
    k = args.plan_cores
    plan = {n: {"sync": n / r["sync_cpu_per_step"],
                "async": n / (r["async_main_cpu_per_step"] + r["async_env_cpu_per_env_step"] * math.ceil(n / k))}
            for n, r in rows.items()}
    info["load_avg_at_end"] = os.getloadavg()[0]
    save_json({"machine": info, "env": args.env, "rows": rows, "plan_cores": k, "plan": plan}, args.out)
    print(f"{args.env}, {info['cores']} cores, load {info['load_avg_at_start']:.1f} -> {info['load_avg_at_end']:.1f}")
    print("| envs | sync steps/s | async steps/s | async/sync (median of pairs) | "
          f"planned on {args.plan_cores} cores: sync | async |")
    print("|---|---|---|---|---|---|")
    for n, r in rows.items():
        print(f"| {n} | {r['sync']:.0f} | {r['async']:.0f} | {r['ratio']:.2f} | {plan[n]['sync']:.0f} | "
              f"{plan[n]['async']:.0f} |")
    for n, r in rows.items():
        print(f"{n} envs, CPU us per vector step: sync {r['sync_cpu_per_step'] * 1e6:.0f}; async: driver "
              f"{r['async_main_cpu_per_step'] * 1e6:.0f} + {r['async_env_cpu_per_env_step'] * 1e6:.0f} per env")


if __name__ == "__main__":
    main()
