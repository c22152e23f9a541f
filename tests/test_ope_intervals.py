"""Confidence intervals: hand-computed widths and coverage of the analytic value on the chain MDP."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from hybridrl.envs.toy import chain_policy_value, chain_transition
from hybridrl.errors import ConfigError
from hybridrl.ope import INTERVALS, bernstein_ci, confidence_interval, core, hoeffding_ci, t_ci


def test_interval_formulas_hand_computed():
    x = np.array([1.0, 2.0, 4.0, 5.0])  # mean 3, sample var 10/3, range 4
    half_t = stats.t.ppf(0.975, 3) * np.sqrt(10 / 3) / 2
    np.testing.assert_allclose(t_ci(x), [3 - half_t, 3 + half_t])
    half_h = 4 * np.sqrt(np.log(2 / 0.05) / 8)
    np.testing.assert_allclose(hoeffding_ci(x), [3 - half_h, 3 + half_h])
    np.testing.assert_allclose(hoeffding_ci(x, value_range=(0, 10)), [3 - 2.5 * half_h, 3 + 2.5 * half_h])
    lg = np.log(4 / 0.05)
    half_b = np.sqrt(2 * (10 / 3) * lg / 4) + 7 * 4 * lg / 9
    np.testing.assert_allclose(bernstein_ci(x), [3 - half_b, 3 + half_b])
    assert np.isnan(t_ci(x[:1])[0]) and np.isnan(bernstein_ci(x[:1])[0])
    low, high, notes = confidence_interval("t", np.array([1.0, np.inf]))
    assert np.isnan(low) and "not all finite" in notes[0]
    with pytest.raises(ConfigError, match="interval"):
        confidence_interval("wald", x)
    with pytest.raises(ConfigError, match="value_range"):
        hoeffding_ci(x, value_range=(1, 0))


N_STATES, SLIP, HORIZON, GAMMA = 5, 0.1, 20, 0.9
PI_B = np.full((N_STATES, 2), 0.5)
PI_E = np.tile([0.3, 0.7], (N_STATES, 1))


def chain_arrays(n: int, rng: np.random.Generator):
    """n episodes of hybridrl/Chain-v0 (5 states, slip 0.1, 20 steps) under pi_b, simulated with its transition
    tensor: padded [n, 20] log-ratios log pi_e/pi_b, rewards and mask."""
    p = chain_transition(N_STATES, SLIP)
    lr, rew, mask = np.zeros((n, HORIZON)), np.zeros((n, HORIZON)), np.zeros((n, HORIZON), bool)
    state = np.zeros(n, int)
    alive = np.ones(n, bool)
    for t in range(HORIZON):
        a = (rng.random(n) < PI_B[state, 1]).astype(int)
        nxt = (rng.random(n)[:, None] > np.cumsum(p[state, a], 1)).sum(1)
        mask[:, t] = alive
        lr[:, t] = np.log(PI_E[state, a] / PI_B[state, a])
        rew[:, t] = np.where(alive & (nxt == N_STATES - 1), 1.0, 0.0)
        alive = alive & (nxt != N_STATES - 1)
        state = np.minimum(nxt, N_STATES - 2)
    return lr, rew, mask


def coverage(reps: int, n: int, seed: int = 0) -> dict[tuple[str, str], float]:
    """Share of ``reps`` datasets of ``n`` episodes whose 95% interval covers the analytic value, per estimator and
    interval kind (PDIS and TIS: unbiased)."""
    truth = chain_policy_value(PI_E, GAMMA, slip=SLIP, horizon=HORIZON)
    rng = np.random.default_rng(seed)
    hits: dict[tuple[str, str], int] = {}
    for rep in range(reps):
        lr, rew, mask = chain_arrays(n, rng)
        for name in ("pdis", "tis"):
            est = getattr(core, name)(lr, rew, mask, GAMMA)
            for kind in INTERVALS:
                low, high, _ = confidence_interval(kind, est.per_episode, est.resample, n_boot=400, rng=rep)
                hits[name, kind] = hits.get((name, kind), 0) + int(low <= truth <= high)
    return {k: v / reps for k, v in hits.items()}


def test_chain_simulator_matches_the_analytic_value():
    lr, rew, mask = chain_arrays(20000, np.random.default_rng(1))
    est = core.pdis(lr, rew, mask, GAMMA)
    se = est.per_episode.std() / np.sqrt(20000)
    assert est.estimate == pytest.approx(chain_policy_value(PI_E, GAMMA, slip=SLIP, horizon=HORIZON), abs=4 * se)


def test_intervals_cover_the_chain_value():
    cov = coverage(reps=40, n=300)
    for (name, kind), c in cov.items():
        floor = 0.9 if kind in ("hoeffding", "bernstein") else 0.8  # 40 reps: 95% nominal, binomial spread
        assert c >= floor, (name, kind, c)
