"""Kernel-smoothed importance weights for deterministic evaluation policies on continuous actions.

A deterministic policy ``a = mu(s)`` has no density, so ``pi(a_t|s_t) / pi_0(a_t|s_t)`` is undefined. SCOPE-RL
(Kiyohara et al. 2023, arXiv:2311.18206, Sec. 3.1, "kernel IS"; after Kallus & Zhou 2018, "Policy Evaluation and
Optimization with Continuous Treatments", eq. 3) replaces the target density by a kernel around ``mu(s_t)``:

    w~_t = K_h(mu(s_t) - a_t) / pi_0(a_t|s_t),     K_h(u) = prod_j N(u_j; 0, h_j^2)     (Gaussian kernel)

and uses ``w~_t`` in PDIS / SNPDIS / DR / SNDR (:mod:`hybridrl.ope.core`), i.e. kernel IS estimates the value of the
smoothed policy ``a ~ N(mu(s), diag(h^2))``. Bias: O(h^2) for a value smooth in the action (exactly ``-sum_j h_j^2``
per unit of curvature for a quadratic reward); variance grows like ``1/h^d`` per step, so over T steps like
``h^{-dT}``: small bandwidths make long-horizon kernel IS degenerate (the ESS diagnostics say so).

``log_kernel_ratio`` returns ``log w~_t`` so the existing estimators take it as their ``log_ratio``. Bandwidths are
per action dimension (the dataset binding uses ``bandwidth * (high - low) / 2``, a fraction of the action box).
Deviation: SCOPE-RL's Gaussian kernel divides by ``sqrt(2 pi h^2)`` whatever the action dimension (a density
only in 1-D); ours is the d-dimensional density.
"""

from __future__ import annotations

import numpy as np

from hybridrl.errors import ConfigError, ShapeError

__all__ = ["log_gaussian_kernel", "log_kernel_ratio"]


def log_gaussian_kernel(target_action: np.ndarray, action: np.ndarray, bandwidth: float | np.ndarray) -> np.ndarray:
    """``log K_h(mu - a) = sum_j [ -(mu_j - a_j)^2 / (2 h_j^2) - log(sqrt(2 pi) h_j) ]`` for rows ``[..., d]``.

    Args: ``target_action``, ``action``: ``[..., d]`` (same shape); ``bandwidth``: scalar or ``[d]``, > 0.
    Returns: ``[...]`` float64. Raises: ShapeError (shapes), ConfigError (bandwidth <= 0 or not finite).
    """
    mu = np.asarray(target_action, dtype=np.float64)
    a = np.asarray(action, dtype=np.float64)
    if mu.shape != a.shape or mu.ndim < 1:
        raise ShapeError(f"target_action {mu.shape} and action {a.shape} must have the same shape [..., d]")
    h = np.broadcast_to(np.asarray(bandwidth, dtype=np.float64), mu.shape[-1:])
    if not (np.isfinite(h).all() and (h > 0).all()):
        raise ConfigError(f"kernel bandwidth must be finite and > 0, got {bandwidth}")
    return (-0.5 * ((mu - a) / h) ** 2 - np.log(np.sqrt(2 * np.pi) * h)).sum(-1)


def log_kernel_ratio(target_action: np.ndarray, action: np.ndarray, behavior_log_prob: np.ndarray,
                     bandwidth: float | np.ndarray) -> np.ndarray:
    """``log w~_t = log K_h(mu(s_t) - a_t) - log pi_0(a_t|s_t)`` (module docstring): ``[...]`` float64.

    ``behavior_log_prob`` has the shape of the leading dimensions of ``action`` (natural log density).
    Raises: ShapeError, ConfigError (as :func:`log_gaussian_kernel`; non-finite behaviour log-densities).
    """
    blp = np.asarray(behavior_log_prob, dtype=np.float64)
    lk = log_gaussian_kernel(target_action, action, bandwidth)
    if blp.shape != lk.shape:
        raise ShapeError(f"behavior_log_prob has shape {blp.shape}; expected {lk.shape}")
    if not np.isfinite(blp).all():
        raise ConfigError("behavior_log_prob must be finite: the behaviour policy must give the logged actions "
                          "positive density")
    return lk - blp
