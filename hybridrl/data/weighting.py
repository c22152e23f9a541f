"""Trajectory-weighted sampling of offline transitions (Hong et al., ICLR 2023, "Harnessing Mixed Offline RL Datasets
via Trajectory Weighting"), the variant of the authors' IQL code (``implicit_q_learning/dataset_utils.py``).

Every transition of episode ``e`` gets the same weight; minibatches are drawn i.i.d. with replacement from

    RW:  G_hat_e = (G_e - min G) / (max G - min G),                      p(i) = exp(G_hat_e(i) / alpha) / Z
    AW:  A_e = G_e - V_hat(s_0^e),  V_hat = least-squares linear fit of G on [s_0, 1]
         A_hat_e = (A_e - min A) / (max A - min A),                      p(i) = exp(A_hat_e(i) / alpha) / Z

and the paper's Top-K% baseline (``topK``, K an integer percentage in 1..100, e.g. ``top10``): ``p`` uniform over the
transitions of the ``ceil(K E / 100)`` episodes with the highest returns, 0 elsewhere; with ``G_e`` the undiscounted
episode return, ``Z`` the sum over all ``N`` *transitions* (so an episode's total mass is
proportional to ``T_e exp(.)``), and ``alpha = 0.1``. ``uniform`` is ``p(i) = 1/N``. The min-max normalisation comes
*before* the softmax (the d3rlpy variants of the same paper apply it after, or drop it: ALGORITHMS.md §10b), which
makes ``p`` invariant to any affine rescaling ``r -> c r + b`` (c > 0) of the rewards.

A degenerate score (all episodes have the same return, or the regression explains every return exactly, e.g. fewer
episodes than state dimensions + 1) has ``max = min``: the weights are then uniform, and
:attr:`TransitionSampler.note` says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hybridrl.errors import ConfigError

if TYPE_CHECKING:
    from hybridrl.data.dataset import Dataset

SAMPLERS = ("uniform", "rw", "aw", "topK")
"""Names accepted by the ``sampler`` field of offline configs (``topK``: K an integer percentage, e.g. ``top10``)."""


def top_percent(kind: str) -> int | None:
    """K of a ``topK`` sampler name (1..100), or None when ``kind`` is not of that form."""
    if kind.startswith("top") and kind[3:].isdigit() and 1 <= int(kind[3:]) <= 100:
        return int(kind[3:])
    return None


def _known(kind: str) -> bool:
    return kind in ("uniform", "rw", "aw") or top_percent(kind) is not None

__all__ = ["SAMPLERS", "TransitionSampler", "check_sampler", "episode_scores", "top_percent", "trajectory_weights"]


def check_sampler(config) -> None:
    """Raise ConfigError unless ``config.sampler`` is in :data:`SAMPLERS` and ``config.sampler_alpha`` > 0."""
    name = type(config).__name__
    if not _known(config.sampler):
        raise ConfigError(f"{name}.sampler={config.sampler!r}; expected one of {SAMPLERS} "
                          "(rw: return-weighted, aw: advantage-weighted, topK: the top K% episodes by return, "
                          "e.g. top10; Hong et al. 2023)")
    if not (np.isfinite(config.sampler_alpha) and config.sampler_alpha > 0):
        raise ConfigError(f"{name}.sampler_alpha={config.sampler_alpha!r}; expected a finite number > 0 (paper: 0.1)")


def episode_scores(returns: np.ndarray, start_obs: np.ndarray, kind: str) -> np.ndarray:
    """Un-normalised per-episode scores ``[E]`` float64: the returns (``rw``) or their residuals after a
    least-squares linear fit on ``[s_0, 1]`` (``aw``, the return advantage over a start-state baseline).

    Args:
        returns: ``[E]`` undiscounted episode returns. start_obs: ``[E, D]`` first observation of each episode.
        kind: "rw" or "aw".
    Source: Hong et al. (2023), sec. 4 (RW, AW); ``implicit_q_learning/dataset_utils.py``.
    """
    g = np.asarray(returns, dtype=np.float64)
    if kind == "rw":
        return g
    if kind != "aw":
        raise ConfigError(f"episode_scores: kind={kind!r}; expected 'rw' or 'aw'")
    x = np.concatenate([np.asarray(start_obs, dtype=np.float64).reshape(len(g), -1), np.ones((len(g), 1))], 1)
    coef, *_ = np.linalg.lstsq(x, g, rcond=None)
    return g - x @ coef


def trajectory_weights(returns: np.ndarray, lengths: np.ndarray, start_obs: np.ndarray, kind: str,
                       alpha: float = 0.1) -> tuple[np.ndarray, bool]:
    """Per-transition sampling probabilities ``p [N]`` (float64, sums to 1) and whether the score was degenerate.

    Args:
        returns: ``[E]`` episode returns. lengths: ``[E]`` steps per episode (N = sum). start_obs: ``[E, D]``.
        kind: "uniform", "rw", "aw" or "topK". alpha: softmax temperature of rw/aw (> 0; paper 0.1).
    Returns:
        ``(p, degenerate)``; ``degenerate`` is True when all normalised scores were equal (then ``p`` is uniform).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = int(lengths.sum())
    if kind == "uniform":
        return np.full(n, 1.0 / n), False
    k = top_percent(kind)
    if k is not None:  # Top-K%: uniform over the transitions of the best ceil(K E / 100) episodes
        g = np.asarray(returns, dtype=np.float64)
        keep = np.zeros(len(g), dtype=bool)
        keep[np.argsort(-g, kind="stable")[: int(np.ceil(k * len(g) / 100))]] = True
        p = np.repeat(keep.astype(np.float64), lengths)
        return p / p.sum(), False
    score = episode_scores(returns, start_obs, kind)
    spread = float(score.max() - score.min())
    # a spread at rounding level of the scores' magnitude (e.g. an exact regression fit) counts as none
    degenerate = not spread > 1e-9 * max(1.0, float(np.abs(score).max()))
    norm = np.zeros_like(score) if degenerate else (score - score.min()) / spread
    logits = norm / alpha
    per_step = np.exp(logits - logits.max())  # [E] weight of each transition of episode e
    p = np.repeat(per_step, lengths)
    return p / p.sum(), degenerate


