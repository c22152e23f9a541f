"""Proximal Policy Optimization with GAE (Schulman et al. 2017, arXiv:1707.06347).

Per rollout of ``B`` envs x ``T`` steps (a :class:`Segments` batch):

    A_t   = GAE(gamma, lambda) with V(true next obs) at truncations, 0 at terminations   (GAE paper eq. 16)
    R_t   = A_t + V_old(s_t)
    L     = E[max(-A r, -A clip(r, 1-eps, 1+eps))]                                        (PPO eq. 7)
          + c_v 0.5 E[max((V-R)^2, (V_old + clip(V - V_old, +-eps) - R)^2)] - c_ent E[H]
          + c_bc E_offline[-log pi(a|s)]                                                  (optional, fine-tuning)

Implementation details follow CleanRL's ``ppo_continuous_action.py`` ("The 37 implementation details
of PPO", Huang et al. 2022): orthogonal init, separate actor/critic, Adam eps 1e-5, linear LR
annealing, per-minibatch advantage normalisation, value clipping, global gradient clipping,
approx-KL (k3) and clip-fraction metrics, optional early stop on ``target_kl`` per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from hybridrl.algos import gradient_step
from hybridrl.algos.actor_critic import ActorCriticConfig, build_actor_critic, rollout_advantages
from hybridrl.data.batches import Segments, Transitions
from hybridrl.losses import bc_loss, ppo_clip_loss, value_loss
from hybridrl.losses.sac import pmoe_router_loss
from hybridrl.nn import Policy, QNet
from hybridrl.nn.mixture import GaussianMixturePolicy, make_mixture_policy
from hybridrl.ops import explained_variance, normalize


@dataclass(frozen=True)
class PPOConfig(ActorCriticConfig):
    """PPO hyperparameters: the shared fields of :class:`ActorCriticConfig` (CleanRL's MuJoCo defaults) plus

    Attributes:
        bc_coef: weight of a behaviour-cloning term on offline batches (fine-tuning with offline data; 0 = off).
        bc_decay: multiply ``bc_coef`` by this factor after every update (in (0, 1]).
        policy: "gaussian" or "mixture" (PMOE-PPO: a Gaussian mixture of ``n_experts`` with a softmax router,
            Box actions only; see docs/algorithms/pmoe.md).
        n_experts: K, experts of the mixture policy (>= 1).
    """

    bc_coef: float = 0.0
    bc_decay: float = 1.0
    policy: str = "gaussian"
    n_experts: int = 4

    def __post_init__(self) -> None:
        from hybridrl.algos import check_config
        from hybridrl.errors import ConfigError

        super().__post_init__()
        check_config(self, bc_coef=(0.0, None), bc_decay=(1e-6, 1.0), n_experts=(1, None))
        if self.policy not in ("gaussian", "mixture"):
            raise ConfigError(f"PPOConfig.policy={self.policy!r}; expected 'gaussian' or 'mixture'")


class PPOLearner:
    """PPO learner: ``update(Segments, offline=None) -> metrics``; ``set_progress(f)`` anneals the LR."""

    def __init__(self, config: PPOConfig, observation_space: gym.Space, action_space: gym.Space, seed: int = 0,
                 policy: Policy | None = None):
        torch.manual_seed(seed)
        self.config = config
        if policy is None and config.policy == "mixture":  # PMOE-PPO (unsquashed experts, free log-stds)
            policy = make_mixture_policy(observation_space, action_space, config.n_experts, config.hidden,
                                         config.activation, config.normalize_obs, squash=False,
                                         state_dependent_std=False, log_std_init=config.log_std_init)
        self.policy, self.critic = build_actor_critic(config, observation_space, action_space, policy)
        self.q_net = None  # PMOE-PPO's auxiliary Q(s, a), trained with the same optimiser (pmoe_ppo.py)
        if isinstance(self.policy, GaussianMixturePolicy):
            self.q_net = QNet(observation_space.shape[0], action_space.shape[0], False, config.hidden, "relu",
                              obs_norm=self.policy.obs_norm)
        params = [*self.policy.parameters(), *self.critic.parameters(),
                  *(self.q_net.parameters() if self.q_net is not None else [])]
        self.optimizer = torch.optim.Adam(params, lr=config.lr, eps=1e-5, fused=True)  # fused: one kernel per step
        self.generator = torch.Generator().manual_seed(seed)
        self.bc_coef = config.bc_coef

    def set_progress(self, fraction: float) -> None:
        """Set the learning rate for training progress ``fraction`` in [0, 1] (linear annealing)."""
        if self.config.anneal_lr:
            for g in self.optimizer.param_groups:
                g["lr"] = self.config.lr * max(0.0, 1.0 - fraction)

    def update(self, batch: Segments, offline: Transitions | None = None) -> dict[str, float]:
        cfg = self.config
        adv, ret, old_v = rollout_advantages(self.critic, batch, cfg.gamma, cfg.gae_lambda)
        flat = batch.flatten()
        n = len(flat)
        data = (flat.obs, flat.action, flat.behavior_log_prob, adv, ret, old_v)
        sums: dict[str, float] = {}
        count, stopped_epoch = 0, cfg.n_epochs
        for epoch in range(cfg.n_epochs):
            # One gather per epoch, then contiguous minibatch views (fewer ops than indexing every minibatch).
            perm = torch.randperm(n, generator=self.generator)
            shuffled = [x[perm] for x in data]
            epoch_kl = []
            for start in range(0, n, cfg.minibatch_size):
                obs, action, behavior_logp, mb_adv, mb_ret, mb_old_v = (x[start : start + cfg.minibatch_size] for x in shuffled)
                logp, entropy = self.policy.log_prob_entropy(obs, action)
                mb_adv = normalize(mb_adv) if cfg.normalize_advantage else mb_adv
                pg_loss, metrics = ppo_clip_loss(logp, behavior_logp, mb_adv, cfg.clip_ratio)
                v_loss, vm = value_loss(self.critic(obs), mb_ret, mb_old_v, cfg.clip_ratio if cfg.clip_value else None)
                entropy = entropy.mean()
                loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
                metrics.update(vm, entropy=float(entropy.detach()))
                if self.q_net is not None:  # PMOE-PPO: auxiliary Q on the returns, router towards its best expert
                    loss = loss + self._pmoe_router_q_loss(obs, action, mb_ret, metrics)
                if offline is not None and self.bc_coef > 0:
                    off_idx = torch.randint(len(offline), (cfg.minibatch_size,), generator=self.generator)
                    b_loss, bm = bc_loss(self.policy.log_prob(offline.obs[off_idx], offline.action[off_idx]))
                    loss = loss + self.bc_coef * b_loss
                    metrics.update(bm)
                metrics["grad_norm"] = gradient_step(self.optimizer, loss, cfg.max_grad_norm)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                epoch_kl.append(metrics["approx_kl"])
            if cfg.target_kl is not None and float(np.mean(epoch_kl)) > cfg.target_kl:
                stopped_epoch = epoch + 1
                break
        self.bc_coef *= cfg.bc_decay
        out = {k: v / count for k, v in sums.items()}
        out.update(
            explained_variance=float(explained_variance(old_v, ret)),
            lr=self.optimizer.param_groups[0]["lr"],
            epochs=float(stopped_epoch),
            value_mean=float(old_v.mean()),
        )
        if not self.policy.discrete:
            out["std_mean"] = float(self.policy.log_std.detach().exp().mean())
        return out

    def _pmoe_router_q_loss(self, obs: torch.Tensor, action: torch.Tensor, returns: torch.Tensor,
                            metrics: dict[str, float]) -> torch.Tensor:
        """PMOE-PPO's extra terms ``L_Q + L_router`` for one minibatch (Ren et al. 2021; pmoe_ppo.py, see pmoe.md).

        ``L_Q = mean (Q(s, a) - R)^2`` regresses the auxiliary Q on the GAE returns ``R`` of the visited pairs;
        ``L_router = mean_{B,K} (w(s) - onehot(argmax_k Q(s, a_k)))^2`` with one fresh sample ``a_k`` per expert.
        """
        q_loss = (self.q_net(obs, action) - returns).square().mean()
        with torch.no_grad():
            expert_actions, _, _ = self.policy.expert_sample(obs)  # [B, K, A]
            b, k = expert_actions.shape[:2]
            expert_q = self.q_net(obs.repeat_interleave(k, 0), expert_actions.reshape(b * k, -1)).reshape(b, k)
        router_loss, rm = pmoe_router_loss(self.policy.weights(obs), expert_q)
        metrics.update(rm, q_loss=float(q_loss.detach()))
        return q_loss + router_loss

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "critic": self.critic.state_dict(),
                **({"q_net": self.q_net.state_dict()} if self.q_net is not None else {}),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "bc_coef": float(self.bc_coef)}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        if self.q_net is not None:
            self.q_net.load_state_dict(state["q_net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.bc_coef = float(state["bc_coef"])


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("ppo", PPOConfig, PPOLearner, loop="on_policy", inputs="env",
         summary="PPO, clipped surrogate (Schulman et al. 2017)",
         tiny=dict(n_steps=16, num_envs=2, minibatch_size=16, n_epochs=2))
