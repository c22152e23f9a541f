"""Deterministic actor (TD3, TD3+BC, PRDC, A2PR) behind the stochastic :class:`~hybridrl.nn.Policy` interface.

    mu(s) = bias + scale * tanh(f(norm(s)))                               (Fujimoto et al. 2018, TD3 actor)

The learners train ``mu`` directly (:meth:`DeterministicPolicy.mode`). So that every caller of the policy interface
(``evaluate``, ``collect``, OPE importance sampling, ``save_policy``/``load_policy``, fine-tuning) works without a
special case, the policy *also* defines the distribution it acts with when asked to sample:

    pi(a|s) = N(a; mu(s), diag(sigma^2)),   sigma = exploration_std * scale                (TD3's exploration noise)

``exploration_std`` (default 0.1, TD3's ``expl_noise``, relative to the half-width ``scale`` of the action box) is a
constructor argument saved in ``policy.json``, not a trained parameter. Consequences, stated once here:

* ``evaluate`` uses ``mode`` (deterministic) as for every policy; ``act(..., deterministic=False)`` and ``collect``
  add the exploration noise, and ``log_prob`` is that Gaussian's density (the log-probability ``collect`` stores as
  ``behavior_log_prob`` is therefore exact for the data it collects).
* Importance-sampling OPE of the *deterministic* policy is not defined (its density is a Dirac); OPE of this policy
  evaluates the Gaussian-noised policy above. With a small sigma, dataset actions far from mu(s) get very small
  weights, so IS estimates are high-variance; FQE (which only calls ``mode``/``sample``) is the estimator to use.
* On-policy fine-tuning (PPO via :func:`hybridrl.loops.finetune.finetune`) trains ``mu`` and keeps sigma fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.distributions import Distribution, Independent, Normal

from hybridrl.errors import PolicyError
from hybridrl.nn import _HALF_LOG_2PI, ObsNormalizer, Policy, _torch_seeded_rng, mlp, numpy_mlp

__all__ = ["DeterministicPolicy"]


class DeterministicPolicy(Policy):
    """Tanh-bounded deterministic actor with a fixed Gaussian exploration noise (see the module docstring).

    Args:
        obs_dim, act_dim: observation and action sizes.
        hidden, activation: MLP widths and nonlinearity ("relu" as in TD3).
        normalize_obs: read observations through an :class:`~hybridrl.nn.ObsNormalizer` (offline: dataset stats).
        action_low, action_high: the action box (default ``[-1, 1]^act_dim``); ``mode`` lies inside it.
        exploration_std: sigma of the sampling noise as a fraction of the box half-width (> 0; TD3: 0.1).
    Raises:
        PolicyError: ``exploration_std`` is not a finite number > 0.
    """

    discrete = False

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256), activation: str = "relu",
                 normalize_obs: bool = True, action_low: Sequence[float] | None = None,
                 action_high: Sequence[float] | None = None, exploration_std: float = 0.1):
        super().__init__()
        if not (isinstance(exploration_std, (int, float)) and np.isfinite(exploration_std) and exploration_std > 0):
            raise PolicyError(f"DeterministicPolicy: exploration_std={exploration_std!r}; expected a number > 0")
        low = np.full(act_dim, -1.0) if action_low is None else np.asarray(action_low, dtype=np.float64)
        high = np.full(act_dim, 1.0) if action_high is None else np.asarray(action_high, dtype=np.float64)
        self.kwargs = dict(obs_dim=obs_dim, act_dim=act_dim, hidden=list(hidden), activation=activation,
                           normalize_obs=normalize_obs, action_low=low.tolist(), action_high=high.tolist(),
                           exploration_std=float(exploration_std))
        self.obs_norm = ObsNormalizer(obs_dim, enabled=normalize_obs)
        self.mean_net = mlp(obs_dim, act_dim, hidden, activation, out_gain=1.0)
        scale = (high - low) / 2
        self.register_buffer("action_scale", torch.as_tensor(scale, dtype=torch.float32), persistent=False)
        self.register_buffer("action_bias", torch.as_tensor((high + low) / 2, dtype=torch.float32), persistent=False)
        self.register_buffer("noise_std", torch.as_tensor(exploration_std * scale, dtype=torch.float32),
                             persistent=False)

    @property
    def log_std(self) -> torch.Tensor:
        """``log sigma [act_dim]``, the fixed exploration noise (a constant: on-policy fine-tuning from this policy,
        e.g. PPO, trains ``mu`` only and keeps this noise)."""
        return self.noise_std.log()

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        """``mu(s) [B, act_dim]`` for raw ``obs [B, obs_dim]``, inside the action box (differentiable)."""
        return torch.tanh(self.mean_net(self.obs_norm(obs))) * self.action_scale + self.action_bias

    def distribution(self, obs: torch.Tensor) -> Distribution:
        mu = self.mode(obs)
        return Independent(Normal(mu, self.noise_std.expand_as(mu), validate_args=False), 1, validate_args=False)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.log_prob_entropy(obs, action)[0]

    def log_prob_entropy(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.mode(obs)
        log_std = self.noise_std.log()
        z = (action - mu) / self.noise_std
        logp = (-0.5 * z.pow(2) - log_std - _HALF_LOG_2PI).sum(-1)
        entropy = (0.5 + _HALF_LOG_2PI + log_std).sum(-1).expand(mu.shape[0])
        return logp, entropy

    def sample(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.mode(obs)
        noise = torch.zeros_like(mu) if deterministic else torch.randn_like(mu)
        logp = (-0.5 * noise.pow(2) - self.noise_std.log() - _HALF_LOG_2PI).sum(-1)
        return mu + noise * self.noise_std, logp

    def sampler(self, rng: np.random.Generator | None = None, deterministic: bool = False
                ) -> Callable[[np.ndarray], np.ndarray]:
        norm, net, rng = self.obs_norm.numpy(), numpy_mlp(self.mean_net), rng or _torch_seeded_rng()
        scale, bias, std = self.action_scale.numpy(), self.action_bias.numpy(), self.noise_std.numpy()

        def sample(obs: np.ndarray) -> np.ndarray:
            mu = np.tanh(net(norm(np.atleast_2d(obs)))) * scale + bias
            a = mu if deterministic else mu + std * rng.standard_normal(mu.shape, dtype=np.float32)
            return a if np.ndim(obs) > 1 else a[0]

        return sample
