"""Distributional OPE: the CDF of the discounted return under pi, and its mean, variance, CVaR and quantiles.

SCOPE-RL's cumulative-distribution estimators (Kiyohara et al. 2023, arXiv:2311.18206, Sec. 3.3; after Chandak et
al. 2021, "Universal Off-Policy Evaluation", and Huang et al. 2021, "Off-Policy Risk Assessment"). Episode i has the
discounted return ``G_i = sum_t gamma^t r^i_t``, trajectory weight ``W_i = w^i_{0:T_i-1}`` (:mod:`hybridrl.ope.core`)
and a predicted CDF ``Ghat_i(m)`` of the return from its initial state under pi. On a grid ``m_1 < ... < m_K``:

    CD-DM:    F(m) = (1/n) sum_i Ghat_i(m)
    CD-IS:    F(m) = (1/n) sum_i W_i 1{G_i <= m}                                  (trajectory-wise IS)
    CD-DR:    F(m) = (1/n) sum_i Ghat_i(m) + (1/n) sum_i W_i (1{G_i <= m} - Ghat_i(m))
    CD-SNIS:  F(m) = sum_i W_i 1{G_i <= m} / sum_i W_i
    CD-SNDR:  F(m) = (1/n) sum_i Ghat_i(m) + sum_i W_i (1{G_i <= m} - Ghat_i(m)) / sum_i W_i

With only a point critic, ``Ghat_i(m) = 1{Vhat(s^i_0) <= m}`` (SCOPE-RL's choice: all mass at the predicted value;
:func:`step_cdf`), so CD-DM says nothing about spread. IS and DR are unbiased for F(m) at every m when pi_0 covers pi
(the DR baseline enters at s_0, where E[W | s_0] = 1); the SN forms are consistent and always a distribution.

Repair (as SCOPE-RL): the estimate is made non-decreasing (running maximum) and clipped to [0, 1];
``diagnostics["cdf_repair"]`` is the largest change this made. Statistics are those of the discrete distribution
with mass ``p_k = F(m_k) - F(m_{k-1})`` at ``m_k`` (``F(m_0) = 0``; returns are clipped into the grid first):

    mean = sum_k p_k m_k,   variance = sum_k p_k (m_k - mean)^2,
    CVaR_alpha = (1/alpha) * (sum of the lowest alpha of the mass times m_k)   (expected return in the worst alpha),
    q(u) = min{m_k : F(m_k) >= u},   IQR = q(0.75) - q(0.25).

For CD-IS and CD-DR the total mass F(m_K) is the mean weight (about 1), not exactly 1; the mean is then the plain IS
value (not renormalised), and CVaR/quantiles use the mass as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hybridrl.errors import ConfigError, ShapeError
from hybridrl.ope.core import _check, weight_diagnostics

__all__ = ["CD_ESTIMATORS", "CDFEstimate", "cdf_estimate", "cdf_stats", "default_grid", "episode_returns",
           "plot_cdfs", "step_cdf"]

CD_ESTIMATORS = ("cd_dm", "cd_is", "cd_dr", "cd_snis", "cd_sndr")


@dataclass
class CDFEstimate:
    """An estimated return distribution on ``grid [K]``: ``cdf [K]`` (repaired), ``raw_cdf [K]``, the statistics of
    :func:`cdf_stats` (``mean``, ``variance``, ``cvar``, ``alpha``, ``quantiles`` {0.25, 0.5, 0.75}, ``iqr``),
    ``per_episode [E]`` terms whose mean is the unrepaired mean (for intervals), diagnostics and notes."""

    estimator: str
    grid: np.ndarray
    cdf: np.ndarray
    raw_cdf: np.ndarray
    mean: float
    variance: float
    cvar: float
    alpha: float
    quantiles: dict[float, float]
    iqr: float
    per_episode: np.ndarray
    diagnostics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"estimator": self.estimator, "grid": self.grid.tolist(), "cdf": self.cdf.tolist(),
                "mean": self.mean, "variance": self.variance, "cvar": self.cvar, "alpha": self.alpha,
                "quantiles": {str(k): v for k, v in self.quantiles.items()}, "iqr": self.iqr}


def episode_returns(rewards: np.ndarray, mask: np.ndarray, gamma: float) -> np.ndarray:
    """``G_i = sum_t gamma^t r^i_t`` over each episode's logged steps: ``[E]`` float64."""
    mask, a = _check(gamma, mask, rewards=rewards)
    return (float(gamma) ** np.arange(mask.shape[1]) * np.where(mask, a["rewards"], 0.0)).sum(1)


