"""OPE estimators, bootstrap intervals, evaluate_ope and off-policy selection metrics."""

from __future__ import annotations

from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from rollouts import collect

from hybridrl.algos.fqe import FQEConfig
from hybridrl.data.dataset import Dataset
from hybridrl.envs.toy import ChainEnv, TabularPolicy, chain_policy_value
from hybridrl.errors import ConfigError, DatasetError, ShapeError
from hybridrl.nn import CategoricalPolicy
from hybridrl.ope import (
    OPEResult,
    bootstrap_ci,
    core,
    estimate_value,
    evaluate_ope,
    fit_fqe,
    importance_weights,
    rank_correlation,
    regret_at_k,
    select,
    sharpe_ratio_at_k,
)

GAMMA = 0.9
BEHAVIOR = np.full((5, 2), 0.5)
TARGET = np.tile([0.25, 0.75], (5, 1))



@pytest.fixture(scope="module")
def chain_data() -> Dataset:
    return collect(lambda: ChainEnv(5, 0.1, 20), TabularPolicy(BEHAVIOR), 2000, seed=0)


@pytest.fixture(scope="module")
def chain_fqe(chain_data):
    cfg = FQEConfig(hidden=(64, 64), lr=1e-3, tau=0.05, batch_size=128)
    return fit_fqe(chain_data, TabularPolicy(TARGET), GAMMA, cfg, steps=1500, seed=0)


# ------------------------------------------------------------------------------------ pure core on arrays
def two_episode_arrays():
    """Episode A: 2 steps, terminated; B: 1 step, truncated, padded (pad values are garbage and must be ignored)."""
    mask = np.array([[True, True], [True, False]])
    log_ratio = np.log([[1.5, 1.6], [0.5, 99.0]])
    rewards = np.array([[0.0, 1.0], [2.0, 123.0]])
    q_hat = np.array([[2.0, 3.0], [1.0, -7.0]])  # Q(s0, a1) = 2, Q(s1, a0) = 3; B: Q(s0, a0) = 1
    v_hat = np.array([[1.75, 2.4], [1.75, 55.0]])  # V(s0) = 1.75, V(s1) = 2.4
    return log_ratio, rewards, mask, q_hat, v_hat


def test_core_hand_computed_two_episodes():
    lr, r, m, q, v = two_episode_arrays()
    p = core.pdis(lr, r, m, 0.5)  # A: 0.5 * 2.4 * 1 = 1.2; B: 0.5 * 2 = 1.0
    np.testing.assert_allclose(p.per_episode, [1.2, 1.0])
    assert p.estimate == pytest.approx(1.1) and p.diagnostics["max_weight"] == pytest.approx(2.4)
    assert p.diagnostics["ess"] == pytest.approx(2.9**2 / 6.01) and p.diagnostics["ess_fraction"] == pytest.approx(
        2.9**2 / 6.01 / 2)
    s = core.snpdis(lr, r, m, 0.5)  # normalisers: t=0 (1.5 + 0.5)/2 = 1; t=1 (2.4 + 0.5)/2 = 1.45 (B frozen)
    np.testing.assert_allclose(s.per_episode, [0.5 * 2.4 / 1.45, 0.5 / 1.0 * 2.0], rtol=1e-8)
    d = core.dr(lr, r, m, 0.5, q, v)  # A: 1.5 (0 - 2) + 1.75 + 0.5 [2.4 (1 - 3) + 1.5 * 2.4]; B: 0.5 (2 - 1) + 1.75
    np.testing.assert_allclose(d.per_episode, [-1.85, 2.25], rtol=1e-12)
    # resample: counts [[2, 0]] is episode A twice
    np.testing.assert_allclose(p.resample(np.array([[2.0, 0.0], [1.0, 1.0]])), [1.2, 1.1])
    np.testing.assert_allclose(s.resample(np.array([[1.0, 1.0]])), [s.estimate], rtol=1e-12)


