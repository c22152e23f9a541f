"""HNPG: config, offline-data requirements, the hybrid critic and advantages, and a hard-exploration chain."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from hybridrl.algos import get_algo
from hybridrl.algos.hnpg import HNPGConfig, HNPGLearner
from hybridrl.data.batches import Segments, Transitions
from hybridrl.errors import ConfigError, ShapeError

OBS1 = gym.spaces.Box(0.0, 1.0, (1,), np.float32)


def _bandit_segments(n: int, action: int, reward: float) -> Segments:
    ones = torch.ones(1, n, dtype=torch.bool)
    return Segments(obs=torch.ones(1, n, 1), action=torch.full((1, n), action), reward=torch.full((1, n), reward),
                    next_obs=torch.ones(1, n, 1), terminated=ones, truncated=~ones, behavior_log_prob=torch.zeros(1, n))


def _bandit_transitions(n: int, action: int, reward: float) -> Transitions:
    return Transitions(obs=torch.ones(n, 1), action=torch.full((n,), action), reward=torch.full((n,), reward),
                       next_obs=torch.ones(n, 1), terminated=torch.ones(n, dtype=torch.bool),
                       truncated=torch.zeros(n, dtype=torch.bool))


def test_config_defaults_and_checks():
    c = HNPGConfig()
    assert (c.max_kl, c.damping, c.cg_iters, c.line_search, c.gae_lambda, c.critic_lr, c.critic_iters,
            c.value_samples, c.offline_ratio, c.n_steps) == (0.01, 0.1, 10, True, 0.97, 3e-4, 30, 10, 1.0, 1000)
    spec = get_algo("hnpg")
    assert spec.config_cls is HNPGConfig and spec.learner_cls is HNPGLearner and spec.regime == "on_policy"
    with pytest.raises(ConfigError, match="reward_scale"):
        HNPGConfig(normalize_reward=True)
    for bad in (dict(offline_ratio=0.0), dict(critic_iters=0), dict(value_samples=0), dict(critic_hidden=()),
                dict(max_kl=-1.0)):
        with pytest.raises(ConfigError):
            HNPGConfig(**bad)


def test_update_needs_matching_offline_data():
    learner = HNPGLearner(HNPGConfig(n_steps=8), OBS1, gym.spaces.Discrete(2))
    seg = _bandit_segments(8, 0, 0.0)
    with pytest.raises(ConfigError, match="offline"):
        learner.update(seg)
    bad = Transitions(obs=torch.ones(4, 2), action=torch.zeros(4, dtype=torch.long), reward=torch.zeros(4),
                      next_obs=torch.ones(4, 2), terminated=torch.ones(4, dtype=torch.bool),
                      truncated=torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ShapeError, match="offline"):
        learner.update(seg, bad)


def test_state_value_is_the_policy_average_of_q():
    learner = HNPGLearner(HNPGConfig(), OBS1, gym.spaces.Discrete(3))
    obs = torch.rand(5, 1)
    with torch.no_grad():
        exact = (learner.policy.probs(obs) * learner.q.all_actions(obs)).sum(-1)
    assert torch.allclose(learner.state_value(obs), exact)
    box = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    learner = HNPGLearner(HNPGConfig(value_samples=4000), OBS1, box, seed=1)
    obs = torch.rand(3, 1)
    with torch.no_grad():  # independent Monte-Carlo estimate of E_{a ~ N(mu, sigma)} Q(s, a)
        mu, std = learner.policy.mean(obs), learner.policy.log_std.exp()
        a = mu[None] + std * torch.randn(4000, 3, 2, generator=torch.Generator().manual_seed(5))
        reference = learner.q(obs.expand(4000, 3, 1).reshape(-1, 1), a.reshape(-1, 2)).reshape(4000, 3).mean(0)
    assert torch.allclose(learner.state_value(obs), reference, atol=0.02)


def test_offline_data_alone_teaches_the_critic_and_moves_the_policy():
    """On-policy data only ever pulls arm 0 (reward 0); offline data only arm 1 (reward 1).

    The critic must learn Q(s, 1) ~ 1 from the offline targets alone, and the NPG step, whose offline rows carry
    policy-sampled actions with A = Q - V, must raise pi(1) within the KL limit.
    """
    cfg = HNPGConfig(n_steps=64, critic_lr=1e-2, critic_iters=300, hidden=(8,), critic_hidden=(16,), offline_ratio=0.5)
    learner = HNPGLearner(cfg, OBS1, gym.spaces.Discrete(2), seed=0)
    s = torch.ones(1, 1)
    with torch.no_grad():
        p_before = float(learner.policy.probs(s)[0, 1])
    m = learner.update(_bandit_segments(64, 0, 0.0), _bandit_transitions(500, 1, 1.0))
    with torch.no_grad():
        q = learner.q.all_actions(s)[0]
        p_after = float(learner.policy.probs(s)[0, 1])
    assert q.tolist() == pytest.approx([0.0, 1.0], abs=0.1)
    assert m["offline_batch"] == 32.0 and m["q_loss_off"] < 0.01 and m["q_loss_on"] < 0.01
    assert p_after > p_before + 0.02 and m["kl"] <= 1.5 * cfg.max_kl
    assert m["advantage_off_mean"] > 0  # policy samples at offline states: arm 1 (A > 0) beats arm 0 (A < 0) on average


@pytest.mark.slow
def test_hnpg_solves_a_chain_that_random_exploration_cannot(tmp_path):
    """25-state chain without slip, 40-step episodes: a uniform policy reaches the goal with probability 1.5e-4 per
    episode. With 3k offline steps of a 90%-right behaviour, HNPG's critic learns the way (measured, seeds 0-2: the
    training return first exceeds 0.5 after 5-6.5k steps and reaches 1.0 by ~8k; deterministic eval 1.0)."""
    from hybridrl.data.collect import collect
    from hybridrl.envs.toy import TabularPolicy, chain_policy_value
    from hybridrl.loops.evaluate import evaluate_policy
    from hybridrl.loops.on_policy import train_on_policy
    from hybridrl.runs import RunDir, read_metrics

    env_id, n = "hybridrl-test/Chain25-v0", 25
    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point="hybridrl.envs.toy:ChainEnv",
                     kwargs=dict(n_states=n, slip=0.0, max_steps=40))
    assert chain_policy_value(np.full((n, 2), 0.5), 1.0, slip=0.0, horizon=40) < 2e-4
    data = collect(env_id, TabularPolicy(np.tile([0.1, 0.9], (n, 1))), 3000, seed=0, progress=False)
    cfg = HNPGConfig(num_envs=4, n_steps=64, gamma=0.99, critic_lr=3e-3)
    run = RunDir.create(tmp_path / "hnpg")
    learner = train_on_policy(env_id, cfg, 10_240, run=run, seed=0, progress=False, algo="hnpg",
                              offline=data.transitions())
    ret = read_metrics(run.metrics_csv)["episode_return"]
    assert ret[0] == 0.0 and ret[-1] >= 0.8, ret
    assert evaluate_policy(learner.policy, env_id, 10, seed=7)["mean"] >= 0.9
