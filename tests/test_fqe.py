"""Fitted Q Evaluation: target construction, contract checks, convergence on the bandit and the chain."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from rollouts import collect

from hybridrl.algos.fqe import FQEConfig, FQELearner, value_bounds
from hybridrl.data.batches import Transitions
from hybridrl.envs.toy import BanditEnv, ChainEnv, TabularPolicy, chain_q
from hybridrl.errors import ConfigError
from hybridrl.nn import GaussianPolicy
from hybridrl.ope import fit_fqe

CHAIN_OBS, CHAIN_ACT = gym.spaces.Box(0.0, 1.0, (5,), np.float32), gym.spaces.Discrete(2)


def small_config(**kw) -> FQEConfig:
    return FQEConfig(**{"hidden": (64, 64), "lr": 1e-3, "tau": 0.05, "batch_size": 128, **kw})


def test_config_validation():
    with pytest.raises(ConfigError, match="tau"):
        FQEConfig(tau=0.0)
    with pytest.raises(ConfigError, match="gamma"):
        FQEConfig(gamma=1.5)
    assert FQEConfig().hidden == (256, 256) and FQEConfig().n_action_samples == 10
    assert FQEConfig().target_action_samples == 1


def test_requires_a_fitting_policy():
    with pytest.raises(ConfigError, match="policy"):
        FQELearner(FQEConfig(), CHAIN_OBS, CHAIN_ACT)
    with pytest.raises(ConfigError, match="does not fit"):
        FQELearner(FQEConfig(), gym.spaces.Box(0, 1, (3,)), CHAIN_ACT, policy=TabularPolicy(np.full((5, 2), 0.5)))


def test_target_exact_expectation_and_truncation_bootstraps():
    pi = TabularPolicy(np.tile([0.3, 0.7], (5, 1)))
    learner = FQELearner(small_config(gamma=0.9), CHAIN_OBS, CHAIN_ACT, policy=pi)
    eye = torch.eye(5)
    batch = Transitions(obs=eye[[0, 1, 2]], action=torch.tensor([1, 1, 0]), reward=torch.tensor([0.5, 1.0, 2.0]),
                        next_obs=eye[[1, 2, 3]], terminated=torch.tensor([False, True, False]),
                        truncated=torch.tensor([True, False, False]))
    with torch.no_grad():
        qbar = learner.q_target.net.all_actions(batch.next_obs)
        v_next = (qbar * torch.tensor([0.3, 0.7])).sum(-1)
    expected = batch.reward + 0.9 * torch.tensor([1.0, 0.0, 1.0]) * v_next  # truncated row 0 bootstraps
    metrics = learner.update(batch)
    assert metrics["target_mean"] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert set(metrics) >= {"q_loss", "q_mean", "target_mean"}


def test_value_bounds_and_target_clipping_by_hand():
    assert value_bounds(np.array([-1.0, 2.0]), 0.5) == (-2.0, 4.0)
    assert value_bounds(np.array([1.0, 2.0]), 0.9) == pytest.approx((0.0, 20.0))  # 0 is always inside
    assert value_bounds(np.array([1.0]), 1.0) is None
    pi = TabularPolicy(np.tile([0.3, 0.7], (5, 1)))
    learner = FQELearner(small_config(gamma=0.5), CHAIN_OBS, CHAIN_ACT, policy=pi)
    eye = torch.eye(5)
    batch = Transitions(obs=eye[[0, 1]], action=torch.tensor([1, 0]), reward=torch.tensor([5.0, -3.0]),
                        next_obs=eye[[1, 2]], terminated=torch.tensor([True, True]),
                        truncated=torch.tensor([False, False]))
    assert learner.update(batch)["target_mean"] == pytest.approx(1.0)  # unclipped: (5 - 3) / 2
    learner.target_bounds = (-1.0, 2.0)
    assert learner.update(batch)["target_mean"] == pytest.approx((2.0 - 1.0) / 2)


def test_fit_clips_targets_to_the_training_rewards_bounds(tmp_path):
    data = collect(lambda: ChainEnv(5, 0.1, 20), TabularPolicy(np.full((5, 2), 0.5)), 400, seed=0)
    pi = TabularPolicy(np.tile([0.3, 0.7], (5, 1)))
    on = fit_fqe(data, pi, 0.9, small_config(), steps=10, seed=0)
    assert on.target_bounds == pytest.approx(value_bounds(data.rewards, 0.9))
    assert fit_fqe(data, pi, 0.9, small_config(clip_targets=False), steps=10, seed=0).target_bounds is None


def test_policy_untouched_state_dict_roundtrip_and_determinism():
    pi = TabularPolicy(np.tile([0.3, 0.7], (5, 1)))
    before = {k: v.clone() for k, v in pi.state_dict().items()}
    data = collect(lambda: ChainEnv(), TabularPolicy(np.full((5, 2), 0.5)), 50)
    a = fit_fqe(data, pi, 0.9, small_config(), steps=30, seed=3)
    b = fit_fqe(data, pi, 0.9, small_config(), steps=30, seed=3)
    for k, v in pi.state_dict().items():
        torch.testing.assert_close(v, before[k])
    obs = torch.eye(5)
    torch.testing.assert_close(a.value(obs), b.value(obs))
    c = FQELearner(small_config(gamma=0.9), CHAIN_OBS, CHAIN_ACT, seed=99, policy=pi)
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(c.q(obs, torch.ones(5, dtype=torch.long)), a.q(obs, torch.ones(5, dtype=torch.long)))
    assert a.q_net._obs_norm[0] is pi.obs_norm and a.q_target.net._obs_norm[0] is pi.obs_norm


def test_continuous_actions_sampled_expectation():
    """The target's E_pi Qbar(s', .) equals a loop over n clipped samples (std 1.6: many fall outside the box)."""
    obs_space, act_space = gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Box(-1, 1, (2,), np.float32)
    pi = GaussianPolicy(3, 2, hidden=(16,), log_std_init=0.5)
    learner = FQELearner(small_config(target_action_samples=4, gamma=0.9), obs_space, act_space, policy=pi)
    g = torch.Generator().manual_seed(0)
    batch = Transitions(obs=torch.rand(32, 3, generator=g), action=torch.rand(32, 2, generator=g),
                        reward=torch.rand(32, generator=g), next_obs=torch.rand(32, 3, generator=g),
                        terminated=torch.rand(32, generator=g) < 0.3, truncated=torch.zeros(32, dtype=torch.bool))
    torch.manual_seed(5)
    with torch.no_grad():
        samples = pi.distribution(batch.next_obs).sample((4,))
        assert (samples.abs() > 1).any()
        v_next = torch.stack([learner.q_target(batch.next_obs, a.clamp(-1, 1)) for a in samples]).mean(0)
        y = batch.reward + 0.9 * (~batch.terminated).float() * v_next
        q_loss = ((learner.q_net(batch.obs, batch.action) - y) ** 2).mean()
    torch.manual_seed(5)
    m = learner.update(batch)
    assert m["target_mean"] == pytest.approx(float(y.mean()), rel=1e-5)
    assert m["q_loss"] == pytest.approx(float(q_loss), rel=1e-5)
    assert learner.value(batch.obs).shape == (32,) and learner.q(batch.obs, batch.action).shape == (32,)


def test_fqe_bandit_converges_to_means():
    means = [0.0, 0.5, 1.0]
    data = collect(lambda: BanditEnv(3, means, noise_std=0.1), TabularPolicy(np.full((1, 3), 1 / 3), obs_dim=1), 600)
    pi = TabularPolicy([[0.2, 0.3, 0.5]], obs_dim=1)
    fqe = fit_fqe(data, pi, 0.99, small_config(), steps=600, seed=0)
    q = fqe.q_net.all_actions(torch.ones(1, 1))[0].detach().numpy()
    np.testing.assert_allclose(q, means, atol=0.05)
    assert fqe.value(torch.ones(1, 1)).item() == pytest.approx(0.65, abs=0.04)


def test_fqe_chain_converges_to_true_q():
    gamma = 0.9
    target = np.tile([0.2, 0.8], (5, 1))
    data = collect(lambda: ChainEnv(), TabularPolicy(np.full((5, 2), 0.5)), 600, seed=1)
    fqe = fit_fqe(data, TabularPolicy(target), gamma, small_config(), steps=1500, seed=0)
    q_hat = fqe.q_net.all_actions(torch.eye(5))[:4].detach().numpy()
    # FQE bootstraps through truncation: it estimates the infinite-horizon Q of the target policy.
    np.testing.assert_allclose(q_hat, chain_q(target, gamma, horizon=None)[:4], atol=0.05)


def test_registered_as_ope_algorithm():
    from hybridrl.algos import get_algo

    spec = get_algo("fqe")
    assert spec.learner_cls is FQELearner and spec.regime == "ope"
