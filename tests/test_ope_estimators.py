"""TIS, SNTIS, SNDR, per-step clipping and degeneracy: against a textbook NumPy implementation on a small discrete
MDP (written here, loops over episodes and steps), against exact values, and on long-horizon degenerate weights."""

from __future__ import annotations

import numpy as np
import pytest

from hybridrl.errors import ConfigError
from hybridrl.ope import core, degeneracy

# ------------------------------------------------------------------------ a small discrete MDP, simulated in NumPy
S, A, H, GAMMA = 3, 2, 5, 0.9
RNG_MDP = np.random.default_rng(42)
P = RNG_MDP.dirichlet(np.ones(S + 1), size=(S, A))  # P[s, a, s'], s' = S is the terminal state
R = RNG_MDP.uniform(0, 1, size=(S, A))  # mean reward of (s, a); observed with N(0, 0.1^2) noise
PI_B = np.array([[0.5, 0.5], [0.6, 0.4], [0.3, 0.7]])
PI_E = np.array([[0.2, 0.8], [0.7, 0.3], [0.5, 0.5]])


def exact_value(pi) -> float:
    """V_H(s_0 = 0) by backward induction over the H-step horizon (terminal state absorbing, reward 0)."""
    v = np.zeros(S + 1)
    for _ in range(H):
        q = R + GAMMA * P @ v  # [S, A]
        v = np.append((pi * q).sum(1), 0.0)
    return float(v[0])


def q_table(pi, steps_left: int) -> np.ndarray:
    v = np.zeros(S + 1)
    q = np.zeros((S, A))
    for _ in range(steps_left):
        q = R + GAMMA * P @ v
        v = np.append((pi * q).sum(1), 0.0)
    return q


def simulate(n: int, seed: int):
    """n episodes of pi_b from s_0 = 0, at most H steps: padded [n, H] arrays states, actions, rewards, mask."""
    rng = np.random.default_rng(seed)
    states, actions = np.zeros((n, H), int), np.zeros((n, H), int)
    rewards, mask = np.zeros((n, H)), np.zeros((n, H), bool)
    for i in range(n):
        s = 0
        for t in range(H):
            a = rng.choice(A, p=PI_B[s])
            states[i, t], actions[i, t], mask[i, t] = s, a, True
            rewards[i, t] = R[s, a] + 0.1 * rng.standard_normal()
            s = rng.choice(S + 1, p=P[s, a])
            if s == S:
                break
    return states, actions, rewards, mask


def textbook(states, actions, rewards, mask, q, v, clip=None):
    """Per-episode loops, straight from the formulas (SCOPE-RL, ALGORITHMS.md §8)."""
    n = len(states)
    lengths = mask.sum(1)
    w = np.ones((n, H))  # w_{0:t}, frozen after each episode's end
    for i in range(n):
        acc = 1.0
        for t in range(H):
            if t < lengths[i]:
                ratio = PI_E[states[i, t], actions[i, t]] / PI_B[states[i, t], actions[i, t]]
                acc *= ratio if clip is None else min(ratio, clip)
            w[i, t] = acc
    w_prev = np.concatenate([np.ones((n, 1)), w[:, :-1]], 1)
    tis, sntis, sndr, pdis = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    final = w[:, -1]
    for i in range(n):
        ret = sum(GAMMA**t * rewards[i, t] for t in range(lengths[i]))
        tis[i] = final[i] * ret
        sntis[i] = final[i] / (final.mean() + 1e-10) * ret
        for t in range(lengths[i]):
            pdis[i] += GAMMA**t * w[i, t] * rewards[i, t]
            sndr[i] += GAMMA**t * (w[i, t] / (w[:, t].mean() + 1e-10) * (rewards[i, t] - q[i, t])
                                   + w_prev[i, t] / (w_prev[:, t].mean() + 1e-10) * v[i, t])
    return {"tis": tis, "sntis": sntis, "sndr": sndr, "pdis": pdis}


@pytest.fixture(scope="module")
def mdp_data():
    states, actions, rewards, mask = simulate(3000, seed=0)
    log_ratio = np.where(mask, np.log(PI_E[states, actions]) - np.log(PI_B[states, actions]), 0.0)
    # critic: the exact finite-horizon Q with H - t steps left, perturbed so that DR's correction matters
    q_all = np.stack([q_table(PI_E, H - t) for t in range(H)])  # [H, S, A]
    t_idx = np.broadcast_to(np.arange(H), states.shape)
    q_hat = q_all[t_idx, states, actions] + 0.3
    v_hat = (q_all[t_idx, states] * PI_E[states]).sum(-1) + 0.3
    return states, actions, rewards, mask, log_ratio, q_hat, v_hat


def test_new_estimators_match_the_textbook_loops(mdp_data):
    states, actions, rewards, mask, lr, q, v = mdp_data
    ref = textbook(states, actions, rewards, mask, q, v)
    np.testing.assert_allclose(core.tis(lr, rewards, mask, GAMMA).per_episode, ref["tis"], rtol=1e-10)
    np.testing.assert_allclose(core.sntis(lr, rewards, mask, GAMMA).per_episode, ref["sntis"], rtol=1e-10)
    np.testing.assert_allclose(core.sndr(lr, rewards, mask, GAMMA, q, v).per_episode, ref["sndr"], rtol=1e-10)
    clipped = textbook(states, actions, rewards, mask, q, v, clip=1.5)
    got = core.pdis(lr, rewards, mask, GAMMA, clip=1.5)
    np.testing.assert_allclose(got.per_episode, clipped["pdis"], rtol=1e-10)
    np.testing.assert_allclose(core.tis(lr, rewards, mask, GAMMA, clip=1.5).per_episode, clipped["tis"], rtol=1e-10)
    assert 0 < got.diagnostics["clipped_fraction"] < 1 and any("biased" in n for n in got.notes)


