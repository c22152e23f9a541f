"""Marginal IS/DR (hybridrl.ope.marginal) and DualDICE/MWL/MQL (hybridrl.ope.weights): against the exact marginal
ratio of a small tabular MDP and of the chain MDP, computed here by a textbook linear solve of the discounted
occupancy, and against the analytic infinite-horizon values."""

from __future__ import annotations

import numpy as np
import pytest
from rollouts import collect

from hybridrl.envs.toy import ChainEnv, TabularPolicy, chain_q, chain_transition
from hybridrl.errors import ConfigError
from hybridrl.ope import marginal
from hybridrl.ope.estimators import episode_arrays
from hybridrl.ope.weights import WeightConfig, fit_weights

GAMMA = 0.9
BEHAVIOR = np.full((5, 2), 0.5)
TARGET = np.tile([0.25, 0.75], (5, 1))



# ---------------------------------------------------------------------------------------- textbook references
def occupancy(p, mu0, pi, gamma, horizon=None):
    """Unnormalised state-action occupancy sum_t gamma^t Pr(s_t = s, a_t = a) over the acting states.

    ``p [S, A, S]`` with all-zero rows for terminal states (no transition leaves them; they never act).
    ``horizon=None``: the infinite sum by the linear solve (I - gamma P_pi^T) d = mu0; else sum over t < horizon.
    """
    acting = p.sum((1, 2)) > 0
    p_pi = np.einsum("sa,sat->st", pi * acting[:, None], p)
    if horizon is None:
        d_s = np.linalg.solve(np.eye(len(mu0)) - gamma * p_pi.T, mu0)
    else:
        d_s, x = np.zeros(len(mu0)), mu0.copy()
        for t in range(horizon):
            d_s += gamma ** t * x
            x = p_pi.T @ x
    return d_s[:, None] * pi * acting[:, None]


def exact_ratio(p, mu0, pi_b, pi_e, gamma, horizon):
    """w(s, a) = d^pi_gamma(s, a) / d^D(s, a): d^pi_gamma normalised discounted occupancy (infinite horizon), d^D
    the distribution of logged steps of episodes of pi_b cut at ``horizon`` (undiscounted occupancy, normalised)."""
    d_pi = (1 - gamma) * occupancy(p, mu0, pi_e, gamma)
    d_data = occupancy(p, mu0, pi_b, 1.0, horizon)
    d_data = d_data / d_data.sum()
    return np.divide(d_pi, d_data, out=np.zeros_like(d_pi), where=d_data > 0)


def value(p, r_sa, mu0, pi, gamma):
    return float((occupancy(p, mu0, pi, gamma) * r_sa).sum())


# ------------------------------------------------------------------------- a small tabular MDP in NumPy
S, A, H = 4, 2, 6  # state 3 is terminal
RNG = np.random.default_rng(7)
P = np.zeros((S, A, S))
P[:3] = RNG.dirichlet(np.ones(S) * [2, 2, 2, 1], size=(3, A))
R_SA = RNG.uniform(0, 1, size=(S, A)) * (np.arange(S) < 3)[:, None]
MU0 = np.array([1.0, 0.0, 0.0, 0.0])
PI_B = np.array([[0.5, 0.5], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])
PI_E = np.array([[0.2, 0.8], [0.7, 0.3], [0.5, 0.5], [0.5, 0.5]])


def simulate(n, seed):
    rng = np.random.default_rng(seed)
    st, ac = np.zeros((n, H), int), np.zeros((n, H), int)
    rw, term, nxt, mask = np.zeros((n, H)), np.zeros((n, H)), np.zeros((n, H), int), np.zeros((n, H), bool)
    for i in range(n):
        s = 0
        for t in range(H):
            a = rng.choice(A, p=PI_B[s])
            s2 = rng.choice(S, p=P[s, a])
            st[i, t], ac[i, t], nxt[i, t], mask[i, t] = s, a, s2, True
            rw[i, t] = R_SA[s, a] + 0.1 * rng.standard_normal()
            term[i, t] = s2 == 3
            s = s2
            if s == 3:
                break
    return st, ac, rw, term, nxt, mask


