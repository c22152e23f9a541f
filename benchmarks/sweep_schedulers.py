"""ASHA and PBT through `hybridrl sweep` on a small problem (PPO on CartPole-v1, reduced budget): how many trials ASHA
stopped early, how many PBT exploit steps copied a project checkpoint into another trial, and that every trial ended
without errors. Run (a few minutes on 2 cores)::

    nice -n 10 python benchmarks/sweep_schedulers.py --out runs/bench_sweep_schedulers
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

COMMON = """steps: {steps}
eval_episodes: 5
algorithms: [ppo]
envs: [CartPole-v1]
set: [n_steps=256, minibatch_size=64, n_epochs=4]
metric: episode_return
"""
ASHA = COMMON + """grid: {{lr: [0.00003, 0.0001, 0.0003, 0.001]}}
seeds: 1
scheduler: {{asha: {{grace_period: 1024, reduction_factor: 2}}}}
"""
PBT = COMMON + """checkpoint_every: 1024
seeds: 4
scheduler: {{pbt: {{perturbation_interval: 1024, mutations: {{lr: [0.00003, 0.0001, 0.0003, 0.001]}}}}}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=6144)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--only", choices=["asha", "pbt"], default=None)
    args = ap.parse_args()
    from hybridrl.scale.sweep import run_sweep

    args.out.mkdir(parents=True, exist_ok=False)
    result = {}
    for name, text in (("asha", ASHA), ("pbt", PBT)):
        if args.only not in (None, name):
            continue
        path = args.out / f"{name}.yaml"
        path.write_text(text.format(steps=args.steps))
        summary = run_sweep(path, args.out / name, num_cpus=args.num_cpus)
        state = json.loads((args.out / name / "sweep.json").read_text())["trials"]
        summary["final_steps"] = {k: v.get("step") for k, v in state.items()}
        if name == "pbt":
            runs = args.out / name / "runs"
            summary["lr_at_end"] = {k: _lr(runs / k) for k in state}
            logs = list((args.out / name / "tune").rglob("pbt_global.txt"))
            summary["exploits"] = sum(len(p.read_text().splitlines()) for p in logs)
        result[name] = summary
    (args.out / "benchmark.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _lr(run: Path):
    from hybridrl.runs import load_config

    return load_config(run / "config.yaml")["config"]["lr"] if (run / "config.yaml").exists() else None


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main()
