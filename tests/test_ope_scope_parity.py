"""hybridrl's OPE estimators against SCOPE-RL 0.2.1 on identical logged arrays (issue 10, measured target 1).

The fixture ``tests/fixtures/scope_rl_0_2_1.npz`` holds float64 logged arrays and SCOPE-RL 0.2.1's outputs on them,
written by ``benchmarks/scope_rl_fixture.py`` in a benchmark-only virtualenv (SCOPE-RL is not a dependency; this
test needs only NumPy). Every estimator both libraries have must agree to ``RTOL = 1e-6`` relative:

    discrete:   DM, TIS, PDIS, DR, SNTIS, SNPDIS, SNDR           (hybridrl.ope.core)
    continuous: kernel DM, TIS, PDIS, DR, SNTIS, SNPDIS, SNDR    (core + hybridrl.ope.kernel, 1-D actions)
    CD:         CD-DM, CD-TIS, CD-TDR, CD-SNTIS, CD-SNTDR: CDF, mean and variance   (hybridrl.ope.distributional)
    selection:  best/worst/mean/std@k, SharpeRatio@k, MSE, rank correlation, regret@1   (hybridrl.ope.select)

Where the definitions differ (docs/algorithms/ope.md, "Agreement with SCOPE-RL 0.2.1") the test pins the exact
difference instead: it rebuilds SCOPE-RL's number from hybridrl's pieces plus the documented change, so a
difference of any other kind fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hybridrl.ope import core, distributional, intervals, kernel, marginal
from hybridrl.ope.select import error_rates, regret_at_k, select, sharpe_ratio_at_k, top_k, top_k_stats

RTOL = 1e-6
FIXTURE = Path(__file__).parent / "fixtures" / "scope_rl_0_2_1.npz"
F = dict(np.load(FIXTURE, allow_pickle=False))
T, GAMMA, H = int(F["steps"]), float(F["gamma"]), float(F["bandwidth"])


def _disc():
    """hybridrl's inputs from the discrete arrays: log-ratios, rewards, mask, Qhat(s_t, a_t), Vhat(s_t) as [E, T]."""
    a, pi, q = F["disc_action"], F["disc_pi"], F["disc_q"]
    rows = np.arange(len(a))
    lr = (np.log(pi[rows, a]) - np.log(F["disc_pscore"])).reshape(-1, T)
    r = F["disc_reward"].reshape(-1, T)
    return lr, r, np.ones_like(r, dtype=bool), q[rows, a].reshape(-1, T), (q * pi).sum(1).reshape(-1, T)


def _cont(prefix: str = "cont"):
    """Kernel log-ratios (hybridrl.ope.kernel), rewards, mask, Qhat, Vhat from a continuous case."""
    lr = kernel.log_kernel_ratio(F[f"{prefix}_mu_e"], F[f"{prefix}_action"], np.log(F[f"{prefix}_pscore"]).sum(1), H)
    r = F[f"{prefix}_reward"].reshape(-1, T)
    qv = F[f"{prefix}_qv"].reshape(-1, T, 2)
    return lr.reshape(-1, T), r, np.ones_like(r, dtype=bool), qv[..., 0], qv[..., 1]


def _basic(name, lr, r, m, q, v) -> core.Estimate:
    if name == "dm":
        return core.mean_estimate(v[:, 0])
    if name in ("dr", "sndr"):
        return getattr(core, name)(lr, r, m, GAMMA, q, v)
    return getattr(core, name)(lr, r, m, GAMMA)


def test_fixture_is_scope_rl_0_2_1_and_every_output_has_its_call():
    meta = json.loads(str(F["meta_json"]))
    assert meta["scope_rl_version"] == "0.2.1"
    outputs = {k for k in F if k.startswith("scope_")}
    assert outputs == set(meta["calls"]) and len(outputs) > 50
    undefined = {"scope_ops_topk_std", "scope_ops_topk_sharpe_ratio"}  # k = 1: sample std (ddof 1) of one value
    assert all(np.isfinite(F[k]).all() for k in outputs - undefined)
    assert all(np.isfinite(F[k][1:]).all() and np.isnan(F[k][0]) for k in undefined)