def default_grid(values: np.ndarray, k: int = 101) -> np.ndarray:
    """``k`` evenly spaced points from min to max of ``values`` (returns and predictions); one point if constant."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    lo, hi = float(v.min()), float(v.max())
    return np.array([lo]) if hi <= lo else np.linspace(lo, hi, int(k))


def step_cdf(v0: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``Ghat [E, K]`` with all of episode i's mass at ``v0[i]`` (clipped into the grid): ``1{v0_i <= m_k}``."""
    g = np.asarray(grid, dtype=np.float64)
    v = np.clip(np.asarray(v0, dtype=np.float64), g[0], g[-1])
    return (v[:, None] <= g[None, :] + 1e-12 * max(1.0, abs(g[-1]))).astype(np.float64)


def cdf_stats(grid: np.ndarray, cdf: np.ndarray, alpha: float = 0.1) -> dict:
    """Mean, variance, CVaR at ``alpha``, quantiles and IQR of the discrete distribution ``cdf`` on ``grid``."""
    if not 0.0 < alpha <= 1.0:
        raise ConfigError(f"CVaR alpha must be in (0, 1], got {alpha}")
    g, f = np.asarray(grid, np.float64), np.asarray(cdf, np.float64)
    p = np.diff(f, prepend=0.0)
    mean = float(p @ g)
    var = float(p @ (g - mean) ** 2)
    take = np.clip(np.minimum(np.cumsum(p), alpha) - np.minimum(np.cumsum(p) - p, alpha), 0.0, None)
    cvar = float(take @ g / alpha) if f[-1] >= alpha else float("nan")

    def q(u):
        idx = np.nonzero(f >= u - 1e-12)[0]
        return float(g[idx[0]]) if len(idx) else float("nan")

    quant = {u: q(u) for u in (0.25, 0.5, 0.75)}
    return {"mean": mean, "variance": var, "cvar": cvar, "quantiles": quant, "iqr": quant[0.75] - quant[0.25]}


