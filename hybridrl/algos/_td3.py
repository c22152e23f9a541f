"""TD3 pieces shared by the deterministic-actor offline learners (TD3+BC, PRDC, A2PR): small helpers the learners
hold or call, not a base class.

    a' = clip( mu_bar(s') + clip(N(0, sigma^2), -c, c), low, high )       target policy smoothing (TD3 eq. 14)
    y  = r + gamma (1 - terminated) min_i Q_bar_i(s', a')                  clipped double Q (TD3 eq. 10)
    L_Q = mean (Q_1(s,a) - y)^2 + mean (Q_2(s,a) - y)^2

sigma and c are fractions of the action box half-width (TD3: ``policy_noise = 0.2 * max_action``, ``noise_clip =
0.5 * max_action``). Source: Fujimoto, van Hoof & Meger (2018) arXiv:1802.09477, Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import gymnasium as gym
import torch

from hybridrl.algos import gradient_step
from hybridrl.data.batches import Transitions
from hybridrl.errors import ConfigError
from hybridrl.losses.offline_reg import regularized_actor_loss, td3_critic_target
from hybridrl.nn.critics import TargetNetwork, TwinQ
from hybridrl.nn.deterministic import DeterministicPolicy


def continuous_dims(observation_space: gym.Space, action_space: gym.Space, algo: str) -> tuple[int, int]:
    """``(obs_dim, act_dim)``; ConfigError unless actions are a bounded 1-D Box."""
    if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
        raise ConfigError(f"{algo} needs a continuous (1-D Box) action space, got {action_space}")
    return int(observation_space.shape[0]), int(action_space.shape[0])


def make_actor(observation_space: gym.Space, action_space: gym.Space, hidden: Sequence[int],
               exploration_std: float) -> tuple[DeterministicPolicy, TargetNetwork]:
    """The deterministic actor and its Polyak target. The target reads observations through the *online* actor's
    normaliser (one shared module: the statistics the offline loop sets after construction reach both)."""
    obs_dim, act_dim = int(observation_space.shape[0]), int(action_space.shape[0])
    policy = DeterministicPolicy(obs_dim, act_dim, hidden, "relu", True, action_space.low.tolist(),
                                 action_space.high.tolist(), exploration_std)
    shadow = DeterministicPolicy(**policy.kwargs)
    shadow.obs_norm = policy.obs_norm
    return policy, TargetNetwork(shadow, policy)


def make_twin_q(policy: DeterministicPolicy, hidden: Sequence[int]) -> tuple[TwinQ, TargetNetwork]:
    """Twin critics (and their target) on ``[norm(s), a]`` with the actor's observation normaliser."""
    obs_dim, act_dim = policy.kwargs["obs_dim"], policy.kwargs["act_dim"]
    critic = TwinQ(obs_dim, act_dim, False, hidden, "relu", obs_norm=policy.obs_norm)
    return critic, TargetNetwork(TwinQ(obs_dim, act_dim, False, hidden, "relu", obs_norm=policy.obs_norm), critic)


@torch.no_grad()
def smoothed_target_action(policy_target: TargetNetwork, next_obs: torch.Tensor, policy_noise: float,
                           noise_clip: float) -> torch.Tensor:
    """``a' [B, A]``: the target actor's action plus clipped Gaussian noise, clipped to the action box."""
    pol = policy_target.net
    mu = pol.mode(next_obs)
    noise = (torch.randn_like(mu) * policy_noise).clamp(-noise_clip, noise_clip) * pol.action_scale
    low, high = pol.action_bias - pol.action_scale, pol.action_bias + pol.action_scale
    return torch.max(torch.min(mu + noise, high), low)


def critic_step(critic: TwinQ, critic_target: TargetNetwork, optimizer: torch.optim.Optimizer, batch: Transitions,
                next_action: torch.Tensor, gamma: float, max_grad_norm: float | None
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """One gradient step of both critics towards the clipped double-Q target; returns ``(y [B], metrics)``."""
    y = td3_critic_target(batch.reward, batch.terminated, *critic_target(batch.next_obs, next_action), gamma)
    q1, q2 = critic(batch.obs, batch.action)
    loss = (q1 - y).square().mean() + (q2 - y).square().mean()
    gradient_step(optimizer, loss, max_grad_norm)
    return y, {"q_loss": float(loss.detach()), "q_mean": float(q1.detach().mean())}


@contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """Turn off ``requires_grad`` of ``module``'s parameters inside the block (the actor loss then builds no
    gradient for the critic), and back on after it."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def actor_step(learner, obs: torch.Tensor, pi: torch.Tensor, target: torch.Tensor,
               weight: torch.Tensor | None = None) -> dict[str, float]:
    """TD3's delayed actor step with a regulariser towards ``target`` (:func:`regularized_actor_loss`: TD3+BC eq. 3,
    PRDC eq. 7, A2PR eq. 9), Q_1 frozen, then the Polyak step of both target networks.

    ``learner`` has ``config`` (``alpha``, ``tau``, ``max_grad_norm``), ``critic``, ``critic_target``,
    ``policy_target`` and ``actor_opt``; ``pi [B, A]`` is the policy's action at ``obs`` (with gradient).
    Returns the loss's metrics.
    """
    cfg = learner.config
    with frozen(learner.critic):
        q = learner.critic.q1(obs, pi)
    loss, metrics = regularized_actor_loss(q, pi, target, cfg.alpha, weight=weight)
    gradient_step(learner.actor_opt, loss, cfg.max_grad_norm)
    learner.critic_target.update(cfg.tau)
    learner.policy_target.update(cfg.tau)
    return metrics


def learner_state(learner) -> dict:
    """State of a TD3-family learner: its ``_modules()`` and ``_optimizers()`` by name, ``n_updates`` and the last
    actor metrics (the actor updates every ``policy_delay`` steps; its metrics are repeated in between)."""
    state = {k: m.state_dict() for k, m in learner._modules().items()}
    state.update({k: o.state_dict() for k, o in learner._optimizers().items()})
    state.update(n_updates=learner.n_updates, actor_metrics=dict(learner._actor_metrics))
    return state


def load_learner_state(learner, state: dict) -> None:
    """Inverse of :func:`learner_state`."""
    for k, m in learner._modules().items():
        m.load_state_dict(state[k])
    for k, o in learner._optimizers().items():
        o.load_state_dict(state[k])
    learner.n_updates = int(state["n_updates"])
    learner._actor_metrics = {k: float(v) for k, v in state["actor_metrics"].items()}
