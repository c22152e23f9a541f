"""Tanh-squashed Gaussian policy (the SAC actor) and the squashing math the mixture policy shares.

    u ~ N(mu(s), diag(sigma(s)^2)),   a = bias + scale * tanh(u)                   (SAC, Haarnoja et al. 2018, App. C)
    log pi(a|s) = log N(u; mu, sigma) - sum_i [ log(1 - tanh(u_i)^2) + log scale_i ]               (eq. 26)

``log(1 - tanh(u)^2)`` is computed as ``2 (log 2 - u - softplus(-2u))``, which is exact and finite for every u
(the naive form gives ``log 0 = -inf`` once ``tanh(u)`` rounds to 1). Actions given from outside (dataset
actions, OPE) are mapped back with ``u = atanh(clamp(y, -1 + 1e-6, 1 - 1e-6))``, ``y = (a - bias) / scale``,
so an action on the boundary of the box gets a large but finite density.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import (
    AffineTransform,
    Distribution,
    Independent,
    Normal,
    TanhTransform,
    TransformedDistribution,
)

from hybridrl.nn import _HALF_LOG_2PI, ObsNormalizer, Policy, mlp

__all__ = ["TanhGaussianPolicy", "tanh_log_det", "squashed_log_prob", "unsquash", "trunk_mlp", "ATANH_EPS"]

ATANH_EPS = 1e-6
_LOG_2 = math.log(2.0)


def tanh_log_det(u: torch.Tensor) -> torch.Tensor:
    """Elementwise ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))`` (same shape as ``u``), finite for all u.

    Source: the identity 1 - tanh(u)^2 = 4 e^{-2u} / (1 + e^{-2u})^2; used by SAC's official code and CleanRL.
    """
    return 2.0 * (_LOG_2 - u - F.softplus(-2.0 * u))


def squashed_log_prob(u: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor,
                      log_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Log-density of ``a = bias + scale * tanh(u)`` where ``u ~ N(mu, exp(log_std)^2)`` (diagonal).

    Args:
        u: ``[..., A]`` pre-squash value (the same u for every broadcast component).
        mu, log_std: ``[..., A]`` Gaussian parameters (broadcast against ``u``).
        log_scale: ``[A]`` log of the box half-widths, or None for the unit box.
    Returns:
        ``[...]`` natural-log density, summed over the last (action) axis.
    Source: Haarnoja et al. (2018) "Soft Actor-Critic Algorithms and Applications", App. C, eq. 26.
    """
    z = (u - mu) * torch.exp(-log_std)
    per_dim = -0.5 * z.pow(2) - log_std - _HALF_LOG_2PI - tanh_log_det(u)
    if log_scale is not None:
        per_dim = per_dim - log_scale
    return per_dim.sum(-1)


def unsquash(action: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, eps: float = ATANH_EPS) -> torch.Tensor:
    """Pre-squash ``u = atanh(clamp((a - bias) / scale, -1 + eps, 1 - eps))`` for actions ``[..., A]`` in the box."""
    y = ((action.to(scale.dtype) - bias) / scale).clamp(-1.0 + eps, 1.0 - eps)
    return torch.atanh(y)


def trunk_mlp(in_dim: int, hidden: Sequence[int], activation: str) -> nn.Sequential:
    """The hidden layers of :func:`hybridrl.nn.mlp` (orthogonal init, gain sqrt 2) ending in an activation."""
    return mlp(in_dim, 1, hidden, activation)[:-1]


def _head(in_dim: int, out_dim: int) -> nn.Linear:
    lin = nn.Linear(in_dim, out_dim)
    nn.init.orthogonal_(lin.weight, 0.01)
    nn.init.zeros_(lin.bias)
    return lin


