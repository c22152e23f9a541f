"""Coverage of 95% intervals on the chain MDP (hybridrl/Chain-v0: 5 states, slip 0.1, 20 steps, gamma 0.9).

Each repetition simulates ``--episodes`` episodes of the uniform behaviour policy with the chain's transition tensor
(``hybridrl.envs.toy.chain_transition``), estimates the value of pi_e = (0.3 left, 0.7 right) with the unbiased
estimators PDIS, TIS and DR (critic: the exact finite-horizon Q^pi_e plus 0.3, a deliberately biased critic) and
the self-normalised SNPDIS, SNTIS, SNDR, and checks whether each interval kind covers the analytic value
(``chain_policy_value``). Target (issue 10): 90-99% for the unbiased estimators at 200 repetitions.

``python benchmarks/ope_coverage.py --reps 200 --episodes 300`` -> ``benchmarks/results/ope_coverage.json``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from common import machine, save_json

from hybridrl.envs.toy import chain_policy_value, chain_q, chain_transition
from hybridrl.ope import INTERVALS, confidence_interval, core

N, SLIP, H, GAMMA = 5, 0.1, 20, 0.9
PI_B = np.full((N, 2), 0.5)
PI_E = np.tile([0.3, 0.7], (N, 1))


def simulate(n: int, rng: np.random.Generator):
    """Padded [n, H] log-ratios, rewards, mask, and the critic's q_hat / v_hat along the logged path."""
    p = chain_transition(N, SLIP)
    q_tab = np.stack([chain_q(PI_E, GAMMA, SLIP, horizon=H - t) for t in range(H)]) + 0.3  # [H, N, 2]
    lr, rew, q_hat, v_hat = (np.zeros((n, H)) for _ in range(4))
    mask = np.zeros((n, H), bool)
    state, alive = np.zeros(n, int), np.ones(n, bool)
    for t in range(H):
        a = (rng.random(n) < PI_B[state, 1]).astype(int)
        nxt = (rng.random(n)[:, None] > np.cumsum(p[state, a], 1)).sum(1)
        mask[:, t] = alive
        lr[:, t] = np.log(PI_E[state, a] / PI_B[state, a])
        q_hat[:, t] = q_tab[t, state, a]
        v_hat[:, t] = (q_tab[t, state] * PI_E[state]).sum(1)
        rew[:, t] = np.where(alive & (nxt == N - 1), 1.0, 0.0)
        alive = alive & (nxt != N - 1)
        state = np.minimum(nxt, N - 2)
    return lr, rew, mask, q_hat, v_hat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/results/ope_coverage.json")
    a = ap.parse_args()
    t0 = time.perf_counter()
    truth = chain_policy_value(PI_E, GAMMA, slip=SLIP, horizon=H)
    rng = np.random.default_rng(0)
    names = ("pdis", "tis", "dr", "snpdis", "sntis", "sndr")
    hits = {(e, k): 0 for e in names for k in INTERVALS}
    widths = {(e, k): [] for e in names for k in INTERVALS}
    for rep in range(a.reps):
        lr, rew, mask, q, v = simulate(a.episodes, rng)
        for e in names:
            est = getattr(core, e)(lr, rew, mask, GAMMA, q, v) if e in ("dr", "sndr") else \
                getattr(core, e)(lr, rew, mask, GAMMA)
            for k in INTERVALS:
                low, high, _ = confidence_interval(k, est.per_episode, est.resample, 0.95, a.n_boot, rep)
                hits[e, k] += int(low <= truth <= high)
                widths[e, k].append(high - low)
    cov = {f"{e}/{k}": hits[e, k] / a.reps for e, k in hits}
    res = {"machine": machine(1), "truth": truth, "reps": a.reps, "episodes": a.episodes, "coverage": cov,
           "mean_width": {f"{e}/{k}": float(np.mean(widths[e, k])) for e, k in widths},
           "seconds": time.perf_counter() - t0}
    save_json(res, a.out)
    for e in names:
        print(f"{e:7s} " + "  ".join(f"{k} {cov[f'{e}/{k}']:.3f} (w {res['mean_width'][f'{e}/{k}']:.3f})"
                                      for k in INTERVALS), file=sys.stderr)


if __name__ == "__main__":
    main()
