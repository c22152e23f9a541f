"""Offline gradient steps/s, hybridrl vs d3rlpy, side by side on the same arrays (TD3+BC, IQL, AWAC, CQL).

The driver (run with the project's Python) writes one dataset's arrays to an ``.npz`` and then alternates worker
processes, hybridrl then d3rlpy, per algorithm and repeat: each worker builds the learner with 256x256 networks and
batch 256 on one torch thread, pre-samples ``--n-batches`` batches from the arrays (untimed), runs ``--warmup``
updates, then times ``--steps`` update calls (update-only: no sampling, no logging). Ratio = hybridrl / d3rlpy per
pair; the median over pairs is reported. d3rlpy runs from its own virtualenv (``--d3rlpy-python``) and is never a
project dependency:

    python3.11 -m venv /tmp/d3 && /tmp/d3/bin/pip install torch==2.13.0 && /tmp/d3/bin/pip install d3rlpy==2.8.1
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/offline_speed.py --dataset DIR --d3rlpy-python /tmp/d3/bin/python

Matched settings: d3rlpy encoders ``VectorEncoderFactory([256, 256])`` for actor, critic and value (d3rlpy's AWAC
default is 4 x 256 and batch 1024: both overridden), batch 256, Adam 3e-4, default TD3+BC alpha 2.5 / policy noise
0.2 / update_actor_interval 2, IQL expectile 0.7 / weight_temp 3, AWAC lambda 1/3 (d3rlpy: lam 1.0 default,
set to 1/3), CQL fixed alpha 5 with 10 importance-sampled actions per source (d3rlpy: ``conservative_weight=5``,
``alpha_learning_rate=0`` so its Lagrange multiplier stays at 1, ``alpha_threshold`` only shifts the loss), twin
critics, SAC temperature learned on both sides.

``--profile`` adds, per algorithm and side, one extra worker run (50 updates) under ``torch.profiler`` that splits
the update's CPU time into matrix products (forward and backward GEMMs), optimiser steps and everything else, and
times the same GEMMs alone (the arithmetic floor: the fastest an update with these shapes can be on this thread).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ALGOS = ("td3_bc", "iql", "awac", "cql")


def export(dataset_path: str, npz: str) -> dict:
    import numpy as np

    from hybridrl.data.dataset import Dataset

    ds = Dataset.load(dataset_path)
    np.savez(npz, observations=ds.observations, actions=ds.actions, rewards=ds.rewards,
             next_observations=ds.next_observations, terminals=ds.terminations.astype(np.float32),
             timeouts=ds.truncations.astype(np.float32), low=ds.action_space.low, high=ds.action_space.high)
    return {"steps": len(ds), "episodes": ds.n_episodes, "env_id": ds.env_id}


GEMM_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm")


def time_updates(update, batches: list, steps: int, warmup: int, profile: bool) -> dict:
    """Steps/s of ``update`` over the pre-sampled batches; with ``profile`` instead a breakdown of one profiled pass:
    ``gemm_ms``/``optim_ms``/``other_ms`` per update (profiler time) and ``gemm_floor_ms`` (the same GEMM shapes timed
    alone, no profiler)."""
    import torch

    for i in range(warmup):
        update(batches[i % len(batches)])
    if not profile:
        t0 = time.perf_counter()
        for i in range(steps):
            update(batches[i % len(batches)])
        return {"steps_per_s": steps / (time.perf_counter() - t0)}
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    steps = min(steps, 50)  # the profiler keeps every event in memory: 300 CQL updates ran out of it
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        for i in range(steps):
            update(batches[i % len(batches)])
        total = time.perf_counter() - t0
    gemm = optim = 0.0
    shapes: dict = {}
    for ev in prof.key_averages(group_by_input_shape=True):
        if ev.key in GEMM_OPS:
            gemm += ev.self_cpu_time_total
            shapes[(ev.key, str(ev.input_shapes))] = (ev.key, ev.input_shapes, ev.count)
        elif ev.key.startswith("Optimizer.step"):
            optim += ev.cpu_time_total
    floor = 0.0
    for name, in_shapes, count in shapes.values():
        args = [torch.randn(*sh) for sh in in_shapes if sh]
        op = getattr(torch, name.split("::")[1])
        for _ in range(3):
            op(*args)
        t0 = time.perf_counter()
        for _ in range(20):
            op(*args)
        floor += (time.perf_counter() - t0) / 20 * count / steps
    us = 1e-3 / steps  # profiler microseconds (summed over steps) -> ms per update
    return {"profiled_ms": 1e3 * total / steps, "gemm_ms": gemm * us, "optim_ms": optim * us,
            "other_ms": 1e3 * total / steps - (gemm + optim) * us, "gemm_floor_ms": 1e3 * floor,
            "gemm_calls_per_update": sum(c for _, _, c in shapes.values()) / steps}


def worker_hybridrl(algo: str, npz: str, steps: int, warmup: int, n_batches: int, batch: int,
                    profile: bool = False) -> dict:
    import gymnasium as gym
    import numpy as np
    import torch

    from hybridrl.algos import get_algo
    from hybridrl.data.batches import Transitions

    torch.set_num_threads(1)
    z = np.load(npz)
    obs_space = gym.spaces.Box(-np.inf, np.inf, z["observations"].shape[1:], np.float32)
    act_space = gym.spaces.Box(z["low"], z["high"], dtype=np.float32)
    fields = {"td3_bc": dict(hidden=(256, 256)), "iql": dict(hidden=(256, 256), reward_scale=1.0),
              "awac": dict(actor_hidden=(256, 256), critic_hidden=(256, 256)),
              "cql": dict(hidden=(256, 256))}[algo]
    spec = get_algo(algo)
    learner = spec.make(spec.config_cls(batch_size=batch, **fields), obs_space, act_space, seed=0)
    x = z["observations"].astype(np.float64)
    learner.policy.obs_norm.set_stats(x.mean(0), x.var(0), len(x))
    rng = np.random.default_rng(0)
    data = Transitions(z["observations"], z["actions"], z["rewards"], z["next_observations"],
                       z["terminals"] > 0, z["timeouts"] > 0)
    batches = [data.index(torch.from_numpy(rng.integers(0, len(x), batch))) for _ in range(n_batches)]
    return time_updates(learner.update, batches, steps, warmup, profile)


def worker_d3rlpy(algo: str, npz: str, steps: int, warmup: int, n_batches: int, batch: int,
                  profile: bool = False) -> dict:
    import d3rlpy
    import numpy as np
    import torch

    torch.set_num_threads(1)
    z = np.load(npz)
    ds = d3rlpy.dataset.MDPDataset(z["observations"], z["actions"], z["rewards"], z["terminals"], z["timeouts"],
                                   action_space=d3rlpy.constants.ActionSpace.CONTINUOUS)
    enc = d3rlpy.models.encoders.VectorEncoderFactory([256, 256])
    if algo == "td3_bc":
        cfg = d3rlpy.algos.TD3PlusBCConfig(batch_size=batch, actor_encoder_factory=enc, critic_encoder_factory=enc)
    elif algo == "iql":
        cfg = d3rlpy.algos.IQLConfig(batch_size=batch, actor_encoder_factory=enc, critic_encoder_factory=enc,
                                     value_encoder_factory=enc)
    elif algo == "cql":
        cfg = d3rlpy.algos.CQLConfig(batch_size=batch, actor_encoder_factory=enc, critic_encoder_factory=enc,
                                     conservative_weight=5.0, alpha_learning_rate=0.0, n_action_samples=10)
    else:
        cfg = d3rlpy.algos.AWACConfig(batch_size=batch, actor_encoder_factory=enc, critic_encoder_factory=enc,
                                      lam=1.0 / 3.0)
    model = cfg.create(device="cpu:0")
    model.build_with_dataset(ds)
    d3rlpy.seed(0)
    batches = [ds.sample_transition_batch(batch) for _ in range(n_batches)]
    return time_updates(model.update, batches, steps, warmup, profile)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", help="hybridrl dataset directory (driver mode)")
    p.add_argument("--d3rlpy-python", default="/tmp/d3/bin/python")
    p.add_argument("--algos", default=",".join(ALGOS))
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--n-batches", type=int, default=64)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--profile", action="store_true", help="add one profiled run per algorithm and side")
    p.add_argument("--worker", choices=("hybridrl", "d3rlpy"), help=argparse.SUPPRESS)
    p.add_argument("--algo", help=argparse.SUPPRESS)
    p.add_argument("--npz", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        fn = worker_hybridrl if a.worker == "hybridrl" else worker_d3rlpy
        print(json.dumps(fn(a.algo, a.npz, a.steps, a.warmup, a.n_batches, a.batch, a.profile)))
        return
    tmp = tempfile.mkdtemp(prefix="offline_speed_")
    npz = os.path.join(tmp, "data.npz")
    info = export(a.dataset, npz)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    common = ["--npz", npz, "--steps", str(a.steps), "--warmup", str(a.warmup), "--n-batches", str(a.n_batches),
              "--batch", str(a.batch)]
    pythons = {"hybridrl": sys.executable, "d3rlpy": a.d3rlpy_python}
    results: dict = {"dataset": a.dataset, **info, "batch": a.batch, "steps": a.steps, "threads": 1,
                     "load_avg_at_start": os.getloadavg()[0], "command": " ".join(sys.argv)}
    for algo in a.algos.split(","):
        runs: dict[str, list[float]] = {"hybridrl": [], "d3rlpy": []}
        for r in range(a.repeats):
            for side in ("hybridrl", "d3rlpy") if r % 2 == 0 else ("d3rlpy", "hybridrl"):
                out = subprocess.run([pythons[side], os.path.abspath(__file__), "--worker", side, "--algo", algo,
                                      *common], capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    raise SystemExit(f"{side} {algo} failed:\n{out.stderr[-3000:]}")
                runs[side].append(json.loads(out.stdout.strip().splitlines()[-1])["steps_per_s"])
                print(f"{algo} {side} rep {r}: {runs[side][-1]:.1f} steps/s", flush=True)
        ratios = [h / d for h, d in zip(runs["hybridrl"], runs["d3rlpy"])]
        results[algo] = {"hybridrl": runs["hybridrl"], "d3rlpy": runs["d3rlpy"], "ratios": ratios,
                         "median_ratio": statistics.median(ratios),
                         "hybridrl_median": statistics.median(runs["hybridrl"]),
                         "d3rlpy_median": statistics.median(runs["d3rlpy"])}
        print(f"{algo}: hybridrl {results[algo]['hybridrl_median']:.1f} vs d3rlpy {results[algo]['d3rlpy_median']:.1f}"
              f" steps/s, median ratio {results[algo]['median_ratio']:.2f}", flush=True)
        if a.profile:
            for side in ("hybridrl", "d3rlpy"):
                out = subprocess.run([pythons[side], os.path.abspath(__file__), "--worker", side, "--algo", algo,
                                      *common, "--profile"], capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    raise SystemExit(f"{side} {algo} --profile failed:\n{out.stderr[-3000:]}")
                prof = results[algo][f"{side}_profile"] = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{algo} {side} profile (ms/update): " + ", ".join(f"{k} {v:.2f}" for k, v in prof.items()),
                      flush=True)
    results["load_avg_at_end"] = os.getloadavg()[0]
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(a.json + ".tmp", a.json)


if __name__ == "__main__":
    main()