def _naive(lr, r, m, gamma, q=None, v=None):
    """Per-episode loops: cumulative weights frozen after each episode's end; SN normaliser over all episodes."""
    e, t_max = m.shape
    lengths = m.sum(1)
    w = np.ones((e, t_max))  # w_{0:t}, frozen after the end
    for i in range(e):
        acc = 1.0
        for t in range(t_max):
            if t < lengths[i]:
                acc *= np.exp(lr[i, t])
            w[i, t] = acc
    pd, sn, dr_ = np.zeros(e), np.zeros(e), np.zeros(e)
    for i in range(e):
        for t in range(lengths[i]):
            prev = w[i, t - 1] if t > 0 else 1.0
            pd[i] += gamma**t * w[i, t] * r[i, t]
            sn[i] += gamma**t * w[i, t] / (w[:, t].mean() + 1e-10) * r[i, t]
            if q is not None:
                dr_[i] += gamma**t * (w[i, t] * (r[i, t] - q[i, t]) + prev * v[i, t])
    final = w[:, -1]
    return pd, sn, dr_, final.sum() ** 2 / (final**2).sum()


def test_core_matches_naive_per_episode_loops():
    rng = np.random.default_rng(3)
    lengths = np.array([1, 4, 7, 7, 2, 5])
    m = np.arange(7)[None, :] < lengths[:, None]
    lr, r, q, v = (rng.normal(0, 0.5, m.shape), rng.normal(1, 1, m.shape), rng.normal(0, 1, m.shape),
                   rng.normal(0, 1, m.shape))
    pd, sn, d, ess = _naive(lr, r, m, 0.9, q, v)
    np.testing.assert_allclose(core.pdis(lr, r, m, 0.9).per_episode, pd, rtol=1e-12)
    np.testing.assert_allclose(core.snpdis(lr, r, m, 0.9).per_episode, sn, rtol=1e-10)
    np.testing.assert_allclose(core.dr(lr, r, m, 0.9, q, v).per_episode, d, rtol=1e-12)
    assert core.dr(lr, r, m, 0.9, q, v).estimate == pytest.approx(d.mean(), rel=1e-12)
    assert core.pdis(lr, r, m, 0.9).diagnostics["ess"] == pytest.approx(ess, rel=1e-10)


def test_core_rejects_bad_arrays():
    lr, r, m, q, v = two_episode_arrays()
    with pytest.raises(ShapeError, match=r"rewards has shape \(2, 3\); expected \[E, T\] = \(2, 2\)"):
        core.pdis(lr, np.zeros((2, 3)), m, 0.5)
    with pytest.raises(ShapeError, match="prefix"):
        core.snpdis(lr, r, np.array([[True, True], [False, True]]), 0.5)
    with pytest.raises(ShapeError, match="boolean"):
        core.pdis(lr, r, m.astype(float), 0.5)
    with pytest.raises(ShapeError, match="v_hat"):
        core.dr(lr, r, m, 0.5, q, v[:, :1])
    with pytest.raises(ConfigError, match="gamma"):
        core.pdis(lr, r, m, 1.5)


def test_evaluate_ope_rejects_a_policy_of_another_shape_before_fitting():
    data, _ = two_episode_data()
    for bad, msg in ((CategoricalPolicy(3, 2), r"observations of shape \(3,\), dataset gives \(2,\)"),
                     (CategoricalPolicy(2, 3), "policy has 3 actions, dataset has 2")):
        with pytest.raises(ShapeError, match=msg):  # fqe_steps large: fails before any fitting
            evaluate_ope(data, {"bad": bad}, fqe_steps=10**9, behavior_steps=10**9)
    with pytest.raises(ShapeError, match="policy 'bad' does not fit the dataset"):
        evaluate_ope(data, {"bad": CategoricalPolicy(3, 2)}, estimators=("pdis",))


