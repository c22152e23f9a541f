"""Soft Actor-Critic losses (Haarnoja et al. 2018, arXiv:1812.05905) and the PMOE actor/router losses
(Ren et al. 2021, arXiv:2104.09122; official rlkit-pmoe ``PMOEsac.py``). Pure functions returning ``(loss, metrics)``.

    y       = r + gamma (1 - terminated) (min_i Qbar_i(s', a') - alpha log pi(a'|s')),  a' ~ pi(.|s')    (eq. 3, 5)
    J_Q     = 0.5 mean((Q_1(s,a) - y)^2) + 0.5 mean((Q_2(s,a) - y)^2)                               (eq. 5, twin Q)
    J_pi    = mean(alpha log pi(a~|s) - min_i Q_i(s, a~)),  a~ reparameterised                       (eq. 7/12)
    J_alpha = -mean(log alpha * sg(log pi(a~|s) + H_target))                                         (eq. 18, log form)
PMOE (K experts, one reparameterised action a_k per expert, q_k = min_i Q_i(s, a_k), k* = argmax_k q_k):
    J_actor  = mean(alpha log p_{k*}(a_{k*}|s) - q_{k*})        only the best expert is back-propagated
    J_router = mean_{B,K}((w_k(s) - onehot(k*)_k)^2)              (F.mse_loss over all B*K entries, as official)
"""

from __future__ import annotations

import torch
from torch import Tensor

from hybridrl.errors import ShapeError
from hybridrl.ops import check_same_shape

__all__ = ["sac_target", "sac_critic_loss", "sac_actor_loss", "sac_temperature_loss", "pmoe_best_expert",
           "pmoe_actor_loss", "pmoe_router_loss"]


def _floats(where: str, **tensors: Tensor) -> None:
    check_same_shape(where, **tensors)
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise ShapeError(f"{where}: {name} must be a floating tensor, got {t.dtype}")


def sac_target(reward: Tensor, terminated: Tensor, next_q: Tensor, next_logp: Tensor, alpha: float | Tensor,
               gamma: float) -> Tensor:
    """Soft TD target ``y = r + gamma (1 - terminated) (next_q - alpha next_logp)``, ``[B]``, no gradient.

    Args:
        reward: ``[B]`` float (already scaled). terminated: ``[B]`` bool; truncated steps bootstrap (pass False).
        next_q: ``[B]`` ``min_i Qbar_i(s', a')`` of the target critics at a fresh ``a' ~ pi(.|s')``.
        next_logp: ``[B]`` ``log pi(a'|s')`` (PMOE: the sampled expert's own density).
        alpha: temperature >= 0. gamma: discount in [0, 1].
    Raises: ShapeError on mismatched shapes or a non-bool ``terminated``.
    Source: Haarnoja et al. (2018) "Soft Actor-Critic Algorithms and Applications", eqs. 3 and 5.
    """
    _floats("sac_target", reward=reward, next_q=next_q, next_logp=next_logp)
    check_same_shape("sac_target", reward=reward, terminated=terminated)
    if terminated.dtype != torch.bool:
        raise ShapeError(f"sac_target: terminated must have dtype torch.bool, got {terminated.dtype}")
    with torch.no_grad():
        return reward + gamma * (~terminated).to(reward.dtype) * (next_q - alpha * next_logp)