def cdf_estimate(estimator: str, returns: np.ndarray, grid: np.ndarray, log_weight: np.ndarray | None = None,
                 g_hat: np.ndarray | None = None, alpha: float = 0.1) -> CDFEstimate:
    """One of :data:`CD_ESTIMATORS` (module docstring).

    Args:
        estimator: "cd_dm", "cd_is", "cd_dr", "cd_snis" or "cd_sndr".
        returns: ``[E]`` discounted returns G_i (:func:`episode_returns`).
        grid: ``[K]`` increasing return values m_k (:func:`default_grid`).
        log_weight: ``[E]`` log W_i (needed by the IS/DR forms; e.g. ``core.log_weights(...)[:, -1]``).
        g_hat: ``[E, K]`` predicted CDF at each episode's initial state (needed by DM/DR; e.g. :func:`step_cdf`).
        alpha: CVaR level in (0, 1].
    Returns: :class:`CDFEstimate` with ESS diagnostics of the weights (IS/DR forms).
    Raises: ConfigError (unknown estimator, missing input, alpha), ShapeError (shapes, a grid not increasing).
    """
    if estimator not in CD_ESTIMATORS:
        raise ConfigError(f"unknown distributional estimator {estimator!r}; expected one of {list(CD_ESTIMATORS)}")
    g = np.asarray(grid, dtype=np.float64)
    ret = np.asarray(returns, dtype=np.float64)
    e = len(ret)
    if g.ndim != 1 or len(g) < 1 or (np.diff(g) <= 0).any():
        raise ShapeError(f"grid must be a strictly increasing 1-D array; got shape {g.shape}")
    if ret.shape != (e,) or e < 1:
        raise ShapeError(f"returns must be [E] with E >= 1; got {ret.shape}")
    needs_w, needs_g = estimator != "cd_dm", estimator in ("cd_dm", "cd_dr", "cd_sndr")
    if needs_g and (g_hat is None or np.shape(g_hat) != (e, len(g))):
        raise ConfigError(f"{estimator} needs g_hat of shape [E, K] = ({e}, {len(g)}); got "
                          f"{None if g_hat is None else np.shape(g_hat)}")
    if needs_w and (log_weight is None or np.shape(log_weight) != (e,)):
        raise ConfigError(f"{estimator} needs log_weight of shape [E] = ({e},)")
    ind = step_cdf(ret, g)  # 1{G_i <= m_k}, returns clipped into the grid
    diag, notes = {}, []
    w = np.ones(e)
    if needs_w:
        lw = np.asarray(log_weight, dtype=np.float64)
        diag, notes = weight_diagnostics(lw[:, None])
        sn = estimator in ("cd_snis", "cd_sndr")
        m = lw.max() if sn and np.isfinite(lw.max()) else 0.0
        with np.errstate(over="ignore"):
            w = np.exp(lw - m)  # SN: rescaled by the largest weight (cancels)
        if sn:
            notes = [n for n in notes if "overflow" not in n]
            w = w / (w.mean() + 1e-10 * np.exp(-m))  # the normalised weights, mean 1
    base = g_hat if needs_g else np.zeros_like(ind)
    if estimator == "cd_dm":
        contrib = np.asarray(g_hat, dtype=np.float64)
    elif estimator in ("cd_is", "cd_snis"):
        contrib = w[:, None] * ind
    else:
        contrib = base + w[:, None] * (ind - base)
    with np.errstate(invalid="ignore"):
        raw = contrib.mean(0)
        per_ep = (np.diff(contrib, axis=1, prepend=0.0) * g).sum(1)
    cdf = np.clip(np.maximum.accumulate(raw), 0.0, 1.0) if np.isfinite(raw).all() else raw
    diag["cdf_repair"] = float(np.nanmax(np.abs(cdf - raw))) if np.isfinite(raw).all() else float("nan")
    diag["cdf_total_mass"] = float(raw[-1])
    if np.isfinite(raw).all():
        st = cdf_stats(g, cdf, alpha)
    else:
        nan = float("nan")
        st = {"mean": nan, "variance": nan, "cvar": nan, "quantiles": {u: nan for u in (0.25, 0.5, 0.75)}, "iqr": nan}
    if estimator == "cd_dm":
        notes.append("CD-DM with a point critic puts all of each episode's mass at Vhat(s_0): it does not estimate "
                     "the spread of returns (variance, CVaR and quantiles are those of Vhat(s_0) over episodes)")
    if diag["cdf_repair"] > 0.05:
        notes.append(f"the raw CDF estimate was not a distribution (repaired by up to {diag['cdf_repair']:.2g})")
    return CDFEstimate(estimator, g, cdf, raw, st["mean"], st["variance"], st["cvar"], float(alpha), st["quantiles"],
                       st["iqr"], per_ep, diag, notes)


def plot_cdfs(cdfs: dict[str, CDFEstimate], out_png: str | os.PathLike, title: str | None = None,
              truth: dict[str, np.ndarray] | None = None, overwrite: bool = False) -> Path:
    """Estimated return CDFs, one line per key (e.g. ``"policy / estimator"``), written atomically to ``out_png``;
    ``truth`` adds dashed empirical CDFs of sampled returns. Raises ConfigError if the file exists (and not
    ``overwrite``) or is a directory."""
    from hybridrl.runs.plots import _figure, _save

    out = Path(out_png)
    if out.is_dir():
        raise ConfigError(f"plot path {out} is a directory; expected a .png file path")
    if out.exists() and not overwrite:
        raise ConfigError(f"plot path {out} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    fig, axes = _figure(1, 1, (6.4, 4.2))
    ax = axes[0, 0]
    for name, c in cdfs.items():
        ax.step(c.grid, c.cdf, where="post", label=f"{name} (mean {c.mean:.3g}, CVaR {c.cvar:.3g})")
    for name, samples in (truth or {}).items():
        x = np.sort(np.asarray(samples, dtype=np.float64))
        ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", linestyle="--", label=f"{name} (sampled)")
    ax.set_xlabel("discounted return")
    ax.set_ylabel("cumulative probability")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title or "estimated return distributions")
    ax.legend(fontsize=7)
    return _save(fig, out)
