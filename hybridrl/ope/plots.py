"""Off-policy selection plots as SCOPE-RL draws them (Kiyohara et al. 2023, arXiv:2311.18206, Sec. 4 and its
``visualize_*`` methods), written atomically as PNG; an existing file is never replaced unless ``overwrite``.

* :func:`plot_estimates_vs_truth`: one panel per estimator, estimated value (with its interval) against the true
  value of each candidate, with the diagonal ``y = x``; without true values, estimates per candidate. Degenerate
  estimates are left out and listed under the panel.
* :func:`plot_top_k_curve`: for k = 1..K, the best, mean and worst *true* value among the top-k candidates ranked by
  each estimator (``hybridrl.ope.select.top_k_stats``), with J(pi_b) when given (SCOPE-RL's "policy value of the
  top-k deployment"; the SharpeRatio@k numerator and denominator are read off this plot).
* :func:`write_ope_plots`: both plots (and the CDF plot of distributional estimators) into a directory, for
  ``hybridrl ope --plot DIR``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hybridrl.errors import ConfigError
from hybridrl.ope.select import top_k_stats

__all__ = ["plot_estimates_vs_truth", "plot_top_k_curve", "write_ope_plots"]


def _check_out(path: str | os.PathLike, overwrite: bool) -> Path:
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"plot path {out} is a directory; expected a .png file path")
    if out.exists() and not overwrite:
        raise ConfigError(f"plot path {out} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    return out


def plot_estimates_vs_truth(results: Mapping[str, Mapping[str, object]], estimators: Sequence[str],
                            out_png: str | os.PathLike, true_values: Mapping[str, float] | None = None,
                            title: str | None = None, overwrite: bool = False) -> Path:
    """``results[policy][estimator]`` are :class:`~hybridrl.ope.estimators.OPEResult`; one panel per estimator.

    Raises ConfigError (existing file without ``overwrite``, a directory, an estimator missing for a policy).
    """
    from hybridrl.runs.plots import _figure, _save

    out = _check_out(out_png, overwrite)
    names = list(results)
    for e in estimators:
        missing = [n for n in names if e not in results[n]]
        if missing:
            raise ConfigError(f"estimator {e!r} has no result for {missing}")
    ncols = min(3, len(estimators))
    nrows = -(-len(estimators) // ncols)
    fig, axes = _figure(nrows, ncols, (4.2, 3.8))
    for ax in axes.flat[len(estimators):]:
        ax.axis("off")
    for ax, e in zip(axes.flat, estimators):
        rs = [results[n][e] for n in names]
        ok = [not getattr(r, "degenerate", False) and np.isfinite(r.estimate) for r in rs]
        est = np.array([r.estimate for r in rs], dtype=np.float64)
        lo = np.array([r.ci_low for r in rs], dtype=np.float64)
        hi = np.array([r.ci_high for r in rs], dtype=np.float64)
        yerr = np.nan_to_num(np.clip(np.stack([est - lo, hi - est]), 0, None), nan=0.0)
        idx = np.nonzero(ok)[0]
        if true_values is not None:
            tv = np.array([true_values.get(n, np.nan) for n in names], dtype=np.float64)
            idx = idx[np.isfinite(tv[idx])]
            ax.errorbar(tv[idx], est[idx], yerr=yerr[:, idx], fmt="o", capsize=3)
            for i in idx:
                ax.annotate(names[i], (tv[i], est[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            span = np.concatenate([tv[idx], est[idx]]) if len(idx) else np.array([0.0, 1.0])
            lim = (float(span.min()), float(span.max()))
            ax.plot(lim, lim, color="grey", linestyle="--", linewidth=1, label="y = x")
            ax.set_xlabel("true value")
        else:
            ax.errorbar(idx, est[idx], yerr=yerr[:, idx], fmt="o", capsize=3)
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("estimated value")
        bad = [names[i] for i in range(len(names)) if not ok[i]]
        ax.set_title(e + (f"\n(degenerate, not shown: {', '.join(bad)})" if bad else ""), fontsize=9)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def plot_top_k_curve(results: Mapping[str, Mapping[str, object]], estimators: Sequence[str],
                     true_values: Mapping[str, float], out_png: str | os.PathLike,
                     behavior_value: float | None = None, title: str | None = None,
                     overwrite: bool = False) -> Path:
    """Best / mean / worst true value among the top-k by each estimator, k = 1..K (K = number of candidates).

    Degenerate estimates rank last (treated as -inf), as a user would not deploy on them. Returns ``out_png``.
    Raises ConfigError (existing file, a candidate without a true value, a missing estimator).
    """
    from hybridrl.runs.plots import _figure, _save

    out = _check_out(out_png, overwrite)
    names = list(results)
    missing = [n for n in names if n not in true_values]
    if missing:
        raise ConfigError(f"true values are missing for {missing}")
    truth = [float(true_values[n]) for n in names]
    ks = np.arange(1, len(names) + 1)
    fig, axes = _figure(1, 3, (4.0, 3.6))
    for e in estimators:
        est = [(-np.inf if getattr(results[n][e], "degenerate", False) else float(results[n][e].estimate))
               for n in names]
        stats = [top_k_stats(est, truth, int(k)) for k in ks]
        for ax, key in zip(axes[0], ("best", "mean", "worst")):
            ax.plot(ks, [s[key] for s in stats], marker="o", label=e)
    for ax, key in zip(axes[0], ("best", "mean", "worst")):
        if behavior_value is not None:
            ax.axhline(behavior_value, color="black", linestyle=":", label="J(pi_b)")
        ax.set_xlabel("k (candidates deployed)")
        ax.set_ylabel(f"{key} true value in the top-k")
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title or "policy value of the top-k deployment")
    return _save(fig, out)


def write_ope_plots(results: Mapping[str, Mapping[str, object]], estimators: Sequence[str], directory: str | Path,
                    true_values: Mapping[str, float] | None = None, behavior_value: float | None = None,
                    overwrite: bool = False) -> list[Path]:
    """``estimates.png`` (always), ``top_k.png`` (with true values) and ``cdf.png`` (when a ``cd_*`` estimator ran)
    in ``directory`` (created). Checks every target before writing any, so nothing is half-replaced.
    Raises ConfigError as the plot functions."""
    from hybridrl.ope.distributional import CDFEstimate, plot_cdfs

    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise ConfigError(f"--plot {d} is a file; expected a directory")
    cd = [e for e in estimators if e.startswith("cd_")]
    targets = [d / "estimates.png"] + ([d / "top_k.png"] if true_values else []) + ([d / "cdf.png"] if cd else [])
    for t in targets:
        _check_out(t, overwrite)
    d.mkdir(parents=True, exist_ok=True)
    out = [plot_estimates_vs_truth(results, estimators, targets[0], true_values, overwrite=overwrite)]
    if true_values:
        out.append(plot_top_k_curve(results, estimators, true_values, d / "top_k.png", behavior_value,
                                    overwrite=overwrite))
    if cd:
        cdfs = {}
        for n, res in results.items():
            for e in cd:
                dist = getattr(res[e], "distribution", None)
                if dist is not None and not res[e].degenerate:
                    g = np.asarray(dist["grid"])
                    cdfs[f"{n} / {e}"] = CDFEstimate(e, g, np.asarray(dist["cdf"]), np.asarray(dist["cdf"]),
                                                     dist["mean"], dist["variance"], dist["cvar"], dist["alpha"], {},
                                                     dist["iqr"], np.zeros(0))
        out.append(plot_cdfs(cdfs, d / "cdf.png", overwrite=overwrite))
    return out


def check_plot_dir(directory: Path, overwrite: bool, estimators: Sequence[str], has_truth: bool) -> Path:
    """Fail before any fitting when ``--plot`` files exist (without ``overwrite``) or the path is a file; returns the
    first file :func:`write_ope_plots` will write.

    Raises:
        ConfigError: ``directory`` is a file, or a plot file exists and ``overwrite`` is False.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"--plot {directory} is a file; expected a directory")
    files = ["estimates.png"] + (["top_k.png"] if has_truth else []) + (
        ["cdf.png"] if any(e.startswith("cd_") for e in estimators) else [])
    for f in files:
        if (directory / f).exists() and not overwrite:
            raise ConfigError(f"--plot {directory / f} already exists; pass --overwrite to replace it")
    return directory / files[0]
