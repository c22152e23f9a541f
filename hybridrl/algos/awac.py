"""AWAC: Advantage-Weighted Actor-Critic (Nair, Gupta, Dalal & Levine 2020, arXiv:2006.09359), offline phase.

    y     = r + gamma (1 - terminated) min_i Qbar_i(s', a'),  a' ~ pi(.|s')                 (SAC-style, no entropy)
    L_Q   = sum_i mean (Q_i(s, a) - y)^2
    A     = min_i Q_i(s, a) - min_i Q_i(s, a~),  a~ ~ pi(.|s)   (one-sample V(s))
    w     = B softmax_B(A / lambda)            (rlkit ``normalize_over_batch``; or min(exp(A / lambda), 100))
    L_pi  = -mean sg(w) log pi(a | s)                                                        (eq. 13)

lambda = 1/3 (CORL's ``awac_lambda``; an inverse temperature of 3 in IQL's convention exp(beta A)).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import torch

from hybridrl.algos import check_config, gradient_step
from hybridrl.algos._td3 import continuous_dims
from hybridrl.data.batches import Transitions
from hybridrl.data.weighting import check_sampler
from hybridrl.losses.offline_reg import awac_actor_loss, awac_weights, td3_critic_target
from hybridrl.nn import Policy, make_policy
from hybridrl.nn.critics import TargetNetwork, TwinQ


@dataclass(frozen=True)
class AWACConfig:
    """AWAC hyperparameters (rlkit ``examples/awac/mujoco/awac1.py`` and CORL ``awac.py``).

    Attributes:
        actor_lr, critic_lr: Adam learning rates (> 0). actor_weight_decay: Adam L2 penalty of the actor (rlkit 1e-4).
        batch_size: transitions per gradient step (rlkit 1024; 256 here, the size of the side-by-side tables).
        actor_hidden, critic_hidden: MLP widths (CORL: 256 x 2 for both).
        gamma: discount in [0, 1). tau: Polyak rate of the target critics in (0, 1].
        lam: temperature lambda of exp(A / lambda) (> 0; default 1/3).
        normalize_weights: True = rlkit's batch softmax ``B softmax(A / lambda)``; False = CORL's
            ``min(exp(A / lambda), max_weight)``.
        max_weight: clip of the unnormalised weights.
        log_std_init: initial state-independent log-std of the Gaussian actor (tanh-bounded mean).
        max_grad_norm: global gradient-norm clip per optimiser; None disables.
        sampler, sampler_alpha: minibatch sampling (uniform / rw / aw, :mod:`hybridrl.data.weighting`).
    """

    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    actor_weight_decay: float = 1e-4
    batch_size: int = 256
    actor_hidden: tuple[int, ...] = (256, 256)
    critic_hidden: tuple[int, ...] = (256, 256)
    gamma: float = 0.99
    tau: float = 0.005
    lam: float = 1.0 / 3.0
    normalize_weights: bool = True
    max_weight: float = 100.0
    log_std_init: float = 0.0
    max_grad_norm: float | None = None
    sampler: str = "uniform"
    sampler_alpha: float = 0.1

    def __post_init__(self) -> None:
        check_config(self, actor_lr=(1e-12, None), critic_lr=(1e-12, None), actor_weight_decay=(0.0, None),
                     batch_size=(1, None), gamma=(0.0, 0.9999), tau=(1e-6, 1.0), lam=(1e-6, None),
                     max_weight=(1e-6, None), max_grad_norm=(1e-12, None))
        check_sampler(self)


class AWACLearner:
    """AWAC on Box actions: a Gaussian actor (:class:`~hybridrl.nn.GaussianPolicy`, tanh mean) and twin critics."""

    def __init__(self, config: AWACConfig, observation_space: gym.Space, action_space: gym.Space, seed: int = 0,
                 policy: Policy | None = None):
        torch.manual_seed(seed)
        obs_dim, act_dim = continuous_dims(observation_space, action_space, "awac")
        self.config = config
        self.policy = policy or make_policy(observation_space, action_space, config.actor_hidden, "relu",
                                            tanh_mean=True, log_std_init=config.log_std_init)
        critic = (obs_dim, act_dim, False, config.critic_hidden, "relu")
        self.critic = TwinQ(*critic, obs_norm=self.policy.obs_norm)
        self.critic_target = TargetNetwork(TwinQ(*critic, obs_norm=self.policy.obs_norm), self.critic)
        self.actor_opt = torch.optim.Adam(self.policy.parameters(), lr=config.actor_lr,
                                          weight_decay=config.actor_weight_decay)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)

    def update(self, batch: Transitions) -> dict[str, float]:
        """One critic step, one actor step (advantages from the updated critics), one Polyak step.

        Args:
            batch: ``B`` transitions with ``action [B, A]`` float32.
        Returns:
            ``q_loss``, ``q_mean``, ``advantage_mean``, ``actor_loss``, ``weight_mean``, ``weight_max``, ``logp_mean``.
        Source: Nair et al. (2020) arXiv:2006.09359, Algorithm 1 and eq. 13; rlkit ``awac_trainer.py``.
        """
        cfg = self.config
        with torch.no_grad():
            next_action = self.policy.sample(batch.next_obs)[0]
            y = td3_critic_target(batch.reward, batch.terminated, *self.critic_target(batch.next_obs, next_action),
                                  cfg.gamma)
        q1, q2 = self.critic(batch.obs, batch.action)
        q_loss = (q1 - y).square().mean() + (q2 - y).square().mean()
        gradient_step(self.critic_opt, q_loss, cfg.max_grad_norm)
        with torch.no_grad():
            v = self.critic.min(batch.obs, self.policy.sample(batch.obs)[0])
            advantage = self.critic.min(batch.obs, batch.action) - v
        weight = awac_weights(advantage, cfg.lam, cfg.normalize_weights, cfg.max_weight)
        a_loss, metrics = awac_actor_loss(self.policy.log_prob(batch.obs, batch.action), weight)
        gradient_step(self.actor_opt, a_loss, cfg.max_grad_norm)
        self.critic_target.update(cfg.tau)
        metrics.update(q_loss=float(q_loss.detach()), q_mean=float(q1.detach().mean()),
                       advantage_mean=float(advantage.mean()))
        return metrics

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy, "critic": self.critic, "critic_target": self.critic_target}

    def state_dict(self) -> dict:
        state = {k: m.state_dict() for k, m in self._modules().items()}
        state.update(actor_opt=self.actor_opt.state_dict(), critic_opt=self.critic_opt.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        for k, m in self._modules().items():
            m.load_state_dict(state[k])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("awac", AWACConfig, AWACLearner, loop="offline", inputs="dataset", action_spaces=("continuous",),
         summary="advantage-weighted actor-critic, offline phase (Nair et al. 2020)",
         tiny=dict(actor_hidden=(32, 32), critic_hidden=(32, 32)))
