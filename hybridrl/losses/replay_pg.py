"""Losses for policy gradients on replayed rollouts: importance-corrected PPO-clip and REINFORCE.

A stored rollout was collected by a behaviour policy mu (its ``behavior_logp``); the learner's policy has moved
since. ``correction_weights`` turns the log-ratio log(pi/mu) into the per-step weight of the chosen correction;
the two objectives apply it. All functions are pure and return tensors or ``(loss, metrics)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hybridrl.losses.core import _check, _valid_max
from hybridrl.ops import clipped_ratio, importance_ratio, kl_k3, masked_mean, truncated_ratio

__all__ = ["CORRECTIONS", "correction_weights", "weighted_ppo_clip_loss", "weighted_pg_loss"]

CORRECTIONS = ("none", "clipped", "truncated", "vtrace")


def correction_weights(log_rho: Tensor, correction: str, clip_ratio: float = 0.2, rho_max: float = 1.0) -> Tensor:
    """Per-step importance weights c(pi/mu) of a replay correction, without gradient.

    ``none``: 1 (data treated as on-policy); ``clipped``: clip(pi/mu, 1 - clip_ratio, 1 + clip_ratio);
    ``truncated`` and ``vtrace``: min(pi/mu, rho_max) (truncated IS; IMPALA's policy-gradient weight rho_s).

    Args:
        log_rho: ``[...]`` float, log pi(a|s) - log mu(a|s) (nats).
        correction: one of :data:`CORRECTIONS`. clip_ratio: >= 0 (``clipped``). rho_max: > 0 (``truncated``/``vtrace``).
    Returns: ``[...]`` tensor of ``log_rho``'s dtype, >= 0, detached.
    Raises: ValueError on an unknown correction or a bad clip_ratio/rho_max.
    Source: Ionides (2008) "Truncated Importance Sampling"; Espeholt et al. (2018) IMPALA eq. 4 (rho_s = min(rho_bar,
    pi/mu)); the two-sided clip of Schulman et al. (2017) PPO eq. 7 applied to the weight.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"correction_weights: correction must be one of {CORRECTIONS}, got {correction!r}")
    ratio = torch.exp(log_rho.detach())
    if correction == "none":
        return torch.ones_like(ratio)
    if correction == "clipped":
        return clipped_ratio(ratio, clip_ratio)
    return truncated_ratio(ratio, rho_max)


def weighted_ppo_clip_loss(
    logp: Tensor, prox_logp: Tensor, advantage: Tensor, weight: Tensor, clip_ratio: float, mask: Tensor | None = None
) -> tuple[Tensor, dict[str, float]]:
    """Decoupled PPO surrogate: L = mean( w * max(-A r, -A clip(r, 1 - eps, 1 + eps)) ), r = pi_theta / pi_prox.

    The trust region is centred on the proximal policy pi_prox (the learner's policy when the update started), and
    the behaviour correction w = c(pi_prox / mu) reweights each stored step. With w = 1 and pi_prox = mu this is
    PPO's clipped surrogate (:func:`hybridrl.losses.ppo_clip_loss`).

    Args:
        logp: ``[...]`` float, log pi_theta(a|s) (nats, carries the gradient).
        prox_logp: same shape, log pi_prox(a|s) (treated as constant).
        advantage: same shape (treated as constant). weight: same shape, w >= 0 (treated as constant).
        clip_ratio: eps >= 0. mask: optional bool, same shape.
    Returns:
        ``(loss, metrics)``; metrics ``policy_loss``, ``approx_kl`` (k3 estimate of KL(prox || new)),
        ``clip_fraction``, ``ratio_mean``, ``ratio_max`` (of r), ``weight_mean``, ``weight_max`` (of w).
    Raises: ShapeError on mismatched shapes/dtypes; ValueError if clip_ratio < 0.
    Source: Hilton, Cobbe & Schulman (2022) "Batch size-invariance for policy optimization", decoupled PPO
    objective (behaviour vs proximal policy); Schulman et al. (2017) PPO eq. 7.
    """
    _check("weighted_ppo_clip_loss", mask, logp=logp, prox_logp=prox_logp, advantage=advantage, weight=weight)
    adv, w = advantage.detach(), weight.detach()
    ratio = importance_ratio(logp, prox_logp.detach())
    surrogate = w * torch.max(-adv * ratio, -adv * clipped_ratio(ratio, clip_ratio))
    loss = masked_mean(surrogate, mask)
    with torch.no_grad():
        metrics = {
            "policy_loss": float(loss.detach()),
            "approx_kl": float(masked_mean(kl_k3(logp.detach() - prox_logp.detach()), mask)),
            "clip_fraction": float(masked_mean(((ratio - 1.0).abs() > clip_ratio).to(ratio.dtype), mask)),
            "ratio_mean": float(masked_mean(ratio, mask)),
            "ratio_max": _valid_max(ratio.detach(), mask),
            "weight_mean": float(masked_mean(w, mask)),
            "weight_max": _valid_max(w, mask),
        }
    return loss, metrics


def weighted_pg_loss(
    logp: Tensor, advantage: Tensor, weight: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, dict[str, float]]:
    """Importance-weighted REINFORCE with baseline: L = -mean( sg(w) * A * log pi_theta(a|s) ).

    Its gradient -mean(w A grad log pi) is the off-policy policy gradient with per-step weights w (IMPALA eq. 4
    when w = min(rho_bar, pi/mu) and A is the V-trace advantage r + gamma v_{s+1} - V(s)).

    Args:
        logp: ``[...]`` float, log pi_theta(a|s) (nats, carries the gradient).
        advantage: same shape (treated as constant). weight: same shape, w >= 0 (treated as constant).
        mask: optional bool, same shape.
    Returns: ``(loss, {"policy_loss", "weight_mean", "weight_max"})``.
    Raises: ShapeError on mismatched shapes/dtypes.
    Source: Williams (1992) REINFORCE; Espeholt et al. (2018) IMPALA eq. 4; Degris et al. (2012) "Off-Policy
    Actor-Critic" (per-step weight pi/mu on the policy gradient).
    """
    _check("weighted_pg_loss", mask, logp=logp, advantage=advantage, weight=weight)
    w = weight.detach()
    loss = -masked_mean(w * advantage.detach() * logp, mask)
    with torch.no_grad():
        metrics = {
            "policy_loss": float(loss.detach()),
            "weight_mean": float(masked_mean(w, mask)),
            "weight_max": _valid_max(w, mask),
        }
    return loss, metrics
