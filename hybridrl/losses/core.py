"""Pure loss functions: each returns ``(loss, metrics)``.

``loss`` is a 0-d tensor to minimise (differentiable w.r.t. the current-model inputs); ``metrics`` is a
``dict[str, float]`` of diagnostics computed under ``torch.no_grad`` with stable names (``policy_loss``,
``approx_kl``, ``clip_fraction``, ``value_loss``, ``entropy``, ...). Every reduction is a mean over the valid
entries (``mask`` True, all when ``mask`` is None); an empty mask gives loss 0 and metrics 0. Inputs of a loss
must share one shape (per-step scalars without a trailing 1), otherwise :class:`ShapeError` is raised; this
guards against silent ``[B, 1]`` vs ``[B]`` broadcasting.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hybridrl.errors import ConfigError, ShapeError
from hybridrl.ops import check_same_shape, clipped_ratio, importance_ratio, kl_k3, masked_mean

__all__ = [
    "ppo_clip_loss", "value_loss", "entropy_bonus", "expectile_loss", "awr_policy_loss", "bc_loss",
    "bc_mse_loss", "td_loss", "kl_to_reference_loss",
]


def _check(where: str, mask: Tensor | None = None, **tensors: Tensor | None) -> None:
    check_same_shape(where, **tensors, mask=mask)
    for name, t in tensors.items():
        if t is not None and not t.is_floating_point():
            raise ShapeError(f"{where}: {name} must be a floating tensor, got {t.dtype}")
    if mask is not None and mask.dtype != torch.bool:
        raise ShapeError(f"{where}: mask must have dtype torch.bool, got {mask.dtype}")


def _valid_max(x: Tensor, mask: Tensor | None) -> float:
    x = x if mask is None else x[mask]
    return float(x.max()) if x.numel() else 0.0


def ppo_clip_loss(
    logp: Tensor, behavior_logp: Tensor, advantage: Tensor, clip_ratio: float, mask: Tensor | None = None
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate: L = mean( max(-A r, -A clip(r, 1 - eps, 1 + eps)) ), r = exp(logp - behavior_logp).

    Args:
        logp: ``[...]`` float, log pi_theta(a|s) of the current policy (nats, carries the gradient).
        behavior_logp: same shape, log-prob under the policy that collected the data (treated as constant).
        advantage: same shape, advantage estimates (treated as constant; normalise beforehand if wanted).
        clip_ratio: eps >= 0. mask: optional bool, same shape.
    Returns:
        ``(loss, metrics)``; metrics ``policy_loss``, ``approx_kl`` (k3 estimate of KL(old || new), nats),
        ``clip_fraction`` (fraction with |r - 1| > eps), ``ratio_mean``, ``ratio_max``.
    Raises: ShapeError on mismatched shapes/dtypes; ValueError if clip_ratio < 0.
    Source: Schulman et al. (2017) "Proximal Policy Optimization Algorithms", eq. 7; CleanRL ppo_continuous_action.py.
    """
    _check("ppo_clip_loss", mask, logp=logp, behavior_logp=behavior_logp, advantage=advantage)
    adv = advantage.detach()
    ratio = importance_ratio(logp, behavior_logp.detach())
    surrogate = torch.max(-adv * ratio, -adv * clipped_ratio(ratio, clip_ratio))
    loss = masked_mean(surrogate, mask)
    with torch.no_grad():
        log_r = logp.detach() - behavior_logp.detach()
        metrics = {
            "policy_loss": float(loss.detach()),
            "approx_kl": float(masked_mean(kl_k3(log_r), mask)),
            "clip_fraction": float(masked_mean(((ratio - 1.0).abs() > clip_ratio).to(ratio.dtype), mask)),
            "ratio_mean": float(masked_mean(ratio, mask)),
            "ratio_max": _valid_max(ratio.detach(), mask),
        }
    return loss, metrics


