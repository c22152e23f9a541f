"""Natural policy gradient / TRPO machinery: surrogate, mean KL, Fisher-vector products, conjugate gradient,
KL-constrained step size, backtracking line search, and one trust-region step that combines them.

The problem solved at every update (TRPO, Schulman et al. 2015, eq. 14; NPG, Kakade 2001):

    maximise  g(theta) = mean[ A * pi_theta(a|s) / pi_old(a|s) ]
    s.t.      mean_s KL(pi_old(.|s) || pi_theta(.|s)) <= delta

    x     ~= (F + damping I)^-1 grad g          conjugate gradient, F v = Hessian-vector product of the mean KL
    step   = sqrt(2 delta / x^T (F + damping I) x) * x                      (TRPO appendix C)
    theta <- theta + step                                                    (NPG)
    theta <- theta + 0.5^k step, smallest k with an accepted candidate       (TRPO line search)

Everything here except :func:`natural_gradient_step` (which writes the new parameters) is a pure function.
Flat vectors concatenate the parameters in the order given, each flattened row-major.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution, kl_divergence

from hybridrl.errors import ShapeError
from hybridrl.ops import check_same_shape, importance_ratio, kl_k3, masked_mean

__all__ = [
    "npg_surrogate_loss", "mean_policy_kl", "fisher_vector_product", "conjugate_gradient", "kl_step_scale",
    "backtracking_line_search", "natural_gradient_step",
]


def npg_surrogate_loss(
    logp: Tensor, old_logp: Tensor, advantage: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, dict[str, float]]:
    """Importance-sampled surrogate as a loss: L(theta) = -mean( A * exp(logp - old_logp) ).

    At theta = theta_old its gradient is the policy gradient -mean(A grad log pi) (Kakade 2001, eq. 2 with the
    likelihood-ratio estimator); TRPO maximises -L under the KL constraint.

    Args:
        logp: ``[...]`` float, log pi_theta(a|s) (nats, carries the gradient).
        old_logp: same shape, log pi_old(a|s) of the policy before the update (treated as constant).
        advantage: same shape, advantage estimates (treated as constant).
        mask: optional bool, same shape.
    Returns:
        ``(loss, metrics)``: ``policy_loss``, ``approx_kl`` (k3 estimate of KL(old || new), nats), ``ratio_mean``.
    Raises: ShapeError on mismatched shapes or non-floating inputs.
    Source: Schulman et al. (2015) "Trust Region Policy Optimization", eq. 14.
    """
    check_same_shape("npg_surrogate_loss", logp=logp, old_logp=old_logp, advantage=advantage, mask=mask)
    for name, t in (("logp", logp), ("old_logp", old_logp), ("advantage", advantage)):
        if not t.is_floating_point():
            raise ShapeError(f"npg_surrogate_loss: {name} must be a floating tensor, got {t.dtype}")
    ratio = importance_ratio(logp, old_logp.detach())
    loss = -masked_mean(advantage.detach() * ratio, mask)
    with torch.no_grad():
        metrics = {"policy_loss": float(loss.detach()),
                   "approx_kl": float(masked_mean(kl_k3(logp.detach() - old_logp.detach()), mask)),
                   "ratio_mean": float(masked_mean(ratio.detach(), mask))}
    return loss, metrics


def mean_policy_kl(old_dist: Distribution, new_dist: Distribution,
                   mask: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Mean over states of the exact KL(pi_old(.|s) || pi_theta(.|s)) in nats.

    Args:
        old_dist: action distributions of the policy before the update, batch shape ``[B]`` (treat as constant:
            build it under ``torch.no_grad`` or from detached parameters).
        new_dist: the current policy's distributions at the same states, batch shape ``[B]``.
        mask: optional bool ``[B]``.
    Returns: ``(kl, {"kl": float})``, ``kl`` a 0-d tensor differentiable w.r.t. ``new_dist``'s parameters.
    Raises: ShapeError unless the per-state KL has shape ``[B]``; torch's error for a pair of distribution
        types without a registered closed-form KL.
    Source: Schulman et al. (2015) TRPO, eq. 12 (the mean-KL constraint).
    """
    kl = kl_divergence(old_dist, new_dist)
    if kl.dim() != 1:
        raise ShapeError(f"mean_policy_kl: per-state KL must have shape [B], got {tuple(kl.shape)}; "
                         "use Independent(...) for multi-dimensional actions")
    mean = masked_mean(kl, mask)
    return mean, {"kl": float(mean.detach())}


