"""What on-policy actor-critic learners share: building the actor and critic, and GAE over a rollout."""

from __future__ import annotations

import gymnasium as gym
import torch

from hybridrl.data.batches import Segments
from hybridrl.nn import Policy, ValueNet, make_policy
from hybridrl.ops import gae


def build_actor_critic(config, observation_space: gym.Space, action_space: gym.Space,
                       policy: Policy | None = None) -> tuple[Policy, ValueNet]:
    """The default policy for the spaces (or ``policy``) and a separate ``ValueNet`` sharing its normaliser.

    ``config`` provides ``hidden``, ``activation``, ``normalize_obs`` and ``log_std_init`` (continuous actions).
    """
    policy = policy or make_policy(
        observation_space, action_space, config.hidden, config.activation, config.normalize_obs,
        **({} if isinstance(action_space, gym.spaces.Discrete) else {"log_std_init": config.log_std_init}),
    )
    critic = ValueNet(observation_space.shape[0], config.hidden, config.activation, obs_norm=policy.obs_norm)
    return policy, critic


@torch.no_grad()
def rollout_advantages(critic: ValueNet, batch: Segments, gamma: float, gae_lambda: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GAE of a rollout with V(true next obs) at truncations (Schulman et al. 2016, eq. 16).

    Returns ``(advantage, return, value)``, each flattened over the valid steps ``[batch.mask.sum()]`` in the
    order of ``batch.flatten()``.
    """
    b, t = batch.reward.shape
    values = critic(batch.obs.reshape(b * t, -1)).reshape(b, t)
    next_values = critic(batch.next_obs.reshape(b * t, -1)).reshape(b, t)
    advantages, returns = gae(batch.reward, values, next_values, batch.terminated, batch.truncated, gamma, gae_lambda)
    m = batch.mask.reshape(-1)
    return advantages.reshape(-1)[m], returns.reshape(-1)[m], values.reshape(-1)[m]
