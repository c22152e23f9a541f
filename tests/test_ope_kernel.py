"""Kernel-smoothed IS/DR for deterministic policies on continuous actions (hybridrl.ope.kernel, estimator names kis,
ksnis, kdr, ksndr): against a hand-written NumPy formula and the analytic value of the smoothed policy on a 2-D
continuous bandit with a Gaussian behaviour policy."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from rollouts import collect

from hybridrl.algos.fqe import FQEConfig
from hybridrl.data.dataset import Dataset
from hybridrl.envs.toy import ChainEnv, TabularPolicy
from hybridrl.errors import ConfigError, ShapeError
from hybridrl.nn.deterministic import DeterministicPolicy
from hybridrl.ope import core, estimate_value, fit_fqe
from hybridrl.ope.kernel import log_gaussian_kernel, log_kernel_ratio

MU, C, SIGMA_B, HALF = np.array([0.3, -0.2]), np.array([0.5, 0.0]), 0.7, 5.0


def bandit(n: int, seed: int) -> Dataset:
    """n one-step episodes: a ~ N(0, SIGMA_B^2 I_2), r = -||a - C||^2, behaviour log-density logged."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0, SIGMA_B, size=(n, 2)).astype(np.float32)
    logp = (-0.5 * (a.astype(np.float64) / SIGMA_B) ** 2 - np.log(np.sqrt(2 * np.pi) * SIGMA_B)).sum(1)
    eps = [dict(observations=np.ones((2, 1), np.float32), actions=a[i:i + 1], rewards=[-((a[i] - C) ** 2).sum()],
                terminations=[True], truncations=[False], behavior_log_prob=logp[i:i + 1]) for i in range(n)]
    return Dataset.from_episodes(eps, gym.spaces.Box(0, 2, (1,), np.float32),
                                 gym.spaces.Box(-HALF, HALF, (2,), np.float32))


def constant_policy() -> DeterministicPolicy:
    """mu(s) = MU for every s (zero weights, bias atanh(MU / HALF))."""
    pol = DeterministicPolicy(1, 2, hidden=(), normalize_obs=False, action_low=[-HALF] * 2, action_high=[HALF] * 2)
    with torch.no_grad():
        pol.mean_net[-1].weight.zero_()
        pol.mean_net[-1].bias.copy_(torch.as_tensor(np.arctanh(MU / HALF), dtype=torch.float32))
    return pol


def test_kernel_formula_by_hand():
    mu, a = np.array([[0.0, 1.0], [2.0, 2.0]]), np.array([[0.5, 1.0], [2.0, 1.0]])
    h = np.array([0.5, 2.0])
    want = [-0.5 * (0.5 / 0.5) ** 2 - np.log(np.sqrt(2 * np.pi) * 0.5) - np.log(np.sqrt(2 * np.pi) * 2.0),
            -np.log(np.sqrt(2 * np.pi) * 0.5) - 0.5 * (1 / 2.0) ** 2 - np.log(np.sqrt(2 * np.pi) * 2.0)]
    np.testing.assert_allclose(log_gaussian_kernel(mu, a, h), want, rtol=1e-12)
    np.testing.assert_allclose(log_kernel_ratio(mu, a, np.array([-1.0, 0.5]), h), np.array(want) - [-1.0, 0.5])
    with pytest.raises(ConfigError, match="bandwidth"):
        log_gaussian_kernel(mu, a, 0.0)
    with pytest.raises(ShapeError):
        log_gaussian_kernel(mu, a[:1], 1.0)


@pytest.mark.parametrize("bandwidth", [0.02, 0.1])  # h = 0.1 and 0.5 action units
def test_kernel_is_estimates_the_smoothed_policy_value(bandwidth):
    data, pol = bandit(20000, seed=0), constant_policy()
    h = bandwidth * HALF
    r = estimate_value("kis", data, pol, 0.9, bandwidth=bandwidth, n_boot=0)
    # the NumPy formula: w = N(a; MU, h^2 I) / pi_0(a), per-episode w r
    a = data.actions.astype(np.float64)
    w = np.exp(log_gaussian_kernel(np.broadcast_to(MU, a.shape), a, h) - data.behavior_log_prob)
    np.testing.assert_allclose(r.per_episode, w * data.rewards, rtol=1e-5)
    # E_{a ~ N(MU, h^2 I)}[-||a - C||^2] = -(||MU - C||^2 + 2 h^2): the value of the smoothed policy
    smoothed = -(((MU - C) ** 2).sum() + 2 * h**2)
    se = r.per_episode.std(ddof=1) / np.sqrt(len(r.per_episode))
    assert abs(r.estimate - smoothed) < 4 * se, (r.estimate, smoothed, se)
    # the bias towards J(mu) = -||MU - C||^2 is 2 h^2 -> 0 as h -> 0: 0.5 at h = 0.5 (far outside the noise), 0.02 at
    # h = 0.1
    j_mu = -((MU - C) ** 2).sum()
    assert abs(r.estimate - j_mu) < 2 * h**2 + 4 * se
    if h == 0.5:
        assert abs(r.estimate - j_mu) > 0.4
    assert any("smoothed policy" in n for n in r.notes)
    sn = estimate_value("ksnis", data, pol, 0.9, bandwidth=bandwidth, n_boot=0)
    np.testing.assert_allclose(sn.estimate, (w * data.rewards).sum() / w.sum(), rtol=1e-5)


def test_kernel_dr_binding_and_errors():
    data, pol = bandit(300, seed=1), constant_policy()
    fqe = fit_fqe(data, pol, 0.9, FQEConfig(hidden=(16,), n_action_samples=2), steps=30, seed=0)
    r = estimate_value("kdr", data, pol, 0.9, fqe, bandwidth=0.1, n_boot=0)
    a = data.actions.astype(np.float64)
    lr = log_kernel_ratio(np.broadcast_to(MU, a.shape), a, data.behavior_log_prob, 0.5)
    with torch.no_grad():
        obs = torch.as_tensor(data.observations)
        q = fqe.q(obs, torch.as_tensor(data.actions)).double().numpy()
        v = fqe.q(obs, torch.as_tensor(np.broadcast_to(MU, a.shape).astype(np.float32))).double().numpy()
    ref = core.dr(lr[:, None], data.rewards[:, None], np.ones((300, 1), bool), 0.9, q[:, None], v[:, None])
    np.testing.assert_allclose(r.per_episode, ref.per_episode, rtol=1e-4, atol=1e-6)
    chain = collect(lambda: ChainEnv(5, 0.1, 20), TabularPolicy(np.full((5, 2), 0.5)), 5, seed=0)
    with pytest.raises(ConfigError, match="continuous"):
        estimate_value("kis", chain, TabularPolicy(np.full((5, 2), 0.5)), 0.9, n_boot=0)