def value_loss(
    value: Tensor,
    returns: Tensor,
    old_value: Tensor | None = None,
    clip_range: float | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Value regression 0.5 * mean((V - R)^2), optionally clipped around the rollout-time value (CleanRL/PPO2).

    With ``clip_range`` c: 0.5 * mean( max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2) ).

    Args:
        value: ``[...]`` float, V(s) of the current critic (carries the gradient).
        returns: same shape, regression target R (treated as constant).
        old_value: same shape, V_old(s) at collection time; required when ``clip_range`` is given.
        clip_range: c > 0 or None (no clipping). mask: optional bool, same shape.
    Returns: ``(loss, {"value_loss"})``.
    Raises: ShapeError on mismatched shapes/dtypes; ValueError if clip_range <= 0 or old_value is missing.
    Source: Huang et al. (2022) "The 37 Implementation Details of PPO", detail 9; CleanRL ppo_continuous_action.py.
    """
    _check("value_loss", mask, value=value, returns=returns, old_value=old_value)
    target = returns.detach()
    sq = (value - target).square()
    if clip_range is not None:
        if clip_range <= 0:
            raise ValueError(f"value_loss: clip_range must be > 0, got {clip_range}")
        if old_value is None:
            raise ValueError("value_loss: clip_range needs old_value (V at collection time)")
        old = old_value.detach()
        clipped = old + (value - old).clamp(-clip_range, clip_range)
        sq = torch.max(sq, (clipped - target).square())
    loss = 0.5 * masked_mean(sq, mask)
    return loss, {"value_loss": float(loss.detach())}


def entropy_bonus(entropy: Tensor, mask: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Entropy regulariser as a loss: -mean H(pi(.|s)); scale it by an entropy coefficient when adding it.

    ``entropy``: ``[...]`` float, per-state entropy in nats; ``mask``: optional bool, same shape.
    Returns ``(loss, {"entropy": mean entropy})``. Raises ShapeError on mismatched shapes/dtypes.
    Source: Mnih et al. (2016) A3C sec. 4; Schulman et al. (2017) PPO eq. 9.
    """
    _check("entropy_bonus", mask, entropy=entropy)
    mean = masked_mean(entropy, mask)
    return -mean, {"entropy": float(mean.detach())}


def expectile_loss(diff: Tensor, expectile: float) -> tuple[Tensor, dict[str, float]]:
    """Asymmetric L2 (expectile) loss mean( |tau - 1(u < 0)| * u^2 ) with u = ``diff`` = Q(s, a) - V(s).

    ``diff``: ``[...]`` float (gradient flows to V through it; pass a target Q detached). ``expectile`` tau in (0, 1):
    tau > 0.5 pushes V toward an upper expectile of Q. Returns ``(loss, {"value_loss", "expectile_weight_mean"})``.
    Raises ShapeError if ``diff`` is not floating; ValueError if tau is not in (0, 1).
    Source: Kostrikov et al. (2021) "Offline RL with Implicit Q-Learning", eq. 5.
    """
    _check("expectile_loss", diff=diff)
    if not 0.0 < expectile < 1.0:
        raise ValueError(f"expectile_loss: expectile must be in (0, 1), got {expectile}")
    weight = (expectile - (diff.detach() < 0).to(diff.dtype)).abs()  # |tau - 1(u < 0)|, constant
    loss = (weight * diff.square()).mean()
    return loss, {"value_loss": float(loss.detach()), "expectile_weight_mean": float(weight.mean())}


def awr_policy_loss(
    logp: Tensor, advantage: Tensor, temperature: float, max_weight: float = 100.0
) -> tuple[Tensor, dict[str, float]]:
    """Advantage-weighted regression: -mean( min(exp(beta * A), max_weight) * log pi(a|s) ), weights constant.

    Args:
        logp: ``[...]`` float, log pi(a|s) of dataset actions (carries the gradient).
        advantage: same shape, A = Q - V (detached; no gradient reaches the critics).
        temperature: beta >= 0 (inverse temperature; 0 = behaviour cloning). max_weight: clip > 0.
    Returns: ``(loss, {"actor_loss", "weight_mean", "weight_max"})``.
    Raises: ShapeError on mismatched shapes/dtypes; ValueError on negative temperature or max_weight <= 0.
    Source: Kostrikov et al. (2021) IQL eq. 7; Peng et al. (2019) "Advantage-Weighted Regression".
    """
    _check("awr_policy_loss", logp=logp, advantage=advantage)
    if temperature < 0 or max_weight <= 0:
        raise ValueError(f"awr_policy_loss: need temperature >= 0 and max_weight > 0, got {temperature}, {max_weight}")
    with torch.no_grad():  # exp(min(x, log m)) == min(exp(x), m) without overflow to inf
        weight = torch.exp((temperature * advantage).clamp(max=math.log(max_weight)))
    loss = -(weight * logp).mean()
    return loss, {
        "actor_loss": float(loss.detach()),
        "weight_mean": float(weight.mean()),
        "weight_max": float(weight.max()) if weight.numel() else 0.0,
    }


