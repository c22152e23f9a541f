"""Tests for hybridrl.envs: make_env, make_vec_env/true_next_obs, RewardScaler, reference scores, space checks."""

from __future__ import annotations

import importlib.util
import json

import gymnasium as gym
import numpy as np
import pytest

from hybridrl.envs import (
    REFERENCE_SCORES,
    RewardScaler,
    check_env_matches,
    make_env,
    make_vec_env,
    normalized_score,
    true_next_obs,
)
from hybridrl.errors import EnvError, ShapeError


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1", "Hopper-v5", "HalfCheetah-v5", "Walker2d-v5"])
def test_make_env_standard_ids(env_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT (a HalfCheetah XML deprecation warning) into the cwd
    env = make_env(env_id, seed=0)
    obs, _ = env.reset()
    assert env.observation_space.contains(obs.astype(env.observation_space.dtype))
    assert isinstance(env, gym.wrappers.RecordEpisodeStatistics)
    if isinstance(env.action_space, gym.spaces.Box):
        # the bounds survive the clipping wrapper (Gymnasium's ClipAction would advertise +-inf)
        assert np.all(np.isfinite(env.action_space.low)) and np.all(np.isfinite(env.action_space.high))
    env.step(env.action_space.sample())
    env.close()


def test_make_env_clips_box_actions():
    a = make_env("Pendulum-v1", seed=3)
    b = make_env("Pendulum-v1", seed=3, clip_actions=False)
    a.reset(seed=3)
    b.reset(seed=3)
    oa, ra, *_ = a.step(np.array([50.0], dtype=np.float32))
    ob, rb, *_ = b.step(np.array([2.0], dtype=np.float32))  # the bound
    np.testing.assert_allclose(oa, ob)
    assert ra == pytest.approx(rb)


def test_make_env_seed_reproducible():
    e1, e2 = make_env("CartPole-v1", seed=7), make_env("CartPole-v1", seed=7)
    np.testing.assert_array_equal(e1.reset()[0], e2.reset()[0])


def test_unknown_env_id_suggests_close_matches():
    with pytest.raises(EnvError, match="Did you mean.*Hopper-v5"):
        make_env("Hoper-v5")
    with pytest.raises(EnvError, match="unknown environment id"):
        make_vec_env("NoSuchEnv-v0", 2)


def test_episode_statistics_recorded():
    env = make_env("CartPole-v1", seed=0)
    env.reset()
    done, n, info = False, 0, {}
    while not done:
        _, _, term, trunc, info = env.step(env.action_space.sample())
        done, n = term or trunc, n + 1
    assert info["episode"]["l"] == n and info["episode"]["r"] == pytest.approx(n)


def test_vec_env_same_step_autoreset_and_true_next_obs():
    envs = make_vec_env("CartPole-v1", num_envs=3, seed=1)
    obs, _ = envs.reset(seed=1)
    seen_done = 0
    for _ in range(200):
        obs, _, term, trunc, infos = envs.step(envs.action_space.sample())
        done = term | trunc
        nxt = true_next_obs(obs, infos, done)
        assert nxt.shape == obs.shape
        np.testing.assert_array_equal(nxt[~done], obs[~done])
        for i in np.flatnonzero(done):
            seen_done += 1
            # the returned obs is a fresh reset (|x| <= 0.05), the true final obs is a terminal CartPole state
            assert np.all(np.abs(obs[i]) <= 0.05)
            final = infos["final_obs"][i]
            np.testing.assert_array_equal(nxt[i], final)
            assert term[i] and (abs(final[0]) > 2.4 or abs(final[2]) > 0.2095)
            assert infos["final_info"]["_episode"][i]
    assert seen_done > 0
    envs.close()


def test_true_next_obs_errors():
    obs = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ShapeError, match="SAME_STEP"):
        true_next_obs(obs, {}, np.array([True, False]))
    with pytest.raises(ShapeError):
        true_next_obs(obs, {}, np.array([True]))
    np.testing.assert_array_equal(true_next_obs(obs, {}, np.array([False, False])), obs)


