"""Gaussian-mixture policy with a softmax router: the PMOE policy (Ren et al. 2021, arXiv:2104.09122).

    pi(a|s) = sum_k w_k(s) p_k(a|s),   w(s) = softmax(router(sg(h(s))))                     (PMOE, eq. 3)
    log pi(a|s) = logsumexp_k( log w_k(s) + log p_k(a|s) )

``h`` is a shared trunk; one linear head gives the K expert means, another the K log-stds (or, for PPO, a
state-independent ``log_std [K, A]`` parameter). The router is a linear layer on the *detached* trunk
features, as in the official rlkit-pmoe (policies.py:103), so it never shapes the trunk. With ``squash=True``
each expert is a tanh-Gaussian scaled to the box (SAC); with ``squash=False`` a plain Gaussian (PPO).

How PMOE trains it (Ren et al. 2021, arXiv:2104.09122; official PMOEsac.py): every expert draws one
reparameterised action
(:meth:`GaussianMixturePolicy.expert_sample`), the critic scores them, only the best expert k* is
back-propagated through its own density and the router regresses onto ``onehot(k*)``
(:func:`hybridrl.losses.sac.pmoe_actor_loss`, :func:`hybridrl.losses.sac.pmoe_router_loss`). PPO uses the
mixture density in its ratio, so there the router also gets the likelihood-ratio gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import (
    AffineTransform,
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    Normal,
    TanhTransform,
    TransformedDistribution,
)

from hybridrl.errors import ShapeError
from hybridrl.nn import _HALF_LOG_2PI, ObsNormalizer, Policy
from hybridrl.nn.tanh_gaussian import _head, squashed_log_prob, trunk_mlp, unsquash

__all__ = ["GaussianMixturePolicy", "make_mixture_policy"]


class GaussianMixturePolicy(Policy):
    """K Gaussian (or tanh-Gaussian) experts mixed by a softmax router.

    Args:
        obs_dim, act_dim: sizes. n_experts: K >= 1.
        hidden, activation: trunk widths and "relu"/"tanh".
        normalize_obs: running observation normalisation (statistics saved with the policy).
        squash: tanh-squash each expert into the action box (SAC) or not (PPO; the env clips).
        state_dependent_std: log-std from a head on the trunk (SAC) or a free ``log_std [K, A]`` parameter (PPO).
        log_std_init: initial value of the free log-std (``state_dependent_std=False`` only).
        action_low, action_high: box ``[act_dim]``; finite when ``squash``.
        log_std_min, log_std_max: clamp of the log-std.
    Methods (shapes for ``obs [B, obs_dim]``): ``weights -> [B, K]``, ``expert_log_prob(obs, a) -> [B, K]``,
    ``expert_sample -> (actions [B, K, A], logp [B, K], weights [B, K])``, ``log_prob -> [B]`` (mixture),
    ``sample``/``act`` (k ~ w(s), then a ~ p_k; log-prob of the mixture), ``mode`` (mean of the most probable
    expert), ``log_prob_entropy`` (mixture log-prob and an entropy estimate, see the method).
    """

    discrete = False

    def __init__(self, obs_dim: int, act_dim: int, n_experts: int = 4, hidden: Sequence[int] = (256, 256),
                 activation: str = "relu", normalize_obs: bool = False, squash: bool = True,
                 state_dependent_std: bool = True, log_std_init: float = 0.0,
                 action_low: Sequence[float] | None = None, action_high: Sequence[float] | None = None,
                 log_std_min: float = -5.0, log_std_max: float = 2.0):
        super().__init__()
        if n_experts < 1:
            raise ShapeError(f"GaussianMixturePolicy needs n_experts >= 1, got {n_experts}")
        low = np.full(act_dim, -1.0) if action_low is None else np.asarray(action_low, dtype=np.float64)
        high = np.full(act_dim, 1.0) if action_high is None else np.asarray(action_high, dtype=np.float64)
        if squash and not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
            raise ShapeError(f"a squashed mixture needs a bounded action box with high > low, got [{low}, {high}]")
        self.kwargs = dict(obs_dim=obs_dim, act_dim=act_dim, n_experts=n_experts, hidden=list(hidden),
                           activation=activation, normalize_obs=normalize_obs, squash=squash,
                           state_dependent_std=state_dependent_std, log_std_init=log_std_init,
                           action_low=low.tolist(), action_high=high.tolist(),
                           log_std_min=log_std_min, log_std_max=log_std_max)
        self.k, self.act_dim, self.squash = n_experts, act_dim, squash
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.obs_norm = ObsNormalizer(obs_dim, enabled=normalize_obs)
        self.trunk = trunk_mlp(obs_dim, hidden, activation)
        self.mean_head = _head(hidden[-1], n_experts * act_dim)
        if state_dependent_std:
            self.log_std_head = _head(hidden[-1], n_experts * act_dim)
        else:
            self.log_std = nn.Parameter(torch.full((n_experts, act_dim), float(log_std_init)))
        self.router = _head(hidden[-1], n_experts)
        scale = (high - low) / 2 if squash else np.ones(act_dim)
        bias = (high + low) / 2 if squash else np.zeros(act_dim)
        self.register_buffer("action_scale", torch.as_tensor(scale, dtype=torch.float32), persistent=False)
        self.register_buffer("action_bias", torch.as_tensor(bias, dtype=torch.float32), persistent=False)
        self.register_buffer("log_scale", self.action_scale.log(), persistent=False)

    def params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mu [B, K, A], log_std [B, K, A], router logits [B, K])`` for raw ``obs [B, obs_dim]``."""
        h = self.trunk(self.obs_norm(obs))
        b = h.shape[0]
        mu = self.mean_head(h).reshape(b, self.k, self.act_dim)
        if hasattr(self, "log_std_head"):
            log_std = self.log_std_head(h).reshape(b, self.k, self.act_dim)
        else:
            log_std = self.log_std.expand(b, self.k, self.act_dim)
        return mu, log_std.clamp(self.log_std_min, self.log_std_max), self.router(h.detach())

    def weights(self, obs: torch.Tensor) -> torch.Tensor:
        """Router weights ``w(s) [B, K]`` (rows sum to 1)."""
        return torch.softmax(self.params(obs)[2], -1)

    def _to_action(self, u: torch.Tensor) -> torch.Tensor:
        return torch.tanh(u) * self.action_scale + self.action_bias if self.squash else u

    def _expert_logp_at(self, u: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        """Each expert's log-density ``[B, K]`` at the action with pre-squash value ``u [B, A]`` (or ``[B, K, A]``)."""
        u = u.unsqueeze(1) if u.dim() == 2 else u
        if self.squash:
            return squashed_log_prob(u, mu, log_std, self.log_scale)
        z = (u - mu) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - _HALF_LOG_2PI).sum(-1)

    def _u(self, action: torch.Tensor) -> torch.Tensor:
        return unsquash(action, self.action_scale, self.action_bias) if self.squash else action.float()

    def expert_log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``log p_k(action|obs)`` of every expert, ``[B, K]``; squashed actions are clamped before atanh."""
        mu, log_std, _ = self.params(obs)
        return self._expert_logp_at(self._u(action), mu, log_std)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Mixture log-density ``logsumexp_k(log w_k + log p_k(action|obs))``, ``[B]``."""
        mu, log_std, logits = self.params(obs)
        return torch.logsumexp(torch.log_softmax(logits, -1) + self._expert_logp_at(self._u(action), mu, log_std), -1)

    def expert_sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One reparameterised action from EVERY expert: ``(actions [B, K, A], log p_k(a_k|s) [B, K], w(s) [B, K])``.

        ``log p_k`` is each expert's own density (not the mixture's), as PMOE-SAC uses it (PMOEsac.py).
        """
        mu, log_std, logits = self.params(obs)
        u = mu + torch.randn_like(mu) * log_std.exp()
        return self._to_action(u), self._expert_logp_at(u, mu, log_std), torch.softmax(logits, -1)

    def _pick(self, obs: torch.Tensor, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std, logits = self.params(obs)
        if deterministic:
            k = logits.argmax(-1)
        else:
            k = torch.multinomial(torch.softmax(logits, -1), 1).squeeze(-1)
        rows = torch.arange(mu.shape[0])
        u = mu[rows, k] if deterministic else mu[rows, k] + torch.randn_like(mu[rows, k]) * log_std[rows, k].exp()
        logp = torch.logsumexp(torch.log_softmax(logits, -1) + self._expert_logp_at(u, mu, log_std), -1)
        return self._to_action(u), logp

    def sample(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``k ~ Categorical(w(s))`` then ``a ~ p_k`` (deterministic: the mean of ``argmax_k w_k``); returns
        ``(action [B, A], mixture log pi(action|obs) [B])``. The action is reparameterised given k."""
        return self._pick(obs, deterministic)

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        """Mean action of the most probable expert (rlkit-pmoe instead samples k at evaluation too)."""
        return self._pick(obs, True)[0]

    def distribution(self, obs: torch.Tensor) -> Distribution:
        """``MixtureSameFamily`` over the K experts (tanh-Gaussian components when squashed)."""
        mu, log_std, logits = self.params(obs)
        comp: Distribution = Independent(Normal(mu, log_std.exp(), validate_args=False), 1, validate_args=False)
        if self.squash:
            comp = TransformedDistribution(comp, [TanhTransform(cache_size=1),
                                                  AffineTransform(self.action_bias, self.action_scale, event_dim=1)],
                                           validate_args=False)
        return MixtureSameFamily(Categorical(logits=logits, validate_args=False), comp, validate_args=False)

    def log_prob_entropy(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mixture log pi(action|obs) [B], entropy estimate [B])``.

        A mixture's entropy has no closed form. The estimate is the router-weighted expert entropy
        ``sum_k w_k H(p_k)``, a lower bound of ``H(pi)`` (concavity; ``H(pi) <= sum_k w_k H(p_k) + H(w)``).
        Unsquashed experts use the closed-form Gaussian entropy; squashed experts use ``-log p_k(a~_k)`` of one
        reparameterised sample per expert.
        """
        mu, log_std, logits = self.params(obs)
        log_w = torch.log_softmax(logits, -1)
        logp = torch.logsumexp(log_w + self._expert_logp_at(self._u(action), mu, log_std), -1)
        if self.squash:
            u = mu + torch.randn_like(mu) * log_std.exp()
            h_k = -self._expert_logp_at(u, mu, log_std)
        else:
            h_k = (0.5 + _HALF_LOG_2PI + log_std).sum(-1)
        return logp, (log_w.exp() * h_k).sum(-1)


def make_mixture_policy(observation_space: gym.Space, action_space: gym.Space, n_experts: int,
                        hidden: Sequence[int], activation: str, normalize_obs: bool, squash: bool,
                        **kwargs) -> GaussianMixturePolicy:
    """Build a :class:`GaussianMixturePolicy` for a 1-D Box observation and action space.

    Raises:
        ShapeError: observation or action space is not a 1-D Box (a mixture of Gaussians needs continuous actions).
    """
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
        raise ShapeError(f"observation space must be a 1-D Box, got {observation_space}")
    if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
        raise ShapeError(f"a Gaussian-mixture policy needs a 1-D Box action space, got {action_space}")
    return GaussianMixturePolicy(observation_space.shape[0], action_space.shape[0], n_experts, hidden, activation,
                                 normalize_obs, squash, action_low=action_space.low.tolist(),
                                 action_high=action_space.high.tolist(), **kwargs)


