"""FQE convergence check against an online truth (issue 10, item 2): one policy, one dataset, FQE at given settings.

Uses the artefacts of ``benchmarks/ope_control.py`` (``--work``): the dataset ``<work>/<env>/<dataset>-v0``, the policy
``<work>/<env>/<policy>/policy`` and the truths ``truth_<n>.json``. Prints the fit's history (step, mean Vhat(s_0),
held-out Bellman MSE) and the final estimate next to the truth.

``python benchmarks/ope_fqe_check.py --env CartPole-v1 --policy bc --dataset unlogged [--tau 0.005] [--steps N]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from common import machine, save_json

from hybridrl.algos.fqe import FQEConfig, default_max_steps
from hybridrl.data.dataset import Dataset
from hybridrl.nn import load_policy
from hybridrl.ope import estimate_value, fit_fqe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="CartPole-v1")
    ap.add_argument("--work", default="runs/ope_control")
    ap.add_argument("--policy", default="bc")
    ap.add_argument("--dataset", default="unlogged")
    ap.add_argument("--truth-episodes", type=int, default=50)
    ap.add_argument("--tau", type=float, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    work = os.path.join(a.work, a.env)
    ds = Dataset.load(os.path.join(work, f"{a.dataset}-v0"))
    pol = load_policy(os.path.join(work, a.policy, "policy"), a.env)
    truth = json.load(open(os.path.join(work, f"truth_{a.truth_episodes}.json")))[a.policy]
    kw = {k: v for k, v in (("tau", a.tau), ("lr", a.lr)) if v is not None}
    cfg = FQEConfig(**kw)
    t0 = time.perf_counter()
    fqe = fit_fqe(ds, pol, 0.99, cfg, a.steps, seed=0, progress=True)
    secs = time.perf_counter() - t0
    r = estimate_value("fqe", ds, pol, 0.99, fqe, n_boot=0)
    rep = fqe.fit_report
    res = {"machine": machine(a.threads), "config": cfg.__dict__ | {"gamma": 0.99},
           "budget": a.steps or default_max_steps(0.99, cfg.tau), "truth": truth, "estimate": r.estimate,
           "relative_error": abs(r.estimate - truth["discounted_mean"]) / abs(truth["discounted_mean"]),
           "converged": rep.converged, "steps": rep.steps, "warnings": rep.warnings, "history": rep.history,
           "seconds": secs, "dataset_episodes": ds.n_episodes, "dataset_steps": len(ds)}
    save_json(res, a.out)
    print(f"{a.policy} on {a.dataset}: FQE {r.estimate:.2f} vs truth {truth['discounted_mean']:.2f} ± "
          f"{truth['discounted_std']:.2f}; converged {rep.converged} after {rep.steps} steps, {secs:.0f} s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
