"""Tests for hybridrl.data.collect: behaviour log-probs, full episodes, Minari round trip, errors."""

from __future__ import annotations

import math

import minari
import numpy as np
import pytest
import torch
from scipy.stats import norm

from hybridrl.data.collect import collect, policy_hash
from hybridrl.data.dataset import Dataset
from hybridrl.envs import make_env
from hybridrl.envs.toy import ChainEnv
from hybridrl.errors import ConfigError, EnvError
from hybridrl.nn import make_policy, save_policy


@pytest.fixture
def root(tmp_path, monkeypatch):
    r = tmp_path / "minari"
    r.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(r))
    return r


def _policy(env_id, seed=0, **kw):
    torch.manual_seed(seed)
    env = make_env(env_id)
    return make_policy(env.observation_space, env.action_space, **kw)


def _check_full_episodes(ds, n_steps):
    last = ds.episode_starts[1:] - 1
    assert np.all(ds.terminations[last] | ds.truncations[last])
    assert len(ds) >= n_steps and len(ds) - ds.episode_lengths()[-1] < n_steps


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_collect_random_round_trip_through_minari(root, env_id):
    ds = collect(env_id, None, 250, seed=0, progress=False)
    _check_full_episodes(ds, 250)
    expect = -math.log(2) if env_id == "CartPole-v1" else -math.log(4.0)  # Discrete(2) / Box[-2, 2]
    np.testing.assert_allclose(ds.behavior_log_prob, expect)
    ds.save(root / f"{env_id.lower()}-random-v0")
    m = minari.load_dataset(f"{env_id.lower()}-random-v0")
    assert m.total_steps == len(ds) and m.total_episodes == ds.n_episodes
    assert m.env_spec.id == env_id and m.storage.metadata["algorithm_name"] == "uniform random"
    for e, ep in enumerate(m.iterate_episodes()):
        a, b = ds.episode_starts[e], ds.episode_starts[e + 1]
        lp = ep.infos["behavior_log_prob"]
        assert lp.shape == (b - a + 1,) and np.isnan(lp[0])  # Minari's T+1 alignment
        np.testing.assert_allclose(lp[1:], ds.behavior_log_prob[a:b])
        np.testing.assert_array_equal(ep.actions, ds.actions[a:b])
        np.testing.assert_array_equal(ep.observations[1:], ds.next_observations[a:b])
    back = Dataset.load(f"{env_id.lower()}-random-v0")
    assert back.metadata["behavior_policy"]["kind"] == "random"
    np.testing.assert_array_equal(back.behavior_log_prob, ds.behavior_log_prob)


def test_collect_is_reproducible():
    a = collect("CartPole-v1", None, 100, seed=3, progress=False)
    b = collect("CartPole-v1", None, 100, seed=3, progress=False)
    np.testing.assert_array_equal(a.observations, b.observations)
    np.testing.assert_array_equal(a.actions, b.actions)


def test_collect_discrete_policy_log_prob(tmp_path):
    pol = _policy("CartPole-v1")
    ds = collect("CartPole-v1", pol, 120, seed=1, progress=False)
    with torch.no_grad():
        ref = pol.log_prob(torch.from_numpy(ds.observations), torch.from_numpy(ds.actions)).double().numpy()
    np.testing.assert_allclose(ds.behavior_log_prob, ref, rtol=1e-5, atol=1e-6)
    bp = ds.metadata["behavior_policy"]
    assert bp["kind"] == "policy" and bp["policy_sha256"] == policy_hash(pol)
    # a saved policy directory works too and is recorded
    save_policy(pol, tmp_path / "pol", env_id="CartPole-v1")
    ds2 = collect("CartPole-v1", str(tmp_path / "pol"), 50, seed=1, progress=False)
    assert ds2.metadata["behavior_policy"]["policy_dir"] == str(tmp_path / "pol")
    assert ds2.metadata["behavior_policy"]["policy_sha256"] == bp["policy_sha256"]


def test_collect_epsilon_mixture_log_prob_discrete():
    pol = _policy("CartPole-v1")
    eps = 0.3
    ds = collect("CartPole-v1", pol, 150, seed=2, epsilon=eps, progress=False)
    with torch.no_grad():
        p = pol.probs(torch.from_numpy(ds.observations)).double().numpy()
    p_a = p[np.arange(len(ds)), ds.actions]
    np.testing.assert_allclose(ds.behavior_log_prob, np.log((1 - eps) * p_a + eps * 0.5), rtol=1e-5, atol=1e-6)