class TransitionSampler:
    """Draws minibatch indices from a dataset, uniformly or trajectory-weighted (see the module docstring).

    ``uniform`` draws ``rng.integers(0, N, size)``, the offline loop's historical stream (same seed, same batches as
    before this sampler existed). Weighted kinds draw by inverse CDF: ``searchsorted(cdf, U * cdf[-1])``.

    Attributes:
        kind, alpha: as given. p: ``[N]`` probabilities (None for uniform). note: a sentence when the weights are
            degenerate (uniform in effect), else None.
    Raises:
        ConfigError: unknown ``kind`` or ``alpha`` <= 0.
    """

    def __init__(self, dataset: Dataset, kind: str = "uniform", alpha: float = 0.1):
        if not _known(kind):
            raise ConfigError(f"sampler={kind!r}; expected one of {SAMPLERS}")
        if not (np.isfinite(alpha) and alpha > 0):
            raise ConfigError(f"sampler_alpha={alpha!r}; expected a finite number > 0")
        self.kind, self.alpha, self.n = kind, float(alpha), len(dataset)
        self.p: np.ndarray | None = None
        self.note: str | None = None
        if kind != "uniform":
            starts = dataset.episode_starts[:-1]
            self.p, degenerate = trajectory_weights(dataset.episode_returns(), dataset.episode_lengths(),
                                                    dataset.observations[starts], kind, alpha)
            if degenerate:
                self.note = (f"sampler={kind}: every episode has the same normalised "
                             f"{'return' if kind == 'rw' else 'advantage'}, so sampling is uniform")
            self._cdf = np.cumsum(self.p)

    def indices(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """``[batch_size]`` int64 row indices drawn with replacement."""
        if self.p is None:
            return rng.integers(0, self.n, size=batch_size)
        u = rng.random(batch_size) * self._cdf[-1]
        return np.minimum(np.searchsorted(self._cdf, u, side="right"), self.n - 1).astype(np.int64)