def sac_critic_loss(q1: Tensor, q2: Tensor, target: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Twin soft-Q regression ``0.5 mean((q1 - y)^2) + 0.5 mean((q2 - y)^2)`` with ``y`` detached.

    ``q1``, ``q2``, ``target``: ``[B]`` float. Returns ``(loss, {"q_loss", "q_mean", "target_mean"})`` (``q_mean``
    averages both critics). Raises ShapeError on mismatched shapes/dtypes.
    Source: Haarnoja et al. (2018) arXiv:1812.05905, eq. 5; twin critics from Fujimoto et al. (2018) TD3.
    """
    _floats("sac_critic_loss", q1=q1, q2=q2, target=target)
    y = target.detach()
    loss = 0.5 * (q1 - y).square().mean() + 0.5 * (q2 - y).square().mean()
    return loss, {"q_loss": float(loss.detach()), "q_mean": float(0.5 * (q1.detach() + q2.detach()).mean()),
                  "target_mean": float(y.mean())}


def sac_actor_loss(logp: Tensor, q: Tensor, alpha: float | Tensor) -> tuple[Tensor, dict[str, float]]:
    """Reparameterised soft policy loss ``mean(alpha logp - q)``.

    Args:
        logp: ``[B]`` ``log pi(a~|s)`` of a reparameterised sample (carries the gradient).
        q: ``[B]`` ``min_i Q_i(s, a~)`` (gradient reaches the policy through ``a~``).
        alpha: temperature (treated as constant).
    Returns: ``(loss, {"actor_loss", "entropy"})`` with ``entropy = -mean logp`` (nats, a one-sample estimate).
    Raises: ShapeError on mismatched shapes/dtypes.
    Source: Haarnoja et al. (2018) arXiv:1812.05905, eqs. 7 and 12.
    """
    _floats("sac_actor_loss", logp=logp, q=q)
    alpha = alpha.detach() if isinstance(alpha, Tensor) else alpha
    loss = (alpha * logp - q).mean()
    return loss, {"actor_loss": float(loss.detach()), "entropy": float(-logp.detach().mean())}


def sac_temperature_loss(log_alpha: Tensor, logp: Tensor, target_entropy: float) -> tuple[Tensor, dict[str, float]]:
    """Automatic temperature loss ``-mean(log_alpha * sg(logp + H_target))``.

    Minimising it raises alpha while the policy entropy ``-E[logp]`` is below ``H_target`` and lowers it above.
    ``log_alpha``: 0-d or ``[1]`` tensor with gradient. ``logp``: ``[B]`` (detached here). ``target_entropy``: nats,
    SAC's default ``-|A|``. Returns ``(loss, {"alpha_loss", "alpha"})``. Raises ShapeError if ``log_alpha`` has
    more than one element. Source: Haarnoja et al. (2018) arXiv:1812.05905, eq. 18, in the ``log alpha`` form of
    the official softlearning code, SB3 and rlkit (the gradient has the same sign; its scale differs by alpha).
    """
    if log_alpha.numel() != 1:
        raise ShapeError(f"sac_temperature_loss: log_alpha must hold one value, got shape {tuple(log_alpha.shape)}")
    _floats("sac_temperature_loss", logp=logp)
    loss = -(log_alpha.reshape(()) * (logp.detach() + target_entropy)).mean()
    return loss, {"alpha_loss": float(loss.detach()), "alpha": float(log_alpha.detach().exp().reshape(()))}


def pmoe_best_expert(expert_q: Tensor) -> Tensor:
    """``k* = argmax_k q_k`` per state: ``expert_q [B, K]`` -> int64 ``[B]`` (first index on ties)."""
    if expert_q.dim() != 2:
        raise ShapeError(f"pmoe_best_expert: expert_q must be [B, K], got {tuple(expert_q.shape)}")
    return expert_q.detach().argmax(-1)


def pmoe_actor_loss(expert_logp: Tensor, expert_q: Tensor, alpha: float | Tensor) -> tuple[Tensor, dict[str, float]]:
    """PMOE-SAC actor loss: the SAC actor loss of the best expert only, ``mean(alpha log p_{k*} - q_{k*})``.

    Args:
        expert_logp: ``[B, K]`` each expert's own log-density of its reparameterised action (not the mixture's).
        expert_q: ``[B, K]`` ``min_i Q_i(s, a_k)``; the gradient reaches expert k* through ``a_{k*}``.
        alpha: temperature (constant).
    Returns: ``(loss, {"actor_loss", "entropy", "best_q_mean"})``; ``entropy = -mean log p_{k*}``.
    Raises: ShapeError unless both are ``[B, K]`` floats.
    Source: Ren et al. (2021) PMOE sec. 4 (the "frequency" gradient estimator); rlkit-pmoe PMOEsac.py,
    ``train_from_torch`` (max over the K critic values, gather of ``log_pi``).
    """
    _floats("pmoe_actor_loss", expert_logp=expert_logp, expert_q=expert_q)
    best = pmoe_best_expert(expert_q).unsqueeze(-1)
    logp, q = expert_logp.gather(-1, best).squeeze(-1), expert_q.gather(-1, best).squeeze(-1)
    alpha = alpha.detach() if isinstance(alpha, Tensor) else alpha
    loss = (alpha * logp - q).mean()
    return loss, {"actor_loss": float(loss.detach()), "entropy": float(-logp.detach().mean()),
                  "best_q_mean": float(q.detach().mean())}


def pmoe_router_loss(weights: Tensor, expert_q: Tensor) -> tuple[Tensor, dict[str, float]]:
    """PMOE router loss ``mean over B and K of (w_k(s) - onehot(argmax_k q_k)_k)^2``; ``expert_q`` is constant.

    Args:
        weights: ``[B, K]`` router probabilities (carry the gradient). expert_q: ``[B, K]`` critic values.
    Returns: ``(loss, {"router_loss", "router_entropy", "best_weight"})``: mean entropy of ``w`` (nats) and the
    mean weight the router gives the best expert.
    Raises: ShapeError unless both are ``[B, K]`` floats.
    Source: rlkit-pmoe PMOEsac.py (``F.mse_loss(one_hot(best_index, k), mixing_coefficient)``); Ren et al. (2021).
    """
    _floats("pmoe_router_loss", weights=weights, expert_q=expert_q)
    best = pmoe_best_expert(expert_q)
    onehot = torch.nn.functional.one_hot(best, weights.shape[-1]).to(weights.dtype)
    loss = (weights - onehot).square().mean()
    with torch.no_grad():
        w = weights.detach()
        ent = -(w * w.clamp_min(1e-12).log()).sum(-1).mean()
        best_w = w.gather(-1, best.unsqueeze(-1)).mean()
    return loss, {"router_loss": float(loss.detach()), "router_entropy": float(ent), "best_weight": float(best_w)}