class TanhGaussianPolicy(Policy):
    """SAC actor: state-dependent mean and log-std heads on a shared trunk, tanh squash scaled to the action box.

    ``sample`` is reparameterised (gradients flow through the action), ``mode`` is ``bias + scale tanh(mu)``.
    ``log_prob(obs, action)`` accepts actions inside the box (clamped before atanh, see module doc).
    ``distribution`` is a ``TransformedDistribution`` (tanh, then affine) for code that wants a torch
    distribution (e.g. FQE's ``sample((n,))``); it has no closed-form entropy.

    Args:
        obs_dim, act_dim: sizes. hidden, activation: trunk widths and "relu" or "tanh".
        normalize_obs: running observation normalisation (off for SAC by default).
        action_low, action_high: box bounds ``[act_dim]`` (default [-1, 1]); must be finite.
        log_std_min, log_std_max: clamp of the log-std head (SAC code: [-20, 2]; here [-5, 2], CleanRL's range).
    """

    discrete = False

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256), activation: str = "relu",
                 normalize_obs: bool = False, action_low: Sequence[float] | None = None,
                 action_high: Sequence[float] | None = None, log_std_min: float = -5.0, log_std_max: float = 2.0):
        super().__init__()
        low = np.full(act_dim, -1.0) if action_low is None else np.asarray(action_low, dtype=np.float64)
        high = np.full(act_dim, 1.0) if action_high is None else np.asarray(action_high, dtype=np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
            from hybridrl.errors import ShapeError
            raise ShapeError(f"TanhGaussianPolicy needs a bounded action box with high > low, got [{low}, {high}]")
        self.kwargs = dict(obs_dim=obs_dim, act_dim=act_dim, hidden=list(hidden), activation=activation,
                           normalize_obs=normalize_obs, action_low=low.tolist(), action_high=high.tolist(),
                           log_std_min=log_std_min, log_std_max=log_std_max)
        self.obs_norm = ObsNormalizer(obs_dim, enabled=normalize_obs)
        self.trunk = trunk_mlp(obs_dim, hidden, activation)
        self.mean_head = _head(hidden[-1], act_dim)
        self.log_std_head = _head(hidden[-1], act_dim)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.register_buffer("action_scale", torch.as_tensor((high - low) / 2, dtype=torch.float32), persistent=False)
        self.register_buffer("action_bias", torch.as_tensor((high + low) / 2, dtype=torch.float32), persistent=False)
        self.register_buffer("log_scale", self.action_scale.log(), persistent=False)

    def params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-squash ``(mu, log_std)``, each ``[B, act_dim]``, for raw ``obs [B, obs_dim]``."""
        h = self.trunk(self.obs_norm(obs))
        return self.mean_head(h), self.log_std_head(h).clamp(self.log_std_min, self.log_std_max)

    def _squash(self, u: torch.Tensor) -> torch.Tensor:
        return torch.tanh(u) * self.action_scale + self.action_bias

    def distribution(self, obs: torch.Tensor) -> Distribution:
        mu, log_std = self.params(obs)
        base = Independent(Normal(mu, log_std.exp(), validate_args=False), 1, validate_args=False)
        return TransformedDistribution(base, [TanhTransform(cache_size=1),
                                              AffineTransform(self.action_bias, self.action_scale, event_dim=1)],
                                       validate_args=False)

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        return self._squash(self.params(obs)[0])

    def sample(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised ``(action [B, A], log pi(action|obs) [B])``; the log-prob uses the pre-squash u (exact)."""
        mu, log_std = self.params(obs)
        u = mu if deterministic else mu + torch.randn_like(mu) * log_std.exp()
        return self._squash(u), squashed_log_prob(u, mu, log_std, self.log_scale)

    def sample_n(self, obs: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` reparameterised actions per state from one forward pass: ``(actions [B, n, A], log pi [B, n])``
        (what ``sample(obs.repeat_interleave(n, 0))`` gives in distribution, with the network run on ``B`` rows, not
        ``B n``)."""
        mu, log_std = self.params(obs)
        mu, log_std = mu.unsqueeze(1), log_std.unsqueeze(1)
        u = mu + torch.randn(mu.shape[0], n, mu.shape[-1], dtype=mu.dtype, device=mu.device) * log_std.exp()
        return self._squash(u), squashed_log_prob(u, mu, log_std, self.log_scale)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        mu, log_std = self.params(obs)
        return squashed_log_prob(unsquash(action, self.action_scale, self.action_bias), mu, log_std, self.log_scale)

    def log_prob_entropy(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log pi(action|obs) [B], entropy estimate [B])``; the squashed entropy has no closed form, so the
        estimate is ``-log pi(a~|obs)`` of one fresh reparameterised sample ``a~`` (unbiased, differentiable)."""
        mu, log_std = self.params(obs)
        logp = squashed_log_prob(unsquash(action, self.action_scale, self.action_bias), mu, log_std, self.log_scale)
        u = mu + torch.randn_like(mu) * log_std.exp()
        return logp, -squashed_log_prob(u, mu, log_std, self.log_scale)


