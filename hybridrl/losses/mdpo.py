"""Mirror Descent Policy Optimization losses (Tomar et al. 2020, arXiv:2005.09814), on- and off-policy.

Each MDPO iteration k approximately solves ``max_theta E[objective] - (1/t_k) KL(pi_theta || pi_theta_k)`` by a few
gradient steps started at theta_k. Both functions are pure and return ``(loss, metrics)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hybridrl.losses.core import _check, _valid_max
from hybridrl.ops import importance_ratio, kl_k3, masked_mean

__all__ = ["mdpo_loss", "mdpo_off_actor_loss"]


def mdpo_loss(
    logp: Tensor, old_logp: Tensor, advantage: Tensor, kl: Tensor, step_size: float, mask: Tensor | None = None
) -> tuple[Tensor, dict[str, float]]:
    """On-policy MDPO objective: L = -mean( r A ) + (1 / t_k) mean( KL(pi_theta(.|s) || pi_theta_k(.|s)) ).

    r = exp(logp - old_logp) is the ratio to the iteration's starting policy pi_theta_k (which collected the data).
    The KL is the exact per-state divergence with the CURRENT policy first (reverse of PPO's penalty direction),
    as in the official code (``policy_pi.proba_distribution.kl(old_policy.proba_distribution)``).

    Args:
        logp: ``[...]`` float, log pi_theta(a|s) (nats, carries the gradient).
        old_logp: same shape, log pi_theta_k(a|s) (treated as constant).
        advantage: same shape, advantage estimates (treated as constant; standardise beforehand if wanted).
        kl: same shape, per-state KL(pi_theta(.|s) || pi_theta_k(.|s)) in nats (carries the gradient), e.g.
            ``torch.distributions.kl_divergence(new_dist, old_dist)``.
        step_size: t_k > 0, the mirror-descent step size; the penalty weight is 1 / t_k.
        mask: optional bool, same shape.
    Returns:
        ``(loss, metrics)``; metrics ``policy_loss`` (the whole loss), ``surrogate`` (mean r A), ``kl`` (mean KL),
        ``kl_coef`` (1 / t_k), ``approx_kl`` (k3 estimate of KL(old || new)), ``ratio_mean``, ``ratio_max``.
    Raises: ShapeError on mismatched shapes/dtypes; ValueError if step_size <= 0.
    Source: Tomar et al. (2020/ICLR 2022) "Mirror Descent Policy Optimization", the on-policy MDPO update (the
    paper's equation number is not re-checked here);
    github.com/manantomar/Mirror-Descent-Policy-Optimization mdpo_on/mdpo.py ("multistep-SGD" surrgain).
    """
    _check("mdpo_loss", mask, logp=logp, old_logp=old_logp, advantage=advantage, kl=kl)
    if not step_size > 0:
        raise ValueError(f"mdpo_loss: step_size must be > 0, got {step_size}")
    ratio = importance_ratio(logp, old_logp.detach())
    surrogate = masked_mean(ratio * advantage.detach(), mask)
    mean_kl = masked_mean(kl, mask)
    loss = -surrogate + mean_kl / step_size
    with torch.no_grad():
        metrics = {
            "policy_loss": float(loss.detach()),
            "surrogate": float(surrogate.detach()),
            "kl": float(mean_kl.detach()),
            "kl_coef": 1.0 / step_size,
            "approx_kl": float(masked_mean(kl_k3(logp.detach() - old_logp.detach()), mask)),
            "ratio_mean": float(masked_mean(ratio.detach(), mask)),
            "ratio_max": _valid_max(ratio.detach(), mask),
        }
    return loss, metrics


def mdpo_off_actor_loss(
    logp: Tensor, old_logp: Tensor, q: Tensor, kl_coef: float, ent_coef: float
) -> tuple[Tensor, dict[str, float]]:
    """Off-policy MDPO actor loss: L = mean( c (log pi_theta - log pi_k)(a|s) + lambda log pi_k(a|s) - Q(s, a) ).

    ``a = f_theta(eps; s)`` is a reparameterised sample of the CURRENT policy, so ``logp``, ``old_logp`` (the old
    policy's density at that action) and ``q`` all carry gradients through the action; the old policy's
    parameters must be frozen. With a ~ pi_theta, mean(log pi_theta - log pi_k) estimates KL(pi_theta || pi_k), so
    L = c KL + lambda E[log pi_k] - E[Q]: a SAC-style soft policy step with an added mirror-descent proximity term.
    Equivalent to the official form mean(c log pi_theta + (lambda - c) log pi_k - Q).

    Args:
        logp: ``[B]`` float, log pi_theta(a|s) at the reparameterised action (nats).
        old_logp: ``[B]`` float, log pi_k(a|s) of the frozen old policy at the same action.
        q: ``[B]`` float, Q(s, a) of the critic (the official code uses Q1, not min(Q1, Q2)).
        kl_coef: c = 1 / t_k >= 0 (``klconst``; constant in the official off-policy code).
        ent_coef: lambda >= 0, entropy temperature (the official ``lamda``).
    Returns:
        ``(loss, metrics)``; metrics ``actor_loss``, ``kl`` (sample mean of log pi_theta - log pi_k), ``entropy``
        (sample mean of -log pi_theta), ``q_pi`` (mean Q at the policy's actions).
    Raises: ShapeError on mismatched shapes/dtypes; ValueError on a negative coefficient.
    Source: Tomar et al. (2020/ICLR 2022), the off-policy MDPO actor update;
    official mdpo_off/mdpo.py (``policy_kl_loss``,
    reparameterised branch, with tsallis_q = 1).
    """
    _check("mdpo_off_actor_loss", logp=logp, old_logp=old_logp, q=q)
    if kl_coef < 0 or ent_coef < 0:
        raise ValueError(f"mdpo_off_actor_loss: need kl_coef >= 0 and ent_coef >= 0, got {kl_coef}, {ent_coef}")
    kl = logp - old_logp
    loss = (kl_coef * kl + ent_coef * old_logp - q).mean()
    with torch.no_grad():
        metrics = {
            "actor_loss": float(loss.detach()),
            "kl": float(kl.detach().mean()),
            "entropy": float(-logp.detach().mean()),
            "q_pi": float(q.detach().mean()),
        }
    return loss, metrics