def test_new_estimators_recover_the_exact_value(mdp_data):
    _, _, rewards, mask, lr, q, v = mdp_data
    truth = exact_value(PI_E)
    ests = {"tis": core.tis(lr, rewards, mask, GAMMA), "sntis": core.sntis(lr, rewards, mask, GAMMA),
            "sndr": core.sndr(lr, rewards, mask, GAMMA, q, v), "dr": core.dr(lr, rewards, mask, GAMMA, q, v)}
    for name, est in ests.items():
        se = est.per_episode.std(ddof=1) / np.sqrt(len(est.per_episode))
        assert abs(est.estimate - truth) < 4 * se + 1e-3, (name, est.estimate, truth, se)
    # DR/SNDR with a critic off by a constant 0.3 stay unbiased, with far less spread than TIS
    assert core.sndr(lr, rewards, mask, GAMMA, q, v).per_episode.std() < core.tis(lr, rewards, mask,
                                                                                   GAMMA).per_episode.std()


def test_on_policy_and_resample_consistency(mdp_data):
    _, _, rewards, mask, lr, q, v = mdp_data
    zero = np.zeros_like(lr)
    mc = (GAMMA ** np.arange(H) * rewards).sum(1).mean()
    for f in (core.tis, core.sntis):
        assert f(zero, rewards, mask, GAMMA).estimate == pytest.approx(mc, rel=1e-9)
    for f in (core.sntis, core.sndr):  # the resample of all-ones counts is the estimate itself
        est = f(lr, rewards, mask, GAMMA) if f is core.sntis else f(lr, rewards, mask, GAMMA, q, v)
        np.testing.assert_allclose(est.resample(np.ones((1, len(lr)))), [est.estimate], rtol=1e-10)


def test_clipping_hand_computed_and_bias_direction():
    mask = np.array([[True, True], [True, False]])
    log_ratio = np.log([[1.5, 1.6], [0.5, 9.0]])
    rewards = np.array([[0.0, 1.0], [2.0, 5.0]])
    # clip 1.2: A's ratios -> 1.2, 1.2 (w_{0:1} = 1.44); B's 0.5 is unchanged
    p = core.pdis(log_ratio, rewards, mask, 0.5, clip=1.2)
    np.testing.assert_allclose(p.per_episode, [0.5 * 1.44, 1.0])
    assert p.diagnostics["clipped_fraction"] == pytest.approx(2 / 3)
    assert p.estimate <= core.pdis(log_ratio, rewards, mask, 0.5).estimate  # non-negative rewards: biased down
    np.testing.assert_allclose(core.pdis(log_ratio, rewards, mask, 0.5, clip=10.0).per_episode,
                               core.pdis(log_ratio, rewards, mask, 0.5).per_episode)  # a cap that never binds
    with pytest.raises(ConfigError, match="clip"):
        core.tis(log_ratio, rewards, mask, 0.5, clip=0.0)


def test_long_horizon_weights_are_flagged_degenerate():
    """Hopper-like: 50 episodes of 1,000 steps, per-step log-ratio N(-0.125, 0.5): log-weights ~ N(-125, 16)."""
    rng = np.random.default_rng(0)
    lr = rng.normal(-0.125, 0.5, size=(50, 1000))
    rewards, mask = np.ones((50, 1000)), np.ones((50, 1000), bool)
    for f in (core.pdis, core.tis, core.snpdis, core.sntis):
        est = f(lr, rewards, mask, 0.99)
        reasons = degeneracy(est.estimate, est.diagnostics, 50, self_normalised=f in (core.snpdis, core.sntis))
        assert est.diagnostics["ess"] < 2 and any("effective sample size" in r for r in reasons), f
    big = core.pdis(lr + 1.0, rewards, mask, 0.99)  # log-weights ~ +875 overflow float64
    reasons = degeneracy(big.estimate, big.diagnostics, 50)
    assert any("not finite" in r for r in reasons) and any("overflow" in r for r in reasons)
    ok = core.pdis(rng.normal(0, 0.01, (50, 5)), np.ones((50, 5)), np.ones((50, 5), bool), 0.99)
    assert degeneracy(ok.estimate, ok.diagnostics, 50) == []


def test_plain_is_with_missing_weight_mass_is_flagged_although_its_ess_passes():
    # 100 one-step episodes, reward 1: 20 with weight 1, 80 with weight 1e-9. PDIS = 0.2 (the on-policy value is 1:
    # the sample missed the rare episodes with large weights); ESS = 20 passes, the weights' mean 0.2 does not.
    lr = np.zeros((100, 1))
    lr[20:] = np.log(1e-9)
    est = core.pdis(lr, np.ones((100, 1)), np.ones((100, 1), bool), 0.9)
    assert est.estimate == pytest.approx(0.2, rel=1e-6) and est.diagnostics["ess"] == pytest.approx(20.0, rel=1e-6)
    assert est.diagnostics["mean_weight"] == pytest.approx(0.2, rel=1e-6)
    assert degeneracy(est.estimate, est.diagnostics, 100) == []
    reasons = degeneracy(est.estimate, est.diagnostics, 100, check_mean_weight=True)
    assert len(reasons) == 1 and "weights average 0.2 where 1 is expected" in reasons[0]
    fine = core.pdis(np.log(np.array([[0.8], [1.2]] * 50)), np.ones((100, 1)), np.ones((100, 1), bool), 0.9)
    assert degeneracy(fine.estimate, fine.diagnostics, 100, check_mean_weight=True) == []  # mean weight 1.0