def _flat(tensors: Sequence[Tensor | None], like: Sequence[Tensor]) -> Tensor:
    return torch.cat([(torch.zeros_like(p) if t is None else t).reshape(-1) for t, p in zip(tensors, like)])


def _flat_grad(output: Tensor, params: Sequence[Tensor], **kwargs) -> Tensor:
    """Gradient of the 0-d ``output`` w.r.t. ``params`` as one flat vector (zeros for unused parameters)."""
    return _flat(torch.autograd.grad(output, params, allow_unused=True, **kwargs), params)


def fisher_vector_product(kl: Tensor, params: Sequence[Tensor], damping: float = 0.1) -> Callable[[Tensor], Tensor]:
    """Return v -> (F + damping I) v, F = Hessian of the mean KL w.r.t. ``params`` (never formed explicitly).

    ``kl`` must be the mean KL(pi_old || pi_theta) evaluated at theta = theta_old: its gradient is zero there and
    its Hessian equals the Fisher information matrix E[grad log pi grad log pi^T] of the policy. Each product
    costs one double-backward pass through the graph of ``kl`` (built once, kept with ``retain_graph``).

    Args:
        kl: 0-d tensor, differentiable twice w.r.t. ``params``.
        params: the ``P`` policy parameters (any shapes; flattened and concatenated in this order).
        damping: Tikhonov damping >= 0 added to the diagonal (keeps CG well-posed when F is singular).
    Returns: a function mapping a flat ``[P]`` vector to a flat ``[P]`` vector (detached).
    Raises: ValueError on negative damping.
    Source: Schulman et al. (2015) TRPO, appendix C.1; Martens (2010) "Deep learning via Hessian-free optimization".
    """
    if damping < 0:
        raise ValueError(f"fisher_vector_product: damping must be >= 0, got {damping}")
    params = list(params)
    grad_kl = _flat_grad(kl, params, create_graph=True)

    def fvp(v: Tensor) -> Tensor:
        hv = _flat_grad(grad_kl @ v.detach(), params, retain_graph=True)
        return hv.detach() + damping * v

    return fvp


def conjugate_gradient(
    avp: Callable[[Tensor], Tensor], b: Tensor, n_iters: int = 10, residual_tol: float = 1e-10
) -> tuple[Tensor, dict[str, float]]:
    """Approximately solve A x = b for a symmetric positive-definite A given only products v -> A v.

    Starts at x = 0; stops after ``n_iters`` iterations, once the squared residual ``r^T r`` falls below
    ``residual_tol``, or if a direction of non-positive curvature p^T A p <= 0 appears (A not positive definite).
    Exact after ``dim`` iterations in exact arithmetic.

    Args:
        avp: function ``[P] -> [P]``, the product with A.
        b: ``[P]`` right-hand side.
        n_iters: maximum iterations (>= 1). residual_tol: threshold on the squared residual norm (>= 0).
    Returns: ``(x [P], {"cg_iters", "cg_residual"})`` with the iterations run and the final ``||b - A x||``.
    Raises: ShapeError if ``b`` is not a 1-D floating tensor; ValueError on ``n_iters < 1`` or negative tolerance.
    Source: Nocedal & Wright (2006) "Numerical Optimization", Algorithm 5.2; TRPO appendix C.
    """
    if b.dim() != 1 or not b.is_floating_point():
        raise ShapeError(f"conjugate_gradient: b must be a 1-D floating tensor, got {tuple(b.shape)} {b.dtype}")
    if n_iters < 1 or residual_tol < 0:
        raise ValueError(f"conjugate_gradient: need n_iters >= 1 and residual_tol >= 0, got {n_iters}, {residual_tol}")
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    iters = 0
    for _ in range(n_iters):
        if rr <= residual_tol:
            break
        ap = avp(p)
        curvature = p @ ap
        if not curvature > 0:
            break
        alpha = rr / curvature
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
        iters += 1
    return x, {"cg_iters": float(iters), "cg_residual": float(rr.sqrt())}


