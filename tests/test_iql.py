"""IQL learner: the reward scale (config field, prepare, state dict), renamed config keys, and one update against
the losses written out independently (Kostrikov et al. 2021, eqs. 5-7)."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

from hybridrl.algos.iql import IQLConfig, IQLLearner
from hybridrl.data.batches import Transitions
from hybridrl.data.dataset import Dataset
from hybridrl.errors import ConfigError
from hybridrl.runs import RunDir, apply_overrides, dataclass_from_dict, load_checkpoint, save_checkpoint

OBS = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
DIS = gym.spaces.Discrete(3)


def _dataset(episode_rewards: list[list[float]]) -> Dataset:
    eps = []
    for rewards in episode_rewards:
        t = len(rewards)
        term = np.zeros(t, bool)
        term[-1] = True
        eps.append(dict(observations=np.arange(2 * (t + 1), dtype=np.float32).reshape(t + 1, 2),
                        actions=np.zeros(t, np.int64), rewards=np.asarray(rewards, np.float32), terminations=term,
                        truncations=np.zeros(t, bool)))
    return Dataset.from_episodes(eps, OBS, DIS)


def test_prepare_uses_1000_over_the_episode_return_spread():
    data = _dataset([[1.0, 2.0], [5.0], [-1.0, 0.5, 0.0]])  # returns 3, 5, -0.5: spread 5.5
    learner = IQLLearner(IQLConfig(hidden=(8,)), OBS, DIS)
    assert learner.reward_scale is None
    learner.prepare(data)
    assert learner.reward_scale == pytest.approx(1000.0 / 5.5)
    flat = IQLLearner(IQLConfig(hidden=(8,)), OBS, DIS)
    flat.prepare(_dataset([[1.0, 1.0], [2.0]]))  # equal returns: no spread to divide by
    assert flat.reward_scale == 1.0


def test_a_fixed_reward_scale_is_kept_and_saved(tmp_path):
    learner = IQLLearner(IQLConfig(hidden=(8,), reward_scale=2.5), OBS, DIS)
    assert learner.reward_scale == 2.5
    learner.prepare(_dataset([[1.0], [100.0]]))
    assert learner.reward_scale == 2.5
    prepared = IQLLearner(IQLConfig(hidden=(8,)), OBS, DIS)
    prepared.prepare(_dataset([[0.0], [4.0]]))
    path = save_checkpoint(RunDir(tmp_path / "run"), 1, {"learner": prepared.state_dict()})
    _, state = load_checkpoint(path)
    resumed = IQLLearner(IQLConfig(hidden=(8,)), OBS, DIS, seed=5)
    resumed.load_state_dict(state["learner"])
    assert resumed.reward_scale == 250.0  # the scale in use travels with the learner, not the config


def test_reward_scale_validation_and_update_before_prepare():
    with pytest.raises(ConfigError, match="reward_scale"):
        IQLConfig(reward_scale=0.0)
    with pytest.raises(ConfigError, match="beta"):
        IQLConfig(beta=-1.0)
    learner = IQLLearner(IQLConfig(hidden=(8,)), OBS, DIS)
    batch = Transitions(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(4), torch.zeros(4, 2),
                        torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ConfigError, match=r"prepare\(dataset\)"):
        learner.update(batch)


def test_old_config_keys_say_what_they_were_renamed_to():
    with pytest.raises(ConfigError, match="'temperature' of IQLConfig was renamed to 'beta'"):
        apply_overrides(IQLConfig(), ["temperature=3.0"])
    with pytest.raises(ConfigError, match="'normalize_reward' of IQLConfig was renamed to 'reward_scale'"):
        dataclass_from_dict(IQLConfig, {"normalize_reward": False})
    assert apply_overrides(IQLConfig(), ["beta=10", "reward_scale=0.5"]) == IQLConfig(beta=10.0, reward_scale=0.5)


@pytest.mark.parametrize("space", [DIS, gym.spaces.Box(-1.0, 1.0, (2,), np.float32)], ids=["discrete", "continuous"])
def test_one_update_matches_the_losses_written_out(space):
    """V, Q and actor losses of one update against eqs. 5-7 evaluated on copies of the networks before the step."""
    cfg = IQLConfig(hidden=(8,), reward_scale=2.0, gamma=0.9, expectile=0.7, beta=2.0, max_weight=3.0)
    learner = IQLLearner(cfg, OBS, space, seed=1)
    g = torch.Generator().manual_seed(0)
    n = 32
    action = (torch.randint(0, 3, (n,), generator=g) if isinstance(space, gym.spaces.Discrete)
              else torch.rand(n, 2, generator=g) * 2 - 1)
    batch = Transitions(torch.randn(n, 2, generator=g), action, torch.randn(n, generator=g),
                        torch.randn(n, 2, generator=g), torch.rand(n, generator=g) < 0.3,
                        torch.zeros(n, dtype=torch.bool))
    critic, target, value, policy = (copy.deepcopy(m) for m in (learner.critic, learner.critic_target.net,
                                                                 learner.value, learner.policy))
    metrics = learner.update(batch)
    with torch.no_grad():
        qbar = torch.minimum(target.q1(batch.obs, batch.action), target.q2(batch.obs, batch.action))
        u = qbar - value(batch.obs)
        v_loss = torch.where(u < 0, 0.3, 0.7) * u**2
        # the critics regress on the value net AFTER its step (the learner's order: V, then Q, then the actor)
        y = 2.0 * batch.reward + 0.9 * (~batch.terminated).float() * learner.value(batch.next_obs)
        q_loss = ((critic.q1(batch.obs, batch.action) - y) ** 2).mean() + ((critic.q2(batch.obs, batch.action) - y)
                                                                           ** 2).mean()
        weight = torch.clamp(torch.exp(2.0 * u), max=3.0)
        actor_loss = -(weight * policy.log_prob(batch.obs, batch.action)).mean()
    assert metrics["value_loss"] == pytest.approx(float(v_loss.mean()), rel=1e-5)
    assert metrics["q_loss"] == pytest.approx(float(q_loss), rel=1e-5)
    assert metrics["actor_loss"] == pytest.approx(float(actor_loss), rel=1e-5)
    assert metrics["weight_max"] == pytest.approx(float(weight.max()), rel=1e-6) and metrics["weight_max"] <= 3.0
    tau = cfg.tau  # Polyak targets
    for t_new, t_old, online in zip(learner.critic_target.parameters(), target.parameters(),
                                    learner.critic.parameters()):
        torch.testing.assert_close(t_new, (1 - tau) * t_old + tau * online)
