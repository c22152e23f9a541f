"""Tests for hybridrl.nn: the NumPy rollout samplers agree with the PyTorch policies; cached normaliser stats."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from hybridrl.nn import GaussianPolicy, ObsNormalizer, make_policy, numpy_mlp

BOX = gym.spaces.Box(-2.0, 3.0, (3,), np.float32)
OBS = gym.spaces.Box(-np.inf, np.inf, (5,), np.float32)


def _policy(action_space, **kw):
    torch.manual_seed(0)
    policy = make_policy(OBS, action_space, hidden=(16, 16), **kw)
    policy.obs_norm.update(np.random.default_rng(0).normal(2.0, 3.0, (100, 5)))
    with torch.no_grad():  # a non-trivial last layer, so the distribution is not near uniform / zero-mean
        last = policy.mean_net[-1] if hasattr(policy, "mean_net") else policy.logits[-1]
        last.weight.normal_(0, 1.0)
    return policy


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_numpy_mlp_matches_torch(activation):
    torch.manual_seed(1)
    from hybridrl.nn import mlp

    net = mlp(5, 3, (16, 8), activation)
    x = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32)
    np.testing.assert_allclose(numpy_mlp(net)(x), net(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="Linear, Tanh and ReLU"):
        numpy_mlp(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sigmoid()))


def test_obs_normalizer_numpy_and_cache_follow_updates():
    norm = ObsNormalizer(4)
    x = np.random.default_rng(2).normal(5.0, 2.0, (50, 4)).astype(np.float32)
    norm.update(x)
    first = norm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(norm.numpy()(x), first, rtol=1e-5, atol=1e-5)
    assert abs(first.mean()) < 1e-4  # normalised with the statistics of x
    norm.update(x + 10.0)  # the cached float32 stats must be refreshed
    expected = ((x - norm.mean.numpy()) / np.sqrt(norm.var.numpy() + norm.eps)).clip(-10, 10)
    np.testing.assert_allclose(norm(torch.from_numpy(x)).numpy(), expected, rtol=1e-5, atol=1e-5)
    other = ObsNormalizer(4)
    other.load_state_dict(ObsNormalizer(4).state_dict())  # identity stats loaded in place
    other(torch.from_numpy(x))
    other.load_state_dict(norm.state_dict())
    np.testing.assert_allclose(other(torch.from_numpy(x)).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_gaussian_sampler_matches_policy_distribution():
    policy = _policy(BOX, log_std_init=-0.5)
    obs = np.random.default_rng(3).normal(2.0, 3.0, (5,)).astype(np.float32)
    mu = policy.mode(torch.from_numpy(obs)[None])[0].detach().numpy()
    np.testing.assert_allclose(policy.sampler(deterministic=True)(obs), mu, rtol=1e-5, atol=1e-5)
    n = 20_000
    draws = policy.sampler(np.random.default_rng(4))(np.repeat(obs[None], n, 0))
    assert draws.shape == (n, 3) and draws.dtype == np.float32
    std = np.exp(-0.5)
    assert np.all(np.abs(draws.mean(0) - mu) < 5 * std / np.sqrt(n))
    assert np.all(np.abs(draws.std(0) - std) < 0.02)


def test_gaussian_sampler_with_tanh_mean_matches_mode():
    torch.manual_seed(0)
    policy = GaussianPolicy(5, 3, (16,), tanh_mean=True, action_low=[-2.0] * 3, action_high=[3.0] * 3)
    obs = np.random.default_rng(5).normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_allclose(policy.sampler(deterministic=True)(obs),
                               policy.mode(torch.from_numpy(obs)).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_categorical_sampler_matches_probabilities():
    policy = _policy(gym.spaces.Discrete(4))
    obs = np.random.default_rng(6).normal(2.0, 3.0, (5,)).astype(np.float32)
    probs = policy.probs(torch.from_numpy(obs)[None])[0].detach().numpy()
    assert policy.sampler(deterministic=True)(obs) == probs.argmax()
    n = 40_000
    draws = policy.sampler(np.random.default_rng(7))(np.repeat(obs[None], n, 0))
    assert draws.shape == (n,) and draws.dtype == np.int64
    freq = np.bincount(draws, minlength=4) / n
    assert np.all(np.abs(freq - probs) < 5 * np.sqrt(probs * (1 - probs) / n) + 1e-9), (freq, probs)


def test_sampler_default_rng_follows_torch_seed_and_is_a_snapshot():
    policy = _policy(BOX)
    obs = np.ones((3, 5), np.float32)
    torch.manual_seed(11)
    a = policy.sampler()(obs)
    torch.manual_seed(11)
    sample = policy.sampler()
    np.testing.assert_array_equal(sample(obs), a)
    with torch.no_grad():
        policy.mean_net[-1].bias.add_(100.0)  # later updates do not reach an existing sampler
    assert np.all(np.abs(sample(obs)) < 50)