# ------------------------------------------------------------------------------------- hand-computed case
def two_episode_data() -> tuple[Dataset, TabularPolicy]:
    """Episode A: s0 -a1,r0-> s1 -a0,r1-> terminal. Episode B: s0 -a0,r2-> truncated. pi_0 uniform."""
    eye = np.eye(2, dtype=np.float32)
    a = dict(observations=eye[[0, 1, 1]], actions=np.array([1, 0]), rewards=np.array([0.0, 1.0]),
             terminations=np.array([False, True]), truncations=np.array([False, False]),
             behavior_log_prob=np.log([0.5, 0.5]))
    b = dict(observations=eye[[0, 1]], actions=np.array([0]), rewards=np.array([2.0]), terminations=np.array([False]),
             truncations=np.array([True]), behavior_log_prob=np.log([0.5]))
    data = Dataset.from_episodes([a, b], gym.spaces.Box(0, 1, (2,), np.float32), gym.spaces.Discrete(2))
    return data, TabularPolicy([[0.25, 0.75], [0.8, 0.2]])


def test_hand_computed_two_episodes():
    data, pi = two_episode_data()
    # weights: A w_{0:0} = 1.5, w_{0:1} = 1.5 * 1.6 = 2.4; B w_{0:0} = 0.5 (frozen at 0.5 afterwards); gamma = 0.5
    np.testing.assert_allclose(np.exp(importance_weights(data, pi)), [1.5, 1.6, 0.5])
    p = estimate_value("pdis", data, pi, 0.5, n_boot=0)
    np.testing.assert_allclose(p.per_episode, [0.5 * 2.4 * 1.0, 0.5 * 2.0])  # [1.2, 1.0]
    assert p.estimate == pytest.approx(1.1) and np.isnan(p.ci_low)
    # SN normalisers over all episodes: t=0: (1.5 + 0.5)/2 = 1; t=1: (2.4 + 0.5)/2 = 1.45 (B frozen at 0.5)
    s = estimate_value("snpdis", data, pi, 0.5, n_boot=0)
    np.testing.assert_allclose(s.per_episode, [0.5 * 2.4 / 1.45, 0.5 / 1.0 * 2.0], rtol=1e-8)
    assert s.estimate == pytest.approx((1.2 / 1.45 + 1.0) / 2, rel=1e-8)
    # DR with a tabular critic Q(s0,.) = [1, 2], Q(s1,.) = [3, 0]: V(s0) = 1.75, V(s1) = 2.4
    q_table = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    critic = SimpleNamespace(policy=pi, config=SimpleNamespace(gamma=0.5),
                             q=lambda o, a: q_table[o.argmax(-1), a.long()],
                             value=lambda o: (q_table[o.argmax(-1)] * pi.probs(o)).sum(-1))
    d = estimate_value("dr", data, pi, 0.5, critic, n_boot=0)
    # A: t0 1.5 (0 - 2) + 1.75 = -1.25; t1 0.5 [2.4 (1 - 3) + 1.5 * 2.4] = -0.6; B: 0.5 (2 - 1) + 1.75 = 2.25
    np.testing.assert_allclose(d.per_episode, [-1.85, 2.25], rtol=1e-6)
    assert d.estimate == pytest.approx(0.2, rel=1e-6)
    m = estimate_value("dm", data, pi, 0.5, critic, n_boot=0)
    assert m.estimate == pytest.approx(1.75) and m.notes
    assert p.diagnostics["max_weight"] == pytest.approx(2.4) and p.diagnostics["ess"] == pytest.approx(2.9**2 / 6.01)


def test_dr_with_exact_q_and_pdis_agree_in_expectation_on_one_step_data():
    # On a one-step problem with Qhat = 0, DR reduces to PDIS exactly.
    data, pi = two_episode_data()
    zero = SimpleNamespace(policy=pi, config=SimpleNamespace(gamma=0.5), q=lambda o, a: torch.zeros(len(o)),
                           value=lambda o: torch.zeros(len(o)))
    np.testing.assert_allclose(estimate_value("dr", data, pi, 0.5, zero, n_boot=0).per_episode,
                               estimate_value("pdis", data, pi, 0.5, n_boot=0).per_episode)
    with pytest.raises(ConfigError, match="gamma"):
        estimate_value("dr", data, pi, 0.9, zero)
    with pytest.raises(ConfigError, match="different policy"):
        estimate_value("dm", data, TabularPolicy(np.full((2, 2), 0.5)), 0.5, zero)


