"""Networks and policies: MLPs, observation normalisation, categorical and Gaussian policies, value/Q nets.

A policy checkpoint is a folder with ``model.safetensors`` (weights and observation-normalisation
statistics) and ``policy.json`` (class name from :data:`POLICY_CLASSES`, constructor arguments,
env id, hybridrl version); see :mod:`hybridrl.nn.policy_io` (re-exported here). Loading never unpickles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from hybridrl.errors import ShapeError

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def mlp(
    in_dim: int,
    out_dim: int,
    hidden: Sequence[int] = (64, 64),
    activation: str = "tanh",
    out_gain: float = 1.0,
    hidden_gain: float = math.sqrt(2),
) -> nn.Sequential:
    """A fully connected network with orthogonal weights and zero biases.

    Hidden layers use gain ``hidden_gain`` (sqrt 2), the output layer ``out_gain``
    (PPO implementation detail: 0.01 for the policy head, 1.0 for the value head).
    """
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden]
    for a, b in zip(dims[:-1], dims[1:]):
        lin = nn.Linear(a, b)
        nn.init.orthogonal_(lin.weight, hidden_gain)
        nn.init.zeros_(lin.bias)
        layers += [lin, ACTIVATIONS[activation]()]
    out = nn.Linear(dims[-1], out_dim)
    nn.init.orthogonal_(out.weight, out_gain)
    nn.init.zeros_(out.bias)
    layers.append(out)
    return nn.Sequential(*layers)


def numpy_mlp(net: nn.Sequential) -> Callable[[np.ndarray], np.ndarray]:
    """A frozen float32 NumPy copy of an :func:`mlp` (``Linear``/``Tanh``/``ReLU`` layers): ``[B, in] -> [B, out]``.

    For per-step inference in collection loops: a 64x64 MLP on one observation takes ~15 us in NumPy against
    ~60-100 us through PyTorch's dispatcher (benchmarks/ppo_mujoco.py --profile). The copy does not follow later
    updates of ``net``. Raises TypeError for other layer types.
    """
    layers: list = []
    for m in net:
        if isinstance(m, nn.Linear):
            layers.append((m.weight.detach().numpy().T.astype(np.float32), m.bias.detach().numpy().astype(np.float32)))
        elif isinstance(m, (nn.Tanh, nn.ReLU)):
            layers.append(np.tanh if isinstance(m, nn.Tanh) else (lambda x: np.maximum(x, 0.0)))
        else:
            raise TypeError(f"numpy_mlp supports Linear, Tanh and ReLU layers, got {type(m).__name__}")

    def forward(x: np.ndarray) -> np.ndarray:
        for layer in layers:
            x = layer(x) if callable(layer) else x @ layer[0] + layer[1]
        return x

    return forward


class ObsNormalizer(nn.Module):
    """Running mean/variance observation normaliser, ``(x - mean) / sqrt(var + eps)`` clipped to ``±clip``.

    Statistics are buffers, so they are saved with the policy. ``update`` uses the parallel
    (Chan et al.) mean/variance merge, the same rule as SB3's ``RunningMeanStd``.
    """

    def __init__(self, obs_dim: int, clip: float = 10.0, eps: float = 1e-8, enabled: bool = True):
        super().__init__()
        self.clip, self.eps, self.enabled = clip, eps, enabled
        self.register_buffer("mean", torch.zeros(obs_dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(obs_dim, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))
        self._stats_cache: tuple | None = None  # (key, mean, std) of stats()

    @torch.no_grad()
    def update(self, x: torch.Tensor | np.ndarray) -> None:
        """Merge a batch ``x [N, obs_dim]`` into the running statistics."""
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float64)
        x = x.reshape(-1, self.mean.shape[0])
        n = x.shape[0]
        if n == 0:
            return
        b_mean, b_var = x.mean(0), x.var(0, unbiased=False)
        delta = b_mean - self.mean
        tot = self.count + n
        new_mean = self.mean + delta * n / tot
        m2 = self.var * self.count + b_var * n + delta.pow(2) * self.count * n / tot
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / tot)
        self.count.copy_(tot)

    @torch.no_grad()
    def set_stats(self, mean: np.ndarray, var: np.ndarray, count: float) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float64))
        self.var.copy_(torch.as_tensor(var, dtype=torch.float64))
        self.count.fill_(float(count))

    def stats(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` in ``dtype``, cached until the statistics change (tensor versions are the cache key)."""
        key = (dtype, self.mean._version, self.var._version, self.mean.data_ptr(), self.var.data_ptr())
        if self._stats_cache is None or self._stats_cache[0] != key:
            with torch.no_grad():
                self._stats_cache = (key, self.mean.to(dtype), (self.var + self.eps).sqrt().to(dtype))
        return self._stats_cache[1], self._stats_cache[2]

    def numpy(self) -> Callable[[np.ndarray], np.ndarray]:
        """A float32 NumPy copy of :meth:`forward` with the current statistics (they are not followed later)."""
        if not self.enabled:
            return lambda x: np.asarray(x, dtype=np.float32)
        mean, std = (t.numpy().copy() for t in self.stats(torch.float32))
        lo, hi = -self.clip, self.clip
        return lambda x: np.minimum(np.maximum((np.asarray(x, dtype=np.float32) - mean) / std, lo), hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        mean, std = self.stats(x.dtype)
        return ((x - mean) / std).clamp(-self.clip, self.clip)


class Policy(nn.Module):
    """Base of all policies: ``distribution(obs)`` plus helpers built on it.

    Subclasses set ``self.obs_norm`` and implement ``distribution`` and ``mode``. ``kwargs`` holds the
    constructor arguments (JSON-able) so :func:`save_policy` / :func:`load_policy` can rebuild it.
    """

    obs_norm: ObsNormalizer
    kwargs: dict[str, Any]
    discrete: bool

    def distribution(self, obs: torch.Tensor) -> Distribution:
        """Action distribution for raw observations ``obs [B, obs_dim]``; ``log_prob``/``entropy`` return ``[B]``."""
        raise NotImplementedError  # abstract

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic action (argmax or mean) for raw observations ``obs [B, obs_dim]``."""
        raise NotImplementedError  # abstract

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Natural-log density/probability of ``action`` under the policy at ``obs``: ``[B]``."""
        return self.distribution(obs).log_prob(action)

    def sample(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions ``[B, *act_shape]`` for raw ``obs [B, obs_dim]`` and their log-probabilities ``[B]``."""
        dist = self.distribution(obs)
        a = self.mode(obs) if deterministic else dist.sample()
        return a, dist.log_prob(a)

    def log_prob_entropy(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log pi(action|obs) [B], entropy [B])`` in one forward pass."""
        dist = self.distribution(obs)
        return dist.log_prob(action), dist.entropy()

    def sampler(self, rng: np.random.Generator | None = None, deterministic: bool = False
                ) -> Callable[[np.ndarray], np.ndarray]:
        """A function ``obs [B, obs_dim] -> action [B, *act_shape]`` acting with the *current* weights (a snapshot).

        For collection and evaluation loops, which call it once per environment step and take log-probabilities
        afterwards with one batched :meth:`log_prob` over the whole rollout. Subclasses return a NumPy copy of the
        network (several times faster per step than PyTorch for small MLPs on CPU) that draws its noise from
        ``rng`` (default: a generator seeded from ``torch``'s global RNG, so ``torch.manual_seed`` still fixes
        the rollout); this base version calls :meth:`act`.
        """
        return lambda obs: self.act(obs, deterministic)[0]

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Sample (or take the mode of) actions for a batch of raw observations.

        Args:
            obs: ``[B, obs_dim]`` (or ``[obs_dim]``) NumPy observations.
            deterministic: take the mode instead of sampling.
        Returns:
            ``(action, log_prob)``: actions ``[B, *act_shape]`` (unclipped; clip at the env boundary)
            and their log-probabilities ``[B]`` under the stochastic policy.
        """
        single = np.ndim(obs) == 1
        o = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        if single:
            o = o[None]
        a, logp = self.sample(o, deterministic)
        a_np, lp_np = a.numpy(), logp.numpy()
        return (a_np[0], lp_np[0]) if single else (a_np, lp_np)


class CategoricalPolicy(Policy):
    """Softmax policy over ``n_actions`` discrete actions, ``pi(a|s) = softmax(f(norm(s)))_a``."""

    discrete = True

    def __init__(self, obs_dim: int, n_actions: int, hidden: Sequence[int] = (64, 64), activation: str = "tanh",
                 normalize_obs: bool = True):
        super().__init__()
        self.kwargs = dict(obs_dim=obs_dim, n_actions=n_actions, hidden=list(hidden), activation=activation,
                           normalize_obs=normalize_obs)
        self.obs_norm = ObsNormalizer(obs_dim, enabled=normalize_obs)
        self.logits = mlp(obs_dim, n_actions, hidden, activation, out_gain=0.01)

    def distribution(self, obs: torch.Tensor) -> Distribution:
        return Categorical(logits=self.logits(self.obs_norm(obs)), validate_args=False)

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.logits(self.obs_norm(obs)).argmax(-1)

    def probs(self, obs: torch.Tensor) -> torch.Tensor:
        """Action probabilities ``[B, n_actions]``."""
        return torch.softmax(self.logits(self.obs_norm(obs)), -1)

    def sampler(self, rng: np.random.Generator | None = None, deterministic: bool = False
                ) -> Callable[[np.ndarray], np.ndarray]:
        norm, net, rng = self.obs_norm.numpy(), numpy_mlp(self.logits), rng or _torch_seeded_rng()

        def sample(obs: np.ndarray) -> np.ndarray:
            logits = net(norm(np.atleast_2d(obs)))
            if deterministic:
                a = logits.argmax(-1)
            else:  # inverse-CDF sampling from the softmax
                p = np.exp(logits - logits.max(-1, keepdims=True))
                cdf = np.cumsum(p, -1)
                u = rng.random((len(cdf), 1)) * cdf[:, -1:]
                a = np.minimum((u >= cdf).sum(-1), cdf.shape[-1] - 1)
            return a if np.ndim(obs) > 1 else a[0]

        return sample


class GaussianPolicy(Policy):
    """Diagonal Gaussian policy ``N(mu(s), diag(exp(log_std)^2))`` with state-independent ``log_std``.

    ``tanh_mean=True`` bounds the mean with ``tanh`` scaled to the action box (the IQL actor); the
    sample itself is not squashed, so actions are clipped at the env boundary (PPO detail) and
    ``log_prob`` is the Gaussian density of the unclipped action.
    """

    discrete = False

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (64, 64), activation: str = "tanh",
                 normalize_obs: bool = True, tanh_mean: bool = False, log_std_init: float = 0.0,
                 action_low: Sequence[float] | None = None, action_high: Sequence[float] | None = None,
                 log_std_min: float = -5.0, log_std_max: float = 2.0):
        super().__init__()
        low = np.full(act_dim, -1.0) if action_low is None else np.asarray(action_low, dtype=np.float64)
        high = np.full(act_dim, 1.0) if action_high is None else np.asarray(action_high, dtype=np.float64)
        self.kwargs = dict(obs_dim=obs_dim, act_dim=act_dim, hidden=list(hidden), activation=activation,
                           normalize_obs=normalize_obs, tanh_mean=tanh_mean, log_std_init=log_std_init,
                           action_low=low.tolist(), action_high=high.tolist(),
                           log_std_min=log_std_min, log_std_max=log_std_max)
        self.obs_norm = ObsNormalizer(obs_dim, enabled=normalize_obs)
        self.mean_net = mlp(obs_dim, act_dim, hidden, activation, out_gain=0.01)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)))
        self.tanh_mean, self.log_std_min, self.log_std_max = tanh_mean, log_std_min, log_std_max
        self.register_buffer("action_scale", torch.as_tensor((high - low) / 2, dtype=torch.float32), persistent=False)
        self.register_buffer("action_bias", torch.as_tensor((high + low) / 2, dtype=torch.float32), persistent=False)

    def mean(self, obs: torch.Tensor) -> torch.Tensor:
        mu = self.mean_net(self.obs_norm(obs))
        if self.tanh_mean:
            mu = torch.tanh(mu) * self.action_scale + self.action_bias
        return mu

    def distribution(self, obs: torch.Tensor) -> Distribution:
        mu = self.mean(obs)
        std = self._log_std().exp().expand_as(mu)
        return Independent(Normal(mu, std, validate_args=False), 1, validate_args=False)

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mean(obs)

    def _log_std(self) -> torch.Tensor:
        return self.log_std.clamp(self.log_std_min, self.log_std_max)

    def sample(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        # Closed form of the diagonal Gaussian, without building Distribution objects (hot path of rollouts).
        mu, log_std = self.mean(obs), self._log_std()
        noise = torch.zeros_like(mu) if deterministic else torch.randn_like(mu)
        logp = (-0.5 * noise.pow(2) - log_std - _HALF_LOG_2PI).sum(-1)
        return mu + noise * log_std.exp(), logp

    def sampler(self, rng: np.random.Generator | None = None, deterministic: bool = False
                ) -> Callable[[np.ndarray], np.ndarray]:
        norm, net, rng = self.obs_norm.numpy(), numpy_mlp(self.mean_net), rng or _torch_seeded_rng()
        std = self._log_std().detach().exp().numpy().astype(np.float32)
        scale, bias = self.action_scale.numpy(), self.action_bias.numpy()

        def sample(obs: np.ndarray) -> np.ndarray:
            mu = net(norm(np.atleast_2d(obs)))
            if self.tanh_mean:
                mu = np.tanh(mu) * scale + bias
            a = mu if deterministic else mu + std * rng.standard_normal(mu.shape, dtype=np.float32)
            return a if np.ndim(obs) > 1 else a[0]

        return sample

    def log_prob_entropy(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.mean(obs), self._log_std()
        z = (action - mu) * torch.exp(-log_std)
        logp = (-0.5 * z.pow(2) - log_std - _HALF_LOG_2PI).sum(-1)
        entropy = (0.5 + _HALF_LOG_2PI + log_std).sum(-1).expand(mu.shape[0])
        return logp, entropy


def _torch_seeded_rng() -> np.random.Generator:
    """A NumPy generator seeded from torch's global RNG (so ``torch.manual_seed`` and saved torch RNG states fix it)."""
    return np.random.default_rng(int(torch.randint(2**62, (1,))))


def make_policy(observation_space: gym.Space, action_space: gym.Space, hidden: Sequence[int] = (64, 64),
                activation: str = "tanh", normalize_obs: bool = True, **gaussian_kwargs: Any) -> Policy:
    """Build the default policy for a pair of Gymnasium spaces (flat Box observations).

    Raises:
        ShapeError: for observation spaces that are not 1-D ``Box`` or unsupported action spaces.
    """
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
        raise ShapeError(f"observation space must be a 1-D Box, got {observation_space}")
    obs_dim = observation_space.shape[0]
    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalPolicy(obs_dim, int(action_space.n), hidden, activation, normalize_obs)
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return GaussianPolicy(obs_dim, action_space.shape[0], hidden, activation, normalize_obs,
                              action_low=action_space.low.tolist(), action_high=action_space.high.tolist(),
                              **gaussian_kwargs)
    raise ShapeError(f"action space must be Discrete or a 1-D Box, got {action_space}")


def policy_matches_spaces(policy: Policy, observation_space: gym.Space, action_space: gym.Space,
                          where: str = "env") -> str | None:
    """Return a reason naming both shapes why ``policy`` cannot act in these spaces (those of ``where``: "env",
    "dataset"), or ``None`` if it can."""
    k = policy.kwargs
    if observation_space.shape != (k["obs_dim"],):
        return f"policy expects observations of shape ({k['obs_dim']},), {where} gives {observation_space.shape}"
    if policy.discrete != isinstance(action_space, gym.spaces.Discrete):
        return f"policy is {'discrete' if policy.discrete else 'continuous'} but the action space is {action_space}"
    if policy.discrete and int(action_space.n) != k["n_actions"]:
        return f"policy has {k['n_actions']} actions, {where} has {action_space.n}"
    if not policy.discrete and action_space.shape != (k["act_dim"],):
        return f"policy acts in shape ({k['act_dim']},), {where} expects {action_space.shape}"
    return None


class ValueNet(nn.Module):
    """State-value network ``V(s)``: raw ``obs [B, obs_dim]`` -> ``[B]`` (normalised by the shared ``obs_norm``)."""

    def __init__(self, obs_dim: int, hidden: Sequence[int] = (64, 64), activation: str = "tanh",
                 obs_norm: ObsNormalizer | None = None):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, activation, out_gain=1.0)
        self._obs_norm = [obs_norm]  # shared with the policy, not a submodule (not saved twice)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        norm = self._obs_norm[0]
        return self.net(norm(obs) if norm is not None else obs).squeeze(-1)


class QNet(nn.Module):
    """Action-value network. Continuous: ``Q(s, a) -> [B]``. Discrete: ``Q(s, ·) -> [B, n_actions]``
    (``forward(obs, action)`` with an int64 ``action [B]`` gathers ``[B]``)."""

    def __init__(self, obs_dim: int, action_dim: int, discrete: bool, hidden: Sequence[int] = (256, 256),
                 activation: str = "relu", obs_norm: ObsNormalizer | None = None):
        super().__init__()
        self.discrete = discrete
        in_dim = obs_dim if discrete else obs_dim + action_dim
        self.net = mlp(in_dim, action_dim if discrete else 1, hidden, activation, out_gain=1.0)
        self._obs_norm = [obs_norm]

    def _norm(self, obs: torch.Tensor) -> torch.Tensor:
        norm = self._obs_norm[0]
        return norm(obs) if norm is not None else obs

    def all_actions(self, obs: torch.Tensor) -> torch.Tensor:
        """Discrete only: ``Q(s, ·)`` as ``[B, n_actions]``."""
        return self.net(self._norm(obs))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return self.all_actions(obs).gather(-1, action.long().reshape(-1, 1)).squeeze(-1)
        return self.net(torch.cat([self._norm(obs), action.float()], -1)).squeeze(-1)


from hybridrl.nn.policy_io import (  # noqa: E402, F401  (re-export; policy_io needs Policy defined above)
    POLICY_CLASSES,
    load_policy,
    policy_class,
    read_policy_meta,
    register_policy_class,
    save_policy,
)
