"""Replayed policy gradient: PPO-clip or REINFORCE over the last k rollouts, with importance correction.

The learner keeps the last ``n_rollouts`` rollouts (:class:`Segments` with their behaviour log-probs mu). Each update
adds the new rollout and trains on all stored ones. With pi_prox = the policy at the start of the update and
w = c(pi_prox / mu) the weight of the chosen ``correction`` (none / clipped / truncated / vtrace):

    advantages, value targets: GAE(gamma, lambda)                                   (none, clipped, truncated)
                               V-trace(rho_bar, c_bar, lambda) with pi_prox / mu     (vtrace; IMPALA eq. 1, 4)
    objective "ppo":        none: PPO's clipped surrogate with r = pi_theta / mu    (k = 1: exactly PPO)
                            else: mean w max(-A r, -A clip(r, 1 +- eps)), r = pi_theta / pi_prox  (decoupled PPO)
    objective "reinforce":  -mean sg(c(pi_theta / mu)) A log pi_theta, the weight recomputed per minibatch
    + vf_coef * clipped value loss - ent_coef * entropy

Reports the effective sample size of pi_prox / mu over all stored steps (``ess``, ``ess_fraction``) and per batch
age (``ess_fraction_age{i}``, age 0 = the newest rollout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import torch

from hybridrl.algos.actor_critic import ActorCriticConfig, Minibatch, build_actor_critic, minibatch_epochs
from hybridrl.data.batches import Segments
from hybridrl.data.rollout import RolloutQueue
from hybridrl.errors import ConfigError
from hybridrl.losses import ppo_clip_loss, value_loss
from hybridrl.losses.replay_pg import CORRECTIONS, correction_weights, weighted_pg_loss, weighted_ppo_clip_loss
from hybridrl.nn import Policy
from hybridrl.ops import effective_sample_size, explained_variance, gae, kl_k3, normalize, vtrace


@dataclass(frozen=True)
class ReplayPGConfig(ActorCriticConfig):
    """Replayed policy-gradient hyperparameters: the shared fields of :class:`ActorCriticConfig` (``n_epochs`` passes
    over all stored rollouts; ``value_clip`` clips around the value at the update's start) plus

    Attributes:
        n_rollouts: k, rollouts kept and trained on (>= 1; the newest included).
        objective: "ppo" (clipped surrogate) or "reinforce" (importance-weighted REINFORCE with baseline).
        correction: "none" | "clipped" | "truncated" | "vtrace" (see the module docstring).
        rho_max: rho_bar > 0, truncation of pi/mu for "truncated" and "vtrace" (also V-trace's TD weight).
        c_max: c_bar > 0, truncation of the V-trace trace coefficient (lambda = ``gae_lambda``).
    """

    n_rollouts: int = 4
    objective: Literal["ppo", "reinforce"] = "ppo"
    correction: Literal["none", "clipped", "truncated", "vtrace"] = "vtrace"
    rho_max: float = 1.0
    c_max: float = 1.0

    def __post_init__(self) -> None:
        from hybridrl.algos import check_config

        super().__post_init__()
        check_config(self, n_rollouts=(1, None), rho_max=(1e-6, None), c_max=(1e-6, None))
        if self.objective not in ("ppo", "reinforce"):
            raise ConfigError(f"ReplayPGConfig.objective={self.objective!r}; expected 'ppo' or 'reinforce'")
        if self.correction not in CORRECTIONS:
            raise ConfigError(f"ReplayPGConfig.correction={self.correction!r}; expected one of {list(CORRECTIONS)}")



class ReplayPGLearner:
    """Replayed PG learner: ``update(Segments) -> metrics``; ``set_progress(f)`` anneals the LR.

    The stored rollouts are part of ``state_dict`` (as tensors), so a resumed run continues exactly.
    """

    def __init__(self, config: ReplayPGConfig, observation_space: gym.Space, action_space: gym.Space, seed: int = 0,
                 policy: Policy | None = None):
        # Networks, optimiser and generator are built exactly as PPOLearner builds them (same seed, same weights).
        torch.manual_seed(seed)
        self.config = config
        self.policy, self.critic = build_actor_critic(config, observation_space, action_space, policy)
        self.optimizer = torch.optim.Adam([*self.policy.parameters(), *self.critic.parameters()], lr=config.lr,
                                          eps=1e-5, fused=True)  # as PPO (k = 1 without correction is PPO exactly)
        self.generator = torch.Generator().manual_seed(seed)
        self.rollouts = RolloutQueue(config.n_rollouts)

    def set_progress(self, fraction: float) -> None:
        """Set the learning rate for training progress ``fraction`` in [0, 1] (linear annealing)."""
        if self.config.anneal_lr:
            for g in self.optimizer.param_groups:
                g["lr"] = self.config.lr * max(0.0, 1.0 - fraction)

    @torch.no_grad()
    def _targets(self, batch: Segments) -> dict[str, torch.Tensor]:
        """Flat per-step tensors of one stored rollout: advantages, returns, V_old, prox and behaviour log-probs."""
        cfg = self.config
        values, next_values = self.critic(batch.obs), self.critic(batch.next_obs)  # [B, T]
        prox_logp = self.policy.log_prob_entropy(batch.obs, batch.action)[0]  # same formula as the minibatches
        if cfg.correction == "vtrace":
            returns, advantages = vtrace(prox_logp - batch.behavior_log_prob, batch.reward, values, next_values,
                                         batch.terminated, batch.truncated, cfg.gamma, cfg.rho_max, cfg.c_max,
                                         cfg.gae_lambda)
        else:
            advantages, returns = gae(batch.reward, values, next_values, batch.terminated, batch.truncated,
                                      cfg.gamma, cfg.gae_lambda)
        m = batch.mask.reshape(-1)
        return {"adv": advantages.reshape(-1)[m], "ret": returns.reshape(-1)[m], "old_v": values.reshape(-1)[m],
                "prox_logp": prox_logp.reshape(-1)[m]}

    def update(self, batch: Segments) -> dict[str, float]:
        """Store ``batch`` (the newest rollout, ``Segments [B, T]`` with ``behavior_log_prob``) and train on the last
        ``n_rollouts`` rollouts: ``n_epochs`` shuffled minibatch passes over all their steps (:func:`minibatch_epochs`).

        Returns the means over minibatch steps of ``policy_loss, approx_kl, value_loss, entropy, grad_norm`` (plus the
        objective's own: ``clip_fraction, ratio_mean, ratio_max`` or the weight statistics), and
        ``explained_variance, lr, epochs, value_mean, n_rollouts, ess, ess_fraction, log_weight_max,
        ess_fraction_age{i}``, ``std_mean`` (Gaussian policies).
        """
        cfg = self.config
        self.rollouts.add(batch)
        stored = self.rollouts.newest_first()
        parts = [self._targets(s) for s in stored]
        flats = [s.flatten() for s in stored]
        data = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        data.update(obs=torch.cat([f.obs for f in flats]), action=torch.cat([f.action for f in flats]),
                    behavior_log_prob=torch.cat([f.behavior_log_prob for f in flats]))
        log_rho = data["prox_logp"] - data["behavior_log_prob"]
        ppo_none = cfg.objective == "ppo" and cfg.correction == "none"
        if cfg.objective == "ppo" and not ppo_none:
            data["weight"] = correction_weights(log_rho, cfg.correction, cfg.clip_ratio, cfg.rho_max)

        def loss_fn(mb: Minibatch) -> tuple[torch.Tensor, dict[str, float]]:
            logp, entropy = self.policy.log_prob_entropy(mb["obs"], mb["action"])
            mb_adv = normalize(mb["adv"]) if cfg.normalize_advantage else mb["adv"]
            if ppo_none:  # PPO itself: the clip is centred on the behaviour policy
                pg_loss, metrics = ppo_clip_loss(logp, mb["behavior_log_prob"], mb_adv, cfg.clip_ratio)
            elif cfg.objective == "ppo":
                pg_loss, metrics = weighted_ppo_clip_loss(logp, mb["prox_logp"], mb_adv, mb["weight"], cfg.clip_ratio)
            else:
                mb_log_rho = logp.detach() - mb["behavior_log_prob"]
                w = correction_weights(mb_log_rho, cfg.correction, cfg.clip_ratio, cfg.rho_max)
                pg_loss, metrics = weighted_pg_loss(logp, mb_adv, w)
                metrics["approx_kl"] = float(kl_k3(mb_log_rho).mean())  # KL(mu || pi_theta), as PPO's approx_kl
            v_loss, vm = value_loss(self.critic(mb["obs"]), mb["ret"], mb["old_v"], cfg.value_clip)
            entropy = entropy.mean()
            metrics.update(vm, entropy=float(entropy.detach()))
            return pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy, metrics

        out, epochs = minibatch_epochs(data, cfg.n_epochs, cfg.minibatch_size, self.generator, loss_fn,
                                       self.optimizer, cfg.max_grad_norm, cfg.target_kl)
        out.update(
            explained_variance=float(explained_variance(data["old_v"], data["ret"])),
            lr=self.optimizer.param_groups[0]["lr"],
            epochs=float(epochs),
            value_mean=float(data["old_v"].mean()),
            n_rollouts=float(len(stored)),
            **self._ess_metrics(log_rho, [len(p["adv"]) for p in parts]),
        )
        if not self.policy.discrete:
            out["std_mean"] = float(self.policy.log_std.detach().exp().mean())
        return out

    @staticmethod
    def _ess_metrics(log_rho: torch.Tensor, sizes: list[int]) -> dict[str, float]:
        """ESS of the raw weights pi_prox / mu at the update's start: over all steps and per batch age.

        ESS is scale-invariant, so the weights are computed as exp(log_rho - max) (no overflow).
        """
        def ess(x: torch.Tensor, normalized: bool) -> float:
            x = x.double()
            return float(effective_sample_size(torch.exp(x - x.max()), normalized=normalized)) if x.numel() else 0.0

        out = {"ess": ess(log_rho, False), "ess_fraction": ess(log_rho, True), "log_weight_max": float(log_rho.max())}
        for age, chunk in enumerate(torch.split(log_rho, sizes)):
            out[f"ess_fraction_age{age}"] = ess(chunk, True)
        return out

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "critic": self.critic.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "rollouts": self.rollouts.state_dict()["rollouts"]}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.rollouts.load_state_dict(state)


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("replay_pg", ReplayPGConfig, ReplayPGLearner, loop="on_policy", inputs="env",
         summary="PPO that replays its last rollouts with importance weights",
         tiny=dict(n_steps=16, num_envs=2, minibatch_size=16, n_epochs=2, n_rollouts=2, hidden=(16, 16)))