def test_cache_reuses_episode_arrays_only_for_the_same_inputs():
    data, pi = two_episode_data()
    q_table = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    calls = []

    def q(o, a):
        calls.append(len(o))
        return q_table[o.argmax(-1), a.long()]

    critic = SimpleNamespace(policy=pi, config=SimpleNamespace(gamma=0.5), q=q,
                             value=lambda o: (q_table[o.argmax(-1)] * pi.probs(o)).sum(-1))
    log_prob, log_prob_calls = pi.log_prob, []
    pi.log_prob = lambda o, a: log_prob_calls.append(len(o)) or log_prob(o, a)
    cache: dict = {}
    for name in ("pdis", "snpdis", "tis", "dr", "sndr"):
        fresh = estimate_value(name, data, pi, 0.5, critic, n_boot=0)
        np.testing.assert_array_equal(estimate_value(name, data, pi, 0.5, critic, n_boot=0, cache=cache).per_episode,
                                      fresh.per_episode)
        np.testing.assert_array_equal(estimate_value(name, data, pi, 0.5, critic, n_boot=0, cache=cache).per_episode,
                                      fresh.per_episode)
    assert len(calls) == 3  # dr and sndr without the cache, and once for both with it
    assert len(log_prob_calls) == 5 + 1  # once per estimator without the cache, once in all with it
    logged, mask = cache["is_arrays"][1][0].copy(), cache["is_arrays"][1][1]
    other = data.behavior_log_prob - np.log(2.0)  # a new object: the entry is recomputed, not reused
    changed = estimate_value("pdis", data, pi, 0.5, behavior_log_prob=other, n_boot=0, cache=cache)
    np.testing.assert_allclose(cache["is_arrays"][1][0], logged + np.log(2.0) * mask)
    assert len(log_prob_calls) == 6  # new behaviour log-probs, same policy: log pi is reused
    assert changed.estimate != pytest.approx(estimate_value("pdis", data, pi, 0.5, n_boot=0).estimate)


def test_low_effective_sample_share_gets_a_warning_note():
    # 1,000 one-step bandit episodes, behaviour picks arm 1 with p = 0.02, the target always: 20 episodes carry
    # weight 50 each (ESS 20 >= 10, mean weight 1: not degenerate), i.e. 2% of the episodes.
    eye = np.eye(2, dtype=np.float32)
    actions = (np.arange(1000) % 50 == 0).astype(np.int64)
    eps = [dict(observations=eye[[0, 1]], actions=actions[i:i + 1], rewards=np.array([float(actions[i])]),
                terminations=np.array([True]), truncations=np.array([False]),
                behavior_log_prob=np.log([0.02 if actions[i] else 0.98])) for i in range(1000)]
    data = Dataset.from_episodes(eps, gym.spaces.Box(0, 1, (2,), np.float32), gym.spaces.Discrete(2))
    r = estimate_value("pdis", data, TabularPolicy([[0.0, 1.0], [0.5, 0.5]]), 0.9, n_boot=0)
    assert not r.degenerate and r.diagnostics["ess"] == pytest.approx(20.0) and r.estimate == pytest.approx(1.0)
    assert any("effective sample size is 20.0 of 1000 episodes (2.0%)" in n for n in r.notes)
    mild = estimate_value("pdis", data, TabularPolicy([[0.9, 0.1], [0.5, 0.5]]), 0.9, n_boot=0)
    assert not any("effective sample size is" in n for n in mild.notes)


def test_missing_behavior_log_prob_raises():
    data, pi = two_episode_data()
    data.behavior_log_prob = None
    with pytest.raises(DatasetError, match="behavior_log_prob"):
        estimate_value("pdis", data, pi, 0.5)
    given = estimate_value("pdis", data, pi, 0.5, behavior_log_prob=np.log([0.5, 0.5, 0.5]), n_boot=0)
    assert given.estimate == pytest.approx(1.1)


