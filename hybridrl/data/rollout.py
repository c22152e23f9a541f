"""Rollout buffers of on-policy learners that reuse recent data.

- :class:`SegmentBuffer`: the newest ``capacity`` steps of each env, one time-ordered stream per env (PROPS keeps
  ``b`` rollouts this way; GAE runs over the whole buffer).
- :class:`RolloutQueue`: the last ``k`` whole rollouts as separate :class:`Segments` (replayed policy gradients).

Both are learner state: ``state_dict()`` holds plain arrays/tensors, so a checkpointed run resumes exactly.
"""

from __future__ import annotations

from collections import deque
from dataclasses import fields

import numpy as np
import torch

from hybridrl.data.batches import Segments
from hybridrl.errors import ShapeError

SEGMENT_FIELDS = tuple(f.name for f in fields(Segments))
FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated", "behavior_log_prob")
"""The fields a :class:`SegmentBuffer` stores (every :class:`Segments` field but ``mask``)."""


class SegmentBuffer:
    """The newest ``capacity`` steps of each of ``num_envs`` envs, stored in time order (oldest first).

    Arrays are ``[num_envs, capacity, ...]``; the first ``size`` steps are valid. ``add`` appends a block of
    ``m`` steps per env and drops the oldest steps that no longer fit, so index 0 is always the oldest step and
    consecutive indices are consecutive env steps (what GAE over the buffer needs). A block that does not continue
    an env's last unfinished episode (its first ``obs`` differs from the stored last ``next_obs``, e.g. after the
    envs were reset on resume) turns that last step into a truncation.

    Args:
        num_envs: ``B``. capacity: steps per env kept (e.g. ``buffer_batches * n_steps``).
        obs_shape, act_shape: per-step shapes. discrete: int64 actions (else float32).
    Raises: ShapeError (``add``) for a block of the wrong shape or longer than ``capacity``.
    """

    def __init__(self, num_envs: int, capacity: int, obs_shape: tuple, act_shape: tuple, discrete: bool):
        self.num_envs, self.capacity, self.size = num_envs, capacity, 0
        b, c = num_envs, capacity
        self.data = {
            "obs": np.zeros((b, c, *obs_shape), np.float32), "next_obs": np.zeros((b, c, *obs_shape), np.float32),
            "action": np.zeros((b, c, *act_shape), np.int64 if discrete else np.float32),
            "reward": np.zeros((b, c), np.float32), "behavior_log_prob": np.zeros((b, c), np.float32),
            "terminated": np.zeros((b, c), bool), "truncated": np.zeros((b, c), bool),
        }

    def add(self, **block: np.ndarray) -> None:
        """Append ``[num_envs, m, ...]`` arrays for every field in :data:`FIELDS` (raw rewards)."""
        m = block["reward"].shape[1] if np.ndim(block["reward"]) == 2 else -1
        if m < 1 or m > self.capacity or set(block) != set(FIELDS):
            raise ShapeError(f"SegmentBuffer.add needs fields {FIELDS} shaped "
                             f"[{self.num_envs}, m <= {self.capacity}, ...]")
        for name, arr in self.data.items():
            if block[name].shape != (self.num_envs, m, *arr.shape[2:]):
                raise ShapeError(f"SegmentBuffer.add: {name} has shape {block[name].shape}; expected "
                                 f"{(self.num_envs, m, *arr.shape[2:])}")
        if self.size:
            d, last = self.data, self.size - 1
            open_end = ~(d["terminated"][:, last] | d["truncated"][:, last])
            jump = (d["next_obs"][:, last] != block["obs"][:, 0]).reshape(self.num_envs, -1).any(-1)
            d["truncated"][:, last] |= open_end & jump
        drop = max(0, self.size + m - self.capacity)
        for name, arr in self.data.items():
            if drop:
                arr[:, : self.size - drop] = arr[:, drop : self.size].copy()
            arr[:, self.size - drop : self.size - drop + m] = block[name]
        self.size = self.size - drop + m

    def segments(self, last: int | None = None, reward_scale: float = 1.0,
                 reward_clip: float | None = None) -> Segments:
        """The newest ``last`` steps per env (all when None) as ``Segments [num_envs, last]``, time-ordered.

        Rewards are ``clip(raw * reward_scale, +-reward_clip)``.
        """
        last = self.size if last is None else min(int(last), self.size)
        sl = slice(self.size - last, self.size)
        reward = self.data["reward"][:, sl] * np.float32(reward_scale)
        if reward_clip is not None:
            reward = np.clip(reward, -reward_clip, reward_clip)
        out = {k: torch.from_numpy(np.ascontiguousarray(v[:, sl])) for k, v in self.data.items() if k != "reward"}
        return Segments(reward=torch.from_numpy(np.ascontiguousarray(reward)), **out)

    def state_dict(self) -> dict:
        return {"size": self.size, **{k: v[:, : self.size].copy() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.size = int(state["size"])
        for k, v in self.data.items():
            v[:, : self.size] = state[k]


class RolloutQueue:
    """The last ``k`` rollouts (``Segments``), newest last; ``add`` stores a private copy (loops may reuse arrays).

    Args: k: rollouts kept (>= 1).
    """

    def __init__(self, k: int):
        self.rollouts: deque[Segments] = deque(maxlen=k)

    def add(self, batch: Segments) -> None:
        self.rollouts.append(Segments(**{f: getattr(batch, f).clone() for f in SEGMENT_FIELDS}))

    def newest_first(self) -> list[Segments]:
        """The stored rollouts, age 0 (the newest) first."""
        return list(reversed(self.rollouts))

    def __len__(self) -> int:
        return len(self.rollouts)

    def __getitem__(self, i: int) -> Segments:
        return self.rollouts[i]

    def state_dict(self) -> dict:
        return {"rollouts": [{f: getattr(s, f) for f in SEGMENT_FIELDS} for s in self.rollouts]}

    def load_state_dict(self, state: dict) -> None:
        self.rollouts.clear()
        self.rollouts.extend(Segments(**r) for r in state["rollouts"])