BASIC = ["dm", "tis", "pdis", "dr", "sntis", "snpdis", "sndr"]


@pytest.mark.parametrize("name", BASIC)
def test_discrete_basic_estimators_agree(name):
    est = _basic(name, *_disc())
    np.testing.assert_allclose(est.estimate, F[f"scope_disc_{name}"], rtol=RTOL)
    np.testing.assert_allclose(est.per_episode, F[f"scope_disc_{name}_traj"], rtol=RTOL)


@pytest.mark.parametrize("name", BASIC)
def test_continuous_kernel_estimators_agree_in_one_dimension(name):
    np.testing.assert_allclose(_basic(name, *_cont()).estimate, F[f"scope_cont_{name}"], rtol=RTOL)


def test_kernel_in_two_dimensions_differs_by_the_missing_normaliser():
    """SCOPE-RL's Gaussian kernel divides by sqrt(2 pi h^2) whatever d; ours is the d-dimensional density, which is
    smaller by (2 pi h^2)^{-(d-1)/2} per step. With that factor put back, SCOPE-RL's kernel PDIS is reproduced."""
    d = F["cont2_action"].shape[1]
    ours = kernel.log_gaussian_kernel(F["cont2_mu_e"], F["cont2_action"], H)
    shift = 0.5 * (d - 1) * np.log(2 * np.pi * H**2)
    np.testing.assert_allclose(ours + shift, np.log(F["scope_cont2_kernel"]), rtol=RTOL)
    lr, r, m, _, _ = _cont("cont2")
    np.testing.assert_allclose(core.pdis(lr + shift, r, m, GAMMA).estimate, F["scope_cont2_pdis"], rtol=RTOL)
    assert abs(core.pdis(lr, r, m, GAMMA).estimate / F["scope_cont2_pdis"] - 1) > 0.1


# ------------------------------------------------------------------------------------------------ distributional
CD = [("cd_dm", "dm"), ("cd_is", "tis"), ("cd_dr", "tdr"), ("cd_snis", "sntis"), ("cd_sndr", "sntdr")]


def _cd(prefix: str, ours: str, gamma: float = 1.0, grid_key: str | None = None, returns_scale: float = 1.0):
    if prefix == "cd":
        lr, r, m, _, v = _disc()
    else:
        lr, r, m, _, v = _cont()
    grid = F[grid_key or f"{prefix}_grid"]
    ret = distributional.episode_returns(r, m, gamma) * returns_scale
    return distributional.cdf_estimate(ours, ret, grid, core.log_weights(lr, m)[:, -1],
                                       distributional.step_cdf(v[:, 0], grid))


def _scope_cvar(grid, cdf, alpha):
    """SCOPE-RL 0.2.1's CVaR rule (estimate_conditional_value_at_risk): the mean of the distribution cut at the
    first grid point where F exceeds alpha, renormalised by F there (the whole crossing atom is kept)."""
    idx = np.nonzero(cdf[1:] > alpha)[0]
    if len(idx) == 0:
        return (np.diff(cdf) * grid[1:]).sum() / cdf[-1]
    if idx[0] == 0:
        return grid[1]
    j = idx[0]
    return (np.diff(cdf)[: j + 1] / cdf[j + 1] * grid[1: j + 2]).sum()


def _scope_quantile(grid, cdf, u):
    """SCOPE-RL 0.2.1's quantile (estimate_interquartile_range): midpoint of m_j and m_{j+1}, j the first index with
    F(m_j) > u (strictly)."""
    idx = np.nonzero(cdf > u)[0]
    if len(idx) == 0 or idx[0] == len(grid) - 1:
        return grid[-1]
    return (grid[idx[0]] + grid[idx[0] + 1]) / 2