def test_overflowing_weights_keep_snpdis_finite_and_flag_pdis():
    eye = np.eye(2, dtype=np.float32)
    eps = [dict(observations=eye[[0, 1, 1]], actions=np.array([1, 0]), rewards=np.array([0.0, 1.0]),
                terminations=np.array([False, True]), truncations=np.array([False, False])),
           dict(observations=eye[[0, 1, 0]], actions=np.array([0, 1]), rewards=np.array([2.0, 0.5]),
                terminations=np.array([False, False]), truncations=np.array([False, True]))]
    data = Dataset.from_episodes(eps, gym.spaces.Box(0, 1, (2,), np.float32), gym.spaces.Discrete(2))
    pi = TabularPolicy([[0.25, 0.75], [0.8, 0.2]])
    blp = np.log(np.full(4, 0.5))
    # Equal lengths: a constant shift of every step's log-ratio multiplies all weights at step t by one
    # constant, which self-normalisation cancels; the raw weights reach exp(1000) and overflow.
    ref = estimate_value("snpdis", data, pi, 0.5, behavior_log_prob=blp, n_boot=0)
    big = estimate_value("snpdis", data, pi, 0.5, behavior_log_prob=blp - 500.0, n_boot=20)
    assert big.estimate == pytest.approx(ref.estimate, rel=1e-9) and np.isfinite(big.ci_low)
    p = estimate_value("pdis", data, pi, 0.5, behavior_log_prob=blp - 500.0, n_boot=20)
    assert not np.isfinite(p.estimate) and p.degenerate and not p.usable
    assert any("overflow" in n for n in p.degenerate_reasons) and p.to_dict()["degenerate"]
    assert p.diagnostics["max_log_weight"] > 709 and not any("overflow" in r for r in big.degenerate_reasons)


def test_results_serialise_to_json():
    import json

    data, pi = two_episode_data()
    d = estimate_value("pdis", data, pi, 0.5, n_boot=10).to_dict(per_episode=True)
    assert json.loads(json.dumps(d))["per_episode"] == pytest.approx([1.2, 1.0])
    sel = select(EST, 2, TRUE, 6.0).to_dict()
    assert json.loads(json.dumps(sel))["ranking"] == ["B", "A", "D", "C"] and sel["true_values"] == TRUE


# --------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci_of_mean_matches_normal_theory():
    x = np.random.default_rng(0).normal(2.0, 1.0, size=400)
    low, high = bootstrap_ci(lambda c: c @ x / len(x), len(x), n_boot=2000, rng=1)
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert low == pytest.approx(x.mean() - 1.96 * se, abs=0.25 * se)
    assert high == pytest.approx(x.mean() + 1.96 * se, abs=0.25 * se)
    with pytest.raises(ConfigError):
        bootstrap_ci(lambda c: c.sum(1), 10, confidence=1.5)


def test_snpdis_bootstrap_recomputes_self_normalisation(chain_data):
    small = chain_data.select_episodes(range(40))
    pi = TabularPolicy(TARGET)
    res = estimate_value("snpdis", small, pi, GAMMA, n_boot=50, seed=7)
    idx = np.random.default_rng(7).integers(0, 40, size=(50, 40))  # the resamples bootstrap_ci draws
    naive = [estimate_value("snpdis", small.select_episodes(row), pi, GAMMA, n_boot=0).estimate for row in idx]
    np.testing.assert_allclose([res.ci_low, res.ci_high], np.quantile(naive, [0.025, 0.975]), rtol=1e-9)


# ---------------------------------------------------------------------------------- chain MDP, known truth
def test_on_policy_weights_are_one_and_pdis_is_the_mc_mean(chain_data):
    pi_b = TabularPolicy(BEHAVIOR)
    assert np.all(importance_weights(chain_data, pi_b) == 0.0)
    mc = chain_data.episode_returns(GAMMA).mean()
    assert estimate_value("pdis", chain_data, pi_b, GAMMA, n_boot=0).estimate == pytest.approx(mc, rel=1e-12)
    assert estimate_value("snpdis", chain_data, pi_b, GAMMA, n_boot=0).estimate == pytest.approx(mc, rel=1e-9)