def test_collect_epsilon_mixture_log_prob_box():
    pol = _policy("Pendulum-v1")
    eps = 0.25
    ds = collect("Pendulum-v1", pol, 400, seed=0, epsilon=eps, progress=False)
    low, high = -2.0, 2.0
    with torch.no_grad():
        dist = pol.distribution(torch.from_numpy(ds.observations))
        mu, sd = dist.base_dist.loc.double().numpy()[:, 0], dist.base_dist.scale.double().numpy()[:, 0]
    a = ds.actions[:, 0].astype(np.float64)
    assert np.all((a >= low) & (a <= high))
    p_a = norm.pdf(a, mu, sd)  # density at the stored (clipped) action
    expect = np.log((1 - eps) * p_a + eps / (high - low))
    np.testing.assert_allclose(ds.behavior_log_prob, expect, rtol=1e-5, atol=1e-6)


def test_collect_action_noise_log_prob():
    pol = _policy("Pendulum-v1", tanh_mean=True)
    sigma = 0.3
    ds = collect("Pendulum-v1", pol, 200, seed=0, action_noise=sigma, progress=False)
    with torch.no_grad():
        mode = pol.mode(torch.from_numpy(ds.observations)).double().numpy()[:, 0]
    a = ds.actions[:, 0].astype(np.float64)
    np.testing.assert_allclose(ds.behavior_log_prob, norm.logpdf(a, mode, sigma), rtol=1e-5, atol=1e-6)
    assert np.std(a - mode) == pytest.approx(sigma, rel=0.2)
    assert ds.metadata["behavior_policy"]["action_noise"] == sigma


def test_collect_hopper_random():
    ds = collect("Hopper-v5", None, 300, seed=0, progress=False)
    _check_full_episodes(ds, 300)
    assert ds.observations.shape[1] == 11 and ds.actions.shape[1:] == (3,)
    np.testing.assert_allclose(ds.behavior_log_prob, -3 * math.log(2.0))
    assert ds.metadata["ref_max_score"] == 3234.3 and ds.normalized_score(ds.episode_returns()) is not None


def test_collect_errors():
    with pytest.raises(EnvError, match="policy does not fit"):
        collect("Pendulum-v1", _policy("CartPole-v1"), 10, progress=False)
    with pytest.raises(ConfigError, match="action_noise"):
        collect("CartPole-v1", _policy("CartPole-v1"), 10, action_noise=0.1, progress=False)
    with pytest.raises(ConfigError, match="action_noise needs a policy"):
        collect("Pendulum-v1", None, 10, action_noise=0.1, progress=False)
    with pytest.raises(ConfigError, match="epsilon"):
        collect("CartPole-v1", None, 10, epsilon=1.5, progress=False)
    with pytest.raises(ConfigError, match="n_steps"):
        collect("CartPole-v1", None, 0, progress=False)
    with pytest.raises(EnvError, match="unknown environment id"):
        collect("CartPol-v1", None, 10, progress=False)


def test_collect_progress_bar_goes_to_stderr(capsys):
    collect("CartPole-v1", None, 20, seed=0, progress=True)
    out = capsys.readouterr()
    assert out.out == "" and "collect CartPole-v1" in out.err


def test_collect_with_a_tanh_gaussian_policy_records_its_exact_log_prob():
    """Policies that are not diagonal Normal (SAC's tanh-Gaussian) sample and score with their own density."""
    import torch

    from hybridrl.nn.tanh_gaussian import TanhGaussianPolicy

    policy = TanhGaussianPolicy(3, 1, (16,), "relu", True, [-2.0], [2.0])
    ds = collect("Pendulum-v1", policy, 200, seed=3, progress=False)
    with torch.no_grad():
        logp = policy.log_prob(torch.as_tensor(ds.observations), torch.as_tensor(ds.actions)).numpy()
    np.testing.assert_allclose(ds.behavior_log_prob, logp, atol=1e-5)
    again = collect("Pendulum-v1", policy, 200, seed=3, progress=False)
    np.testing.assert_array_equal(again.actions, ds.actions)  # seeded


class _InterruptingChain(ChainEnv):
    """The chain, but Ctrl-C arrives during the 7th step."""

    def reset(self, **kw):
        self.calls = getattr(self, "calls", 0)
        return super().reset(**kw)

    def step(self, action):
        self.calls += 1
        if self.calls == 7:
            raise KeyboardInterrupt
        return super().step(action)


def test_interrupted_collection_raises_interrupted_and_returns_nothing(root):
    import gymnasium as gym

    from hybridrl.errors import Interrupted

    if "hybridrl-test/InterruptingChain-v0" not in gym.registry:
        gym.register("hybridrl-test/InterruptingChain-v0", entry_point=_InterruptingChain)
    with pytest.raises(Interrupted, match="interrupted at step 6; nothing saved") as info:
        collect("hybridrl-test/InterruptingChain-v0", None, 100, progress=False)
    assert info.value.step == 6 and info.value.checkpoint is None
    assert not any(root.iterdir())  # nothing written
