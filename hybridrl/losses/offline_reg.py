"""Losses of the policy-regularised offline learners: TD3+BC, PRDC, A2PR (deterministic actors) and AWAC.

Pure functions returning ``(loss, metrics)``; every target they are given is treated as a constant (detached).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hybridrl.errors import ShapeError

__all__ = ["regularized_actor_loss", "td3_critic_target", "awac_weights", "awac_actor_loss", "a2pr_bc_target",
           "vae_loss", "ensemble_bc_loss"]


def _same(where: str, **tensors: Tensor) -> None:
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ShapeError(f"{where}: tensors must have one shape, got {shapes}")


def td3_critic_target(reward: Tensor, terminated: Tensor, next_q1: Tensor, next_q2: Tensor,
                      gamma: float) -> Tensor:
    """Clipped double-Q target ``y = r + gamma (1 - terminated) min(Q1bar, Q2bar)(s', a')``, ``[B]``, detached.

    ``next_q*`` are the target critics at the smoothed target action ``a' = clip(mu_bar(s') + clip(eps, -c, c))``.
    Truncated steps bootstrap (only ``terminated`` stops it). Source: Fujimoto et al. (2018) TD3, eqs. 10 and 15.
    """
    _same("td3_critic_target", reward=reward, next_q1=next_q1, next_q2=next_q2)
    not_done = (~terminated.bool()).to(reward.dtype)
    return (reward + gamma * not_done * torch.min(next_q1, next_q2)).detach()


def regularized_actor_loss(q: Tensor, pi_action: Tensor, target_action: Tensor, alpha: float,
                           weight: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """``L = -lambda mean_B Q(s, pi(s)) + mean_{B, dims} w (pi(s) - a_target)^2``, ``lambda = alpha / sg(mean|Q|)``.

    Args:
        q: ``[B]`` Q_1(s, pi(s)), differentiable through ``pi``.
        pi_action: ``[B, A]`` pi(s), differentiable.
        target_action: ``[B, A]`` the regularisation target (constant): the dataset action (TD3+BC), the nearest
            dataset neighbour's action (PRDC), or A2PR's chosen action.
        alpha: the Q/BC trade-off (> 0; TD3+BC 2.5).
        weight: optional ``[B]`` per-sample weight of the squared error (A2PR's mask ``m``); None = 1.
    Returns:
        ``(loss, {"actor_loss", "bc_loss" (the unweighted mean squared error), "lambda", "q_pi_mean"})``.
    Raises:
        ShapeError: ``pi_action`` and ``target_action`` differ in shape, or ``q``/``weight`` are not ``[B]``.
    Source: Fujimoto & Gu (2021) "A Minimalist Approach to Offline RL", eq. 3 and sec. 5; Ran et al. (2023) PRDC
        eq. 7; Liu et al. (2024) A2PR eq. 9.
    """
    _same("regularized_actor_loss", pi_action=pi_action, target_action=target_action)
    if q.shape != pi_action.shape[:1] or (weight is not None and weight.shape != q.shape):
        w_shape = None if weight is None else tuple(weight.shape)
        raise ShapeError(f"regularized_actor_loss: q {tuple(q.shape)} and weight {w_shape} must be [B] = "
                         f"{tuple(pi_action.shape[:1])}")
    lam = alpha / q.detach().abs().mean().clamp_min(1e-8)
    sq = (pi_action - target_action.detach()).square()
    bc = sq.mean()
    reg = bc if weight is None else (weight.detach().unsqueeze(-1) * sq).mean()
    loss = -lam * q.mean() + reg
    return loss, {"actor_loss": float(loss.detach()), "bc_loss": float(bc.detach()), "lambda": float(lam),
                  "q_pi_mean": float(q.detach().mean())}


def awac_weights(advantage: Tensor, lam: float, normalize: bool = True, max_weight: float = 100.0) -> Tensor:
    """AWAC's advantage weights, ``[B]``, detached.

    ``normalize=True`` (rlkit ``normalize_over_batch``): ``w = B * softmax_B(A / lam)`` (mean 1 over the batch);
    ``False`` (CORL): ``w = min(exp(A / lam), max_weight)``. ``lam`` > 0 is the temperature of eq. 13.
    Source: Nair et al. (2020) "AWAC", eq. 13; rlkit ``awac_trainer.py``; CORL ``awac.py``.
    """
    if advantage.dim() != 1:
        raise ShapeError(f"awac_weights: advantage must be [B], got {tuple(advantage.shape)}")
    a = advantage.detach() / lam
    if normalize:
        return a.shape[0] * torch.softmax(a, 0)
    return a.exp().clamp_max(max_weight)


def awac_actor_loss(logp: Tensor, weight: Tensor) -> tuple[Tensor, dict[str, float]]:
    """``L = -mean_B sg(w) log pi(a_D | s)`` (weighted maximum likelihood of dataset actions), both ``[B]``.

    Returns ``(loss, {"actor_loss", "weight_mean", "weight_max", "logp_mean"})``.
    Source: Nair et al. (2020) "AWAC", eq. 13 (as the sampled, weighted log-likelihood of Algorithm 1).
    """
    _same("awac_actor_loss", logp=logp, weight=weight)
    w = weight.detach()
    loss = -(w * logp).mean()
    return loss, {"actor_loss": float(loss.detach()), "weight_mean": float(w.mean()), "weight_max": float(w.max()),
                  "logp_mean": float(logp.detach().mean())}


def a2pr_bc_target(refined_action: Tensor, action: Tensor, adv_refined: Tensor, adv_data: Tensor,
                   mask: float) -> tuple[Tensor, Tensor]:
    """A2PR's regularisation target and per-sample weight.

    ``target = refined`` where ``A(s, refined) >= A(s, a_D)`` else ``a_D``; ``m = mask (1[A_refined >= 0] +
    1[A_D > 0])`` in ``{0, mask, 2 mask}``. Shapes: actions ``[B, A]``, advantages ``[B]``; returns
    ``(target [B, A], m [B])``, both detached.
    Source: Liu et al. (2024) "A2PR", eqs. 7-9; official ``A2PR.py`` (actor block).
    """
    _same("a2pr_bc_target", refined_action=refined_action, action=action)
    _same("a2pr_bc_target", adv_refined=adv_refined, adv_data=adv_data)
    better = (adv_refined >= adv_data).unsqueeze(-1)
    target = torch.where(better, refined_action, action).detach()
    m = mask * ((adv_refined >= 0).to(action.dtype) + (adv_data > 0).to(action.dtype))
    return target, m.detach()


def vae_loss(recon: Tensor, action: Tensor, mean: Tensor, std: Tensor, weight: Tensor | None = None,
             kl_coef: float = 0.5) -> tuple[Tensor, dict[str, float]]:
    """Conditional-VAE loss ``mean_{B, dims} w (recon - a)^2 + kl_coef * mean_{B, dims} KL(N(mean, std) || N(0, I))``.

    ``KL = -0.5 (1 + log std^2 - mean^2 - std^2)`` per latent dimension; the KL term is not weighted (A2PR code).
    Shapes: ``recon``/``action`` ``[B, A]``, ``mean``/``std`` ``[B, Z]``, ``weight`` ``[B]`` or None.
    Returns ``(loss, {"vae_loss", "recon_loss", "kl"})``.
    Source: Fujimoto et al. (2019) BCQ, eq. 28 (the VAE with kl weight 0.5); Liu et al. (2024) A2PR eq. 6.
    """
    _same("vae_loss", recon=recon, action=action)
    _same("vae_loss", mean=mean, std=std)
    sq = (recon - action).square()
    recon_loss = sq.mean() if weight is None else (weight.detach().unsqueeze(-1) * sq).mean()
    kl = (-0.5 * (1 + torch.log(std.square()) - mean.square() - std.square())).mean()
    loss = recon_loss + kl_coef * kl
    return loss, {"vae_loss": float(loss.detach()), "recon_loss": float(recon_loss.detach()), "kl": float(kl.detach())}


def ensemble_bc_loss(logp: Tensor, alpha: float) -> tuple[Tensor, dict[str, float]]:
    """Uni-O4's ensemble behaviour cloning with its disagreement term, summed over the K members.

        L = sum_i mean_B[ -log pi_i(a|s) - alpha (log pi_i(a|s) - sg(max_{j != i} log pi_j(a|s))) ]

    (``kl_type='heuristic'``, ``bc_kl='data'`` of the official ``BC_ensemble.py``; K = 1 is plain BC). The max is
    detached, so each member's gradient is ``(1 + alpha)`` times its BC gradient; members differ by their
    initialisation. ``disagreement`` reports mean_i mean_B (max_{j != i} log pi_j - log pi_i).

    Args:
        logp: ``[K, B]`` log-likelihoods of the dataset actions under each member (nats, with gradient).
        alpha: weight of the disagreement term (>= 0; Uni-O4: 0.1).
    Returns:
        ``(loss, metrics)``: ``bc_loss`` (mean over members of -log pi_i), ``disagreement``.
    Raises:
        ShapeError: ``logp`` is not 2-D.
    Source: Lei et al. (2024) "Uni-O4", arXiv:2311.03351, sec. 4.1 (ensemble BC) and official BC_ensemble.py.
    """
    if logp.dim() != 2:
        raise ShapeError(f"ensemble_bc_loss: logp must be [K, B], got {tuple(logp.shape)}")
    k = logp.shape[0]
    if k == 1:
        loss = -logp.mean()
        return loss, {"bc_loss": float(loss.detach()), "disagreement": 0.0}
    others = logp.detach().unsqueeze(0).expand(k, k, -1).clone()  # [i, j, B]
    others[torch.arange(k), torch.arange(k)] = -torch.inf
    best_other = others.max(1).values  # [K, B]
    loss = (-logp - alpha * (logp - best_other)).mean(1).sum()
    return loss, {"bc_loss": float(-logp.detach().mean()),
                  "disagreement": float((best_other - logp.detach()).mean())}