def test_unbiased_estimators_cover_the_analytic_value(chain_data, chain_fqe):
    truth = chain_policy_value(TARGET, GAMMA, slip=0.1, horizon=20)
    pi = chain_fqe.policy
    results = [estimate_value(e, chain_data, pi, GAMMA, chain_fqe) for e in ("pdis", "snpdis", "dr")]
    for r in results:
        assert r.ci_low <= truth <= r.ci_high, (r.estimator, r.estimate, r.ci_low, r.ci_high, truth)
        assert r.ci_high - r.ci_low < 0.1 and r.n_episodes == 2000 and r.confidence == 0.95
    assert results[2].ci_high - results[2].ci_low < results[0].ci_high - results[0].ci_low  # DR reduces variance
    # DR stays unbiased with a poor critic (an FQE of a different policy is just "some Q").
    bad_q = fit_fqe(chain_data, pi, GAMMA, FQEConfig(hidden=(8,)), steps=5, seed=1)
    r = estimate_value("dr", chain_data, pi, GAMMA, bad_q)
    assert r.ci_low <= truth <= r.ci_high
    # DM with a well-fit FQE is close (FQE targets the infinite-horizon value; the gap is ~1e-3 here).
    assert estimate_value("dm", chain_data, pi, GAMMA, chain_fqe).estimate == pytest.approx(truth, abs=0.03)


def test_evaluate_ope_shares_fqe_and_estimates_behavior_by_bc(chain_data):
    data = collect(lambda: ChainEnv(5, 0.1, 20), TabularPolicy(BEHAVIOR), 400, seed=5, log_prob=False)
    assert data.behavior_log_prob is None
    policies = {"right": TabularPolicy(TARGET), "uniform": TabularPolicy(BEHAVIOR)}
    out = evaluate_ope(data, policies, estimators=("fqe", "pdis", "dr"), gamma=GAMMA, fqe_steps=300,
                       fqe_config=FQEConfig(hidden=(32, 32), lr=1e-3, tau=0.05, batch_size=128), behavior_steps=150,
                       n_boot=200)
    assert set(out) == set(policies) and set(out["right"]) == {"fqe", "pdis", "dr"}
    note = "behaviour log-probabilities estimated by behaviour cloning (150 steps"
    assert any(n.startswith(note) for n in out["right"]["pdis"].notes)
    assert any(n.startswith(note) for n in out["right"]["dr"].notes)
    assert not any(n.startswith(note) for n in out["right"]["fqe"].notes) and out["right"]["fqe"].estimator == "fqe"
    # the behaviour model's held-out diagnostics are in every IS-based result (mean weight ~1 when calibrated)
    assert out["right"]["pdis"].diagnostics["behavior_heldout_mean_weight"] == pytest.approx(1.0, abs=0.15)
    assert np.isfinite(out["right"]["dr"].diagnostics["behavior_heldout_loglik"])
    assert out["right"]["pdis"].behavior_estimated and out["right"]["pdis"].to_dict()["behavior_estimated"]
    assert not out["right"]["fqe"].behavior_estimated
    truth = chain_policy_value(TARGET, GAMMA)
    assert out["right"]["pdis"].estimate == pytest.approx(truth, abs=0.1)
    assert isinstance(out["uniform"]["dr"], OPEResult)


def test_evaluate_ope_unknown_estimator():
    data, pi = two_episode_data()
    with pytest.raises(ConfigError, match=r"'pdis'.*did you mean 'snpdis'|expected one of"):
        evaluate_ope(data, {"p": pi}, estimators=("sndpis",))


# --------------------------------------------------------------------------------------------- selection
TRUE = {"A": 10.0, "B": 8.0, "C": 5.0, "D": 1.0}
EST = {"A": 7.0, "B": 9.0, "C": 2.0, "D": 3.0}  # ranking B, A, D, C