def q_exact(pi):
    """Q^pi (infinite horizon) of the tabular MDP: Q = r + gamma P V, V = (I - gamma P_pi)^{-1} r_pi."""
    acting = P.sum((1, 2)) > 0
    p_pi = np.einsum("sa,sat->st", pi * acting[:, None], P)
    v = np.linalg.solve(np.eye(S) - GAMMA * p_pi, (pi * R_SA).sum(1))
    return R_SA + GAMMA * P @ v, v


def se(est):
    return est.per_episode.std(ddof=1) / np.sqrt(len(est.per_episode))


def test_textbook_reference_is_consistent():
    """The exact ratio reweights the data distribution into pi's occupancy: sum d^D w r / (1 - gamma) = V^pi(s0)."""
    w = exact_ratio(P, MU0, PI_B, PI_E, GAMMA, H)
    d_data = occupancy(P, MU0, PI_B, 1.0, H)
    d_data /= d_data.sum()
    q, v = q_exact(PI_E)
    assert (d_data * w * R_SA).sum() / (1 - GAMMA) == pytest.approx(v[0], rel=1e-12)
    assert value(P, R_SA, MU0, PI_E, GAMMA) == pytest.approx(v[0], rel=1e-12)


def test_mis_and_mdr_with_exact_weights_recover_the_value():
    st, ac, rw, term, nxt, mask = simulate(4000, seed=0)
    w = exact_ratio(P, MU0, PI_B, PI_E, GAMMA, H)[st, ac]
    q, v = q_exact(PI_E)
    truth = v[0]
    est = marginal.mis(w, rw, mask, GAMMA)
    assert abs(est.estimate - truth) < 4 * se(est), (est.estimate, truth, se(est))
    # the exact weights already satisfy the normalisation moment (factor ~ 1, sampling error only)
    _, c = marginal.normalise_weights(w, mask, GAMMA, term)
    assert c == pytest.approx(1.0, abs=0.03)
    v_next = np.where(term > 0, 0.0, v[nxt])
    # DR: exact critic with useless weights (all 1) is exact up to noise; exact weights with a critic off by +0.5 too
    ones = np.ones_like(w)
    good_q = marginal.mdr(ones, rw, mask, GAMMA, q[st, ac], v_next, np.full(len(st), v[0]))
    assert abs(good_q.estimate - truth) < 4 * se(good_q) + 1e-9
    bad = marginal.mdr(w, rw, mask, GAMMA, q[st, ac] + 0.5, np.where(term > 0, 0, v[nxt] + 0.5),
                       np.full(len(st), v[0] + 0.5))
    assert abs(bad.estimate - truth) < 4 * se(bad), (bad.estimate, truth)
    # wrong weights AND wrong critic are biased: the test can fail
    worst = marginal.mdr(ones, rw, mask, GAMMA, q[st, ac] + 0.5, np.where(term > 0, 0, v[nxt] + 0.5),
                         np.full(len(st), v[0] + 0.5))
    assert abs(worst.estimate - truth) > 4 * se(worst)
    # resample with all-ones counts reproduces the estimate (ratio form)
    np.testing.assert_allclose(est.resample(np.ones((1, len(st)))), [est.estimate], rtol=1e-12)


def test_mis_hand_computed_and_errors():
    mask = np.array([[True, True], [True, False]])
    w = np.array([[2.0, 1.0], [0.5, 99.0]])
    r = np.array([[1.0, 3.0], [4.0, 7.0]])
    est = marginal.mis(w, r, mask, 0.5)
    # N = 3 steps, sum w r = 2 + 3 + 2 = 7 -> J = 7 / 3 / 0.5
    assert est.estimate == pytest.approx(7 / 3 / 0.5)
    np.testing.assert_allclose(est.per_episode, [2 * 5 / 3 / 0.5, 2 * 2 / 3 / 0.5])
    with pytest.raises(ConfigError, match="gamma"):
        marginal.mis(w, r, mask, 1.0)
    with pytest.raises(ConfigError, match=">= 0"):
        marginal.mis(-w, r, mask, 0.5)
    # state-marginal weights: rho(s) * pi/pi_0
    np.testing.assert_allclose(marginal.sm_weights(np.full((2, 2), 2.0), np.log(w), mask),
                               [[4.0, 2.0], [1.0, 0.0]])


