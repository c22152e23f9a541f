"""Off-policy Mirror Descent Policy Optimization (Tomar et al. 2020, arXiv:2005.09814), on SAC's twin critics.

One ``update(Transitions)`` is one gradient step of the critics and of the actor (the learner shape of
:class:`hybridrl.algos.sac.SACLearner`, driven by ``loops.off_policy.train_off_policy``):

    critic: y = r + gamma (1 - term) (min_i Qbar_i(s', a') - alpha log pi(a'|s')),  a' ~ pi(.|s');  twin MSE
    actor:  a~ = bias + scale tanh(u), u = mu(s) + sigma(s) eps  (reparameterised, current policy pi_theta)
            J = mean( c (log pi_theta - log pi_k)(a~|s) + alpha log pi_k(a~|s) - Q1(s, a~) )
                + param_reg (mean mu^2 + mean log sigma^2)
    pi_k  <- pi_theta (hard copy) every ``old_policy_interval`` updates;  Qbar_i <- Polyak(tau)

c = ``kl_coef`` (the official ``klconst``, i.e. 1/t_k held constant) and alpha (the official ``lamda``) are fixed.
The official code (mdpo_off/mdpo.py) uses a SAC-v1 state-value network for the target; here the soft twin-Q
target of SAC v2 is used (see docs/algorithms/mdpo.md, deviations).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import torch

from hybridrl.algos import check_config, gradient_step
from hybridrl.data.batches import Transitions
from hybridrl.errors import ConfigError
from hybridrl.losses.mdpo import mdpo_off_actor_loss
from hybridrl.losses.sac import sac_critic_loss, sac_target
from hybridrl.nn import Policy
from hybridrl.nn.critics import TargetNetwork, TwinQ
from hybridrl.nn.tanh_gaussian import TanhGaussianPolicy, squashed_log_prob


@dataclass(frozen=True)
class MDPOOffConfig:
    """Off-policy MDPO hyperparameters; defaults from the official ``mdpo_off`` code and README command.

    Attributes:
        actor_lr, critic_lr: Adam learning rates (> 0; official 3e-4, hard-coded).
        batch_size: transitions per gradient step. buffer_size: replay capacity (FIFO).
        learning_starts: env steps with uniform random actions before the first update (official 10000).
        updates_per_step: gradient steps per vector-env step once learning has started.
        num_envs: parallel environments stepped together.
        gamma: discount in [0, 1). tau: Polyak rate of the target critics in (0, 1].
        hidden, activation: widths and nonlinearity of actor and critics (official 256-256 ReLU).
        alpha: entropy temperature lambda >= 0 (fixed; official ``--lam 0.2``).
        kl_coef: c = 1 / t_k >= 0, weight of the mirror-descent term (official ``klconst`` 1.0, constant).
        old_policy_interval: updates between copies pi_k <- pi_theta (official ``--sgd_steps 1000``, >= 1).
        actor_q: critic in the actor loss: "q1" (official, SB2 SAC-v1 convention) or "min" (min of both).
        param_reg: weight of the 1e-3 (mean mu^2 + mean log sigma^2) pre-squash regulariser (>= 0).
    """

    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    batch_size: int = 256
    buffer_size: int = 1_000_000
    learning_starts: int = 10_000
    updates_per_step: int = 1
    num_envs: int = 1
    gamma: float = 0.99
    tau: float = 0.005
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    alpha: float = 0.2
    kl_coef: float = 1.0
    old_policy_interval: int = 1000
    actor_q: Literal["q1", "min"] = "q1"
    param_reg: float = 1e-3

    def __post_init__(self) -> None:
        check_config(self, actor_lr=(1e-12, None), critic_lr=(1e-12, None), batch_size=(1, None),
                     buffer_size=(1, None), learning_starts=(0, None), updates_per_step=(1, None), num_envs=(1, None),
                     gamma=(0.0, 0.9999), tau=(1e-6, 1.0), alpha=(0.0, None), kl_coef=(0.0, None),
                     old_policy_interval=(1, None), param_reg=(0.0, None))
        if self.actor_q not in ("q1", "min"):
            raise ConfigError(f"MDPOOffConfig.actor_q={self.actor_q!r}; expected 'q1' or 'min'")
        if self.buffer_size < self.num_envs:
            raise ConfigError(f"MDPOOffConfig.buffer_size={self.buffer_size} must hold one step of "
                              f"num_envs={self.num_envs}")


class MDPOOffLearner:
    """Off-policy MDPO learner: ``policy`` (pi_theta), its frozen copy ``old_policy`` (pi_k), twin critics ``critic``
    (:class:`TwinQ`) and their Polyak copy ``critic_target`` (:class:`TargetNetwork`); :meth:`update` per batch.

    Raises:
        ConfigError: a Discrete action space, or a given ``policy`` that is not a :class:`TanhGaussianPolicy`.
    """

    def __init__(self, config: MDPOOffConfig, observation_space: gym.Space, action_space: gym.Space, seed: int = 0,
                 policy: Policy | None = None):
        if not isinstance(action_space, gym.spaces.Box):
            raise ConfigError(f"mdpo_off needs a continuous (Box) action space, got {action_space}")
        if policy is not None and not isinstance(policy, TanhGaussianPolicy):
            raise ConfigError(f"mdpo_off needs a TanhGaussianPolicy, got {type(policy).__name__}")
        torch.manual_seed(seed)
        self.config = config
        obs_dim, act_dim = observation_space.shape[0], action_space.shape[0]
        self.policy = policy or TanhGaussianPolicy(obs_dim, act_dim, config.hidden, config.activation,
                                                   action_low=action_space.low.tolist(),
                                                   action_high=action_space.high.tolist())
        self.old_policy = copy.deepcopy(self.policy)  # pi_k, frozen between refreshes
        self.old_policy.requires_grad_(False)
        critic = (obs_dim, act_dim, False, config.hidden, config.activation)
        self.critic = TwinQ(*critic, obs_norm=self.policy.obs_norm)
        self.critic_target = TargetNetwork(TwinQ(*critic, obs_norm=self.policy.obs_norm), self.critic)
        self.actor_opt = torch.optim.Adam(self.policy.parameters(), lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.n_updates = 0

    def _actor_loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, pol = self.config, self.policy
        mu, log_std = pol.params(obs)
        u = mu + torch.randn_like(mu) * log_std.exp()  # one pre-squash sample, shared by pi_theta and pi_k
        action = torch.tanh(u) * pol.action_scale + pol.action_bias
        logp = squashed_log_prob(u, mu, log_std, pol.log_scale)
        with torch.no_grad():
            old_mu, old_log_std = self.old_policy.params(obs)
        old_logp = squashed_log_prob(u, old_mu, old_log_std, pol.log_scale)  # gradient only through u
        self.critic.requires_grad_(False)
        try:
            q = self.critic.q1(obs, action) if cfg.actor_q == "q1" else self.critic.min(obs, action)
        finally:
            self.critic.requires_grad_(True)
        loss, metrics = mdpo_off_actor_loss(logp, old_logp, q, cfg.kl_coef, cfg.alpha)
        reg = cfg.param_reg * (mu.pow(2).mean() + log_std.pow(2).mean())
        metrics["reg_loss"] = float(reg.detach())
        return loss + reg, metrics

    def update(self, batch: Transitions) -> dict[str, float]:
        """One gradient step of the twin critics, then of the actor; Polyak targets; pi_k refreshed every
        ``old_policy_interval`` updates.

        Args:
            batch: ``B`` replay transitions: ``obs``/``next_obs [B, obs_dim]``, ``action [B, |A|]`` float32 in the
                action box, ``reward [B]``, ``terminated [B]`` bool (truncated steps bootstrap).
        Returns:
            ``q_loss``, ``q_mean``, ``target_mean`` (critic), ``actor_loss``, ``kl`` (one-sample
            ``log pi_theta - log pi_k``), ``entropy`` (``-mean log pi_theta``, nats), ``q_pi`` (critic at the actor's
            action), ``reg_loss``, and the fixed ``alpha`` and ``kl_coef``.
        Source: Tomar et al. (2020) arXiv:2005.09814, off-policy MDPO (official ``mdpo_off/mdpo.py``); critic target
        of Haarnoja et al. (2018) arXiv:1812.05905, eq. 5.
        """
        cfg = self.config
        with torch.no_grad():
            next_action, next_logp = self.policy.sample(batch.next_obs)
            next_q = torch.min(*self.critic_target(batch.next_obs, next_action))
            target = sac_target(batch.reward, batch.terminated, next_q, next_logp, cfg.alpha, cfg.gamma)
        q_loss, metrics = sac_critic_loss(*self.critic(batch.obs, batch.action), target)
        gradient_step(self.critic_opt, q_loss)

        actor_loss, am = self._actor_loss(batch.obs)
        gradient_step(self.actor_opt, actor_loss)
        metrics.update(am, alpha=cfg.alpha, kl_coef=cfg.kl_coef)

        self.critic_target.update(cfg.tau)
        self.n_updates += 1
        if self.n_updates % cfg.old_policy_interval == 0:
            self.old_policy.load_state_dict(self.policy.state_dict())
        return metrics

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy, "old_policy": self.old_policy, "critic": self.critic,
                "critic_target": self.critic_target}

    def state_dict(self) -> dict:
        state = {k: m.state_dict() for k, m in self._modules().items()}
        state.update(actor_opt=self.actor_opt.state_dict(), critic_opt=self.critic_opt.state_dict(),
                     n_updates=int(self.n_updates))
        return state

    def load_state_dict(self, state: dict) -> None:
        for k, m in self._modules().items():
            m.load_state_dict(state[k])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.n_updates = int(state["n_updates"])


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("mdpo_off", MDPOOffConfig, MDPOOffLearner, loop="off_policy", inputs="env", action_spaces=("continuous",),
         summary="off-policy mirror descent policy optimisation (Tomar et al. 2022)",
         tiny=dict(hidden=(16, 16), old_policy_interval=1))
