"""On-policy Mirror Descent Policy Optimization (Tomar et al. 2020, arXiv:2005.09814).

Per rollout k (a :class:`Segments` batch collected by pi_theta_k):

    A_t   = GAE(gamma, lambda) with V(true next obs) at truncations, standardised over the rollout
    repeat sgd_steps times (full batch, Adam, global grad-norm clip):
        L(theta) = -mean[ pi_theta(a|s) / pi_theta_k(a|s) * A ] + (1 / t_k) mean_s KL(pi_theta(.|s) || pi_theta_k(.|s))
    t_k   = step_size * (1 - (k - 1) / K)            (K = iterations of the run; the penalty 1/t_k grows)
    value: critic_epochs passes of minibatch Adam on the clipped value loss towards the GAE returns

Follows the official ``mdpo_on/mdpo.py`` ("multistep-SGD" method): exact per-state KL with the current policy
first, separate policy/value Adam optimisers, value update after the policy steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import torch
from torch.distributions import kl_divergence

from hybridrl.algos import gradient_step
from hybridrl.algos.actor_critic import Minibatch, build_actor_critic, minibatch_epochs, rollout_advantages
from hybridrl.data.batches import Segments
from hybridrl.errors import ConfigError
from hybridrl.losses import value_loss
from hybridrl.losses.mdpo import mdpo_loss
from hybridrl.nn import Policy
from hybridrl.ops import explained_variance, normalize


@dataclass(frozen=True)
class MDPOConfig:
    """On-policy MDPO hyperparameters; defaults follow the official ``mdpo_on`` MuJoCo settings.

    Attributes:
        lr: policy Adam learning rate (> 0; eps 1e-5, constant as in the official code).
        critic_lr: value Adam learning rate (> 0).
        num_envs: parallel environments (rollout width ``B``).
        n_steps: steps per env per rollout (``T``); one MDPO iteration per rollout.
        sgd_steps: full-batch policy gradient steps per iteration (m, >= 1).
        critic_epochs: passes of minibatch value regression per iteration (>= 1).
        critic_minibatch_size: transitions per value step (>= 1; a final partial minibatch is dropped).
        gamma: discount in [0, 1).
        gae_lambda: GAE lambda in [0, 1].
        step_size: t at the first iteration (> 0); the KL penalty weight is 1 / t_k.
        step_size_schedule: "linear" (t_k = step_size * (1 - (k - 1) / K)) or "constant" (t_k = step_size).
        schedule_iterations: K of the linear schedule; None = the run's length (from ``set_progress``). The
            official script trains for 10M steps, i.e. K = 4882 iterations of 2048 steps, whatever the budget.
        min_step_size: floor on t_k (> 0), a guard against division by ~0 near the end of a schedule.
        ent_coef: entropy bonus coefficient (>= 0; official 0).
        value_clip: clip of the value update around the rollout-time value (None = plain squared error).
        max_grad_norm: global gradient-norm clip of the policy step (> 0).
        normalize_advantage: standardise advantages over the whole rollout.
        hidden: hidden widths of actor and critic. activation: "tanh" or "relu".
        log_std_init: initial log standard deviation of Gaussian policies.
        normalize_obs: running observation normalisation (statistics saved with the policy).
        normalize_reward: scale rewards by the running std of the discounted return (clip +-10).
    """

    lr: float = 3e-4
    critic_lr: float = 3e-4
    num_envs: int = 1
    n_steps: int = 2048
    sgd_steps: int = 10
    critic_epochs: int = 5
    critic_minibatch_size: int = 128
    gamma: float = 0.99
    gae_lambda: float = 0.95
    step_size: float = 1.0
    step_size_schedule: Literal["linear", "constant"] = "linear"
    schedule_iterations: int | None = None
    min_step_size: float = 1e-4
    ent_coef: float = 0.0
    value_clip: float | None = 0.2
    max_grad_norm: float = 0.5
    normalize_advantage: bool = True
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    log_std_init: float = 0.0
    normalize_obs: bool = True
    normalize_reward: bool = True

    def __post_init__(self) -> None:
        from hybridrl.algos import check_config

        check_config(self, lr=(1e-12, None), critic_lr=(1e-12, None), num_envs=(1, None), n_steps=(1, None),
                     sgd_steps=(1, None), critic_epochs=(1, None), critic_minibatch_size=(1, None),
                     gae_lambda=(0.0, 1.0),
                     step_size=(1e-12, None), schedule_iterations=(1, None), min_step_size=(1e-12, None),
                     ent_coef=(0.0, None), value_clip=(1e-6, None), max_grad_norm=(1e-12, None))
        if not 0.0 <= self.gamma < 1.0:
            raise ConfigError(f"MDPOConfig.gamma={self.gamma!r} is out of range; expected 0 <= gamma < 1")
        if self.step_size_schedule not in ("linear", "constant"):
            raise ConfigError(f"MDPOConfig.step_size_schedule={self.step_size_schedule!r}; "
                              "expected 'linear' or 'constant'")

    @property
    def rollout_size(self) -> int:
        return self.num_envs * self.n_steps


class MDPOLearner:
    """On-policy MDPO: ``update(Segments) -> metrics``; ``set_progress(f)`` drives the step-size schedule."""

    def __init__(self, config: MDPOConfig, observation_space: gym.Space, action_space: gym.Space, seed: int = 0,
                 policy: Policy | None = None):
        torch.manual_seed(seed)
        self.config = config
        self.policy, self.critic = build_actor_critic(config, observation_space, action_space, policy)
        self.policy_optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr, eps=1e-5)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.progress = 0.0  # (k - 1) / K, set by the loop before each rollout
        self.iteration = 0  # completed MDPO iterations

    def set_progress(self, fraction: float) -> None:
        """Record training progress ``fraction`` in [0, 1]: (k - 1) / K for the linear step-size schedule."""
        self.progress = float(fraction)

    def step_size(self) -> float:
        """The mirror-descent step size t_k of the next update (penalty weight 1 / t_k)."""
        cfg = self.config
        if cfg.step_size_schedule == "constant":
            return cfg.step_size
        done = self.progress if cfg.schedule_iterations is None else self.iteration / cfg.schedule_iterations
        return max(cfg.step_size * (1.0 - done), cfg.min_step_size)

    def update(self, batch: Segments) -> dict[str, float]:
        """One MDPO iteration on a rollout ``batch`` (``Segments [B, T]``) collected by the current policy.

        Returns the means over the ``sgd_steps`` policy steps of ``policy_loss, kl, ratio_mean`` (see
        :func:`~hybridrl.losses.mdpo.mdpo_loss`), ``entropy, grad_norm``; ``kl_final`` (mean KL to pi_theta_k after
        the steps), ``value_loss`` (mean over the critic's minibatch steps), ``step_size`` (t_k),
        ``explained_variance``, ``value_mean``, ``std_mean`` (Gaussian policies).
        """
        cfg = self.config
        adv, ret, old_v = rollout_advantages(self.critic, batch, cfg.gamma, cfg.gae_lambda)
        flat = batch.flatten()
        if cfg.normalize_advantage:
            adv = normalize(adv)
        obs, action = flat.obs, flat.action
        with torch.no_grad():  # pi_theta_k: the distribution that collected the rollout, frozen for this iteration
            old_dist = self.policy.distribution(obs)
            old_logp = old_dist.log_prob(action)
        t_k = self.step_size()
        sums: dict[str, float] = {}
        for _ in range(cfg.sgd_steps):
            dist = self.policy.distribution(obs)
            logp = dist.log_prob(action)
            kl = kl_divergence(dist, old_dist)
            loss, metrics = mdpo_loss(logp, old_logp, adv, kl, t_k)
            entropy = dist.entropy().mean()
            loss = loss - cfg.ent_coef * entropy
            grad_norm = gradient_step(self.policy_optimizer, loss, cfg.max_grad_norm)
            metrics.update(entropy=float(entropy.detach()), grad_norm=grad_norm)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
        out = {k: v / cfg.sgd_steps for k, v in sums.items()}
        with torch.no_grad():
            out["kl_final"] = float(kl_divergence(self.policy.distribution(obs), old_dist).mean())

        def critic_loss(mb: Minibatch) -> tuple[torch.Tensor, dict[str, float]]:
            return value_loss(self.critic(mb["obs"]), mb["ret"], mb["old_v"], cfg.value_clip)

        size = min(cfg.critic_minibatch_size, len(flat))  # a final partial minibatch is dropped
        critic, _ = minibatch_epochs({"obs": obs, "ret": ret, "old_v": old_v}, cfg.critic_epochs, size,
                                     self.generator, critic_loss, self.critic_optimizer, drop_last=True)
        self.iteration += 1
        out.update(
            value_loss=critic.get("value_loss", 0.0),
            step_size=t_k,
            explained_variance=float(explained_variance(old_v, ret)),
            value_mean=float(old_v.mean()),
        )
        if not self.policy.discrete:
            out["std_mean"] = float(self.policy.log_std.detach().exp().mean())
        return out

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "critic": self.critic.state_dict(),
                "policy_optimizer": self.policy_optimizer.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict(), "generator": self.generator.get_state(),
                "progress": float(self.progress), "iteration": int(self.iteration)}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.generator.set_state(state["generator"])
        self.progress = float(state["progress"])
        self.iteration = int(state["iteration"])


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("mdpo", MDPOConfig, MDPOLearner, loop="on_policy", inputs="env",
         summary="on-policy mirror descent policy optimisation (Tomar et al. 2022)",
         tiny=dict(n_steps=16, num_envs=2, sgd_steps=2, critic_epochs=1, critic_minibatch_size=16, hidden=(16, 16)))
