"""PROPS behaviour-policy objective (Corrado & Hanna, "On-Policy Policy Gradient Reinforcement Learning Without
On-Policy Sampling", arXiv:2311.08290; official code NicholasCorrado/PPOROS @a0c8708, ``PROPS/ppo_props_*.py``).

PROPS adapts a behaviour policy pi_phi, started from the target policy pi_theta, so that actions already
over-represented in the replay buffer become *less* likely to be sampled next:

    rho   = pi_phi(a|s) / pi_theta(a|s)                          (a, s from the buffer; pi_theta fixed)
    L(phi) = mean[ w * max(rho, clip(rho, 1 - eps, 1 + eps)) ] + lambda * mean_s[ KL(pi_phi(.|s) || pi_theta(.|s)) ]

with ``w = 1`` (PROPS) or ``w = |A| / std(A)`` (AW-PROPS). The surrogate is PPO's clipped objective with the
advantage set to ``-w``, so it is computed by :func:`hybridrl.losses.core.ppo_clip_loss`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, Independent, Normal, kl_divergence

from hybridrl.errors import ShapeError
from hybridrl.losses.core import ppo_clip_loss
from hybridrl.ops import check_same_shape, masked_mean

__all__ = ["props_behavior_loss", "policy_kl"]

KL_DIRECTIONS = ("behavior_target", "target_behavior")


def policy_kl(p: Distribution, q: Distribution, action_reduction: str = "mean") -> Tensor:
    """Exact per-state KL(p || q) between two action distributions of the same family, ``[B]`` in nats.

    Args:
        p, q: ``Categorical`` with logits ``[B, K]`` (full categorical KL, sum over the K actions), or diagonal
            Gaussians ``Independent(Normal(mu [B, D], std [B, D]), 1)`` (or plain ``Normal [B, D]``).
        action_reduction: for Gaussians, how the per-dimension KLs are combined: ``"sum"`` = the KL of the joint
            distribution; ``"mean"`` = the average over the D action dimensions (what PPOROS's continuous code
            regularises with, ppo_props_continuous.py:355-358). Ignored for categoricals.
    Returns: ``[B]`` float tensor, differentiable in both arguments.
    Raises: ShapeError for other or mixed families, or mismatched batch shapes; ValueError for an unknown reduction.
    Source: closed forms, e.g. Gaussian KL = log(s_q/s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2 per dimension.
    """
    if action_reduction not in ("mean", "sum"):
        raise ValueError(f"policy_kl: action_reduction must be 'mean' or 'sum', got {action_reduction!r}")
    if isinstance(p, Categorical) and isinstance(q, Categorical):
        if p.logits.shape != q.logits.shape:
            raise ShapeError(f"policy_kl: categorical logits {tuple(p.logits.shape)} vs {tuple(q.logits.shape)}")
        return kl_divergence(p, q)
    base_p = p.base_dist if isinstance(p, Independent) else p
    base_q = q.base_dist if isinstance(q, Independent) else q
    if not (isinstance(base_p, Normal) and isinstance(base_q, Normal)):
        raise ShapeError(f"policy_kl: needs two Categoricals or two diagonal Gaussians, got {type(p).__name__}, "
                         f"{type(q).__name__}")
    if base_p.loc.shape != base_q.loc.shape or base_p.loc.dim() != 2:
        raise ShapeError(f"policy_kl: Gaussian means must both be [B, D], got {tuple(base_p.loc.shape)} and "
                         f"{tuple(base_q.loc.shape)}")
    per_dim = kl_divergence(base_p, base_q)
    return per_dim.mean(-1) if action_reduction == "mean" else per_dim.sum(-1)


def props_behavior_loss(
    logp: Tensor,
    target_logp: Tensor,
    kl: Tensor,
    clip_ratio: float,
    kl_coef: float,
    weight: Tensor | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The PROPS behaviour loss L = mean[w max(rho, clip(rho, 1-eps, 1+eps))] + kl_coef * mean[kl].

    Minimising the first term lowers pi_phi on the actions already in the buffer (rho = pi_phi / pi_theta); below
    ``1 - eps`` the term is constant (no further push), above ``1 + eps`` it stays linear in rho. The KL term keeps
    pi_phi near pi_theta.

    Args:
        logp: ``[B]`` float, log pi_phi(a|s) of buffer actions under the behaviour policy (carries the gradient).
        target_logp: same shape, log pi_theta(a|s) under the target policy (treated as constant).
        kl: same shape, per-state KL between pi_phi and pi_theta (see :func:`policy_kl`; carries the gradient).
        clip_ratio: eps_PROPS >= 0. kl_coef: lambda >= 0.
        weight: optional same shape, non-negative per-sample weights (AW-PROPS: |A| / std(A)); constant.
        mask: optional bool, same shape.
    Returns:
        ``(loss, metrics)``: ``props_loss`` (the clipped surrogate), ``kl_reg`` (mean of ``kl``), ``loss``,
        ``approx_kl`` (k3 estimate from the buffer samples, nats), ``clip_fraction``, ``ratio_mean``, ``ratio_max``.
    Raises: ShapeError on mismatched shapes/dtypes; ValueError if clip_ratio < 0, kl_coef < 0 or a weight < 0.
    Source: Corrado & Hanna (2023) arXiv:2311.08290, the PROPS objective (Sec. 5); PPOROS
    ppo_props_continuous.py:355-366 (surrogate ``max(ratio, clip(ratio))`` plus ``props_lambda * KL``).
    """
    check_same_shape("props_behavior_loss", logp=logp, target_logp=target_logp, kl=kl, weight=weight, mask=mask)
    if kl_coef < 0:
        raise ValueError(f"props_behavior_loss: kl_coef must be >= 0, got {kl_coef}")
    if not kl.is_floating_point():
        raise ShapeError(f"props_behavior_loss: kl must be a floating tensor, got {kl.dtype}")
    if weight is None:
        weight = torch.ones_like(logp)
    elif bool((weight < 0).any()):
        raise ValueError("props_behavior_loss: weights must be non-negative")
    # max(-A rho, -A clip(rho)) with A = -w  ==  w * max(rho, clip(rho)) for w >= 0
    surrogate, metrics = ppo_clip_loss(logp, target_logp, -weight.detach(), clip_ratio, mask)
    kl_mean = masked_mean(kl, mask)
    loss = surrogate + kl_coef * kl_mean
    metrics["props_loss"] = metrics.pop("policy_loss")
    metrics.update(kl_reg=float(kl_mean.detach()), loss=float(loss.detach()))
    return loss, metrics