# --------------------------------------------------------------------------------------- chain MDP, learned
@pytest.fixture(scope="module")
def chain_data():
    return collect(lambda: ChainEnv(5, 0.1, 20), TabularPolicy(BEHAVIOR), 600, seed=0)


def chain_truth():
    p = chain_transition(5, 0.1)
    mu0 = np.eye(5)[0]
    w = exact_ratio(p, mu0, BEHAVIOR, TARGET, GAMMA, 20)
    q = chain_q(TARGET, GAMMA, horizon=None)
    return w, q, float((TARGET[0] * q[0]).sum())


@pytest.mark.slow  # learns DualDICE/MWL/MQL (about 13 s)
def test_chain_exact_weights_and_learned_weights(chain_data):
    w_exact, _, truth = chain_truth()
    s = chain_data.observations.argmax(1)
    lw, mask = episode_arrays(chain_data, w_exact[s, chain_data.actions])
    rewards = episode_arrays(chain_data, chain_data.rewards)[0]
    est = marginal.mis(lw, rewards, mask, GAMMA)
    assert abs(est.estimate - truth) < 4 * se(est)
    cfg = WeightConfig(hidden=(), lr=0.05, steps=300, batch_size=128, bandwidth=0.2, normalize_obs=False)
    pi = TabularPolicy(TARGET)
    for method in ("mwl", "dualdice"):
        fit = fit_weights(chain_data, pi, GAMMA, method, cfg, seed=0)
        got = marginal.mis(episode_arrays(chain_data, fit.weights)[0], rewards, mask, GAMMA).estimate
        assert got == pytest.approx(truth, rel=0.1), (method, got, truth, fit.history)
        # the learned ratio is close to the exact one where the data has mass
        rel = np.abs(fit.weights - w_exact[s, chain_data.actions]).mean() / w_exact[s, chain_data.actions].mean()
        assert rel < 0.25, (method, rel)
        if method == "mwl":
            assert fit.converged and fit.notes() == [], fit.history
        elif not fit.converged:  # said in words
            assert any("did not converge" in n for n in fit.notes())
    mql = fit_weights(chain_data, pi, GAMMA, "mql", cfg, seed=0)
    assert mql.v0.mean() == pytest.approx(truth, rel=0.1), mql.history
    assert mql.weights is None and (mql.converged or any("did not converge" in n for n in mql.notes()))


def test_evaluate_ope_binds_marginal_and_distributional_estimators(chain_data):
    """Behaviour-agnostic: the marginal estimators run on data without propensities, and unconverged fits say so."""
    from hybridrl.algos.fqe import FQEConfig
    from hybridrl.ope import evaluate_ope

    _, _, truth = chain_truth()
    no_logp = chain_data.select_episodes(range(300))
    no_logp.behavior_log_prob = None
    cfg = WeightConfig(hidden=(), lr=0.05, steps=300, batch_size=128, bandwidth=0.2, normalize_obs=False)
    pi = TabularPolicy(TARGET)
    res = evaluate_ope(no_logp, {"target": pi}, estimators=("mis_mwl", "mdr_mwl"), gamma=GAMMA,
                       fqe_steps=200, fqe_config=FQEConfig(hidden=(32,), batch_size=64), weight_config=cfg,
                       n_boot=100)["target"]
    for name in ("mis_mwl", "mdr_mwl"):
        r = res[name]
        assert not r.behavior_estimated and r.estimate == pytest.approx(truth, rel=0.15), (name, r.estimate, truth)
        assert r.ci_low <= r.estimate <= r.ci_high and "weights_converged" in r.diagnostics
    bad = evaluate_ope(no_logp, {"target": pi}, estimators=("mis_dualdice",), gamma=GAMMA, n_boot=0,
                       weight_config=WeightConfig(steps=4, checks=2, hidden=(8,)))["target"]["mis_dualdice"]
    assert not bad.usable and "fit not converged" in bad.cell()
    assert any("did not converge" in n for n in bad.notes)
    with pytest.raises(ConfigError, match="gamma < 1"):
        evaluate_ope(no_logp, {"target": pi}, estimators=("mis_mwl",), gamma=1.0)