def bc_loss(logp: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Maximum-likelihood behaviour cloning: -mean log pi(a|s) over dataset actions (nats).

    ``logp``: ``[...]`` float. Returns ``(loss, {"bc_loss"})``. Raises ShapeError if ``logp`` is not floating.
    Source: Pomerleau (1991) ALVINN / standard maximum likelihood; the beta = 0 limit of AWR.
    """
    _check("bc_loss", logp=logp)
    loss = -logp.mean()
    return loss, {"bc_loss": float(loss.detach())}


def kl_to_reference_loss(dist: torch.distributions.Distribution, reference: torch.distributions.Distribution
                         ) -> tuple[Tensor, dict[str, float]]:
    """KL penalty towards a fixed reference policy: mean_s KL(pi(.|s) || pi_ref(.|s)) (nats).

    Args:
        dist: the current policy's distribution over a batch of states, batch shape ``[B]`` (carries the gradient).
        reference: the reference policy's distribution at the same states (treated as constant; build it under
            ``torch.no_grad``). Both must have a closed-form KL in ``torch.distributions`` (categorical, diagonal
            Gaussian).
    Returns: ``(loss, {"kl_ref"})``.
    Raises: ShapeError if the batch shapes differ; ConfigError if the pair has no closed-form KL (e.g. a Gaussian
        mixture or a tanh-squashed Gaussian): use ``kl_coef=0`` (or a BC term) for such policies.
    Source: Jaques et al. (2019) "Way Off-Policy Batch Deep RL", sec. 3 (KL control to a prior policy); the
    KL-to-reference term of Ziegler et al. (2019) "Fine-Tuning Language Models from Human Preferences", eq. 2.
    """
    if dist.batch_shape != reference.batch_shape:
        raise ShapeError(f"kl_to_reference_loss: batch shapes differ: {tuple(dist.batch_shape)} vs "
                         f"{tuple(reference.batch_shape)}")
    try:
        loss = torch.distributions.kl_divergence(dist, reference).mean()
    except NotImplementedError:
        raise ConfigError(f"kl_to_reference_loss: no closed-form KL between {type(dist).__name__} and "
                          f"{type(reference).__name__}; expected categorical or diagonal-Gaussian policies "
                          "(set kl_coef=0 for this policy)") from None
    return loss, {"kl_ref": float(loss.detach())}


def bc_mse_loss(pred_action: Tensor, action: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Deterministic behaviour cloning: mean over batch AND action dims of (pi(s) - a)^2.

    ``pred_action``, ``action``: same shape ``[B, act_dim]`` float (``action`` treated as constant).
    Returns ``(loss, {"bc_loss"})``. Raises ShapeError on mismatched shapes/dtypes.
    Source: Fujimoto & Gu (2021) "A Minimalist Approach to Offline RL" (TD3+BC), eq. 3 (the BC term).
    """
    _check("bc_mse_loss", pred_action=pred_action, action=action)
    loss = (pred_action - action.detach()).square().mean()
    return loss, {"bc_loss": float(loss.detach())}


def td_loss(q: Tensor, target: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Squared TD error mean((Q(s, a) - y)^2) with the target y = r + gamma (1 - terminated) V(s') detached.

    ``q``, ``target``: same shape ``[B]`` float. Returns ``(loss, {"q_loss", "q_mean"})``.
    Raises ShapeError on mismatched shapes/dtypes.
    Source: Mnih et al. (2015) DQN, eq. 2 (loss L_i); Kostrikov et al. (2021) IQL eq. 6.
    """
    _check("td_loss", q=q, target=target)
    loss = (q - target.detach()).square().mean()
    return loss, {"q_loss": float(loss.detach()), "q_mean": float(q.detach().mean())}