def _naive_scaled(rewards, dones, gamma, clip, eps):
    """Reference: keep every discounted return seen, pool them once with the prior (mean 0, var 1, count 1e-4)."""
    t_len, n = rewards.shape
    g = np.zeros(n)
    seen, out = [], []
    for t in range(t_len):
        g = g * gamma + rewards[t]
        seen.extend(g.tolist())
        x = np.asarray(seen)
        c0, m, v, k = 1e-4, x.mean(), x.var(), len(x)
        var = (c0 * 1.0 + k * v + m * m * c0 * k / (c0 + k)) / (c0 + k)
        out.append(np.clip(rewards[t] / np.sqrt(var + eps), -clip, clip))
        g = np.where(dones[t], 0.0, g)
    return np.asarray(out)


def test_reward_scaler_matches_naive():
    rng = np.random.default_rng(0)
    rewards = rng.normal(2.0, 3.0, size=(60, 4))
    dones = rng.random((60, 4)) < 0.1
    for clip in (10.0, 0.5):  # 0.5 exercises the clip
        scaler = RewardScaler(gamma=0.99, clip=clip)
        got = np.stack([scaler(rewards[t], dones[t]) for t in range(60)])
        np.testing.assert_allclose(got, _naive_scaled(rewards, dones, 0.99, clip, 1e-8), rtol=1e-10)
    assert np.abs(got).max() == pytest.approx(0.5)


def test_reward_scaler_state_dict_round_trip():
    rng = np.random.default_rng(1)
    a = RewardScaler(0.9)
    for _ in range(10):
        a(rng.normal(size=2), rng.random(2) < 0.2)
    state = json.loads(json.dumps(a.state_dict()))  # JSON-able
    b = RewardScaler(0.5)
    b.load_state_dict(state)
    r, d = rng.normal(size=2), np.array([False, True])
    np.testing.assert_array_equal(a(r, d), b(r, d))
    with pytest.raises(ShapeError):
        a(np.zeros(3), np.zeros(3, bool))


def test_reference_scores_and_normalized_score():
    lo, hi = REFERENCE_SCORES["Hopper-v5"]
    assert normalized_score("Hopper-v5", lo) == pytest.approx(0.0)
    assert normalized_score("Hopper-v5", hi) == pytest.approx(100.0)
    np.testing.assert_allclose(normalized_score("CartPole-v1", np.array([500.0, 500.0])), [100.0, 100.0])
    assert normalized_score("Unknown-v0", 1.0) is None
    assert set(REFERENCE_SCORES) >= {"CartPole-v1", "Pendulum-v1", "Hopper-v5", "HalfCheetah-v5", "Walker2d-v5"}


def test_check_env_matches():
    env = make_env("Pendulum-v1")
    check_env_matches(env, env.observation_space, env.action_space, "dataset x")
    check_env_matches((env.observation_space, env.action_space), env.observation_space, env.action_space, "x")
    wrong_obs = gym.spaces.Box(-1, 1, (4,))
    with pytest.raises(ShapeError, match="dataset x: observation shape"):
        check_env_matches(env, wrong_obs, env.action_space, "dataset x")
    with pytest.raises(EnvError, match="action space"):
        check_env_matches(env, env.observation_space, gym.spaces.Discrete(2), "policy p")
    with pytest.raises(EnvError, match="bounds"):
        check_env_matches(env, env.observation_space, gym.spaces.Box(-1, 1, (1,)), "policy p")


@pytest.mark.skipif(importlib.util.find_spec("hybridrl.envs.toy") is None, reason="toy envs not present")
def test_toy_envs_registered():
    for env_id in ("hybridrl/Chain-v0", "hybridrl/Bandit-v0"):
        env = make_env(env_id, seed=0)
        env.reset()