@pytest.mark.parametrize("prefix", ["cd", "ccd"])
@pytest.mark.parametrize("ours,theirs", CD)
def test_cumulative_distribution_estimators_agree(prefix, ours, theirs):
    c = _cd(prefix, ours)
    key = f"scope_{prefix}_{theirs}"
    np.testing.assert_allclose(c.cdf, F[f"{key}_cdf"], rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(c.mean, F[f"{key}_mean"], rtol=RTOL)
    np.testing.assert_allclose(c.variance, F[f"{key}_variance"], rtol=RTOL)


@pytest.mark.parametrize("ours,theirs", CD)
def test_cvar_and_quantiles_differ_only_by_scope_rls_rules(ours, theirs):
    """Same CDF, different statistics: SCOPE-RL's rules applied to our CDF give its numbers to 1e-6; ours (the exact
    lower-alpha tail mean; q(u) = the first m_k with F >= u) differ from them."""
    c = _cd("cd", ours)
    grid, key = F["cd_grid"], f"scope_cd_{theirs}"
    for alpha, theirs_cvar in zip(F["cd_alphas"], F[f"{key}_cvar"]):
        np.testing.assert_allclose(_scope_cvar(grid, c.cdf, alpha), theirs_cvar, rtol=RTOL)
        assert not np.isclose(distributional.cdf_stats(grid, c.cdf, alpha)["cvar"], theirs_cvar, rtol=RTOL)
    u = float(F["iqr_alpha"])
    for part, level in (("lower", u), ("median", 0.5), ("upper", 1 - u)):
        np.testing.assert_allclose(_scope_quantile(grid, c.cdf, level), F[f"{key}_iqr_{part}"], rtol=RTOL)
        assert c.quantiles[level] < F[f"{key}_iqr_{part}"]  # SCOPE-RL reports a bin midpoint at or above ours


def test_cd_returns_are_discounted_from_gamma_to_the_one_in_scope_rl():
    """SCOPE-RL's CD estimators build G_i = sum_t gamma^{t+1} r_t (``np.full(T, gamma).cumprod()``), gamma times
    the discounted return the basic estimators use; with that scale our CD-IS reproduces its CDF."""
    c = _cd("cd", "cd_is", GAMMA, "cd_gamma_grid", returns_scale=GAMMA)
    np.testing.assert_allclose(c.cdf, F["scope_cd_gamma_tis_cdf"], rtol=RTOL, atol=1e-12)
    assert np.abs(_cd("cd", "cd_is", GAMMA, "cd_gamma_grid").cdf - F["scope_cd_gamma_tis_cdf"]).max() > 0.05


def test_scope_rl_cd_is_puts_mass_below_the_smallest_return():
    """SCOPE-RL's CD-(SN)TIS index the sorted cumulative weights with ``max(count - 1, 0)``: at grid points above
    m_0 but below the smallest return it reports W_(1)/n instead of 0. Elsewhere the CDFs agree."""
    lr, r, m, _, _ = _disc()
    ret = distributional.episode_returns(r, m, 1.0)
    w = np.exp(core.log_weights(lr, m)[:, -1])
    grid, theirs = F["cd_wide_grid"], F["scope_cd_wide_tis_cdf"]
    ours = distributional.cdf_estimate("cd_is", ret, grid, np.log(w)).cdf
    below = (grid > grid[0]) & (grid < ret.min())
    assert below.sum() >= 5
    np.testing.assert_allclose(theirs[below], w[np.argmin(ret)] / len(w), rtol=RTOL)
    assert (ours[below] == 0).all()
    np.testing.assert_allclose(ours[~below], theirs[~below], rtol=RTOL, atol=1e-12)


# ------------------------------------------------------------------------------------------------------ marginal
def _to_hybridrl_weights(w_scope: np.ndarray) -> np.ndarray:
    """SCOPE-RL's marginal estimate is (1/n) sum_{i,t} gamma^t w r; ours is 1/(1-gamma) (1/N) sum_{i,t} w r with
    N = n T. The same number needs w_ours[i, t] = T (1 - gamma) gamma^t w_scope[i, t] (fixed-length episodes)."""
    return T * (1 - GAMMA) * GAMMA ** np.arange(T) * w_scope.reshape(-1, T)


def _scope_v_next(v: np.ndarray) -> np.ndarray:
    """SCOPE-RL's ``np.insert(v, -1, 0, axis=1)[:, 1:]``: [v_1, ..., v_{T-2}, 0, v_{T-1}] (insert before the LAST
    column, so step T-2 gets 0 and step T-1 gets its own state's value)."""
    return np.insert(v, -1, 0, axis=1)[:, 1:]


@pytest.mark.parametrize("kind", ["sam", "sm"])
def test_marginal_is_and_dr_agree_after_the_documented_conventions(kind):
    """SAM-IS/DR and SM-IS/DR (n_step_pdis = 0) from the same weights: equal after (1) the weight convention of
    ``_to_hybridrl_weights``, (2) SCOPE-RL's V(s_{t+1}) array (``_scope_v_next``) in DR and (3), for the state
    marginal forms, SCOPE-RL's code using rho(s_t) alone: its n-step window ``w_{t-k+1:t}`` is empty at k = 0, while
    its documented formula (and ours, ``marginal.sm_weights``) is rho(s_t) w_t."""
    lr, r, m, q, v = _disc()
    w_scope = F["marg_w_sa"] if kind == "sam" else F["marg_rho"]
    w = _to_hybridrl_weights(w_scope)
    np.testing.assert_allclose(marginal.mis(w, r, m, GAMMA).estimate, F[f"scope_marg_{kind}_is"], rtol=RTOL)
    mdr = marginal.mdr(w, r, m, GAMMA, q, _scope_v_next(v), F["marg_v0"]).estimate
    np.testing.assert_allclose(mdr, F[f"scope_marg_{kind}_dr"], rtol=RTOL)
    v_next = np.concatenate([v[:, 1:], np.zeros((v.shape[0], 1))], axis=1)
    assert abs(marginal.mdr(w, r, m, GAMMA, q, v_next, F["marg_v0"]).estimate - mdr) > 1e-3
    if kind == "sm":
        sm = marginal.sm_weights(w, lr, m)
        assert abs(marginal.mis(sm, r, m, GAMMA).estimate - F["scope_marg_sm_is"]) > 1e-3


# ----------------------------------------------------------------------------------------------------- intervals
def test_intervals_differ_by_scope_rls_constants():
    """On PDIS's per-episode values (alpha = 0.05): SCOPE-RL's t-test uses t_{1-alpha} (our 90% interval); its
    Bernstein bound uses ln(2/alpha) and the sample maximum as range (our bound at confidence 1 - 2 alpha with
    value_range (0, max)); its Hoeffding half-width is max * sqrt(ln(2/alpha) / 2 * n), n^2 times ours under the
    square root (``/ (2 n)`` written as ``/ 2 * n``). The bootstrap uses another random stream: not compared."""
    x = core.pdis(*_disc()[:3], GAMMA).per_episode
    assert (x >= 0).all()
    np.testing.assert_allclose(intervals.t_ci(x, 0.90), (F["scope_ci_ttest_lower"], F["scope_ci_ttest_upper"]),
                               rtol=RTOL)
    rng = (0.0, float(x.max()))
    np.testing.assert_allclose(intervals.bernstein_ci(x, 0.90, rng),
                               (F["scope_ci_bernstein_lower"], F["scope_ci_bernstein_upper"]), rtol=RTOL)
    low, high = intervals.hoeffding_ci(x, 0.95, rng)
    theirs = (F["scope_ci_hoeffding_upper"] - F["scope_ci_hoeffding_lower"]) / 2
    np.testing.assert_allclose((high - low) / 2 * len(x), theirs, rtol=RTOL)


# ---------------------------------------------------------------------------------------------------- selection
def _ops():
    """Estimates, true values, J(pi_b) as SCOPE-RL computes it, threshold h. SCOPE-RL's OffPolicyEvaluation (default
    ``disable_reward_after_done=True``) multiplies the logged rewards by ``(1 - done).cumprod(axis=1)``, which zeroes
    the reward of the step flagged done as well as the later ones: J(pi_b) loses each episode's last reward here
    (done marks the last step), and SCOPE-RL adds 1e-10 to it."""
    est, truth = F["scope_ops_estimates"], F["ops_truth"]
    t = int(F["ops_steps"])
    r = F["ops_reward"].reshape(-1, t) * (1 - F["ops_done"].reshape(-1, t)).cumprod(axis=1)
    j_b = (r * GAMMA ** np.arange(t)).sum(1).mean()
    return est, truth, j_b, float(F["ops_threshold"])


def test_selection_metrics_agree():
    """Top-k best/worst/mean/std (ddof 1) and SharpeRatio@k for k = 1..K, MSE, Spearman rank correlation and
    regret@1 from SCOPE-RL's OffPolicySelection on the same estimates and true values."""
    est, truth, j_b, _ = _ops()
    for k in range(1, len(est) + 1):
        st = top_k_stats(est, truth, k)
        for metric in ("best", "worst", "mean", "std"):
            np.testing.assert_allclose(st[metric], F[f"scope_ops_topk_{metric}"][k - 1], rtol=RTOL, equal_nan=True)
        np.testing.assert_allclose(sharpe_ratio_at_k(est, truth, j_b, k), F["scope_ops_topk_sharpe_ratio"][k - 1],
                                   rtol=RTOL, equal_nan=True)
    res = select(dict(enumerate(est)), 1, dict(enumerate(truth)))
    np.testing.assert_allclose(res.mse, F["scope_ops_mse"], rtol=RTOL)
    np.testing.assert_allclose(res.rank_correlation, F["scope_ops_rank_correlation"], rtol=RTOL)
    np.testing.assert_allclose(res.regret_at_k, F["scope_ops_regret_at_1"], rtol=RTOL, atol=1e-12)
    t = int(F["ops_steps"])
    j_b_all = (F["ops_reward"].reshape(-1, t) * GAMMA ** np.arange(t)).sum(1).mean()  # every logged reward
    assert not np.isclose(sharpe_ratio_at_k(est, truth, j_b_all, 2), F["scope_ops_topk_sharpe_ratio"][1], rtol=RTOL)


def test_selection_metrics_that_differ():
    """(1) SCOPE-RL's regret@k (code) is sum of the k best true values - sum of the true values of the top-k by
    estimate; ours is max - max (equal at k = 1). (2) SCOPE-RL's "type I error rate" is the share of safe policies
    (J >= h) rejected, which we call type II, and its "type II" is ours type I (unsafe passed); SCOPE-RL gives 0 where
    we give NaN for an empty denominator. (3) SCOPE-RL's top-k safety violation rate has no counterpart."""
    est, truth, _, h = _ops()
    top3 = top_k(est, 3)
    np.testing.assert_allclose(np.sort(truth)[::-1][:3].sum() - truth[top3].sum(), F["scope_ops_regret_at_3"],
                               rtol=RTOL)
    assert not np.isclose(regret_at_k(est, truth, 3), F["scope_ops_regret_at_3"], rtol=RTOL)
    t1, t2 = error_rates(est, truth, h)
    assert (t1, t2) == (F["scope_ops_type_ii_error_rate"], F["scope_ops_type_i_error_rate"]) and t1 != t2
