"""Proximal Policy Optimization with GAE (Schulman et al. 2017, arXiv:1707.06347).

Per rollout of ``B`` envs x ``T`` steps (a :class:`Segments` batch):

    A_t   = GAE(gamma, lambda) with V(true next obs) at truncations, 0 at terminations   (GAE paper eq. 16)
    R_t   = A_t + V_old(s_t)
    L     = E[max(-A r, -A clip(r, 1-eps, 1+eps))]                                        (PPO eq. 7)
          + c_v 0.5 E[max((V-R)^2, (V_old + clip(V - V_old, +-c) - R)^2)] - c_ent E[H]
          + sum of the auxiliary losses the caller supplies (e.g. fine-tuning's BC term, PMOE's router/Q terms)

Implementation details follow CleanRL's ``ppo_continuous_action.py`` ("The 37 implementation details
of PPO", Huang et al. 2022): orthogonal init, separate actor/critic, Adam eps 1e-5, linear LR
annealing, per-minibatch advantage normalisation, value clipping, global gradient clipping,
approx-KL (k3) and clip-fraction metrics, optional early stop on ``target_kl`` per epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import gymnasium as gym
import torch

from hybridrl.algos.actor_critic import (
    ActorCriticConfig,
    Minibatch,
    build_actor_critic,
    minibatch_epochs,
    rollout_advantages,
)
from hybridrl.data.batches import Segments
from hybridrl.losses import ppo_clip_loss, value_loss
from hybridrl.nn import Policy
from hybridrl.ops import explained_variance, normalize

AuxLoss = Callable[[Minibatch], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class PPOConfig(ActorCriticConfig):
    """PPO hyperparameters: the fields of :class:`ActorCriticConfig` (CleanRL's MuJoCo defaults), plus

    Attributes:
        critic_lr: Adam learning rate of the critic (> 0), annealed like ``lr``; None = ``lr`` (one parameter group,
            CleanRL). Fine-tuning uses a critic rate ~10x the actor's (Uni-O4: actor 2e-5, critic 2e-4).
    """

    critic_lr: float | None = None

    def __post_init__(self) -> None:
        from hybridrl.algos import check_config

        super().__post_init__()
        check_config(self, critic_lr=(1e-12, None))


class PPOLearner:
    """PPO learner: ``update(Segments, aux_losses=()) -> metrics``; ``set_progress(f)`` anneals the LR.

    Attributes: ``policy``, ``critic`` (a separate :class:`ValueNet` sharing the policy's normaliser), one Adam
    ``optimizer`` over both, ``generator`` (minibatch shuffling; auxiliary losses may draw from it too).
    """

    def __init__(self, config: PPOConfig, observation_space: gym.Space, action_space: gym.Space, seed: int = 0,
                 policy: Policy | None = None):
        torch.manual_seed(seed)
        self.config = config
        policy = policy or self._default_policy(observation_space, action_space)
        self.policy, self.critic = build_actor_critic(config, observation_space, action_space, policy)
        actor = [*self.policy.parameters(), *self._extra_parameters(observation_space, action_space)]
        critic_lr = getattr(config, "critic_lr", None)
        params = [*actor, *self.critic.parameters()] if critic_lr is None else [
            {"params": actor}, {"params": list(self.critic.parameters()), "lr": critic_lr}]  # [actor, critic] groups
        self.optimizer = torch.optim.Adam(params, lr=config.lr, eps=1e-5, fused=True)  # fused: one kernel per step
        self._base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.generator = torch.Generator().manual_seed(seed)

    def _default_policy(self, observation_space: gym.Space, action_space: gym.Space) -> Policy | None:
        """The policy built when none is given (None: :func:`build_actor_critic`'s default); subclasses override."""
        return None

    def _extra_parameters(self, observation_space: gym.Space, action_space: gym.Space) -> Iterable[torch.nn.Parameter]:
        """Parameters of extra modules trained by the same optimiser (built after the critic); none in PPO."""
        return ()

    def set_progress(self, fraction: float) -> None:
        """Set the learning rate for training progress ``fraction`` in [0, 1] (linear annealing)."""
        if self.config.anneal_lr:
            for g, base in zip(self.optimizer.param_groups, self._base_lrs):
                g["lr"] = base * max(0.0, 1.0 - fraction)

    def update(self, batch: Segments, aux_losses: Sequence[AuxLoss] = ()) -> dict[str, float]:
        """One PPO update on a rollout ``batch`` (``Segments [B, T]`` with ``behavior_log_prob``).

        ``n_epochs`` shuffled passes of ``minibatch_size`` steps (see :func:`minibatch_epochs`). Each auxiliary loss
        is called per minibatch, a dict of ``[M]``-row tensors ``obs, action, behavior_log_prob, adv`` (raw GAE),
        ``ret``, ``old_v``, and returns ``(loss, metrics)``; the loss is added as is (weights included).

        Returns the means over minibatch steps of ``policy_loss, approx_kl, clip_fraction, ratio_mean, ratio_max,
        value_loss, entropy, grad_norm`` (plus the auxiliary metrics), and ``explained_variance, lr, epochs``
        (run before a ``target_kl`` stop), ``value_mean``, ``std_mean`` (Gaussian policies).
        """
        cfg = self.config
        adv, ret, old_v = rollout_advantages(self.critic, batch, cfg.gamma, cfg.gae_lambda)
        flat = batch.flatten()
        data = {"obs": flat.obs, "action": flat.action, "behavior_log_prob": flat.behavior_log_prob,
                "adv": adv, "ret": ret, "old_v": old_v}

        def loss_fn(mb: Minibatch) -> tuple[torch.Tensor, dict[str, float]]:
            logp, entropy = self.policy.log_prob_entropy(mb["obs"], mb["action"])
            mb_adv = normalize(mb["adv"]) if cfg.normalize_advantage else mb["adv"]
            pg_loss, metrics = ppo_clip_loss(logp, mb["behavior_log_prob"], mb_adv, cfg.clip_ratio)
            v_loss, vm = value_loss(self.critic(mb["obs"]), mb["ret"], mb["old_v"], cfg.value_clip)
            entropy = entropy.mean()
            loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
            metrics.update(vm, entropy=float(entropy.detach()))
            for aux in aux_losses:
                aux_loss, am = aux(mb)
                loss = loss + aux_loss
                metrics.update(am)
            return loss, metrics

        out, epochs = minibatch_epochs(data, cfg.n_epochs, cfg.minibatch_size, self.generator, loss_fn,
                                       self.optimizer, cfg.max_grad_norm, cfg.target_kl)
        out.update(
            explained_variance=float(explained_variance(old_v, ret)),
            lr=self.optimizer.param_groups[0]["lr"],
            **({"critic_lr": self.optimizer.param_groups[1]["lr"]} if len(self.optimizer.param_groups) > 1 else {}),
            epochs=float(epochs),
            value_mean=float(old_v.mean()),
        )
        if not self.policy.discrete:
            out["std_mean"] = float(self.policy.log_std.detach().exp().mean())
        return out

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "critic": self.critic.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("ppo", PPOConfig, PPOLearner, loop="on_policy", inputs="env",
         summary="PPO, clipped surrogate (Schulman et al. 2017)",
         tiny=dict(n_steps=16, num_envs=2, minibatch_size=16, n_epochs=2))
