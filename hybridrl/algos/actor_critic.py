"""What on-policy actor-critic learners share: their config fields, building the actor and critic, GAE over a
rollout, and the epoch/minibatch/target-KL update loop (:func:`minibatch_epochs`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from hybridrl.algos import gradient_step
from hybridrl.data.batches import Segments
from hybridrl.nn import Policy, ValueNet, make_policy
from hybridrl.ops import gae


@dataclass(frozen=True)
class ActorCriticConfig:
    """The PPO-style fields shared by :class:`PPOConfig`, :class:`ReplayPGConfig` and :class:`PROPSConfig`.

    Defaults are CleanRL's MuJoCo PPO settings (subclasses may change them).

    Attributes:
        lr: Adam learning rate (> 0), linearly annealed to 0 when ``anneal_lr``.
        anneal_lr: linear learning-rate decay over the run.
        num_envs: parallel environments (rollout width ``B``).
        n_steps: steps per env per rollout (``T``); a rollout holds ``num_envs * n_steps`` steps.
        n_epochs: passes over the training data per update.
        minibatch_size: transitions per gradient step (must divide ``num_envs * n_steps``).
        gamma: discount in [0, 1).
        gae_lambda: GAE lambda in [0, 1].
        clip_ratio: epsilon of the clipped surrogate (> 0).
        value_clip: clip range of the value update around the value at collection / update start (> 0);
            None = unclipped squared error.
        ent_coef: entropy bonus coefficient (>= 0).
        vf_coef: value-loss coefficient (>= 0).
        max_grad_norm: global gradient-norm clip (> 0).
        target_kl: stop the epochs of an update once an epoch's mean approx-KL exceeds this (nats); None disables.
        normalize_advantage: normalise advantages per minibatch.
        hidden: hidden widths of actor and critic.
        activation: "tanh" or "relu".
        log_std_init: initial log standard deviation of Gaussian policies.
        normalize_obs: running observation normalisation (statistics saved with the policy).
        normalize_reward: scale rewards by the running std of the discounted return (clip +-10).
    Raises:
        ConfigError: a field out of range, or ``minibatch_size`` not dividing the rollout.
    """

    lr: float = 3e-4
    anneal_lr: bool = True
    num_envs: int = 1
    n_steps: int = 2048
    n_epochs: int = 10
    minibatch_size: int = 64
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_ratio: float = 0.2
    value_clip: float | None = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float | None = None
    normalize_advantage: bool = True
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    log_std_init: float = 0.0
    normalize_obs: bool = True
    normalize_reward: bool = True

    def __post_init__(self) -> None:
        from hybridrl.algos import check_config
        from hybridrl.errors import ConfigError

        check_config(self, lr=(1e-12, None), num_envs=(1, None), n_steps=(1, None), n_epochs=(1, None),
                     clip_ratio=(1e-6, None), value_clip=(1e-6, None), ent_coef=(0.0, None), vf_coef=(0.0, None),
                     max_grad_norm=(1e-12, None),
                     target_kl=(0.0, None), gae_lambda=(0.0, 1.0))
        if not 0.0 <= self.gamma < 1.0:
            raise ConfigError(f"{type(self).__name__}.gamma={self.gamma!r}; expected 0 <= gamma < 1")
        if self.minibatch_size <= 0 or self.rollout_size % self.minibatch_size:
            raise ConfigError(f"{type(self).__name__}.minibatch_size={self.minibatch_size} must divide "
                              f"num_envs * n_steps = {self.rollout_size}")

    @property
    def rollout_size(self) -> int:
        """Environment steps per rollout (``num_envs * n_steps``)."""
        return self.num_envs * self.n_steps


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
    values, next_values = critic(batch.obs), critic(batch.next_obs)  # [B, T]: the networks broadcast over B, T
    advantages, returns = gae(batch.reward, values, next_values, batch.terminated, batch.truncated, gamma, gae_lambda)
    m = batch.mask.reshape(-1)
    return advantages.reshape(-1)[m], returns.reshape(-1)[m], values.reshape(-1)[m]


Minibatch = dict[str, torch.Tensor]
LossFn = Callable[[Minibatch], tuple[torch.Tensor, dict[str, float]]]


def minibatch_epochs(data: Minibatch, n_epochs: int, minibatch_size: int, generator: torch.Generator,
                     loss_fn: LossFn, optimizer: torch.optim.Optimizer, max_grad_norm: float | None = None,
                     target_kl: float | None = None, drop_last: bool = False) -> tuple[dict[str, float], int]:
    """Shuffled minibatch gradient steps over ``data`` for ``n_epochs`` epochs (the PPO update loop, CleanRL style).

    Each epoch draws one ``torch.randperm(n, generator=generator)``, gathers every tensor of ``data`` once in that
    order and takes contiguous minibatch views of ``minibatch_size`` rows; per minibatch ``loss_fn(minibatch)``
    gives ``(loss, metrics)`` and :func:`~hybridrl.algos.gradient_step` takes one clipped optimiser step.
    With ``target_kl`` the epochs stop after the first epoch whose mean ``metrics["approx_kl"]`` exceeds it
    (Huang et al. 2022, "The 37 Implementation Details of PPO", detail 12 of the continuous ones).

    Args:
        data: tensors with the same first dimension ``N`` (e.g. obs ``[N, obs_dim]``, advantages ``[N]``).
        n_epochs: passes over the data. minibatch_size: rows per step; a final partial minibatch is used
            (or dropped with ``drop_last``).
        generator: the learner's torch generator (the only randomness consumed here).
        loss_fn: ``minibatch -> (loss, metrics)`` with float metrics; ``approx_kl`` required with ``target_kl``.
        optimizer, max_grad_norm: as :func:`~hybridrl.algos.gradient_step` (None: no clipping).
        target_kl: nats, or None (all epochs run).
    Returns:
        ``(means, epochs)``: every metric (plus ``grad_norm``) averaged over the steps taken (empty when none),
        and the epochs run.
    """
    n = len(next(iter(data.values())))
    last = n - minibatch_size + 1 if drop_last else n
    sums: dict[str, float] = {}
    count = 0
    for epoch in range(n_epochs):
        # One gather per epoch, then contiguous minibatch views (fewer ops than indexing every minibatch).
        perm = torch.randperm(n, generator=generator)
        shuffled = {k: v[perm] for k, v in data.items()}
        epoch_kl = []
        for start in range(0, last, minibatch_size):
            loss, metrics = loss_fn({k: v[start : start + minibatch_size] for k, v in shuffled.items()})
            metrics["grad_norm"] = gradient_step(optimizer, loss, max_grad_norm)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            if target_kl is not None:
                epoch_kl.append(metrics["approx_kl"])
        if target_kl is not None and float(np.mean(epoch_kl)) > target_kl:
            return {k: v / count for k, v in sums.items()}, epoch + 1
    return {k: v / count for k, v in sums.items()}, n_epochs
