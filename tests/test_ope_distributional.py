"""Distributional OPE (hybridrl.ope.distributional): CD-DM/IS/DR/SNIS/SNDR against hand-computed CDFs and against
the Monte-Carlo return distribution of the target policy on the chain MDP."""

from __future__ import annotations

import numpy as np
import pytest
from rollouts import collect

from hybridrl.envs.toy import ChainEnv, TabularPolicy
from hybridrl.errors import ConfigError, ShapeError
from hybridrl.ope import core, estimate_value
from hybridrl.ope.distributional import cdf_estimate, cdf_stats, episode_returns, plot_cdfs, step_cdf
from hybridrl.ope.estimators import episode_arrays, importance_weights

GRID = np.array([0.0, 1.0, 2.0, 3.0])


def test_hand_computed_cdfs():
    returns = np.array([0.0, 2.0, 3.0])
    w = np.array([0.5, 1.0, 2.0])
    lw = np.log(w)
    g_hat = step_cdf(np.array([1.0, 1.0, 2.0]), GRID)  # predictions: 1, 1, 2
    np.testing.assert_allclose(g_hat, [[0, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]])
    # CD-IS: F(m) = (1/3) sum w 1{G <= m}: m=0: 0.5/3, m=1: 0.5/3, m=2: 1.5/3, m=3: 3.5/3 -> clipped to 1
    is_ = cdf_estimate("cd_is", returns, GRID, lw)
    np.testing.assert_allclose(is_.raw_cdf, [0.5 / 3, 0.5 / 3, 1.5 / 3, 3.5 / 3])
    np.testing.assert_allclose(is_.cdf, [0.5 / 3, 0.5 / 3, 1.5 / 3, 1.0])
    # CD-SNIS: divide by sum w = 3.5
    sn = cdf_estimate("cd_snis", returns, GRID, lw)
    np.testing.assert_allclose(sn.cdf, [0.5 / 3.5, 0.5 / 3.5, 1.5 / 3.5, 1.0], rtol=1e-9)
    # mean = sum_k p_k m_k = (1/3.5)(0.5*0 + 1*2 + 2*3); variance about it
    mean = (2 + 6) / 3.5
    assert sn.mean == pytest.approx(mean, rel=1e-9)
    assert sn.variance == pytest.approx((0.5 * mean**2 + 1 * (2 - mean) ** 2 + 2 * (3 - mean) ** 2) / 3.5, rel=1e-9)
    # CVaR at 0.25: lowest 0.25 of mass = 0.5/3.5 at 0 and 0.25 - 0.5/3.5 at 2
    sn25 = cdf_estimate("cd_snis", returns, GRID, lw, alpha=0.25)
    assert sn25.cvar == pytest.approx((0.25 - 0.5 / 3.5) * 2 / 0.25, rel=1e-9)
    assert sn25.quantiles == {0.25: 2.0, 0.5: 3.0, 0.75: 3.0}  # F(2) = 1.5/3.5 < 0.5 and sn25.iqr == 1.0
    # CD-DM: mean of g_hat rows; CD-DR: g_hat + w (ind - g_hat)
    dm = cdf_estimate("cd_dm", returns, GRID, g_hat=g_hat)
    np.testing.assert_allclose(dm.cdf, [0, 2 / 3, 1, 1])
    ind = np.array([[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]], float)
    dr = cdf_estimate("cd_dr", returns, GRID, lw, g_hat)
    np.testing.assert_allclose(dr.raw_cdf, (g_hat + w[:, None] * (ind - g_hat)).mean(0))
    sndr = cdf_estimate("cd_sndr", returns, GRID, lw, g_hat)
    np.testing.assert_allclose(sndr.raw_cdf, g_hat.mean(0) + (w[:, None] * (ind - g_hat)).sum(0) / w.sum(), rtol=1e-9)
    # on-policy weights: CD-IS = CD-SNIS = the empirical CDF of the returns
    emp = cdf_estimate("cd_is", returns, GRID, np.zeros(3))
    np.testing.assert_allclose(emp.cdf, [1 / 3, 1 / 3, 2 / 3, 1])
    assert emp.mean == pytest.approx(returns.mean())
    with pytest.raises(ConfigError, match="g_hat"):
        cdf_estimate("cd_dr", returns, GRID, lw)
    with pytest.raises(ShapeError, match="increasing"):
        cdf_estimate("cd_is", returns, GRID[::-1], lw)
    with pytest.raises(ConfigError, match="unknown"):
        cdf_estimate("cdis", returns, GRID, lw)


def test_cdf_stats_of_a_uniform_distribution():
    g = np.arange(10.0)
    st = cdf_stats(g, np.arange(1, 11) / 10, alpha=0.3)
    assert st["mean"] == pytest.approx(4.5) and st["variance"] == pytest.approx(8.25)
    assert st["cvar"] == pytest.approx(1.0) and st["iqr"] == pytest.approx(7 - 2)


def test_chain_cdf_matches_monte_carlo(tmp_path):
    gamma = 0.9
    behavior, target = np.full((5, 2), 0.5), np.tile([0.25, 0.75], (5, 1))
    data = collect(lambda: ChainEnv(5, 0.1, 20), TabularPolicy(behavior), 3000, seed=0)
    truth_data = collect(lambda: ChainEnv(5, 0.1, 20), TabularPolicy(target), 3000, seed=1)
    truth = np.round(truth_data.episode_returns(gamma), 6)  # float32 vs float64 sums: compare on 6 decimals
    lr, mask = episode_arrays(data, importance_weights(data, TabularPolicy(target)))
    rewards = episode_arrays(data, data.rewards)[0]
    ret = np.round(episode_returns(rewards, mask, gamma), 6)
    grid = np.unique(np.concatenate([ret, truth]))
    lw = core.log_weights(lr, mask)[:, -1]
    mc_cdf = (truth[:, None] <= grid[None, :]).mean(0)
    for name in ("cd_is", "cd_snis"):
        est = cdf_estimate(name, ret, grid, lw, alpha=0.2)
        assert np.abs(est.cdf - mc_cdf).max() < 0.08, (name, np.abs(est.cdf - mc_cdf).max())
        assert est.mean == pytest.approx(truth.mean(), abs=0.03)
    # the behaviour data's own CDF is far from the target's: the check can fail
    assert np.abs((ret[:, None] <= grid[None, :]).mean(0) - mc_cdf).max() > 0.2
    # the dataset binding gives the same distribution
    r = estimate_value("cd_snis", data, TabularPolicy(target), gamma, n_boot=0, cvar_alpha=0.2)
    assert r.estimate == pytest.approx(est.mean, abs=0.02) and r.distribution["cdf"][-1] == pytest.approx(1.0)
    assert r.degenerate is False and r.to_dict()["distribution"]["cvar"] == pytest.approx(est.cvar, abs=0.05)
    out = plot_cdfs({"target / cd_snis": est}, tmp_path / "cdf.png", truth={"target": truth})
    assert out.stat().st_size > 1000
    with pytest.raises(ConfigError, match="exists"):
        plot_cdfs({"x": est}, out)