def test_select_hand_computed():
    res = select(EST, k=2, true_values=TRUE, behavior_value=6.0)
    assert res.ranking == ["B", "A", "D", "C"] and res.top_k == ["B", "A"]
    assert res.regret_at_k == 0.0 and res.best_at_k == 10.0
    assert res.std_at_k == pytest.approx(np.sqrt(2.0))
    assert res.sharpe_ratio_at_k == pytest.approx(4.0 / np.sqrt(2.0))
    assert res.rank_correlation == pytest.approx(0.6)  # d = (-1, 1, -1, 1): 1 - 6*4 / (4*15)
    assert res.mse == pytest.approx(5.75) and res.nmse == pytest.approx(5.75 / 81)
    assert regret_at_k(EST, TRUE, 1) == 2.0
    assert rank_correlation(EST, TRUE) == pytest.approx(0.6)
    # k = 3: {B, A, D} -> true {8, 10, 1}, sample std sqrt(67/3)
    assert sharpe_ratio_at_k(EST, TRUE, 6.0, 3) == pytest.approx(4.0 / np.sqrt(67 / 3))


def test_sharpe_ratio_edge_cases():
    assert np.isnan(sharpe_ratio_at_k(EST, TRUE, 6.0, k=1))  # ddof=1 std of one value (SCOPE-RL code)
    assert np.isnan(select(EST, 1, TRUE, 6.0).sharpe_ratio_at_k)
    assert sharpe_ratio_at_k(EST, TRUE, 12.0, k=2) == 0.0  # best@k < J(pi_b): numerator clipped at 0
    assert sharpe_ratio_at_k([2.0, 1.0, 0.0], [5.0, 5.0, 0.0], 1.0, k=2) == np.inf  # zero std, positive return
    assert np.isnan(sharpe_ratio_at_k([2.0, 1.0, 0.0], [5.0, 5.0, 0.0], 5.0, k=2))  # 0 / 0


def test_sharpe_ratio_prefers_underestimating_good_over_overestimating_bad():
    """The point of SCOPE-RL's toy example 1: equal Regret@3, SharpeRatio@3 prefers X."""
    true = {f"p{i}": float(i) for i in range(1, 11)}
    x = dict(true, p10=7.5)  # under-estimates the best policy: top-3 = p9, p8, p10
    y = dict(true, p1=9.5)  # over-estimates the worst policy: top-3 = p10, p1, p9
    assert regret_at_k(x, true, 3) == regret_at_k(y, true, 3) == 0.0
    assert sharpe_ratio_at_k(x, true, 5.0, 3) > 4 * sharpe_ratio_at_k(y, true, 5.0, 3)


def test_select_accepts_results_and_validates():
    res = {n: OPEResult("pdis", v, None, v - 1, v + 1) for n, v in EST.items()}
    assert select(res, 2).top_k == ["B", "A"] and select(res, 2).regret_at_k is None
    with pytest.raises(ConfigError, match="k must be"):
        select(EST, 5)
    with pytest.raises(ConfigError, match="missing"):
        select(EST, 2, true_values={"A": 1.0})
    with pytest.raises(ConfigError, match="true_values"):
        select(EST, 2, behavior_value=1.0)


def test_tis_sntis_sndr_cover_the_chain_value(chain_data, chain_fqe):
    """hybridrl/Chain-v0 (ChainEnv(5, 0.1, 20)) against the analytic finite-horizon value."""
    truth = chain_policy_value(TARGET, GAMMA, slip=0.1, horizon=20)
    pi = chain_fqe.policy
    for name in ("tis", "sntis", "sndr"):
        r = estimate_value(name, chain_data, pi, GAMMA, chain_fqe, n_boot=300)
        assert r.ci_low <= truth <= r.ci_high, (name, r.estimate, r.ci_low, r.ci_high, truth)
        assert not r.degenerate and r.interval == "bootstrap" and "bootstrap" in r.interval_meaning
    t = estimate_value("pdis", chain_data, pi, GAMMA, ci="t")
    h = estimate_value("pdis", chain_data, pi, GAMMA, ci="hoeffding")
    assert t.ci_low <= truth <= t.ci_high and h.ci_low <= t.ci_low and h.ci_high >= t.ci_high
    assert any("observed range" in n for n in h.notes) and h.to_dict()["interval"] == "hoeffding"
    with pytest.raises(ConfigError, match="interval"):
        estimate_value("pdis", chain_data, pi, GAMMA, ci="wald")


