"""Toy environments with analytic answers, for testing learners and off-policy evaluation.

Registered with Gymnasium on import (the :mod:`hybridrl.envs` package imports this module):

* ``hybridrl/Bandit-v0`` (:class:`BanditEnv`): one step, ``K`` arms, known mean rewards.
* ``hybridrl/Chain-v0`` (:class:`ChainEnv`): ``N``-state chain with slip, reward and termination at the
  right end, truncation after ``max_steps`` steps.

Analytic values: :func:`bandit_value`, :func:`chain_value`, :func:`chain_q`, :func:`chain_policy_value`
(finite-horizon backward induction by default, because episodes are truncated; ``horizon=None`` solves
the infinite-horizon Bellman linear system). :class:`TabularPolicy` is a :class:`hybridrl.nn.Policy`
given by a probability table, saveable with :func:`hybridrl.nn.save_policy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Distribution

from hybridrl.errors import ConfigError, ShapeError
from hybridrl.nn import ObsNormalizer, Policy

__all__ = [
    "BanditEnv", "ChainEnv", "TabularPolicy", "bandit_value", "chain_transition", "chain_value", "chain_q",
    "chain_policy_value",
]


class BanditEnv(gym.Env):
    """``K``-armed bandit: one step per episode, observation the constant vector ``[1.0]``.

    Reward of arm ``a`` is ``means[a] + noise_std * N(0, 1)``; every step terminates the episode.

    Args:
        n_arms: number of arms ``K`` (>= 1); the action space is ``Discrete(K)``.
        means: ``[K]`` mean rewards; default ``linspace(0, 1, K)`` (arm ``K-1`` best).
        noise_std: standard deviation of the Gaussian reward noise (>= 0).
    Raises:
        ConfigError: on ``n_arms < 1``, a ``means`` of the wrong length or a negative ``noise_std``.
    """

    metadata = {"render_modes": []}

    def __init__(self, n_arms: int = 2, means: Sequence[float] | None = None, noise_std: float = 0.0):
        if n_arms < 1:
            raise ConfigError(f"BanditEnv: n_arms must be >= 1, got {n_arms}")
        self.means = np.linspace(0.0, 1.0, n_arms) if means is None else np.asarray(means, dtype=np.float64)
        if self.means.shape != (n_arms,):
            raise ConfigError(f"BanditEnv: means has shape {self.means.shape}; expected ({n_arms},)")
        if noise_std < 0:
            raise ConfigError(f"BanditEnv: noise_std must be >= 0, got {noise_std}")
        self.noise_std = float(noise_std)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(n_arms)
        self._obs = np.ones(1, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self._obs.copy(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = int(action)
        if not 0 <= a < len(self.means):
            raise ShapeError(f"BanditEnv.step: action {action!r} outside Discrete({len(self.means)})")
        noise = self.noise_std * self.np_random.standard_normal() if self.noise_std > 0 else 0.0
        return self._obs.copy(), float(self.means[a] + noise), True, False, {}


def bandit_value(policy_probs: np.ndarray, means: Sequence[float]) -> float:
    """Exact value ``J(pi) = sum_a pi(a) mu_a`` of a bandit policy (``policy_probs [K]`` or ``[1, K]``)."""
    p = np.asarray(policy_probs, dtype=np.float64).reshape(-1)
    mu = np.asarray(means, dtype=np.float64)
    if p.shape != mu.shape:
        raise ShapeError(f"bandit_value: policy_probs has {p.size} entries, means {mu.size}")
    return float(p @ mu)


class ChainEnv(gym.Env):
    """Chain MDP with ``N`` states ``0..N-1``, start state 0, one-hot observations ``Box(0, 1, (N,))``.

    Actions: 0 = left, 1 = right. With probability ``slip`` the move goes the opposite way. Moving left
    from state 0 stays in 0. Entering state ``N-1`` (the right end) gives reward ``reward`` and terminates;
    every other transition gives 0. After ``max_steps`` steps without termination the episode is
    truncated (internal counter, no ``TimeLimit`` wrapper; ``info["t"]`` is the step count).

    Args:
        n_states: ``N >= 2``.
        slip: probability in [0, 1] that the executed move is the opposite of the chosen one.
        max_steps: truncation horizon ``H >= 1``; ``None`` never truncates.
        reward: reward for entering the right end.
    Raises:
        ConfigError: on out-of-range arguments.
    """

    metadata = {"render_modes": []}

    def __init__(self, n_states: int = 5, slip: float = 0.1, max_steps: int | None = 20, reward: float = 1.0):
        if n_states < 2:
            raise ConfigError(f"ChainEnv: n_states must be >= 2, got {n_states}")
        if not 0.0 <= slip <= 1.0:
            raise ConfigError(f"ChainEnv: slip must be in [0, 1], got {slip}")
        if max_steps is not None and max_steps < 1:
            raise ConfigError(f"ChainEnv: max_steps must be >= 1 or None, got {max_steps}")
        self.n_states, self.slip, self.max_steps, self.reward = int(n_states), float(slip), max_steps, float(reward)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self.n_states,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.state, self.t = 0, 0

    def _obs(self) -> np.ndarray:
        o = np.zeros(self.n_states, dtype=np.float32)
        o[self.state] = 1.0
        return o

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.state, self.t = 0, 0
        return self._obs(), {"state": 0, "t": 0}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = int(action)
        if a not in (0, 1):
            raise ShapeError(f"ChainEnv.step: action {action!r} outside Discrete(2)")
        move = 1 if a == 1 else -1
        if self.np_random.random() < self.slip:
            move = -move
        self.state = min(max(self.state + move, 0), self.n_states - 1)
        self.t += 1
        terminated = self.state == self.n_states - 1
        reward = self.reward if terminated else 0.0
        truncated = (not terminated) and self.max_steps is not None and self.t >= self.max_steps
        return self._obs(), reward, terminated, bool(truncated), {"state": self.state, "t": self.t}


def chain_transition(n_states: int, slip: float = 0.1) -> np.ndarray:
    """Transition tensor ``P [N, 2, N]`` of :class:`ChainEnv`: ``P[s, a, s'] = Pr(s' | s, a)``.

    Row ``N-1`` (terminal) is all zeros: no transition leaves the right end.
    """
    n = int(n_states)
    p = np.zeros((n, 2, n))
    for s in range(n - 1):
        for a, move in ((0, -1), (1, 1)):
            for m, prob in ((move, 1.0 - slip), (-move, slip)):
                p[s, a, min(max(s + m, 0), n - 1)] += prob
    return p


def _check_probs(policy_probs: np.ndarray, n_actions: int = 2) -> np.ndarray:
    pi = np.asarray(policy_probs, dtype=np.float64)
    if pi.ndim != 2 or pi.shape[1] != n_actions or pi.shape[0] < 2:
        raise ShapeError(f"policy_probs must have shape [N >= 2, {n_actions}], got {pi.shape}")
    if (pi < 0).any() or not np.allclose(pi.sum(1), 1.0, atol=1e-6):
        raise ShapeError("policy_probs rows must be probability vectors (non-negative, summing to 1)")
    return pi


def chain_q(policy_probs: np.ndarray, gamma: float, slip: float = 0.1, horizon: int | None = 20,
            reward: float = 1.0) -> np.ndarray:
    """Exact action values ``Q^pi [N, 2]`` of the chain MDP (state ``N-1`` terminal: its row is 0).

    With ``horizon = H`` this is the value with ``H`` steps left (the value at the start of a truncated
    episode), by backward induction over ``h = 1..H``:

        Q_h(s, a) = sum_{s'} P(s'|s,a) [ r(s') + gamma (1 - term(s')) V_{h-1}(s') ],
        V_h(s) = sum_a pi(a|s) Q_h(s, a),   V_0 = 0,  r(s') = reward * 1[s' = N-1],  term(s') = 1[s' = N-1].

    With ``horizon=None`` it is the infinite-horizon fixed point, ``V = (I - gamma P_pi)^{-1} r_pi`` on the
    non-terminal states (requires ``gamma < 1`` or a policy that terminates with probability one).

    Args:
        policy_probs: ``[N, 2]`` action probabilities per state (the terminal row is ignored).
        gamma: discount in [0, 1].
        slip, reward: as in :class:`ChainEnv`.
        horizon: ``H >= 1`` steps, or ``None`` for the infinite horizon.
    Raises:
        ShapeError: bad ``policy_probs``. ConfigError: bad ``gamma`` / ``horizon``, or a singular system.
    """
    pi = _check_probs(policy_probs)
    if not 0.0 <= gamma <= 1.0:
        raise ConfigError(f"gamma must be in [0, 1], got {gamma}")
    n = pi.shape[0]
    p = chain_transition(n, slip)
    r_sa = p[:, :, n - 1] * reward  # expected immediate reward [N, 2]
    cont = np.ones(n)
    cont[n - 1] = 0.0  # no bootstrap from the terminal state
    if horizon is None:
        p_pi = np.einsum("sa,sat->st", pi, p)
        a_mat = np.eye(n - 1) - gamma * p_pi[: n - 1, : n - 1]
        try:
            v = np.linalg.solve(a_mat, (pi * r_sa).sum(1)[: n - 1])
        except np.linalg.LinAlgError:
            raise ConfigError("chain_q: singular Bellman system (gamma = 1 with a policy that never terminates)"
                              ) from None
        v_full = np.append(v, 0.0)
        q = r_sa + gamma * p @ (cont * v_full)
    else:
        if horizon < 1:
            raise ConfigError(f"horizon must be >= 1 or None, got {horizon}")
        v_full = np.zeros(n)
        for _ in range(int(horizon)):
            q = r_sa + gamma * p @ (cont * v_full)
            v_full = (pi * q).sum(1)
    q[n - 1] = 0.0
    return q


def chain_value(policy_probs: np.ndarray, gamma: float, slip: float = 0.1, horizon: int | None = 20,
                reward: float = 1.0) -> np.ndarray:
    """Exact state values ``V^pi [N]`` (``V(N-1) = 0``); see :func:`chain_q` for the equations and arguments."""
    pi = _check_probs(policy_probs)
    return (pi * chain_q(pi, gamma, slip, horizon, reward)).sum(1)


def chain_policy_value(policy_probs: np.ndarray, gamma: float, slip: float = 0.1, horizon: int | None = 20,
                       reward: float = 1.0) -> float:
    """Exact policy value ``J(pi) = V^pi(s_0 = 0)``: expected discounted return of an episode of ``ChainEnv``."""
    return float(chain_value(policy_probs, gamma, slip, horizon, reward)[0])


class TabularPolicy(Policy):
    """Policy given by a table ``probs [S, A]``: ``pi(a | s) = probs[s, a]``, for one-hot observations.

    The state index is ``argmax(obs)`` when ``S > 1`` (one-hot, ``obs_dim == S``) and ``0`` when ``S == 1``
    (e.g. the bandit's constant observation). Logits are ``log(probs)`` stored in float64 (zero
    probabilities give ``-inf`` logits and ``log_prob = -inf``). Observation normalisation is disabled.

    Args:
        probs: ``[S, A]`` row-stochastic table (nested lists accepted, as saved in ``policy.json``).
        obs_dim: observation size (default ``S``; must equal ``S`` unless ``S == 1``).
        n_actions: optional check of ``A``.
    Raises:
        ShapeError: on a non-stochastic table or mismatched ``obs_dim`` / ``n_actions``.
    """

    discrete = True
    neg_inf_ok = ("table",)  # log-probabilities of impossible actions are -inf (checked by load_policy)

    def __init__(self, probs: Sequence[Sequence[float]] | np.ndarray, obs_dim: int | None = None,
                 n_actions: int | None = None):
        super().__init__()
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 2 or (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-6):
            raise ShapeError(f"TabularPolicy: probs must be a row-stochastic [S, A] table, got shape {p.shape}")
        s, a = p.shape
        obs_dim = s if obs_dim is None else int(obs_dim)
        if s > 1 and obs_dim != s:
            raise ShapeError(f"TabularPolicy: obs_dim {obs_dim} must equal the number of states {s} (one-hot)")
        if n_actions is not None and int(n_actions) != a:
            raise ShapeError(f"TabularPolicy: n_actions {n_actions} does not match probs with {a} columns")
        self.kwargs = dict(probs=p.tolist(), obs_dim=obs_dim, n_actions=a)
        self.obs_norm = ObsNormalizer(obs_dim, enabled=False)
        with np.errstate(divide="ignore"):
            self.table = nn.Parameter(torch.as_tensor(np.log(p), dtype=torch.float64), requires_grad=False)

    def _state(self, obs: torch.Tensor) -> torch.Tensor:
        obs = torch.as_tensor(obs)
        if self.table.shape[0] == 1:
            return torch.zeros(obs.shape[0], dtype=torch.long, device=obs.device)
        return obs.argmax(-1)

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``[B, A]`` (float64) for observations ``obs [B, obs_dim]``."""
        return self.table[self._state(obs)]

    def distribution(self, obs: torch.Tensor) -> Distribution:
        return Categorical(logits=self.logits(obs), validate_args=False)

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.logits(obs).argmax(-1)

    def probs(self, obs: torch.Tensor) -> torch.Tensor:
        """Action probabilities ``[B, A]`` (float64)."""
        return torch.softmax(self.logits(obs), -1)



for _id, _entry in (("hybridrl/Bandit-v0", "hybridrl.envs.toy:BanditEnv"),
                    ("hybridrl/Chain-v0", "hybridrl.envs.toy:ChainEnv")):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry)
