"""Toy environments: dynamics, registration, analytic values vs Monte-Carlo rollouts, TabularPolicy."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import hybridrl.envs  # noqa: F401  (registers the toy envs)
from hybridrl.envs.toy import (
    BanditEnv,
    ChainEnv,
    TabularPolicy,
    bandit_value,
    chain_policy_value,
    chain_q,
    chain_transition,
    chain_value,
)
from hybridrl.errors import ConfigError, ShapeError
from hybridrl.nn import POLICY_CLASSES, load_policy, policy_matches_spaces, save_policy


def mc_returns(make_env, policy, n_episodes: int, gamma: float, seed: int = 0) -> np.ndarray:
    """Discounted returns of ``n_episodes`` rollouts of ``policy``, all envs stepped in lockstep."""
    torch.manual_seed(seed)
    envs = [make_env() for _ in range(n_episodes)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    ret, disc = np.zeros(n_episodes), np.ones(n_episodes)
    active = np.arange(n_episodes)
    while active.size:
        actions, _ = policy.act(obs[active])
        still = []
        for i, a in zip(active, actions):
            o, r, term, trunc, _ = envs[i].step(a)
            ret[i] += disc[i] * r
            disc[i] *= gamma
            obs[i] = o
            if not (term or trunc):
                still.append(i)
        active = np.asarray(still, dtype=np.int64)
    return ret


# ------------------------------------------------------------------------------------------------ envs
def test_registered_and_pass_env_checker():
    for env_id in ("hybridrl/Bandit-v0", "hybridrl/Chain-v0"):
        env = gym.make(env_id)
        check_env(env.unwrapped, skip_render_check=True)
    assert gym.make("hybridrl/Chain-v0", n_states=7).observation_space.shape == (7,)


def test_make_env_builds_toy_envs():
    from hybridrl.envs import make_env

    env = make_env("hybridrl/Chain-v0", seed=0)
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs, [1, 0, 0, 0, 0])


def test_bandit_one_step_and_value():
    env = BanditEnv(n_arms=3, means=[0.0, 0.5, 2.0], noise_std=1.0)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [1.0])
    _, _, term, trunc, _ = env.step(1)
    assert term and not trunc
    probs = np.array([[0.2, 0.3, 0.5]])
    truth = bandit_value(probs, env.means)
    assert truth == pytest.approx(1.15)
    ret = mc_returns(lambda: BanditEnv(3, [0.0, 0.5, 2.0], noise_std=1.0), TabularPolicy(probs, obs_dim=1), 3000, 0.9)
    assert abs(ret.mean() - truth) < 3 * ret.std(ddof=1) / np.sqrt(len(ret))


def test_bandit_bad_arguments():
    with pytest.raises(ConfigError):
        BanditEnv(n_arms=2, means=[1.0, 2.0, 3.0])
    with pytest.raises(ConfigError):
        BanditEnv(noise_std=-1.0)


def test_chain_dynamics_termination_and_truncation():
    env = ChainEnv(n_states=4, slip=0.0, max_steps=5)
    env.reset(seed=0)
    for _ in range(3):
        obs, r, term, trunc, info = env.step(1)
    assert term and not trunc and r == 1.0 and info["state"] == 3
    np.testing.assert_array_equal(obs, [0, 0, 0, 1])
    env.reset()
    flags = [env.step(0)[2:4] for _ in range(5)]
    assert flags[-1] == (False, True) and all(f == (False, False) for f in flags[:-1])
    assert env.state == 0  # left at state 0 stays
    with pytest.raises(ConfigError):
        ChainEnv(slip=1.5)


def test_chain_transition_is_stochastic():
    p = chain_transition(5, slip=0.1)
    np.testing.assert_allclose(p[:-1].sum(-1), 1.0)
    assert p[-1].sum() == 0.0
    assert p[2, 1, 3] == pytest.approx(0.9) and p[2, 1, 1] == pytest.approx(0.1)
    assert p[0, 0, 0] == pytest.approx(0.9) and p[0, 0, 1] == pytest.approx(0.1)


def test_chain_value_hand_computed_horizon_one():
    # One step left: only state N-2 can reach the end; Pr = pi(right)(1 - slip) + pi(left) slip.
    pi = np.tile([0.3, 0.7], (5, 1))
    v = chain_value(pi, gamma=0.9, slip=0.1, horizon=1)
    np.testing.assert_allclose(v, [0, 0, 0, 0.7 * 0.9 + 0.3 * 0.1, 0])
    # Two steps, deterministic, always right, gamma 0.5: V(2) = 0.5 (reward at the 2nd step), V(3) = 1.
    v2 = chain_value(np.tile([0.0, 1.0], (5, 1)), gamma=0.5, slip=0.0, horizon=2)
    np.testing.assert_allclose(v2, [0, 0, 0.5, 1.0, 0])


def test_chain_infinite_horizon_solves_bellman_and_is_the_limit():
    pi = np.tile([0.4, 0.6], (6, 1))
    gamma, slip = 0.95, 0.2
    q = chain_q(pi, gamma, slip, horizon=None)
    p = chain_transition(6, slip)
    v = (pi * q).sum(1)
    cont = np.r_[np.ones(5), 0.0]
    np.testing.assert_allclose(q[:-1], (p[:, :, -1] + gamma * p @ (cont * v))[:-1], atol=1e-12)
    np.testing.assert_allclose(chain_value(pi, gamma, slip, horizon=2000), v, atol=1e-10)
    assert chain_value(pi, gamma, slip, horizon=20)[0] < v[0]  # truncation loses value


@pytest.mark.parametrize("probs,gamma", [([0.5, 0.5], 0.9), ([0.2, 0.8], 0.95), ([0.7, 0.3], 1.0)])
def test_chain_value_matches_monte_carlo(probs, gamma):
    pi = np.tile(probs, (5, 1))
    truth = chain_policy_value(pi, gamma, slip=0.1, horizon=20)
    ret = mc_returns(lambda: ChainEnv(5, 0.1, 20), TabularPolicy(pi), 2000, gamma, seed=1)
    se = ret.std(ddof=1) / np.sqrt(len(ret))
    assert abs(ret.mean() - truth) < 3 * se, (ret.mean(), truth, se)


def test_chain_value_bad_inputs():
    with pytest.raises(ShapeError):
        chain_value(np.ones((5, 3)) / 3, 0.9)
    with pytest.raises(ShapeError):
        chain_value(np.ones((5, 2)), 0.9)
    with pytest.raises(ConfigError):
        chain_value(np.full((5, 2), 0.5), 1.5)


# --------------------------------------------------------------------------------------- TabularPolicy
def test_tabular_policy_interface():
    probs = np.array([[0.1, 0.9], [0.5, 0.5], [1.0, 0.0]])
    pi = TabularPolicy(probs)
    obs = torch.eye(3)
    assert pi.discrete and "TabularPolicy" in POLICY_CLASSES
    np.testing.assert_allclose(pi.probs(obs).numpy(), probs)
    np.testing.assert_allclose(pi.log_prob(obs, torch.tensor([1, 0, 0])).numpy(), np.log([0.9, 0.5, 1.0]))
    assert pi.log_prob(obs[2:], torch.tensor([1])).item() == -np.inf
    np.testing.assert_array_equal(pi.mode(obs).numpy(), [1, 0, 0])
    a, logp = pi.act(np.eye(3, dtype=np.float32)[2])
    assert a == 0 and logp == 0.0
    assert policy_matches_spaces(pi, gym.spaces.Box(0, 1, (3,)), gym.spaces.Discrete(2)) is None
    assert not any(p.requires_grad for p in pi.parameters())


def test_tabular_policy_save_load_roundtrip(tmp_path):
    pi = TabularPolicy(np.tile([0.25, 0.75], (5, 1)))
    save_policy(pi, tmp_path / "pi", env_id="hybridrl/Chain-v0")
    loaded = load_policy(tmp_path / "pi", env_id="hybridrl/Chain-v0")
    assert isinstance(loaded, TabularPolicy)
    np.testing.assert_allclose(loaded.probs(torch.eye(5)).numpy(), pi.probs(torch.eye(5)).numpy())


def test_tabular_policy_bad_tables():
    with pytest.raises(ShapeError):
        TabularPolicy([[0.5, 0.6]])
    with pytest.raises(ShapeError):
        TabularPolicy(np.full((3, 2), 0.5), obs_dim=4)
