"""Pure tensor math shared by learners: returns, GAE, importance ratios, KL estimators, masked reductions.

Conventions:
    * Time is the LAST axis: per-step tensors are ``[..., T]`` (``Segments`` fields ``[B, T]`` fit as is).
    * ``terminated[..., t]`` means s_{t+1} is terminal (no bootstrap); ``truncated[..., t]`` means the
      episode was cut after step t (bootstrap from the true next observation). ``done = terminated | truncated``
      only decides where the recursion restarts.
    * ``mask`` arguments are bool tensors of exactly the data's shape (``True`` = valid step); ``None`` = all valid.
    * Nothing here holds state, touches an env or an optimiser; only :func:`polyak_update` mutates its input.

Shape errors raise :class:`hybridrl.errors.ShapeError`; out-of-range scalars raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from hybridrl.errors import ShapeError

__all__ = [
    "discounted_returns", "gae", "vtrace", "importance_ratio", "clipped_ratio", "truncated_ratio",
    "effective_sample_size", "kl_k1", "kl_k2", "kl_k3", "approx_kl", "masked_sum", "masked_mean",
    "masked_var", "normalize", "explained_variance", "polyak_update",
]


# --------------------------------------------------------------------------------------------- checks
def check_same_shape(where: str, **tensors: Tensor | None) -> None:
    """Raise :class:`ShapeError` unless all given (non-``None``) tensors have one shape.

    ``where`` names the calling function in the message, keyword names name the arguments.
    """
    items = [(k, v) for k, v in tensors.items() if v is not None]
    for name, value in items:
        if not isinstance(value, Tensor):
            raise ShapeError(f"{where}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if not items:
        return
    ref_name, ref = items[0]
    for name, value in items[1:]:
        if value.shape != ref.shape:
            raise ShapeError(
                f"{where}: {name} has shape {tuple(value.shape)}; expected the shape of {ref_name} {tuple(ref.shape)}"
            )


def _check_mask(where: str, x: Tensor, mask: Tensor | None) -> None:
    if mask is None:
        return
    check_same_shape(where, x=x, mask=mask)
    if mask.dtype != torch.bool:
        raise ShapeError(f"{where}: mask must have dtype torch.bool, got {mask.dtype}")


def _check_unit(where: str, **scalars: float) -> None:
    for name, value in scalars.items():
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{where}: {name} must be in [0, 1], got {value}")


def _reverse_scan(x: Tensor, coef: Tensor, init: Tensor | float) -> Tensor:
    """y_t = x_t + coef_t * y_{t+1} over the last axis, with y_T = ``init``; vectorised over leading dims."""
    out = []
    y = init
    for x_t, c_t in zip(reversed(x.unbind(-1)), reversed(coef.unbind(-1))):
        y = x_t + c_t * y
        out.append(y)
    out.reverse()
    return torch.stack(out, dim=-1)


def _check_time(where: str, reward: Tensor) -> None:
    if reward.dim() < 1 or reward.shape[-1] == 0:
        raise ShapeError(f"{where}: reward must have shape [..., T] with T >= 1, got {tuple(reward.shape)}")
    if not reward.is_floating_point():
        raise ShapeError(f"{where}: reward must be a floating tensor, got {reward.dtype}")


# -------------------------------------------------------------------------------------------- returns
def discounted_returns(
    reward: Tensor, terminated: Tensor, truncated: Tensor, gamma: float, bootstrap_value: Tensor | None = None
) -> Tensor:
    """Discounted return-to-go G_t over the last (time) axis, restarting at episode ends.

    G_t = r_t + gamma * C_t where the continuation C_t is
        0                    if terminated_t;
        V_t                  if truncated_t and not terminated_t (0 when ``bootstrap_value`` is None);
        G_{t+1}              if not done_t and t < T-1;
        V_{T-1}              if not done at the last step t = T-1 (0 when ``bootstrap_value`` is None).
    with V = ``bootstrap_value``. Source: Sutton & Barto (2018) eq. 3.9 (G_t = R_{t+1} + gamma G_{t+1});
    bootstrapping at time-limit truncations: Pardo et al. (2018) "Time Limits in Reinforcement Learning", sec. 3.

    Args:
        reward: ``[..., T]`` float, reward r_t (units of the env's reward).
        terminated: ``[..., T]`` bool, s_{t+1} is terminal.
        truncated: ``[..., T]`` bool, the episode was cut after step t.
        gamma: discount in [0, 1].
        bootstrap_value: optional ``[..., T]`` float, V(s_{t+1}) of the TRUE next observation at every step
            (only entries at truncations and at the last step are read).

    Returns:
        ``[..., T]`` tensor of ``reward``'s dtype (differentiable w.r.t. reward and bootstrap_value).

    Raises:
        ShapeError: if shapes differ, ``T == 0`` or ``reward`` is not floating. ValueError: gamma outside [0, 1].
    """
    where = "discounted_returns"
    check_same_shape(where, reward=reward, terminated=terminated, truncated=truncated, bootstrap_value=bootstrap_value)
    _check_time(where, reward)
    _check_unit(where, gamma=gamma)
    term, trunc = terminated.bool(), truncated.bool()
    not_done = (~(term | trunc)).to(reward.dtype)
    x = reward
    init: Tensor | float = 0.0
    if bootstrap_value is not None:
        x = reward + gamma * (trunc & ~term).to(reward.dtype) * bootstrap_value
        init = bootstrap_value[..., -1]
    return _reverse_scan(x, gamma * not_done, init)


def gae(
    reward: Tensor,
    value: Tensor,
    next_value: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation over the last (time) axis.

    delta_t = r_t + gamma * (1 - terminated_t) * next_value_t - value_t
    A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1},   done_t = terminated_t | truncated_t,  A_T = 0
    returns = A + value   (the lambda-return target for the value function)
    Truncated steps bootstrap from ``next_value`` = V(true next obs) and end the advantage recursion there.
    Source: Schulman et al. (2016) "High-Dimensional Continuous Control Using GAE", eq. 16.

    Args:
        reward: ``[..., T]`` float, r_t.
        value: ``[..., T]`` float, V(s_t).
        next_value: ``[..., T]`` float, V(s_{t+1}) of the true next observation (pre-reset at episode ends).
        terminated, truncated: ``[..., T]`` bool.
        gamma: discount in [0, 1]. gae_lambda: GAE lambda in [0, 1] (1 = Monte-Carlo, 0 = one-step TD).

    Returns:
        ``(advantage, returns)``, both ``[..., T]`` of ``reward``'s dtype. Gradients flow through the inputs;
        pass detached values (as PPO does) to get none. Reverse loop over T, vectorised over leading dims.

    Raises:
        ShapeError: if shapes differ, ``T == 0`` or ``reward`` is not floating. ValueError: gamma/lambda outside [0, 1].
    """
    where = "gae"
    check_same_shape(
        where, reward=reward, value=value, next_value=next_value, terminated=terminated, truncated=truncated
    )
    _check_time(where, reward)
    _check_unit(where, gamma=gamma, gae_lambda=gae_lambda)
    term, trunc = terminated.bool(), truncated.bool()
    delta = reward + gamma * (~term).to(reward.dtype) * next_value - value
    coef = (gamma * gae_lambda) * (~(term | trunc)).to(reward.dtype)
    advantage = _reverse_scan(delta, coef, 0.0)
    return advantage, advantage + value


def vtrace(
    log_rho: Tensor,
    reward: Tensor,
    value: Tensor,
    next_value: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    rho_max: float = 1.0,
    c_max: float = 1.0,
    vtrace_lambda: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """V-trace off-policy value targets and policy-gradient advantages over the last (time) axis.

    With rho_t = min(rho_max, pi/mu), c_t = lambda * min(c_max, pi/mu), pi/mu = exp(log_rho):
        delta_t = rho_t * (r_t + gamma * (1 - terminated_t) * next_value_t - value_t)
        v_t - V_t = delta_t + gamma * c_t * (1 - done_t) * (v_{t+1} - V_{t+1}),   done_t = terminated_t | truncated_t
        advantage_t = r_t + gamma * (1 - terminated_t) * v'_{t+1} - value_t,
    where v'_{t+1} = v_{t+1} inside an episode and ``next_value_t`` = V(true next obs) after a truncation or at
    the last step (v_T = V(x_T), the segment's bootstrap). Written out, v_s = V(x_s) + sum_t gamma^(t-s)
    (prod_{i=s}^{t-1} c_i) delta_t (IMPALA eq. 1). The IMPALA policy gradient (eq. 4) weights ``advantage`` by
    min(rho_bar_pg, pi/mu) (use :func:`truncated_ratio`); a PPO-style objective applies its own ratio instead.
    With all ratios 1 and rho_max, c_max >= 1: ``v`` equals the GAE(gamma, lambda) returns, and for lambda = 1
    ``advantage`` equals the GAE(gamma, 1) advantage (n-step returns bootstrapped at the segment end).
    Source: Espeholt et al. (2018) "IMPALA", eq. 1 (v_s) and eq. 4 (q_s = r_s + gamma v_{s+1}); DeepMind
    scalable_agent ``vtrace.py``; lambda in c_i as rlax ``vtrace(lambda_)``; Pardo et al. (2018) for truncations.

    Args:
        log_rho: ``[..., T]`` float, log pi(a_t|s_t) - log mu(a_t|s_t) (nats; target vs behaviour policy).
        reward: ``[..., T]`` float, r_t.
        value: ``[..., T]`` float, V(s_t). next_value: ``[..., T]`` float, V(true s_{t+1}) (pre-reset at episode ends).
        terminated, truncated: ``[..., T]`` bool.
        gamma: discount in [0, 1]. rho_max: rho_bar > 0 (truncation of the TD-error weight; sets the fixed point).
        c_max: c_bar > 0 (truncation of the trace; sets the contraction speed). vtrace_lambda: lambda in [0, 1].

    Returns:
        ``(vs, advantage)``, both ``[..., T]`` of ``reward``'s dtype: the V-trace targets v_t and r_t + gamma v_{t+1}
        - V(s_t). Gradients flow through the inputs; pass detached values and ratios (as learners do) to get none.

    Raises:
        ShapeError: if shapes differ, ``T == 0`` or ``reward`` is not floating. ValueError: gamma/lambda outside
        [0, 1] or rho_max/c_max <= 0.
    """
    where = "vtrace"
    check_same_shape(where, log_rho=log_rho, reward=reward, value=value, next_value=next_value,
                     terminated=terminated, truncated=truncated)
    _check_time(where, reward)
    _check_unit(where, gamma=gamma, vtrace_lambda=vtrace_lambda)
    if rho_max <= 0 or c_max <= 0:
        raise ValueError(f"{where}: rho_max and c_max must be > 0, got {rho_max}, {c_max}")
    term, trunc = terminated.bool(), truncated.bool()
    not_term = (~term).to(reward.dtype)
    ratio = torch.exp(log_rho)
    rho = ratio.clamp(max=rho_max)
    c = vtrace_lambda * ratio.clamp(max=c_max)
    delta = rho * (reward + gamma * not_term * next_value - value)
    vs_minus_v = _reverse_scan(delta, gamma * c * (~(term | trunc)).to(reward.dtype), 0.0)
    vs = value + vs_minus_v
    # v_{t+1} inside an episode; V(true next obs) after a truncation and at the segment's last step.
    following = torch.cat([vs[..., 1:], next_value[..., -1:]], dim=-1)
    vs_next = torch.where(term | trunc, next_value, following)
    advantage = reward + gamma * not_term * vs_next - value
    return vs, advantage


# ------------------------------------------------------------------------------ importance sampling
def importance_ratio(logp: Tensor, behavior_logp: Tensor) -> Tensor:
    """Per-sample ratio pi(a|s) / mu(a|s) = exp(logp - behavior_logp).

    Args: ``logp``, ``behavior_logp``: same shape ``[...]``, natural-log probabilities (nats).
    Returns: tensor of that shape, >= 0 (differentiable w.r.t. both).
    Raises: ShapeError if shapes differ.
    Source: Precup et al. (2000) "Eligibility Traces for Off-Policy Policy Evaluation"; PPO's r_t(theta),
    Schulman et al. (2017) sec. 3.
    """
    check_same_shape("importance_ratio", logp=logp, behavior_logp=behavior_logp)
    return torch.exp(logp - behavior_logp)


def clipped_ratio(ratio: Tensor, clip_ratio: float) -> Tensor:
    """clip(ratio, 1 - clip_ratio, 1 + clip_ratio), elementwise (PPO, Schulman et al. 2017 eq. 7).

    ``clip_ratio`` >= 0 (ValueError otherwise); returns ``ratio``'s shape and dtype.
    """
    if clip_ratio < 0:
        raise ValueError(f"clipped_ratio: clip_ratio must be >= 0, got {clip_ratio}")
    return ratio.clamp(1.0 - clip_ratio, 1.0 + clip_ratio)


def truncated_ratio(ratio: Tensor, max_ratio: float = 1.0) -> Tensor:
    """min(ratio, max_ratio), elementwise: the truncated weight rho_bar / c_bar of V-trace and Retrace.

    ``max_ratio`` > 0 (ValueError otherwise); returns ``ratio``'s shape and dtype.
    Source: Munos et al. (2016) "Safe and Efficient Off-Policy RL" (Retrace, c_s = lambda min(1, ratio));
    Espeholt et al. (2018) IMPALA eq. 1 (rho_t = min(rho_bar, ratio)).
    """
    if max_ratio <= 0:
        raise ValueError(f"truncated_ratio: max_ratio must be > 0, got {max_ratio}")
    return ratio.clamp(max=max_ratio)


def effective_sample_size(weights: Tensor, normalized: bool = False, dim: int | None = None) -> Tensor:
    """Kish/Kong effective sample size ESS = (sum w)^2 / sum w^2 of importance weights.

    Args:
        weights: ``[...]`` float, non-negative importance weights (unnormalised is fine).
        normalized: if True return ESS / n in [0, 1] (n = number of weights reduced over).
        dim: reduce over this axis (default: all elements).
    Returns: float tensor (0-d for ``dim=None``, else ``weights`` without ``dim``). All-zero weights give 0.
    Raises: ValueError if any weight is negative; ShapeError if ``weights`` is not floating.
    Source: Kong (1992) "A Note on Importance Sampling using Standardized Weights"; Owen (2013) "Monte Carlo
    Theory, Methods and Examples", sec. 9.3.
    """
    if not weights.is_floating_point():
        raise ShapeError(f"effective_sample_size: weights must be floating, got {weights.dtype}")
    if bool((weights < 0).any()):
        raise ValueError("effective_sample_size: weights must be non-negative")
    dims = tuple(range(weights.dim())) if dim is None else (dim,)
    s1, s2 = weights.sum(dims), weights.square().sum(dims)
    ess = torch.where(s2 > 0, s1.square() / torch.where(s2 > 0, s2, torch.ones_like(s2)), torch.zeros_like(s2))
    if normalized:
        n = weights.numel() if dim is None else weights.shape[dim]
        ess = ess / max(n, 1)
    return ess


# ------------------------------------------------------------------------------------ KL estimators
def kl_k1(log_r: Tensor) -> Tensor:
    """Unbiased per-sample estimator of KL(old || new): k1 = -log r, with log r = logp_new - logp_old, a ~ old.

    Same shape as ``log_r``; nats. High variance, can be negative. Source: Schulman (2020) "Approximating KL
    Divergence", http://joschu.net/blog/kl-approx.html.
    """
    return -log_r


def kl_k2(log_r: Tensor) -> Tensor:
    """Biased, low-variance per-sample estimator of KL(old || new): k2 = 0.5 (log r)^2 (>= 0). Schulman (2020)."""
    return 0.5 * log_r.square()


def kl_k3(log_r: Tensor) -> Tensor:
    """Unbiased, low-variance, non-negative per-sample estimator of KL(old || new): k3 = (r - 1) - log r.

    Source: Schulman (2020) "Approximating KL Divergence"; PPO's ``approx_kl`` diagnostic in CleanRL.
    """
    return torch.expm1(log_r) - log_r


_KL = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def approx_kl(logp_new: Tensor, logp_old: Tensor, estimator: str = "k3", mask: Tensor | None = None) -> Tensor:
    """Sample estimate of KL(old || new) from actions drawn from the old policy: masked mean of k1/k2/k3.

    Args:
        logp_new: ``[...]`` float, log pi_new(a|s) (nats). logp_old: same shape, log pi_old(a|s).
        estimator: "k1" | "k2" | "k3" (see :func:`kl_k1`, :func:`kl_k2`, :func:`kl_k3`).
        mask: optional bool, same shape.
    Returns: 0-d tensor in nats (0 for an empty mask).
    Raises: ShapeError on mismatched shapes or a non-bool mask; ValueError on an unknown estimator.
    Source: Schulman (2020) "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html.
    """
    check_same_shape("approx_kl", logp_new=logp_new, logp_old=logp_old)
    if estimator not in _KL:
        raise ValueError(f"approx_kl: estimator must be one of {sorted(_KL)}, got {estimator!r}")
    return masked_mean(_KL[estimator](logp_new - logp_old), mask)


# ------------------------------------------------------------------------------- masked reductions
def masked_sum(x: Tensor, mask: Tensor | None = None, dim: int | tuple[int, ...] | None = None,
               keepdim: bool = False) -> Tensor:
    """Sum of ``x`` over valid entries (``mask`` True), over ``dim`` (default: all).

    ``x``: ``[...]`` float; ``mask``: bool, same shape, or None (all valid). Masked-out entries are replaced by
    0 (so NaN/inf there do not leak). Empty mask -> 0. Raises ShapeError on shape/dtype mismatch.
    """
    _check_mask("masked_sum", x, mask)
    if mask is not None:
        x = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.sum(dim=tuple(range(x.dim())) if dim is None else dim, keepdim=keepdim)


def _count(x: Tensor, mask: Tensor | None, dim, keepdim: bool) -> Tensor:
    ones = torch.ones_like(x) if mask is None else mask.to(x.dtype)
    return masked_sum(ones, None, dim, keepdim)


def masked_mean(x: Tensor, mask: Tensor | None = None, dim: int | tuple[int, ...] | None = None,
                keepdim: bool = False) -> Tensor:
    """Mean of ``x`` over valid entries, over ``dim`` (default: all) = masked_sum / count.

    An empty selection (no valid entry in a slice) gives 0, not NaN, so an empty minibatch contributes no loss.
    Shapes as :func:`masked_sum`; raises ShapeError on shape/dtype mismatch.
    """
    _check_mask("masked_mean", x, mask)
    # fast path (PPO minibatches): one op, one backward node
    if mask is None and dim is None and not keepdim and x.numel():
        return x.mean()
    return masked_sum(x, mask, dim, keepdim) / _count(x, mask, dim, keepdim).clamp(min=1)


def masked_var(
    x: Tensor, mask: Tensor | None = None, dim: int | tuple[int, ...] | None = None, unbiased: bool = True,
    keepdim: bool = False,
) -> Tensor:
    """Variance of ``x`` over valid entries, over ``dim`` (default: all).

    ``unbiased=True`` divides by n - 1 (like ``torch.var``), else by n. Slices with fewer than 2 valid entries
    (1 for ``unbiased=False``) give 0 instead of NaN. Raises ShapeError on shape/dtype mismatch.
    """
    _check_mask("masked_var", x, mask)
    if mask is None and dim is None and not keepdim and x.numel() > (1 if unbiased else 0):  # fast path, same value
        return x.var(unbiased=unbiased)
    mean = masked_mean(x, mask, dim, keepdim=True)
    sq = masked_sum((x - mean).square(), mask, dim, keepdim)
    n = _count(x, mask, dim, keepdim)
    return sq / (n - 1 if unbiased else n).clamp(min=1)


def normalize(x: Tensor, mask: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """Advantage normalisation (x - mean) / (std + eps) with mean/std over all valid entries.

    ``std`` is the unbiased (n - 1) standard deviation, as ``torch.Tensor.std`` in CleanRL's PPO. Masked-out
    entries are set to 0. ``x``: ``[...]`` float; ``mask``: bool, same shape, or None. Returns ``x``'s shape.
    Raises ShapeError on shape/dtype mismatch. Source: Huang et al. (2022) "The 37 Implementation Details of
    PPO", detail 7; Andrychowicz et al. (2021) "What Matters in On-Policy RL", sec. 3.
    """
    _check_mask("normalize", x, mask)
    out = (x - masked_mean(x, mask)) / (masked_var(x, mask).sqrt() + eps)
    return out if mask is None else torch.where(mask, out, torch.zeros_like(out))


@torch.no_grad()
def explained_variance(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
    """1 - Var[target - pred] / Var[target] over valid entries; a value-function diagnostic (1 = perfect).

    ``pred``, ``target``: same shape ``[...]`` float; ``mask``: optional bool, same shape. Returns a Python
    float; NaN when Var[target] == 0. Raises ShapeError on mismatched shapes. Source: OpenAI Baselines /
    CleanRL ``explained_variance`` (biased/unbiased choice cancels in the ratio).
    """
    check_same_shape("explained_variance", pred=pred, target=target)
    var_y = masked_var(target, mask)
    if float(var_y) == 0.0:
        return float("nan")
    return float(1.0 - masked_var(target - pred, mask) / var_y)


@torch.no_grad()
def polyak_update(
    target_params: Iterable[Tensor] | torch.nn.Module, online_params: Iterable[Tensor] | torch.nn.Module, tau: float
) -> None:
    """Soft target update, IN PLACE: target <- (1 - tau) * target + tau * online, for each parameter pair.

    MUTATES ``target_params`` (under ``torch.no_grad``); ``online_params`` is only read. Modules are reduced to
    ``.parameters()`` (buffers such as normaliser stats are NOT copied). ``tau`` in [0, 1] (1 = hard copy).
    Raises ShapeError if the parameter lists differ in length or any pair in shape; ValueError on a bad tau.
    Source: Lillicrap et al. (2016) "Continuous Control with Deep RL" (DDPG), Algorithm 1.
    """
    _check_unit("polyak_update", tau=tau)
    tgt = list(target_params.parameters() if isinstance(target_params, torch.nn.Module) else target_params)
    onl = list(online_params.parameters() if isinstance(online_params, torch.nn.Module) else online_params)
    if len(tgt) != len(onl):
        raise ShapeError(f"polyak_update: {len(tgt)} target parameters but {len(onl)} online parameters")
    for i, (t, o) in enumerate(zip(tgt, onl)):
        if t.shape != o.shape:
            raise ShapeError(
                f"polyak_update: parameter {i} has target shape {tuple(t.shape)} but online {tuple(o.shape)}")
        t.lerp_(o, tau)
