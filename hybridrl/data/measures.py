"""Dataset measures: a summary, trajectory quality (TQ), state-action coverage (SACo) and a return histogram.

TQ and SACo follow Schweighofer et al., "A Dataset Perspective on Offline Reinforcement Learning"
(arXiv:2111.04714) as computed in github.com/ml-jku/OfflineRL (evaluator.py, create_plots.py):

* ``TQ = (mean episode return of D - R_random) / (R_best - R_random)``;
* ``SACo = u(D) / u(D_ref)`` with ``u`` the number of unique (state, action) pairs after cutting every
  state and (Box) action dimension into ``bins`` equal-width bins. The original counts with a
  HyperLogLog sketch; here the count is exact. ``lSACo = log u(D) / log u(D_ref)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from hybridrl.data.dataset import Dataset
from hybridrl.errors import ConfigError, DatasetError


def dataset_summary(ds: Dataset) -> dict[str, Any]:
    """JSON-able summary: ``env_id``, ``episodes``, ``steps``, ``return_mean/std/min/max`` (undiscounted),
    ``length_mean``, ``terminated_episodes``, ``normalized_score_mean`` (``None`` without reference
    scores) and ``has_behavior_log_prob``."""
    ret = ds.episode_returns()
    norm = ds.normalized_score(ret)
    last = ds.episode_starts[1:] - 1
    return {
        "env_id": ds.env_id,
        "episodes": ds.n_episodes,
        "steps": ds.n_steps,
        "return_mean": float(ret.mean()),
        "return_std": float(ret.std()),
        "return_min": float(ret.min()),
        "return_max": float(ret.max()),
        "length_mean": float(ds.episode_lengths().mean()),
        "terminated_episodes": int(ds.terminations[last].sum()),
        "normalized_score_mean": None if norm is None else float(np.mean(norm)),
        "has_behavior_log_prob": ds.behavior_log_prob is not None,
    }


def trajectory_quality(ds: Dataset, random_return: float | None = None,
                       best_return: float | None = None) -> float | None:
    """TQ ``= (mean return - R_random) / (R_best - R_random)`` (a fraction; 1 = as good as the best).

    Args:
        ds: the dataset.
        random_return, best_return: ``R_random`` and ``R_best``; each defaults to the dataset's
            ``ref_min_score``/``ref_max_score`` or :data:`~hybridrl.envs.REFERENCE_SCORES`.
    Returns:
        TQ, or ``None`` when a reference return is unknown.
    Raises:
        DatasetError: ``best_return == random_return``.
    """
    ref = ds.reference_scores() or (None, None)
    lo = random_return if random_return is not None else ref[0]
    hi = best_return if best_return is not None else ref[1]
    if lo is None or hi is None:
        return None
    if hi == lo:
        raise DatasetError(f"trajectory quality needs best_return != random_return (both {hi})")
    return float((ds.episode_returns().mean() - lo) / (hi - lo))


def _limits(datasets: list[Dataset]) -> tuple[np.ndarray, np.ndarray]:
    cols_lo, cols_hi = [], []
    for d in datasets:
        x = _state_action_matrix(d)
        cols_lo.append(x.min(0))
        cols_hi.append(x.max(0))
    return np.min(cols_lo, 0), np.max(cols_hi, 0)


def _state_action_matrix(ds: Dataset) -> np.ndarray:
    a = ds.actions.reshape(len(ds), -1).astype(np.float64)
    return np.concatenate([ds.observations.astype(np.float64), a], axis=1)


def unique_state_actions(ds: Dataset, bins: int = 100,
                         limits: tuple[np.ndarray, np.ndarray] | None = None) -> int:
    """Exact number of unique discretised ``(s, a)`` pairs.

    Each observation dimension (and each Box action dimension) is cut into ``bins`` equal-width bins over
    ``limits = (low [D + A], high [D + A])`` (default: the dataset's own per-column min/max); values outside
    are put in the edge bins. Discrete actions are used as they are.
    """
    x = _state_action_matrix(ds)
    lo, hi = _limits([ds]) if limits is None else (np.asarray(limits[0], np.float64), np.asarray(limits[1], np.float64))
    if lo.shape != (x.shape[1],) or hi.shape != (x.shape[1],):
        raise DatasetError(f"limits must be two arrays of length {x.shape[1]} (observation + action dims), "
                           f"got {lo.shape} and {hi.shape}")
    width = np.where(hi > lo, hi - lo, 1.0)
    codes = np.clip(np.floor((x - lo) / width * bins), 0, bins - 1).astype(np.int64)
    if isinstance(ds.action_space, gym.spaces.Discrete):
        codes[:, -1] = ds.actions
    return int(np.unique(codes, axis=0).shape[0])


def state_action_coverage(ds: Dataset, reference: Dataset, bins: int = 100,
                          limits: tuple[np.ndarray, np.ndarray] | None = None, log: bool = False) -> float:
    """SACo ``= u(D) / u(D_ref)`` (``log=True``: lSACo ``= log u(D) / log u(D_ref)``).

    Both datasets are discretised with the same ``limits`` (default: the per-column min/max over both,
    so the value does not depend on which of the two spans more); pass fixed per-environment limits to
    compare several datasets. In the paper ``D_ref`` is the online agent's full replay data.

    Raises:
        DatasetError: the datasets have different observation/action sizes.
    """
    shapes = (ds.observations.shape[1:], ds.actions.shape[1:])
    ref_shapes = (reference.observations.shape[1:], reference.actions.shape[1:])
    if shapes != ref_shapes:
        raise DatasetError(f"state_action_coverage: the dataset has (observation, action) shapes {shapes}, the "
                           f"reference {ref_shapes}; they must match")
    lim = _limits([ds, reference]) if limits is None else limits
    u, u_ref = unique_state_actions(ds, bins, lim), unique_state_actions(reference, bins, lim)
    if log:
        return float(np.log(u) / np.log(u_ref)) if u_ref > 1 else float("nan")
    return u / u_ref


def plot_return_histogram(ds: Dataset, out_png: str | Path, bins: int = 30, title: str | None = None,
                          overwrite: bool = False) -> Path:
    """Save a histogram of undiscounted episode returns to ``out_png`` (matplotlib, Agg canvas, no pyplot state).

    The mean return is marked; with reference scores the top axis shows the normalised score. The path is
    explicit (nothing is written next to the dataset unless asked); parent directories are created.

    Returns: ``out_png``.
    Raises: ConfigError if ``out_png`` exists and ``overwrite`` is False, is a directory, or cannot be written
        (read-only directory, a parent that is a file), naming the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_png = Path(out_png)
    if out_png.is_dir():
        raise ConfigError(f"plot path {out_png} is a directory; expected a .png file path")
    if out_png.exists() and not overwrite:
        raise ConfigError(f"plot path {out_png} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    ret = ds.episode_returns()
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(ret, bins=bins, color="tab:blue", alpha=0.8)
    ax.axvline(ret.mean(), color="tab:red", linestyle="--", label=f"mean {ret.mean():.1f}")
    ax.set_xlabel("episode return")
    ax.set_ylabel("episodes")
    ax.set_title(title or f"{ds.env_id or 'dataset'}: {ds.n_episodes} episodes, {ds.n_steps} steps")
    ax.legend()
    ref = ds.reference_scores()
    if ref is not None:
        lo, hi = ref
        top = ax.secondary_xaxis("top", functions=(lambda r: 100 * (r - lo) / (hi - lo),
                                                   lambda s: lo + s * (hi - lo) / 100))
        top.set_xlabel("normalised score")
    fig.tight_layout()
    try:
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png)
    except OSError as e:
        raise ConfigError(f"cannot write the plot {out_png}: {e.strerror or e}") from None
    return out_png