def test_state_marginal_exact_ratio_and_learned_mwl_state(chain_data):
    """SM-IS: rho(s) pi/pi_0 equals the state-action ratio w(s, a) (textbook: d(s, a) = d(s) pi(a|s)), and the learned
    state-marginal MWL weights recover the chain's value and the exact rho(s) beta."""
    p = chain_transition(5, 0.1)
    mu0 = np.eye(5)[0]
    d_pi = (1 - GAMMA) * occupancy(p, mu0, TARGET, GAMMA).sum(1)
    d_data = occupancy(p, mu0, BEHAVIOR, 1.0, 20).sum(1)
    d_data /= d_data.sum()
    rho = np.divide(d_pi, d_data, out=np.zeros_like(d_pi), where=d_data > 0)
    w_exact, _, truth = chain_truth()
    np.testing.assert_allclose(rho[:, None] * TARGET / BEHAVIOR, w_exact, rtol=1e-12)
    s, a = chain_data.observations.argmax(1), chain_data.actions
    log_ratio = np.log(TARGET[s, a]) - chain_data.behavior_log_prob
    rewards, mask = episode_arrays(chain_data, chain_data.rewards)
    exact = marginal.mis(marginal.sm_weights(episode_arrays(chain_data, rho[s])[0],
                                             episode_arrays(chain_data, log_ratio)[0], mask), rewards, mask, GAMMA)
    assert abs(exact.estimate - truth) < 4 * se(exact)
    cfg = WeightConfig(hidden=(), lr=0.05, steps=300, batch_size=128, bandwidth=0.2, normalize_obs=False)
    fit = fit_weights(chain_data, TabularPolicy(TARGET), GAMMA, "mwl_state", cfg, seed=0, log_ratio=log_ratio)
    got = marginal.mis(episode_arrays(chain_data, fit.weights)[0], rewards, mask, GAMMA).estimate
    assert got == pytest.approx(truth, rel=0.1), (got, truth, fit.history)
    rel = np.abs(fit.weights - w_exact[s, a]).mean() / w_exact[s, a].mean()
    assert rel < 0.25, rel
    with pytest.raises(ConfigError, match="log_ratio"):
        fit_weights(chain_data, TabularPolicy(TARGET), GAMMA, "mwl_state", cfg)


def test_evaluate_ope_binds_state_marginal_estimators(chain_data):
    from hybridrl.algos.fqe import FQEConfig
    from hybridrl.ope import evaluate_ope

    _, _, truth = chain_truth()
    cfg = WeightConfig(hidden=(), lr=0.05, steps=300, batch_size=128, bandwidth=0.2, normalize_obs=False)
    res = evaluate_ope(chain_data.select_episodes(range(300)), {"target": TabularPolicy(TARGET)},
                       estimators=("smis_mwl", "smdr_mwl"), gamma=GAMMA, fqe_steps=200,
                       fqe_config=FQEConfig(hidden=(32,), batch_size=64), weight_config=cfg, n_boot=100)["target"]
    for name in ("smis_mwl", "smdr_mwl"):
        r = res[name]
        assert r.estimate == pytest.approx(truth, rel=0.15), (name, r.estimate, truth)
        assert r.ci_low <= r.estimate <= r.ci_high and r.diagnostics["weights_converged"] in (0.0, 1.0)