def test_type_i_ii_error_rates_and_top_k_stats_hand_computed():
    from hybridrl.ope import error_rates, pick_estimator, top_k_stats

    # threshold 6: truly unsafe C (5), D (1); passed (est >= 6): B (9), A (7) -> type I 0/2; safe A, B both passed
    assert error_rates(EST, TRUE, 6.0) == (0.0, 0.0)
    # threshold 8.5: unsafe B (8), C, D; passed B (9) -> type I 1/3; safe A (10) rejected (7 < 8.5) -> type II 1/1
    t1, t2 = error_rates(EST, TRUE, 8.5)
    assert t1 == pytest.approx(1 / 3) and t2 == 1.0
    assert np.isnan(error_rates(EST, TRUE, 0.0)[0])  # no unsafe policy
    lower = {n: OPEResult("pdis", v, None, v - 3, v + 3) for n, v in EST.items()}  # lower bounds 4, 6, -1, 0
    assert error_rates(lower, TRUE, 6.0, use_lower_bound=True) == (0.0, 0.5)  # A (lower 4) rejected
    with pytest.raises(ConfigError, match="use_lower_bound"):
        error_rates(EST, TRUE, 6.0, use_lower_bound=True)
    # top-3 by estimate: B, A, D -> true 8, 10, 1
    st = top_k_stats(EST, TRUE, 3)
    assert (st["best"], st["worst"], st["mean"]) == (10.0, 1.0, pytest.approx(19 / 3))
    assert st["std"] == pytest.approx(np.sqrt(67 / 3)) and np.isnan(top_k_stats(EST, TRUE, 1)["std"])
    res = select(EST, 3, TRUE, threshold=8.5)
    assert res.worst_at_k == 1.0 and res.mean_at_k == pytest.approx(19 / 3) and res.type_ii_error_rate == 1.0
    # pick_estimator: the preferred one is degenerate for one candidate -> the first usable one, said in words
    good = OPEResult("snpdis", 1.0, None, 0.0, 2.0)
    bad = OPEResult("pdis", 1e36, None, 0.0, 1e37, degenerate=True, degenerate_reasons=["effective sample size 1.0"])
    results = {"a": {"pdis": bad, "snpdis": good}, "b": {"pdis": good, "snpdis": good}}
    by, usable, why = pick_estimator(results, "pdis", ["pdis", "snpdis"])
    assert by == "snpdis" and usable == ["snpdis"] and "instead of pdis" in why and "a: degenerate" in why
    assert pick_estimator(results, "snpdis", ["pdis", "snpdis"])[0] == "snpdis"
    assert bad.cell().startswith("degenerate") and "e+36" not in bad.cell()


def test_estimates_outside_the_possible_value_range_are_degenerate():
    from hybridrl.ope import degeneracy

    assert degeneracy(150.0, {}, 10, value_bounds=(0.0, 100.0))[0].startswith("the estimate 150 lies outside")
    assert degeneracy(100.5, {}, 10, value_bounds=(0.0, 100.0)) == []  # within the 1% slack
    data, pi = two_episode_data()  # rewards in [0, 2], gamma 0.5: any value lies in [0, 4]
    huge = SimpleNamespace(policy=pi, config=SimpleNamespace(gamma=0.5), q=lambda o, a: torch.full((len(o),), 500.0),
                           value=lambda o: torch.full((len(o),), 500.0))
    r = estimate_value("dm", data, pi, 0.5, huge, n_boot=0)
    assert r.degenerate and "outside [0, 4]" in r.degenerate_reasons[0]
    assert r.cell() == "degenerate (outside the possible range)"