def kl_step_scale(x: Tensor, fx: Tensor, max_kl: float) -> Tensor:
    """Step length beta = sqrt(2 delta / x^T F x) so that the quadratic KL model 0.5 (beta x)^T F (beta x) = delta.

    Args: ``x``, ``fx``: ``[P]``, a search direction and its Fisher product F x (damping included if used);
        ``max_kl``: delta > 0 in nats.
    Returns: 0-d tensor beta; ``0`` when x^T F x is not positive and finite (no safe step exists).
    Raises: ShapeError on mismatched shapes; ValueError if ``max_kl <= 0``.
    Source: Schulman et al. (2015) TRPO, appendix C ("beta = sqrt(2 delta / s^T A s)").
    """
    check_same_shape("kl_step_scale", x=x, fx=fx)
    if max_kl <= 0:
        raise ValueError(f"kl_step_scale: max_kl must be > 0, got {max_kl}")
    xfx = x @ fx
    if not (torch.isfinite(xfx) and xfx > 0):
        return torch.zeros((), dtype=x.dtype)
    return torch.sqrt(2.0 * max_kl / xfx)


def backtracking_line_search(
    evaluate: Callable[[float], tuple[float, float]],
    expected_improve: float,
    max_backtracks: int = 10,
    accept_ratio: float = 0.1,
    max_kl: float | None = None,
) -> tuple[float, dict[str, float]]:
    """Find the largest fraction ``0.5^k`` (k = 0 .. max_backtracks-1) of a full step that is accepted.

    A candidate fraction f is accepted when its actual surrogate improvement I(f) = g(theta + f s) - g(theta)
    is positive, ``I(f) / (f * expected_improve) > accept_ratio`` (first-order prediction ``expected_improve``
    for the full step, as in pytorch-trpo's ``linesearch``), and, if ``max_kl`` is given, its mean KL <= ``max_kl``
    (OpenAI Baselines TRPO uses 1.5 delta). Non-finite results are rejected.

    Args:
        evaluate: ``f -> (improvement, kl)`` for the step fraction f (Python floats).
        expected_improve: grad g . s for the full step s (> 0 for an ascent direction).
        max_backtracks: number of fractions tried (>= 1): 1, 1/2, ..., 0.5^(max_backtracks-1).
        accept_ratio: minimum actual/expected improvement ratio. max_kl: KL limit in nats or None.
    Returns: ``(fraction, metrics)``; fraction 0.0 when nothing is accepted (keep the old parameters). Metrics:
        ``line_search_accepted`` (1/0), ``line_search_backtracks`` (halvings of the accepted step, or the number
        tried when none was accepted), ``surrogate_improvement`` and ``kl`` of the accepted step (0 if none).
    Raises: ValueError on ``max_backtracks < 1``.
    Source: Schulman et al. (2015) TRPO, appendix C; github.com/ikostrikov/pytorch-trpo ``linesearch``.
    """
    if max_backtracks < 1:
        raise ValueError(f"backtracking_line_search: max_backtracks must be >= 1, got {max_backtracks}")
    if math.isfinite(expected_improve) and expected_improve > 0:
        for k in range(max_backtracks):
            frac = 0.5**k
            improve, kl = evaluate(frac)
            ok = math.isfinite(improve) and math.isfinite(kl) and improve > 0
            ok = ok and improve / (expected_improve * frac) > accept_ratio and (max_kl is None or kl <= max_kl)
            if ok:
                return frac, {"line_search_accepted": 1.0, "line_search_backtracks": float(k),
                              "surrogate_improvement": float(improve), "kl": float(kl)}
    return 0.0, {"line_search_accepted": 0.0, "line_search_backtracks": float(max_backtracks),
                 "surrogate_improvement": 0.0, "kl": 0.0}


