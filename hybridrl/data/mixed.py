"""Batches drawn from offline data and an online replay buffer together (offline-to-online fine-tuning).

Two rules:

* symmetric sampling (RLPD, Ball et al. 2023, arXiv:2302.02948, sec. 3.1; Cal-QL, Nakamoto et al. 2023,
  arXiv:2303.05479, sec. 6): ``round(f B)`` rows of every batch of ``B`` come from the offline data and the rest
  from the online buffer, ``f = offline_fraction`` (0.5 in both papers), whatever the sizes of the two stores;
* a replay buffer seeded with the dataset (IQL fine-tuning, Kostrikov et al. 2022, sec. 5.3; AWAC):
  ``offline_fraction=None`` draws every row uniformly from the union, so the offline share is
  ``N_off / (N_off + N_on)``.

Before the first online transition every row is offline.
"""

from __future__ import annotations

import numpy as np
import torch

from hybridrl.data.batches import Transitions
from hybridrl.data.replay import ReplayBuffer
from hybridrl.errors import ConfigError, ShapeError

__all__ = ["MixedSampler"]


class MixedSampler:
    """Sample ``Transitions`` batches from ``offline`` (fixed) and ``online`` (a growing :class:`ReplayBuffer`).

    Args:
        offline: the offline transitions (``N_off >= 1`` rows); ``mc_return`` is passed through when present.
        online: the online replay buffer.
        offline_fraction: ``f`` in [0, 1] (symmetric sampling: 0.5), or None for uniform over the union.
    Raises:
        ConfigError: ``offline_fraction`` outside [0, 1]. ShapeError: empty offline data.
    """

    def __init__(self, offline: Transitions, online: ReplayBuffer, offline_fraction: float | None = 0.5):
        if offline_fraction is not None and not 0.0 <= float(offline_fraction) <= 1.0:
            raise ConfigError(f"offline_fraction={offline_fraction!r}; expected a number in [0, 1] or None")
        if len(offline) < 1:
            raise ShapeError("MixedSampler: the offline data has no transitions")
        self.offline, self.online = offline, online
        self.offline_fraction = None if offline_fraction is None else float(offline_fraction)

    def counts(self, batch_size: int, rng: np.random.Generator) -> tuple[int, int]:
        """``(n_offline, n_online)`` rows of the next batch (drawn from ``rng`` only when ``offline_fraction`` is
        None: then ``n_online`` is binomial with the online share of the union)."""
        n_on_avail = len(self.online)
        if n_on_avail == 0:
            return batch_size, 0
        if self.offline_fraction is None:
            n_on = int((rng.integers(0, len(self.offline) + n_on_avail, size=batch_size) >= len(self.offline)).sum())
        else:
            n_on = batch_size - int(round(self.offline_fraction * batch_size))
        return batch_size - n_on, n_on

    def sample(self, batch_size: int, rng: np.random.Generator) -> Transitions:
        """``batch_size`` rows, offline rows first, each part uniform with replacement using ``rng``.

        ``mc_return`` is included when the offline data carries it and the online buffer tracks it
        (``ReplayBuffer(mc_gamma=...)``). Raises ShapeError for ``batch_size < 1``.
        """
        if batch_size < 1:
            raise ShapeError(f"MixedSampler.sample: batch_size must be >= 1, got {batch_size}")
        n_off, n_on = self.counts(batch_size, rng)
        off = self.offline.index(torch.from_numpy(rng.integers(0, len(self.offline), size=n_off)))
        if n_on == 0:
            return off
        on = self.online.rows(rng.integers(0, len(self.online), size=n_on))
        with_mc = off.mc_return is not None and on.mc_return is not None
        fields = ("obs", "action", "reward", "next_obs", "terminated", "truncated")
        fields += ("mc_return",) if with_mc else ()
        return Transitions(**{k: torch.cat([getattr(off, k), getattr(on, k).to(getattr(off, k).dtype)])
                              for k in fields})
