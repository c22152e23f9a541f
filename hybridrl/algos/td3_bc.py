"""TD3+BC (Fujimoto & Gu 2021, "A Minimalist Approach to Offline Reinforcement Learning", arXiv:2106.06860).

TD3 (clipped double Q, target policy smoothing, delayed actor and target updates) with a behaviour-cloning term:

    y    = r + gamma (1 - terminated) min_i Qbar_i(s', clip(mubar(s') + clip(eps, -c, c)))            (TD3)
    L_Q  = sum_i mean (Q_i(s, a) - y)^2
    L_pi = -lambda mean Q_1(s, mu(s)) + mean (mu(s) - a)^2,   lambda = alpha / sg(mean |Q_1(s, mu(s))|)  (eq. 3)

on z-normalised states (sec. 5; here the policy's observation normaliser, set from the dataset by the offline loop).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import torch

from hybridrl.algos import check_config
from hybridrl.algos._td3 import (
    actor_step,
    continuous_dims,
    critic_step,
    learner_state,
    load_learner_state,
    make_actor,
    make_twin_q,
    smoothed_target_action,
)
from hybridrl.data.batches import Transitions
from hybridrl.data.weighting import check_sampler
from hybridrl.nn.deterministic import DeterministicPolicy


@dataclass(frozen=True)
class TD3BCConfig:
    """TD3+BC hyperparameters (defaults: sfujim/TD3_BC ``main.py``).

    Attributes:
        actor_lr, critic_lr: Adam learning rates (> 0).
        batch_size: transitions per gradient step (used by the loop).
        hidden: hidden widths of the actor and of each critic (256, 256).
        gamma: discount in [0, 1). tau: Polyak rate of both targets in (0, 1].
        alpha: Q-versus-BC trade-off of eq. 3 (> 0; paper 2.5; larger = less BC).
        policy_noise, noise_clip: target-smoothing noise std and clip, fractions of the action half-width (0.2, 0.5).
        policy_freq: critic steps per actor (and target) step (>= 1; paper 2).
        exploration_std: sampling noise of the saved policy (fraction of the half-width; TD3's 0.1), used only when
            the policy is sampled (collect, fine-tuning, OPE log-probs), never in training or evaluation.
        max_grad_norm: global gradient-norm clip per optimiser; None disables (paper: none).
        sampler, sampler_alpha: minibatch sampling of the offline loop: "uniform", or trajectory weighting "rw"/"aw"
            with temperature sampler_alpha (Hong et al. 2023; :mod:`hybridrl.data.weighting`).
    """

    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    batch_size: int = 256
    hidden: tuple[int, ...] = (256, 256)
    gamma: float = 0.99
    tau: float = 0.005
    alpha: float = 2.5
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_freq: int = 2
    exploration_std: float = 0.1
    max_grad_norm: float | None = None
    sampler: str = "uniform"
    sampler_alpha: float = 0.1

    def __post_init__(self) -> None:
        check_config(self, actor_lr=(1e-12, None), critic_lr=(1e-12, None), batch_size=(1, None),
                     gamma=(0.0, 0.9999), tau=(1e-6, 1.0), alpha=(1e-12, None), policy_noise=(0.0, None),
                     noise_clip=(0.0, None), policy_freq=(1, None), exploration_std=(1e-6, None),
                     max_grad_norm=(1e-12, None))
        check_sampler(self)


class TD3BCLearner:
    """TD3+BC on Box actions. ``policy`` is a :class:`~hybridrl.nn.deterministic.DeterministicPolicy`.

    Attributes: ``policy``/``policy_target`` (actor and its Polyak copy), ``critic``/``critic_target`` (twin Q),
    ``n_updates`` (critic steps so far; the actor steps when it is a multiple of ``policy_freq``).
    Raises ConfigError for a Discrete action space.
    """

    def __init__(self, config: TD3BCConfig, observation_space: gym.Space, action_space: gym.Space, seed: int = 0,
                 policy: DeterministicPolicy | None = None):
        torch.manual_seed(seed)
        continuous_dims(observation_space, action_space, "td3_bc")
        self.config = config
        self.policy, self.policy_target = make_actor(observation_space, action_space, config.hidden,
                                                     config.exploration_std)
        if policy is not None:
            self.policy.load_state_dict(policy.state_dict())
            self.policy_target.update(1.0)
        self.critic, self.critic_target = make_twin_q(self.policy, config.hidden)
        self.actor_opt = torch.optim.Adam(self.policy.parameters(), lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.n_updates = 0
        self._actor_metrics = {"actor_loss": 0.0, "bc_loss": 0.0, "lambda": 0.0, "q_pi_mean": 0.0}

    def update(self, batch: Transitions) -> dict[str, float]:
        """One critic step; every ``policy_freq``-th call also one actor step (eq. 3) and the Polyak targets.

        Args:
            batch: ``B`` transitions, ``obs``/``next_obs [B, obs_dim]``, ``action [B, A]`` float32, ``reward [B]``,
                ``terminated [B]`` (truncated steps bootstrap).
        Returns:
            ``q_loss`` (sum of both critics' mean squared errors), ``q_mean`` (mean Q_1(s, a)), and the actor's
            ``actor_loss``, ``bc_loss``, ``lambda``, ``q_pi_mean`` from its latest step (0 before the first).
        Source: Fujimoto & Gu (2021) arXiv:2106.06860, eq. 3 and Algorithm 1 of TD3 (Fujimoto et al. 2018).
        """
        cfg = self.config
        next_action = smoothed_target_action(self.policy_target, batch.next_obs, cfg.policy_noise, cfg.noise_clip)
        _, metrics = critic_step(self.critic, self.critic_target, self.critic_opt, batch, next_action, cfg.gamma,
                                 cfg.max_grad_norm)
        self.n_updates += 1
        if self.n_updates % cfg.policy_freq == 0:
            self._actor_metrics = actor_step(self, batch.obs, self.policy.mode(batch.obs), batch.action)
        metrics.update(self._actor_metrics)
        return metrics

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy, "policy_target": self.policy_target, "critic": self.critic,
                "critic_target": self.critic_target}

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt}

    def state_dict(self) -> dict:
        return learner_state(self)

    def load_state_dict(self, state: dict) -> None:
        load_learner_state(self, state)


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("td3_bc", TD3BCConfig, TD3BCLearner, loop="offline", inputs="dataset", action_spaces=("continuous",),
         summary="TD3 with a behaviour-cloning term (Fujimoto & Gu 2021)", tiny=dict(hidden=(32, 32), policy_freq=1))
