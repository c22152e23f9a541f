"""Per-estimator maximum relative difference between hybridrl and SCOPE-RL 0.2.1 on the committed fixture.

Runs with hybridrl's own environment (no SCOPE-RL needed): it reads ``tests/fixtures/scope_rl_0_2_1.npz`` (written
by ``benchmarks/scope_rl_fixture.py``) and reuses the input builders of ``tests/test_ope_scope_parity.py``, so the
numbers are those the test asserts (rtol 1e-6). Usage:

    PYTHONPATH=. python benchmarks/scope_rl_parity_report.py

Relative difference = |ours - theirs| / |theirs|, maximised over the compared values (for a CDF, over its grid
points with theirs != 0; the CDFs also agree in absolute terms, printed as ``abs``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _load_test_module():
    spec = importlib.util.spec_from_file_location("scope_parity", ROOT / "tests" / "test_ope_scope_parity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rel(ours, theirs) -> float:
    o, t = np.atleast_1d(np.asarray(ours, np.float64)), np.atleast_1d(np.asarray(theirs, np.float64))
    nz = t != 0
    return float(np.max(np.abs(o[nz] - t[nz]) / np.abs(t[nz]))) if nz.any() else 0.0


def main() -> None:
    m = _load_test_module()
    f = m.F
    rows = []
    for name in m.BASIC:
        est = m._basic(name, *m._disc())
        rows.append((f"discrete {name.upper()}", max(_rel(est.estimate, f[f"scope_disc_{name}"]),
                                                     _rel(est.per_episode, f[f"scope_disc_{name}_traj"])), ""))
    for name in m.BASIC:
        est = m._basic(name, *m._cont())
        rows.append((f"kernel {name.upper()} (1-D)", _rel(est.estimate, f[f"scope_cont_{name}"]), ""))
    for prefix, label in (("cd", "discrete"), ("ccd", "kernel")):
        for ours, theirs in m.CD:
            c = m._cd(prefix, ours)
            key = f"scope_{prefix}_{theirs}"
            rel = max(_rel(c.cdf, f[f"{key}_cdf"]), _rel(c.mean, f[f"{key}_mean"]),
                      _rel(c.variance, f[f"{key}_variance"]))
            rows.append((f"{label} {ours} (CDF, mean, variance)", rel,
                         f"CDF abs {np.max(np.abs(c.cdf - f[f'{key}_cdf'])):.1e}"))
    from hybridrl.ope.select import select, sharpe_ratio_at_k, top_k_stats

    est, truth, j_b, _ = m._ops()
    ks = range(1, len(est) + 1)
    for metric in ("best", "worst", "mean", "std"):
        ours = [top_k_stats(est, truth, k)[metric] for k in ks]
        theirs = f[f"scope_ops_topk_{metric}"]
        rows.append((f"OPS {metric}@k, k = 1..{len(est)}", _rel(np.nan_to_num(ours), np.nan_to_num(theirs)), ""))
    ours = [sharpe_ratio_at_k(est, truth, j_b, k) for k in ks]
    rows.append((f"OPS SharpeRatio@k, k = 2..{len(est)}", _rel(ours[1:], f["scope_ops_topk_sharpe_ratio"][1:]),
                 "J(pi_b) as SCOPE-RL computes it"))
    res = select(dict(enumerate(est)), 1, dict(enumerate(truth)))
    rows.append(("OPS MSE", _rel(res.mse, f["scope_ops_mse"]), ""))
    rows.append(("OPS rank correlation", _rel(res.rank_correlation, f["scope_ops_rank_correlation"]), ""))
    rows.append(("OPS regret@1", _rel(res.regret_at_k, f["scope_ops_regret_at_1"]), ""))
    width = max(len(r[0]) for r in rows)
    print(f"{'estimator':<{width}}  max rel. diff")
    for label, rel, extra in rows:
        print(f"{label:<{width}}  {rel:.1e}  {extra}")


if __name__ == "__main__":
    main()
