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

from collections import deque
from dataclasses import dataclass, fields
from typing import Literal

import gymnasium as gym
import numpy as np
import torch

from hybridrl.algos import gradient_step
from hybridrl.algos.actor_critic import ActorCriticConfig, build_actor_critic
from hybridrl.data.batches import Segments, Transitions
from hybridrl.errors import ConfigError
from hybridrl.losses import ppo_clip_loss, value_loss
from hybridrl.losses.replay_pg import CORRECTIONS, correction_weights, weighted_pg_loss, weighted_ppo_clip_loss
from hybridrl.nn import Policy
from hybridrl.ops import effective_sample_size, explained_variance, gae, kl_k3, normalize, vtrace


@dataclass(frozen=True)
class ReplayPGConfig(ActorCriticConfig):
    """Replayed policy-gradient hyperparameters: the shared fields of :class:`ActorCriticConfig` (``n_epochs`` passes
    over all stored rollouts; ``clip_value`` clips around the value at the update's start) plus

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


_SEGMENT_FIELDS = [f.name for f in fields(Segments)]


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
        self.optimizer = torch.optim.Adam([*self.policy.parameters(), *self.critic.parameters()], lr=config.lr, eps=1e-5,
                                          fused=True)  # as PPO (k = 1 without correction is PPO exactly)
        self.generator = torch.Generator().manual_seed(seed)
        self.rollouts: deque[Segments] = deque(maxlen=config.n_rollouts)

    def set_progress(self, fraction: float) -> None:
        """Set the learning rate for training progress ``fraction`` in [0, 1] (linear annealing)."""
        if self.config.anneal_lr:
            for g in self.optimizer.param_groups:
                g["lr"] = self.config.lr * max(0.0, 1.0 - fraction)

    @torch.no_grad()
    def _targets(self, batch: Segments) -> dict[str, torch.Tensor]:
        """Flat per-step tensors of one stored rollout: advantages, returns, V_old, prox and behaviour log-probs."""
        cfg = self.config
        b, t = batch.reward.shape
        values = self.critic(batch.obs.reshape(b * t, -1)).reshape(b, t)
        next_values = self.critic(batch.next_obs.reshape(b * t, -1)).reshape(b, t)
        prox_logp = self.policy.log_prob_entropy(batch.obs.reshape(b * t, -1),  # same formula as the minibatches
                                                 batch.action.reshape(b * t, *batch.action.shape[2:]))[0].reshape(b, t)
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

    def update(self, batch: Segments, offline: Transitions | None = None) -> dict[str, float]:
        """Store ``batch`` (the newest rollout) and train on the last ``n_rollouts`` rollouts.

        Raises ConfigError if ``offline`` data is passed (no offline term).
        """
        if offline is not None:
            raise ConfigError("replay_pg does not use offline data (no bc_coef); train without an offline dataset")
        cfg = self.config
        # A private copy: loops may build batches as views of buffers they overwrite with the next rollout.
        self.rollouts.append(Segments(**{f: getattr(batch, f).clone() for f in _SEGMENT_FIELDS}))
        stored = list(reversed(self.rollouts))  # age 0 = newest
        parts = [self._targets(s) for s in stored]
        flats = [s.flatten() for s in stored]
        cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        obs = torch.cat([f.obs for f in flats])
        action = torch.cat([f.action for f in flats])
        behavior_logp = torch.cat([f.behavior_log_prob for f in flats])
        adv, ret, old_v, prox_logp = cat["adv"], cat["ret"], cat["old_v"], cat["prox_logp"]
        ppo_none = cfg.objective == "ppo" and cfg.correction == "none"
        if cfg.objective == "ppo" and not ppo_none:
            weight = correction_weights(prox_logp - behavior_logp, cfg.correction, cfg.clip_ratio, cfg.rho_max)
        n = len(obs)
        sums: dict[str, float] = {}
        count, stopped_epoch = 0, cfg.n_epochs
        for epoch in range(cfg.n_epochs):
            perm = torch.randperm(n, generator=self.generator)
            epoch_kl = []
            for start in range(0, n, cfg.minibatch_size):
                idx = perm[start : start + cfg.minibatch_size]
                mb_obs = obs[idx]
                logp, entropy = self.policy.log_prob_entropy(mb_obs, action[idx])
                mb_adv = normalize(adv[idx]) if cfg.normalize_advantage else adv[idx]
                if ppo_none:  # PPO itself: the clip is centred on the behaviour policy
                    pg_loss, metrics = ppo_clip_loss(logp, behavior_logp[idx], mb_adv, cfg.clip_ratio)
                elif cfg.objective == "ppo":
                    pg_loss, metrics = weighted_ppo_clip_loss(logp, prox_logp[idx], mb_adv, weight[idx], cfg.clip_ratio)
                else:
                    log_rho = logp.detach() - behavior_logp[idx]
                    w = correction_weights(log_rho, cfg.correction, cfg.clip_ratio, cfg.rho_max)
                    pg_loss, metrics = weighted_pg_loss(logp, mb_adv, w)
                    metrics["approx_kl"] = float(kl_k3(log_rho).mean())  # KL(mu || pi_theta), as PPO's approx_kl
                v_loss, vm = value_loss(self.critic(mb_obs), ret[idx], old_v[idx], cfg.clip_ratio if cfg.clip_value else None)
                entropy = entropy.mean()
                loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
                metrics.update(vm, entropy=float(entropy.detach()))
                metrics["grad_norm"] = gradient_step(self.optimizer, loss, cfg.max_grad_norm)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                epoch_kl.append(metrics["approx_kl"])
            if cfg.target_kl is not None and float(np.mean(epoch_kl)) > cfg.target_kl:
                stopped_epoch = epoch + 1
                break
        out = {k: v / count for k, v in sums.items()}
        out.update(
            explained_variance=float(explained_variance(old_v, ret)),
            lr=self.optimizer.param_groups[0]["lr"],
            epochs=float(stopped_epoch),
            value_mean=float(old_v.mean()),
            n_rollouts=float(len(stored)),
            **self._ess_metrics(prox_logp - behavior_logp, [len(p["adv"]) for p in parts]),
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
        rollouts = [{f: getattr(s, f) for f in _SEGMENT_FIELDS} for s in self.rollouts]
        return {"policy": self.policy.state_dict(), "critic": self.critic.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "rollouts": rollouts}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.rollouts = deque((Segments(**r) for r in state["rollouts"]), maxlen=self.config.n_rollouts)


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("replay_pg", ReplayPGConfig, ReplayPGLearner, loop="on_policy", inputs="env",
         summary="PPO that replays its last rollouts with importance weights",
         tiny=dict(n_steps=16, num_envs=2, minibatch_size=16, n_epochs=2, n_rollouts=2, hidden=(16, 16)))
