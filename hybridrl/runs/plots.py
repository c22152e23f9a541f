"""PNG figures for runs and reports: learning curves, OPE estimates with intervals, histograms.

Matplotlib is imported lazily and used through ``matplotlib.figure.Figure`` (Agg rendering, no
pyplot global state, no display needed). Each figure is rendered into memory and written atomically.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hybridrl.errors import ShapeError
from hybridrl.runs.io import atomic_write_bytes


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.4, 4.0)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig, out_png: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(out_png, buf.getvalue())


def plot_curves(metrics: Mapping[str, np.ndarray], keys: Sequence[str], out_png: str | os.PathLike,
                x: str = "step", title: str | None = None) -> Path:
    """One subplot per metric in ``keys`` against ``metrics[x]`` (e.g. the output of ``read_metrics``).

    Keys absent from ``metrics`` or without any finite value are skipped; NaN points (rows where a
    metric was not logged) are left out so lines stay connected. With nothing to plot, the figure
    says so. Returns ``out_png``.

    Raises:
        ShapeError: ``metrics[x]`` is missing or a column's length differs from it.
    """
    if x not in metrics:
        raise ShapeError(f"plot_curves: x column '{x}' not in metrics (have {', '.join(metrics)})")
    xs = np.asarray(metrics[x], dtype=np.float64)
    present = []
    for k in keys:
        if k in metrics:
            ys = np.asarray(metrics[k], dtype=np.float64)
            if ys.shape != xs.shape:
                raise ShapeError(f"plot_curves: column '{k}' has shape {ys.shape}, '{x}' has {xs.shape}")
            if np.isfinite(ys).any():
                present.append((k, ys))
    ncols = min(3, max(len(present), 1))
    nrows = max(math.ceil(len(present) / ncols), 1)
    fig, axes = _figure(nrows, ncols, (5.0, 3.2))
    for ax in axes.flat[len(present):]:
        ax.axis("off")
    if not present:
        axes[0, 0].text(0.5, 0.5, "no data for " + ", ".join(keys), ha="center", va="center")
    for ax, (k, ys) in zip(axes.flat, present):
        ok = np.isfinite(xs) & np.isfinite(ys)
        ax.plot(xs[ok], ys[ok], marker="." if ok.sum() < 30 else None)
        ax.set_title(k)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, out_png)


def plot_estimates(names: Sequence[str], estimates: Sequence[float], ci_low: Sequence[float],
                   ci_high: Sequence[float], true_values: Sequence[float] | None = None, *,
                   out_png: str | os.PathLike, title: str | None = None, ylabel: str = "policy value") -> Path:
    """Off-policy estimates with confidence intervals per candidate, next to true values when known.

    Args:
        names: candidate labels [K]. estimates: point estimates [K]. ci_low, ci_high: interval bounds [K]
            (NaN: no interval drawn). true_values: on-policy (ground-truth) values [K] or None; NaN
            entries are skipped.
        out_png: output path (keyword). title, ylabel: labels.

    Returns ``out_png``. Raises ShapeError when the sequences differ in length.
    """
    est, lo, hi = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (estimates, ci_low, ci_high))
    arrays = {"estimates": est, "ci_low": lo, "ci_high": hi}
    if true_values is not None:
        arrays["true_values"] = np.asarray(true_values, dtype=np.float64).reshape(-1)
    for n, a in arrays.items():
        if len(a) != len(names):
            raise ShapeError(f"plot_estimates: {n} has {len(a)} entries, names has {len(names)}")
    k = np.arange(len(names))
    fig, axes = _figure(size=(max(6.4, 0.9 * len(names) + 2), 4.0))
    ax = axes[0, 0]
    yerr = np.nan_to_num(np.clip(np.stack([est - lo, hi - est]), 0, None), nan=0.0)
    ax.errorbar(k - 0.08, est, yerr=yerr, fmt="o", capsize=4, label="estimate (CI)")
    if true_values is not None:
        tv = arrays["true_values"]
        ok = np.isfinite(tv)
        ax.scatter(k[ok] + 0.08, tv[ok], marker="x", s=60, color="black", zorder=3, label="true value")
    tilt = len(names) > 4
    ax.set_xticks(k, [str(n) for n in names], rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, out_png)


def plot_histogram(values: Sequence[float] | np.ndarray, out_png: str | os.PathLike, title: str | None = None,
                   xlabel: str | None = None, bins: int | str = "auto") -> Path:
    """Histogram of the finite entries of ``values`` (any shape, flattened), e.g. episode returns or
    importance weights; the count of dropped non-finite entries is noted in the title. Returns ``out_png``."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = v[np.isfinite(v)]
    fig, axes = _figure()
    ax = axes[0, 0]
    if finite.size:
        ax.hist(finite, bins=bins)
    else:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center")
    dropped = v.size - finite.size
    ax.set_title((title or "") + (f" ({dropped} non-finite dropped)" if dropped else ""))
    ax.set_xlabel(xlabel or "")
    ax.set_ylabel("count")
    return _save(fig, out_png)
