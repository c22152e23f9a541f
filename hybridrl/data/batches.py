"""Batch types every learner consumes: :class:`Transitions` ``[B]`` and :class:`Segments` ``[B, T]``.

Both are frozen dataclasses of ``torch.Tensor`` validated in ``__post_init__``. Termination and
truncation are kept apart: a learner bootstraps from ``next_obs`` unless ``terminated`` is true, and
``next_obs`` is always the true next observation (the pre-reset final observation at a truncation).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from hybridrl.errors import ShapeError


def _as_tensor(x, dtype: torch.dtype | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if dtype is None or x.dtype == dtype else x.to(dtype)
    arr = np.asarray(x)
    if dtype is None:
        dtype = torch.float32 if arr.dtype.kind == "f" else None
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t if dtype is None else t.to(dtype)


def _check(name: str, t: torch.Tensor, lead: tuple[int, ...], where: str) -> None:
    if tuple(t.shape[: len(lead)]) != lead:
        raise ShapeError(
            f"{where}.{name} has shape {tuple(t.shape)}; expected leading dimensions {lead}"
        )


@dataclass(frozen=True)
class Transitions:
    """A batch of ``B`` independent transitions ``(s, a, r, s', terminated, truncated)``.

    Fields (``B`` = batch size):
        obs: ``[B, *obs_shape]`` float32, observation s_t.
        action: ``[B, *act_shape]`` (float32 for Box, int64 ``[B]`` for Discrete), action a_t.
        reward: ``[B]`` float32, reward r_t.
        next_obs: ``[B, *obs_shape]`` float32, true next observation s_{t+1} (pre-reset).
        terminated: ``[B]`` bool, s_{t+1} is terminal (no bootstrap).
        truncated: ``[B]`` bool, the episode was cut after this step (bootstrap from s_{t+1}).
        behavior_log_prob: optional ``[B]`` float32, natural log of pi_b(a_t | s_t).
        mc_return: optional ``[B]`` float32, discounted return-to-go from s_t in the dataset.

    Raises:
        ShapeError: if a field's leading dimension is not ``B`` or a per-step field is not 1-D.
    """

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    behavior_log_prob: torch.Tensor | None = None
    mc_return: torch.Tensor | None = None

    def __post_init__(self) -> None:
        conv = {
            "obs": torch.float32,
            "action": None,
            "reward": torch.float32,
            "next_obs": torch.float32,
            "terminated": torch.bool,
            "truncated": torch.bool,
            "behavior_log_prob": torch.float32,
            "mc_return": torch.float32,
        }
        for name, dtype in conv.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _as_tensor(value, dtype))
        b = self.obs.shape[0]
        for name in conv:
            value = getattr(self, name)
            if value is not None:
                _check(name, value, (b,), "Transitions")
        for name in ("reward", "terminated", "truncated", "behavior_log_prob", "mc_return"):
            value = getattr(self, name)
            if value is not None and value.dim() != 1:
                raise ShapeError(f"Transitions.{name} must have shape [B]={b}, got {tuple(value.shape)}")
        if self.next_obs.shape != self.obs.shape:
            raise ShapeError(
                f"Transitions.next_obs has shape {tuple(self.next_obs.shape)}; "
                f"expected obs shape {tuple(self.obs.shape)}"
            )

    def __len__(self) -> int:
        return self.obs.shape[0]

    def index(self, idx: torch.Tensor | slice) -> Transitions:
        """Return the sub-batch ``idx`` (a LongTensor of rows or a slice)."""
        return Transitions(
            **{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[idx])
               for f in dataclasses.fields(self)}
        )


@dataclass(frozen=True)
class Segments:
    """``B`` rollout segments of ``T`` consecutive steps each (time on axis 1), e.g. from ``B`` vector envs.

    A segment may span several episodes: an episode ends after step t when
    ``terminated[b, t] or truncated[b, t]``, and step t+1 then starts a new one.

    Fields:
        obs: ``[B, T, *obs_shape]`` float32.
        action: ``[B, T, *act_shape]``.
        reward: ``[B, T]`` float32 (already scaled if the loop scales rewards).
        next_obs: ``[B, T, *obs_shape]`` float32, true next observation (pre-reset at episode ends).
        terminated: ``[B, T]`` bool.
        truncated: ``[B, T]`` bool.
        behavior_log_prob: ``[B, T]`` float32, log pi_b(a_t|s_t) of the policy that acted.
        mask: ``[B, T]`` bool, valid steps (all true for full rollouts).

    Raises:
        ShapeError: if any field does not start with ``[B, T]``.
    """

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    behavior_log_prob: torch.Tensor
    mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        conv = {
            "obs": torch.float32,
            "action": None,
            "reward": torch.float32,
            "next_obs": torch.float32,
            "terminated": torch.bool,
            "truncated": torch.bool,
            "behavior_log_prob": torch.float32,
            "mask": torch.bool,
        }
        for name, dtype in conv.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _as_tensor(value, dtype))
        if self.obs.dim() < 3:
            raise ShapeError(f"Segments.obs must have shape [B, T, *obs_shape], got {tuple(self.obs.shape)}")
        if self.mask is None:
            object.__setattr__(self, "mask", torch.ones(self.obs.shape[:2], dtype=torch.bool))
        lead = tuple(self.obs.shape[:2])
        for name in conv:
            _check(name, getattr(self, name), lead, "Segments")
        for name in ("reward", "terminated", "truncated", "behavior_log_prob", "mask"):
            if getattr(self, name).dim() != 2:
                raise ShapeError(
                    f"Segments.{name} must have shape [B, T]={lead}, got {tuple(getattr(self, name).shape)}")
        if self.next_obs.shape != self.obs.shape:
            raise ShapeError(
                f"Segments.next_obs has shape {tuple(self.next_obs.shape)}; expected obs shape {tuple(self.obs.shape)}"
            )

    @property
    def batch_size(self) -> int:
        return self.obs.shape[0]

    @property
    def horizon(self) -> int:
        return self.obs.shape[1]

    def flatten(self) -> Transitions:
        """View the valid steps as a flat :class:`Transitions` batch of ``mask.sum()`` rows (time-major per segment)."""
        m = self.mask.reshape(-1)
        b, t = self.obs.shape[:2]

        def f(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(b * t, *x.shape[2:])[m]

        return Transitions(
            obs=f(self.obs),
            action=f(self.action),
            reward=f(self.reward),
            next_obs=f(self.next_obs),
            terminated=f(self.terminated),
            truncated=f(self.truncated),
            behavior_log_prob=f(self.behavior_log_prob),
        )