@torch.no_grad()
def _assign(params: Sequence[Tensor], flat: Tensor) -> None:
    i = 0
    for p in params:
        n = p.numel()
        p.copy_(flat[i : i + n].view_as(p))
        i += n


def natural_gradient_step(
    params: Sequence[Tensor],
    loss_fn: Callable[[], Tensor],
    kl_fn: Callable[[], Tensor],
    max_kl: float = 0.01,
    damping: float = 0.1,
    cg_iters: int = 10,
    cg_residual_tol: float = 1e-10,
    line_search: bool = False,
    max_backtracks: int = 10,
    accept_ratio: float = 0.1,
    kl_factor: float | None = 1.5,
) -> dict[str, float]:
    """One NPG (``line_search=False``) or TRPO (``line_search=True``) step; WRITES the new values into ``params``.

    x = CG(F + damping I, -grad L), s = sqrt(2 delta / x^T (F + damping I) x) x, expected improvement -grad L . s;
    NPG sets theta <- theta + s; TRPO runs :func:`backtracking_line_search` on L with the KL limit
    ``kl_factor * max_kl`` (None: no KL check) and keeps theta when no fraction is accepted. No step is taken
    when the direction is degenerate (x^T F x <= 0, non-finite values, or no predicted improvement).

    Args:
        params: policy parameters (requires_grad), changed in place.
        loss_fn: ``() -> L(theta)`` 0-d surrogate loss to minimise at the current parameter values.
        kl_fn: ``() -> mean KL(pi_old || pi_theta)`` 0-d, with pi_old fixed to the parameters at the call.
        max_kl: delta > 0 (nats). damping, cg_iters, cg_residual_tol: see :func:`fisher_vector_product` and
            :func:`conjugate_gradient`. max_backtracks, accept_ratio: see :func:`backtracking_line_search`.
    Returns: metrics (floats) ``policy_loss`` (before), ``expected_improvement``, ``surrogate_improvement``
        (actual), ``kl`` (mean KL after the step, nats), ``step_fraction``, ``step_norm`` (||delta theta||),
        ``grad_norm``, ``cg_iters``, ``cg_residual``, ``line_search_accepted``, ``line_search_backtracks``.
    Raises: ValueError on out-of-range arguments.
    Source: Kakade (2001) "A Natural Policy Gradient"; Schulman et al. (2015) TRPO, sec. 6 and appendix C.
    """
    params = list(params)
    theta0 = torch.cat([p.detach().reshape(-1) for p in params]).clone()
    loss = loss_fn()
    grad = _flat_grad(loss, params)
    fvp = fisher_vector_product(kl_fn(), params, damping)
    x, cg = conjugate_gradient(fvp, -grad, cg_iters, cg_residual_tol)
    full_step = kl_step_scale(x, fvp(x), max_kl) * x
    expected = float(-(grad @ full_step))
    loss0 = float(loss.detach())

    def evaluate(frac: float) -> tuple[float, float]:
        _assign(params, theta0 + frac * full_step)
        with torch.no_grad():
            return loss0 - float(loss_fn()), float(kl_fn())

    degenerate = not (math.isfinite(expected) and expected > 0 and bool(torch.isfinite(full_step).all()))
    if degenerate:
        frac, ls = 0.0, {"line_search_accepted": 0.0, "line_search_backtracks": 0.0}
    elif line_search:
        frac, ls = backtracking_line_search(evaluate, expected, max_backtracks, accept_ratio,
                                            None if kl_factor is None else kl_factor * max_kl)
    else:
        frac, ls = 1.0, {"line_search_accepted": 1.0, "line_search_backtracks": 0.0}
    improve, kl = evaluate(frac)
    return {"policy_loss": loss0, "expected_improvement": expected if not degenerate else 0.0,
            "surrogate_improvement": improve, "kl": kl, "step_fraction": frac,
            "step_norm": float(frac * full_step.norm()) if not degenerate else 0.0, "grad_norm": float(grad.norm()),
            **cg, "line_search_accepted": ls["line_search_accepted"],
            "line_search_backtracks": ls["line_search_backtracks"]}
