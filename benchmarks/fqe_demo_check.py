"""FQE at the auto budget on a demo run's data and one of its candidates, next to the demo's online truth (issue 10).

``python benchmarks/fqe_demo_check.py --demo runs/demo --candidate iql-beta3 --lr 3e-4 --action-samples 1 --out F.json``

Prints and saves the fit's history (step, mean Vhat(s_0), held-out Bellman MSE, TD loss), whether it converged, and
the truth the demo measured (``ope.json``: discounted mean of its online episodes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import machine, save_json

from hybridrl.algos.fqe import FQEConfig, fit
from hybridrl.data.dataset import Dataset
from hybridrl.nn import load_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="runs/demo", help="a `hybridrl demo` output directory")
    ap.add_argument("--candidate", default="iql-beta3")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--action-samples", type=int, default=10)
    ap.add_argument("--steps", type=int, default=None, help="budget (default: the auto budget of gamma and tau)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    demo = Path(a.demo)
    config = json.loads((demo / "ope.json").read_text())
    ds = Dataset.load(next((demo / "datasets").iterdir()))
    policy = load_policy(demo / "candidates" / a.candidate / "policy", ds.env_id)
    t0 = time.perf_counter()
    _, report = fit(ds, policy, FQEConfig(lr=a.lr, tau=a.tau, n_action_samples=a.action_samples,
                                          gamma=config["gamma"]), max_steps=a.steps, seed=0)
    truth = config["true"][a.candidate]
    out = {"machine": machine(a.threads), "args": vars(a), "wall_s": time.perf_counter() - t0,
           "converged": report.converged, "steps": report.steps, "v0": report.v0_mean, "history": report.history,
           "warnings": report.warnings, "truth_discounted_mean": truth["discounted_mean"],
           "truth_discounted_std": truth["discounted_std"], "truth_episodes": truth["episodes"]}
    save_json(out, a.out)
    print(f"{a.candidate}: FQE {report.v0_mean:.1f} ({'converged' if report.converged else 'NOT converged'} after "
          f"{report.steps} steps) vs truth {truth['discounted_mean']:.1f} ± {truth['discounted_std']:.1f}")


if __name__ == "__main__":
    main()
