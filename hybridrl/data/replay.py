"""A preallocated NumPy ring buffer of transitions for off-policy learners.

Each row is ``(obs, action, reward, next_obs, terminated, truncated)`` with ``next_obs`` the TRUE next observation
(pre-reset at an episode end) and the two done flags kept apart, so a learner bootstraps through truncations.
Once full, the oldest rows are overwritten. ``state_dict`` is a dict of NumPy arrays (and ints) that the
checkpoint format stores exactly, so a resumed run samples from the same buffer.

With ``mc_gamma`` set, the buffer also keeps each row's Monte-Carlo return-to-go ``G_t = r_t + gamma G_{t+1}``
within its episode (not bootstrapped at truncation, as :meth:`hybridrl.data.dataset.Dataset.mc_returns`), written
when the episode ends; rows of episodes still running hold ``-inf`` ("unknown": no lower bound). Cal-QL uses it.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from hybridrl.data.batches import Transitions
from hybridrl.errors import ShapeError

__all__ = ["ReplayBuffer"]

_FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")


class ReplayBuffer:
    """Fixed-capacity FIFO store of transitions, sampled uniformly with replacement.

    Args:
        capacity: maximum number of transitions (> 0).
        observation_space: 1-D ``Box`` (observations stored as float32 ``[capacity, D]``).
        action_space: ``Box`` (float32 ``[capacity, *shape]``) or ``Discrete`` (int64 ``[capacity]``).
        mc_gamma: discount of the ``mc_return`` field (None: no such field). The episodes of the ``N`` vector envs
            are tracked by their column in :meth:`add`; a sampled batch carries ``mc_return`` (``-inf`` for rows
            whose episode has not ended yet).
    Raises:
        ShapeError: capacity < 1 or unsupported spaces.
    """

    def __init__(self, capacity: int, observation_space: gym.Space, action_space: gym.Space,
                 mc_gamma: float | None = None):
        if int(capacity) < 1:
            raise ShapeError(f"ReplayBuffer capacity must be >= 1, got {capacity}")
        if not isinstance(observation_space, gym.spaces.Box):
            raise ShapeError(f"ReplayBuffer needs a Box observation space, got {observation_space}")
        if isinstance(action_space, gym.spaces.Discrete):
            act_shape, act_dtype = (), np.int64
        elif isinstance(action_space, gym.spaces.Box):
            act_shape, act_dtype = action_space.shape, np.float32
        else:
            raise ShapeError(f"ReplayBuffer needs a Box or Discrete action space, got {action_space}")
        self.capacity = int(capacity)
        n, obs_shape = self.capacity, observation_space.shape
        self.obs = np.zeros((n, *obs_shape), np.float32)
        self.next_obs = np.zeros((n, *obs_shape), np.float32)
        self.action = np.zeros((n, *act_shape), act_dtype)
        self.reward = np.zeros(n, np.float32)
        self.terminated = np.zeros(n, bool)
        self.truncated = np.zeros(n, bool)
        self.pos, self.size = 0, 0  # next row to write; rows filled
        self.mc_gamma = None if mc_gamma is None else float(mc_gamma)
        self.mc_return = None if mc_gamma is None else np.full(n, -np.inf, np.float32)
        self._running: dict[int, list[int]] = {}  # vector-env column -> rows of its running episode

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray,
            terminated: np.ndarray, truncated: np.ndarray) -> None:
        """Append one step of ``N`` vector envs: ``obs, next_obs [N, D]``, ``action [N, *act]``, ``reward,
        terminated, truncated [N]``. ``next_obs`` must be the true next observation (``envs.true_next_obs``).

        Raises:
            ShapeError: a field's shape is not ``[N, ...]`` matching the buffer, or N > capacity.
        """
        values = dict(obs=obs, action=action, reward=reward, next_obs=next_obs, terminated=terminated,
                      truncated=truncated)
        arrays = {k: np.asarray(v) for k, v in values.items()}
        n = arrays["reward"].reshape(-1).shape[0]
        if n > self.capacity:
            raise ShapeError(f"ReplayBuffer.add: {n} transitions do not fit a buffer of capacity {self.capacity}")
        for k, v in arrays.items():
            want = (n, *getattr(self, k).shape[1:])
            if v.shape != want and not (v.ndim == 0 and want == (1,)):
                raise ShapeError(f"ReplayBuffer.add: {k} has shape {v.shape}; expected {want}")
        rows = (self.pos + np.arange(n)) % self.capacity
        for k, v in arrays.items():
            getattr(self, k)[rows] = v.reshape(n, *getattr(self, k).shape[1:])
        self.pos = int((self.pos + n) % self.capacity)
        self.size = int(min(self.size + n, self.capacity))
        if self.mc_return is not None:
            self._track_returns(rows, arrays["terminated"].reshape(n) | arrays["truncated"].reshape(n))

    def _track_returns(self, rows: np.ndarray, done: np.ndarray) -> None:
        """Write ``-inf`` on the new rows; at an episode's end, its return-to-go on all of its rows still held."""
        self.mc_return[rows] = -np.inf
        for i, row in enumerate(rows):
            episode = self._running.setdefault(i, [])
            episode.append(int(row))
            if done[i]:
                g = 0.0
                for r in reversed(episode[-self.capacity:]):  # rows older than the capacity were overwritten
                    g = float(self.reward[r]) + self.mc_gamma * g
                    self.mc_return[r] = g
                del self._running[i]

    def sample(self, batch_size: int, rng: np.random.Generator) -> Transitions:
        """``batch_size`` rows drawn uniformly with replacement using ``rng``, as a :class:`Transitions` batch.

        Raises:
            ShapeError: the buffer is empty or ``batch_size`` < 1.
        """
        if self.size == 0 or batch_size < 1:
            raise ShapeError(f"ReplayBuffer.sample: cannot draw {batch_size} rows from {self.size} transitions")
        idx = rng.integers(0, self.size, size=batch_size)
        return self.rows(idx)

    def rows(self, idx: np.ndarray) -> Transitions:
        """Rows ``idx`` (int array, each < ``len(self)``) as a :class:`Transitions` batch (with ``mc_return`` when
        the buffer tracks it)."""
        mc = None if self.mc_return is None else torch.from_numpy(self.mc_return[idx])
        return Transitions(**{k: torch.from_numpy(getattr(self, k)[idx]) for k in _FIELDS}, mc_return=mc)

    def state_dict(self) -> dict:
        """The filled rows (``[size, ...]`` arrays in storage order) plus ``pos``, ``size`` and ``capacity``."""
        state = {k: getattr(self, k)[: self.size].copy() for k in _FIELDS}
        state.update(pos=self.pos, size=self.size, capacity=self.capacity)
        if self.mc_return is not None:  # episodes still running are not saved: a resumed run resets its envs
            state["mc_return"] = self.mc_return[: self.size].copy()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`. Raises ShapeError if capacity, shapes or dtypes differ."""
        if int(state["capacity"]) != self.capacity:
            raise ShapeError(f"ReplayBuffer.load_state_dict: saved capacity {state['capacity']} != {self.capacity}")
        size = int(state["size"])
        for k in _FIELDS:
            v, buf = np.asarray(state[k]), getattr(self, k)
            if v.shape != (size, *buf.shape[1:]) or v.dtype != buf.dtype:
                raise ShapeError(f"ReplayBuffer.load_state_dict: {k} is {v.dtype}{list(v.shape)}; expected "
                                 f"{buf.dtype}{[size, *buf.shape[1:]]}")
        for k in _FIELDS:
            getattr(self, k)[:size] = state[k]
        self.pos, self.size = int(state["pos"]), size
        if self.mc_return is not None:
            self.mc_return[:size] = state["mc_return"] if "mc_return" in state else -np.inf
            self._running = {}
