"""In-memory offline dataset: per-step NumPy arrays in episode order, validated once (see :class:`Dataset`).

On disk a dataset is a Minari 0.5 dataset directory plus a ``hybridrl.json`` sidecar; reading and writing it
(and dataset ids) live in :mod:`hybridrl.data.minari_io`, which :meth:`Dataset.load` and :meth:`Dataset.save`
call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from hybridrl.data.batches import Transitions
from hybridrl.data.minari_io import (  # noqa: F401  (SIDECAR, minari_root, dataset_id_for_path: re-exported)
    LOG_PROB_KEY,
    SIDECAR,
    dataset_id_for_path,
    load_dataset,
    minari_root,
    save_dataset,
)
from hybridrl.envs.make import REFERENCE_SCORES
from hybridrl.errors import DatasetError


def check_spaces(observation_space: gym.Space, action_space: gym.Space, source: str) -> None:
    """Raise DatasetError (prefixed with ``source``) unless observations are a 1-D Box and actions Box/Discrete."""
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
        raise DatasetError(f"{source}: observation space {observation_space} is not supported; expected a 1-D Box")
    if not isinstance(action_space, (gym.spaces.Discrete, gym.spaces.Box)):
        raise DatasetError(f"{source}: action space {action_space} is not supported; expected Box or Discrete")


def _locate(ends: np.ndarray, i: int) -> tuple[int, int]:
    """Episode and step of flat index ``i`` given exclusive episode ends."""
    e = int(np.searchsorted(ends, i, side="right"))
    start = 0 if e == 0 else int(ends[e - 1])
    return e, i - start


class Dataset:
    """Offline RL data in memory: NumPy arrays of ``N`` steps in episode order.

    Attributes (``N`` steps, ``E`` episodes, ``D`` observation size):
        observations: ``[N, D]`` float32, s_t.
        actions: ``[N, *act_shape]`` float32 (Box) or ``[N]`` int64 (Discrete), a_t as executed (clipped).
        rewards: ``[N]`` float32, r_t.
        next_observations: ``[N, D]`` float32, the true s_{t+1} (the final observation at episode ends).
        terminations: ``[N]`` bool, s_{t+1} is terminal.
        truncations: ``[N]`` bool, the episode was cut after step t. The last step of every episode is
            terminated or truncated; an episode stored with neither flag is marked truncated.
        behavior_log_prob: ``[N]`` float64 natural-log pi_b(a_t|s_t), or ``None`` when unknown.
        episode_starts: ``[E+1]`` int64; episode e is ``starts[e]:starts[e+1]``.
        observation_space, action_space: Gymnasium spaces (1-D Box observations; Box or Discrete actions).
        env_id: Gymnasium id of the env that produced the data, or ``None``.
        metadata: JSON-able dict (``behavior_policy``, ``ref_min_score``, ``ref_max_score``, ``mean_return``, ...).
        path: the directory the dataset was loaded from or saved to, else ``None``.

    Raises:
        DatasetError: inconsistent lengths, empty episodes, non-finite values, done flags before an
            episode's end, or unsupported spaces (the message names field, episode and step).
    """

    def __init__(self, observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                 next_observations: np.ndarray, terminations: np.ndarray, truncations: np.ndarray,
                 episode_starts: np.ndarray, observation_space: gym.Space, action_space: gym.Space,
                 behavior_log_prob: np.ndarray | None = None, env_id: str | None = None,
                 metadata: Mapping[str, Any] | None = None, path: str | Path | None = None, *, source: str = "Dataset"):
        check_spaces(observation_space, action_space, source)
        act_dtype = np.int64 if isinstance(action_space, gym.spaces.Discrete) else np.float32
        self.observations = np.ascontiguousarray(observations, dtype=np.float32)
        self.actions = np.ascontiguousarray(actions, dtype=act_dtype)
        self.rewards = np.ascontiguousarray(rewards, dtype=np.float32).reshape(-1)
        self.next_observations = np.ascontiguousarray(next_observations, dtype=np.float32)
        self.terminations = np.asarray(terminations, dtype=bool).reshape(-1).copy()
        self.truncations = np.asarray(truncations, dtype=bool).reshape(-1).copy()
        self.episode_starts = np.asarray(episode_starts, dtype=np.int64).reshape(-1)
        self.behavior_log_prob = (None if behavior_log_prob is None
                                  else np.ascontiguousarray(behavior_log_prob, dtype=np.float64).reshape(-1))
        self.observation_space, self.action_space, self.env_id = observation_space, action_space, env_id
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.path = None if path is None else Path(path)
        self._mc_cache: dict[float, np.ndarray] = {}
        self._validate(source)
        self.metadata.setdefault("mean_return", float(self.episode_returns().mean()))

    def _validate(self, where: str) -> None:
        n = self.rewards.shape[0]
        obs_shape = self.observation_space.shape
        act_shape = () if isinstance(self.action_space, gym.spaces.Discrete) else self.action_space.shape
        if self.actions.shape != (n, *act_shape) and self.actions.size == n * int(np.prod(act_shape)):
            self.actions = self.actions.reshape(n, *act_shape)  # e.g. [N] stored for a Box of shape (1,)
        expect = {"observations": (self.observations, (n, *obs_shape)),
                  "next_observations": (self.next_observations, (n, *obs_shape)),
                  "actions": (self.actions, (n, *act_shape)), "terminations": (self.terminations, (n,)),
                  "truncations": (self.truncations, (n,)), LOG_PROB_KEY: (self.behavior_log_prob, (n,))}
        for name, (arr, shape) in expect.items():
            if arr is not None and arr.shape != shape:
                raise DatasetError(f"{where}: field '{name}' has shape {arr.shape}; expected {shape}")
        s = self.episode_starts
        if n == 0 or s.size < 2 or s[0] != 0 or s[-1] != n or np.any(np.diff(s) <= 0):
            raise DatasetError(f"{where}: episode_starts {s[:5]}... must rise strictly from 0 to the number of "
                               f"steps ({n}); every episode needs at least one step")
        ends = s[1:]
        fields = [("rewards", self.rewards), ("observations", self.observations),
                  ("next_observations", self.next_observations), ("actions", self.actions),
                  (LOG_PROB_KEY, self.behavior_log_prob)]
        for name, arr in fields:
            if arr is None or arr.dtype.kind != "f":
                continue
            ok = np.isfinite(arr.reshape(n, -1)).all(axis=1)
            if not ok.all():
                i = int(np.flatnonzero(~ok)[0])
                e, t = _locate(ends, i)
                raise DatasetError(f"{where}: field '{name}' holds a non-finite value ({arr[i]}) in episode {e} "
                                   f"at step {t} ({int((~ok).sum())} bad steps in total)")
        if isinstance(self.action_space, gym.spaces.Discrete):
            lo, hi = int(self.action_space.start), int(self.action_space.start + self.action_space.n)
            bad = (self.actions < lo) | (self.actions >= hi)
            if bad.any():
                e, t = _locate(ends, int(np.flatnonzero(bad)[0]))
                raise DatasetError(f"{where}: field 'actions' holds {self.actions[bad][0]} outside "
                                   f"{self.action_space} in episode {e} at step {t}")
        done = self.terminations | self.truncations
        last = np.zeros(n, dtype=bool)
        last[ends - 1] = True
        early = done & ~last
        if early.any():
            e, t = _locate(ends, int(np.flatnonzero(early)[0]))
            raise DatasetError(f"{where}: episode {e} is terminated/truncated at step {t}, before its last step "
                               f"{int(s[e + 1] - s[e]) - 1}; episodes must end at their done flag")
        self.truncations[last & ~done] = True

    @classmethod
    def from_episodes(cls, episodes: Iterable[Mapping[str, Any]], observation_space: gym.Space,
                      action_space: gym.Space, env_id: str | None = None,
                      metadata: Mapping[str, Any] | None = None, *, source: str = "Dataset.from_episodes") -> Dataset:
        """Build a dataset from episode dicts.

        Each episode holds ``observations [T+1, D]`` (the last one is the final observation),
        ``actions [T, ...]``, ``rewards [T]``, ``terminations [T]``, ``truncations [T]`` and optionally
        ``behavior_log_prob [T]`` (all episodes or none).

        Raises:
            DatasetError: missing keys, inconsistent lengths, or what :class:`Dataset` rejects.
        """
        obs, acts, rews, terms, truncs, logps, lengths = [], [], [], [], [], [], []
        for e, ep in enumerate(episodes):
            missing = {"observations", "actions", "rewards", "terminations", "truncations"} - set(ep)
            if missing:
                raise DatasetError(f"{source}: episode {e} lacks {sorted(missing)}")
            o = np.asarray(ep["observations"])
            t = len(ep["rewards"])
            for name, arr, want in (("observations", o, t + 1), ("actions", ep["actions"], t),
                                    ("terminations", ep["terminations"], t), ("truncations", ep["truncations"], t)):
                if len(arr) != want:
                    raise DatasetError(f"{source}: episode {e} has {len(arr)} '{name}' for {t} rewards; "
                                       f"expected {want}")
            lp = ep.get(LOG_PROB_KEY)
            if e > 0 and (lp is None) != (not logps):
                raise DatasetError(f"{source}: episode {e} {'lacks' if lp is None else 'has'} '{LOG_PROB_KEY}' "
                                   f"unlike episode 0; it must be given for all episodes or none")
            if lp is not None:
                if len(lp) != t:
                    raise DatasetError(f"{source}: episode {e} has {len(lp)} '{LOG_PROB_KEY}' for {t} steps")
                logps.append(np.asarray(lp, dtype=np.float64))
            for lst, k in ((acts, "actions"), (rews, "rewards"), (terms, "terminations"), (truncs, "truncations")):
                lst.append(np.asarray(ep[k]))
            obs.append(o)
            lengths.append(t)
        if not lengths:
            raise DatasetError(f"{source}: no episodes")
        lengths_arr = np.asarray(lengths, dtype=np.int64)
        if np.any(lengths_arr == 0):
            raise DatasetError(f"{source}: episode {int(np.flatnonzero(lengths_arr == 0)[0])} has no steps")
        all_obs = np.concatenate(obs).astype(np.float32, copy=False)
        n = int(lengths_arr.sum())
        # step j of the flat data (episode e) is observation row j + e of the concatenated [T_e + 1] blocks
        row = np.arange(n) + np.repeat(np.arange(len(lengths)), lengths_arr)
        ok = np.isfinite(all_obs.reshape(len(all_obs), -1)).all(axis=1)
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            e, t = _locate(np.cumsum(lengths_arr + 1), i)
            raise DatasetError(f"{source}: field 'observations' holds a non-finite value in episode {e} at index {t} "
                               f"(of {lengths[e] + 1} observations)")
        return cls(observations=all_obs[row], actions=np.concatenate(acts), rewards=np.concatenate(rews),
                   next_observations=all_obs[row + 1], terminations=np.concatenate(terms),
                   truncations=np.concatenate(truncs), episode_starts=np.concatenate([[0], np.cumsum(lengths_arr)]),
                   observation_space=observation_space, action_space=action_space,
                   behavior_log_prob=np.concatenate(logps) if logps else None, env_id=env_id,
                   metadata=metadata, source=source)

    @classmethod
    def load(cls, path_or_id: str | Path) -> Dataset:
        """Load a Minari dataset directory (or its ``data/``) or an id under :func:`minari_root`.

        See :func:`hybridrl.data.minari_io.load_dataset` (what is read, and the DatasetError naming the file:
        ``metadata.json``, ``main_data.hdf5`` or ``hybridrl.json``, field, episode and step).
        """
        return load_dataset(cls, path_or_id)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the dataset as a Minari dataset directory at ``path`` plus the ``hybridrl.json`` sidecar (atomic).

        See :func:`hybridrl.data.minari_io.save_dataset`. Returns ``path``; raises DatasetError (invalid id,
        ``path`` exists without ``overwrite`` or is not a dataset, Minari fails to write).
        """
        return save_dataset(self, path, overwrite)

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    def __repr__(self) -> str:
        return (f"Dataset(env_id={self.env_id!r}, episodes={self.n_episodes}, steps={self.n_steps}, "
                f"behavior_log_prob={'yes' if self.behavior_log_prob is not None else 'no'}, path={self.path})")

    @property
    def n_steps(self) -> int:
        """Number of transitions ``N``."""
        return len(self)

    @property
    def n_episodes(self) -> int:
        """Number of episodes ``E``."""
        return int(self.episode_starts.shape[0] - 1)

    def episode_lengths(self) -> np.ndarray:
        """``[E]`` int64 steps per episode."""
        return np.diff(self.episode_starts)

    def episode_returns(self, gamma: float = 1.0) -> np.ndarray:
        """``[E]`` float64 discounted returns ``sum_t gamma^t r_t`` of each episode (from its first step)."""
        if gamma == 1.0:
            return np.add.reduceat(self.rewards.astype(np.float64), self.episode_starts[:-1])
        return self.mc_returns(gamma)[self.episode_starts[:-1]]

    def mc_returns(self, gamma: float) -> np.ndarray:
        """``[N]`` float64 return-to-go ``G_t = r_t + gamma G_{t+1}`` within each episode, ``G = r`` at its
        last step (truncated episodes are not bootstrapped). Cached per ``gamma``."""
        gamma = float(gamma)
        if gamma in self._mc_cache:
            return self._mc_cache[gamma]
        r = self.rewards.astype(np.float64)
        g = np.zeros_like(r)
        ends = self.episode_starts[1:]
        lengths = self.episode_lengths()
        order = np.argsort(-lengths, kind="stable")
        ends_sorted, len_sorted = ends[order], lengths[order]
        n_active = len(order)
        for k in range(int(len_sorted[0]) if len(order) else 0):  # k steps before each episode's end
            while n_active and len_sorted[n_active - 1] <= k:
                n_active -= 1
            idx = ends_sorted[:n_active] - 1 - k
            g[idx] = r[idx] if k == 0 else r[idx] + gamma * g[idx + 1]
        self._mc_cache[gamma] = g
        return g

    def transitions(self, idx: np.ndarray | slice | None = None, mc_gamma: float | None = None) -> Transitions:
        """Rows ``idx`` (all when ``None``) as a torch :class:`Transitions` batch.

        ``behavior_log_prob`` is included when known; ``mc_return`` when ``mc_gamma`` is given. Slices
        (and ``None``) give tensors that share memory with the dataset: do not modify them in place.
        """
        if idx is None:
            idx = slice(None)
        return Transitions(
            obs=torch.from_numpy(self.observations[idx]), action=torch.from_numpy(self.actions[idx]),
            reward=torch.from_numpy(self.rewards[idx]), next_obs=torch.from_numpy(self.next_observations[idx]),
            terminated=torch.from_numpy(self.terminations[idx]), truncated=torch.from_numpy(self.truncations[idx]),
            behavior_log_prob=None if self.behavior_log_prob is None else torch.from_numpy(self.behavior_log_prob[idx]),
            mc_return=None if mc_gamma is None else torch.from_numpy(self.mc_returns(mc_gamma)[idx]),
        )

    def sample(self, batch_size: int, rng: np.random.Generator, mc_gamma: float | None = None) -> Transitions:
        """``batch_size`` transitions drawn uniformly with replacement using ``rng``."""
        return self.transitions(rng.integers(0, len(self), size=int(batch_size)), mc_gamma=mc_gamma)

    def obs_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and (population) variance of ``observations``: ``([D], [D])`` float64."""
        x = self.observations.astype(np.float64)
        return x.mean(0), x.var(0)

    @classmethod
    def concatenate(cls, datasets: Sequence[Dataset]) -> Dataset:
        """One dataset holding the episodes of ``datasets`` in order (e.g. random + medium data).

        Behaviour log-probabilities are kept only if every part has them; ``metadata["behavior_policy"]``
        becomes the list of the parts' behaviour descriptions.

        Raises:
            DatasetError: no datasets, or parts with different env ids or spaces.
        """
        if not datasets:
            raise DatasetError("concatenate needs at least one dataset")
        first = datasets[0]
        for i, d in enumerate(datasets[1:], 1):
            if (d.env_id, d.observation_space, d.action_space) != (first.env_id, first.observation_space,
                                                                   first.action_space):
                raise DatasetError(f"concatenate: part {i} ({d.env_id}, {d.observation_space}, {d.action_space}) "
                                   f"does not match part 0 ({first.env_id}, {first.observation_space}, "
                                   f"{first.action_space})")
        offsets = np.cumsum([0] + [len(d) for d in datasets[:-1]])
        starts = np.concatenate([[0]] + [d.episode_starts[1:] + o for d, o in zip(datasets, offsets)])
        cat = lambda name: np.concatenate([getattr(d, name) for d in datasets])  # noqa: E731
        logp = None if any(d.behavior_log_prob is None for d in datasets) else cat("behavior_log_prob")
        meta = {k: v for k, v in first.metadata.items() if k not in ("mean_return", "behavior_policy")}
        meta["behavior_policy"] = [d.metadata.get("behavior_policy") for d in datasets]
        return cls(cat("observations"), cat("actions"), cat("rewards"), cat("next_observations"), cat("terminations"),
                   cat("truncations"), starts, first.observation_space, first.action_space, logp, first.env_id, meta,
                   source="Dataset.concatenate")

    def select_episodes(self, episodes: Iterable[int]) -> Dataset:
        """A new dataset with the given episodes (in the given order); metadata is copied, ``path`` is None."""
        ids = np.asarray(list(episodes), dtype=np.int64)
        if ids.size == 0 or ids.min() < 0 or ids.max() >= self.n_episodes:
            raise DatasetError(f"episode indices must be in [0, {self.n_episodes}), got {ids[:5]}")
        s = self.episode_starts
        rows = np.concatenate([np.arange(s[e], s[e + 1]) for e in ids])
        lengths = s[ids + 1] - s[ids]
        meta = {k: v for k, v in self.metadata.items() if k != "mean_return"}
        return Dataset(self.observations[rows], self.actions[rows], self.rewards[rows], self.next_observations[rows],
                       self.terminations[rows], self.truncations[rows], np.concatenate([[0], np.cumsum(lengths)]),
                       self.observation_space, self.action_space,
                       None if self.behavior_log_prob is None else self.behavior_log_prob[rows],
                       self.env_id, meta)

    def reference_scores(self) -> tuple[float, float] | None:
        """``(ref_min_score, ref_max_score)`` from the metadata, else :data:`REFERENCE_SCORES`, else ``None``."""
        lo, hi = self.metadata.get("ref_min_score"), self.metadata.get("ref_max_score")
        if lo is not None and hi is not None and hi != lo:
            return float(lo), float(hi)
        return REFERENCE_SCORES.get(self.env_id) if self.env_id else None

    def normalized_score(self, returns: Any) -> np.ndarray | None:
        """``100 (R - ref_min) / (ref_max - ref_min)`` for returns of any shape (float64), using the dataset's
        ``ref_min_score``/``ref_max_score`` or else :data:`REFERENCE_SCORES`; ``None`` if neither is known."""
        ref = self.reference_scores()
        if ref is None:
            return None
        return 100.0 * (np.asarray(returns, dtype=np.float64) - ref[0]) / (ref[1] - ref[0])


