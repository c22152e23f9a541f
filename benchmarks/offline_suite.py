"""Score table of the offline learners on a suite made by ``hybridrl datasets make``: algorithms x datasets x seeds
(x samplers), D4RL-normalised score of the *final* policy over ``--eval-episodes`` deterministic episodes, mean ± s.e.

    PYTHONPATH=. python benchmarks/offline_suite.py --suite SUITE_DIR --kinds medium,medium-replay,medium-expert \
        --algos bc,td3_bc,iql,awac,prdc,a2pr --seeds 0,1,2 --steps 100000 --json results/offline_suite.json

Trajectory weighting (Hong et al. 2023) on a mixed dataset of the suite's random data plus a ``--expert-fraction``
of expert transitions (whole episodes, taken in order until the fraction is reached):

    ... --kinds random+expert --expert-fraction 0.05 --algos td3_bc,iql --samplers uniform,rw,aw

Results are written after every cell (atomic), and cells already in ``--json`` are skipped (resume by re-running).
Full budget of the issue: 100k-300k gradient steps, 3 seeds, 10 episodes; on 2 CPU cores only reduced budgets fit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import machine  # noqa: E402

from hybridrl.algos import get_algo  # noqa: E402
from hybridrl.data.dataset import Dataset  # noqa: E402
from hybridrl.data.suite import dataset_name  # noqa: E402
from hybridrl.loops.evaluate import evaluate_policy  # noqa: E402
from hybridrl.loops.offline import train_offline  # noqa: E402
from hybridrl.runs import apply_overrides  # noqa: E402


def load_kind(suite: str, kind: str, expert_fraction: float) -> Dataset:
    manifest = json.load(open(os.path.join(suite, "suite.json")))
    env_id = manifest["env_id"]
    if kind != "random+expert":
        return Dataset.load(os.path.join(suite, dataset_name(env_id, kind)))
    rand = Dataset.load(os.path.join(suite, dataset_name(env_id, "random")))
    expert = Dataset.load(os.path.join(suite, dataset_name(env_id, "expert")))
    want = expert_fraction / (1 - expert_fraction) * len(rand)
    n_eps = int(np.searchsorted(np.cumsum(expert.episode_lengths()), want)) + 1
    return Dataset.concatenate([rand, expert.select_episodes(range(min(n_eps, expert.n_episodes)))])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--suite", required=True)
    p.add_argument("--kinds", default="medium,medium-replay,medium-expert")
    p.add_argument("--algos", default="bc,td3_bc,iql,awac,prdc,a2pr")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--samplers", default="uniform")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--expert-fraction", type=float, default=0.05)
    p.add_argument("--set", action="append", default=[], help="algo:key=value config override (repeatable)")
    p.add_argument("--json", required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    results = json.load(open(a.json)) if os.path.exists(a.json) else {"machine": machine(1), "cells": {}}
    for kind in a.kinds.split(","):
        ds = load_kind(a.suite, kind, a.expert_fraction)
        for algo in a.algos.split(","):
            spec = get_algo(algo)
            for sampler in a.samplers.split(","):
                sets = [s.split(":", 1)[1] for s in a.set if s.split(":", 1)[0] == algo] + [f"sampler={sampler}"]
                config = apply_overrides(spec.config_cls(), sets)
                for seed in map(int, a.seeds.split(",")):
                    key = f"{kind}|{algo}|{sampler}|{seed}"
                    if key in results["cells"]:
                        continue
                    t0 = time.perf_counter()
                    learner = train_offline(algo, ds, config, steps=a.steps, seed=seed, progress=False)
                    ev = evaluate_policy(learner.policy, ds.env_id, a.eval_episodes, seed=100_000 + seed)
                    score = float(ds.normalized_score(ev["mean"]))
                    results["cells"][key] = {"return": ev["mean"], "score": score, "steps": a.steps,
                                             "seconds": time.perf_counter() - t0, "dataset_steps": len(ds),
                                             "overrides": sets}
                    print(f"{key}: return {ev['mean']:.1f}, normalised {score:.1f} "
                          f"({time.perf_counter() - t0:.0f} s)", flush=True)
                    with open(a.json + ".tmp", "w") as f:
                        json.dump(results, f, indent=1)
                    os.replace(a.json + ".tmp", a.json)
    print(table(results["cells"]))


def table(cells: dict) -> str:
    """Markdown: one row per (dataset, sampler), one column per algorithm, mean ± s.e. over seeds (n)."""
    groups: dict[tuple, list[float]] = {}
    for key, c in cells.items():
        kind, algo, sampler, _ = key.split("|")
        groups.setdefault((kind, sampler, algo), []).append(c["score"])
    algos = sorted({k[2] for k in groups})
    rows = sorted({k[:2] for k in groups})
    lines = ["| dataset | sampler | " + " | ".join(algos) + " |", "|---|---|" + "---|" * len(algos)]
    for kind, sampler in rows:
        out = []
        for algo in algos:
            xs = groups.get((kind, sampler, algo), [])
            if not xs:
                out.append("–")
                continue
            se = f" ± {np.std(xs, ddof=1) / math.sqrt(len(xs)):.1f}" if len(xs) > 1 else ""
            out.append(f"{np.mean(xs):.1f}{se} (n={len(xs)})")
        lines.append(f"| {kind} | {sampler} | " + " | ".join(out) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
