"""Confidence intervals for OPE estimates over independent episodes: bootstrap, Student-t, Hoeffding, Bernstein.

Every interval treats the E logged episodes as i.i.d. draws and covers only that sampling variability: the fitted
nuisance models (FQE critic, estimated behaviour policy) are held fixed, so their fitting error is not covered.

    bootstrap:  percentile bootstrap of the estimator over episodes (Efron & Tibshirani 1993, ch. 13); asymptotic.
    t:          mean +- t_{(1+c)/2, E-1} * s / sqrt(E) of the per-episode terms x_i (s: sample std, ddof 1);
                exact for normal x_i, asymptotic otherwise.
    hoeffding:  mean +- (b - a) sqrt(ln(2/delta) / (2E)),  delta = 1 - c            (Hoeffding 1963, Thm 2)
    bernstein:  mean +- [ sqrt(2 s^2 ln(4/delta) / E) + 7 (b - a) ln(4/delta) / (3 (E - 1)) ]
                (empirical Bernstein, Maurer & Pontil 2009, Thm 4, each side at delta/2; as in Thomas et al. 2015)

Hoeffding and Bernstein are finite-sample bounds only when every x_i lies in a known range [a, b]. Importance-
weighted terms have no useful a-priori range, so unless ``value_range=(a, b)`` is given the observed
``[min x_i, max x_i]`` is used (as SCOPE-RL does with the sample maximum): the interval is then a heuristic, and a
note in the result says so. For self-normalised estimators the per-episode terms share the normaliser and are not
independent; t, Hoeffding and Bernstein on them are approximate (the bootstrap recomputes the normaliser).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats

from hybridrl.errors import ConfigError

__all__ = ["INTERVALS", "MEANINGS", "bernstein_ci", "bootstrap_ci", "confidence_interval", "hoeffding_ci", "t_ci"]

#: Interval kinds accepted by :func:`confidence_interval` (and ``hybridrl ope --ci``).
INTERVALS = ("bootstrap", "t", "hoeffding", "bernstein")

MEANINGS = {
    "bootstrap": "percentile bootstrap over episodes: the estimator's sampling variability given the fitted "
                 "nuisance models (asymptotic)",
    "t": "Student-t on the per-episode terms: sampling variability, assuming their mean is near-normal (asymptotic)",
    "hoeffding": "Hoeffding bound on the mean of the per-episode terms (finite-sample if they lie in the stated "
                 "range; conservative)",
    "bernstein": "empirical Bernstein bound on the mean of the per-episode terms (finite-sample if they lie in the "
                 "stated range)",
}
_OBSERVED_RANGE_NOTE = ("the {kind} interval uses the observed range of the per-episode terms, not a known bound, "
                        "so it is not a guaranteed finite-sample bound")


def _check(confidence: float, n: int) -> None:
    if not 0.0 < confidence < 1.0 or n < 1:
        raise ConfigError(f"confidence interval: need 0 < confidence < 1 and at least one episode; got "
                          f"confidence {confidence}, {n} episodes")


def bootstrap_ci(statistic: Callable[[np.ndarray], np.ndarray], n_episodes: int, n_boot: int = 1000,
                 confidence: float = 0.95, rng: int | np.random.Generator | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of an episode-level statistic (Efron & Tibshirani 1993, ch. 13).

    Each resample draws ``n_episodes`` episodes with replacement. It is passed to ``statistic`` as a
    counts matrix ``C [b, E]`` float64 (``C[k, i]`` = how often episode i was drawn in resample k; each row
    sums to E), equivalent to the resampled indices but usable in matrix products. ``statistic(C)`` must
    return ``[b]`` (e.g. :attr:`hybridrl.ope.core.Estimate.resample`). Resamples are processed in blocks of about
    4e6 counts.

    Args:
        statistic: vectorised statistic of a batch of resamples, e.g. ``lambda c: c @ per_episode / E``.
        n_episodes: E >= 1.
        n_boot: number of resamples (0 returns ``(nan, nan)``).
        confidence: level in (0, 1); the interval is the ``(1-c)/2`` and ``(1+c)/2`` quantiles.
        rng: generator or seed.
    Returns: ``(low, high)``.
    Raises: ConfigError on a bad ``n_boot``/``confidence``/``n_episodes``.
    """
    if n_boot < 0 or not 0.0 < confidence < 1.0 or n_episodes < 1:
        raise ConfigError(f"bootstrap_ci: need n_boot >= 0, 0 < confidence < 1, n_episodes >= 1; got "
                          f"{n_boot}, {confidence}, {n_episodes}")
    if n_boot == 0:
        return float("nan"), float("nan")
    gen, e = (rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)), int(n_episodes)
    block = max(1, int(4e6 // e))
    out = []
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        idx = gen.integers(0, e, size=(b, e)) + e * np.arange(b)[:, None]
        counts = np.bincount(idx.ravel(), minlength=b * e).reshape(b, e).astype(np.float64)
        out.append(np.asarray(statistic(counts), dtype=np.float64).reshape(b))
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(np.concatenate(out), [alpha, 1.0 - alpha])
    return float(low), float(high)


def _range(x: np.ndarray, value_range: tuple[float, float] | None) -> float:
    if value_range is None:
        return float(x.max() - x.min())
    a, b = (float(v) for v in value_range)
    if not b >= a:
        raise ConfigError(f"value_range must be (a, b) with a <= b, got {value_range}")
    return b - a


def t_ci(x: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval ``mean +- t_{(1+c)/2, E-1} s / sqrt(E)`` of ``x [E]``; (nan, nan) when E < 2."""
    x = np.asarray(x, dtype=np.float64)
    _check(confidence, x.size)
    if x.size < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


def hoeffding_ci(x: np.ndarray, confidence: float = 0.95,
                 value_range: tuple[float, float] | None = None) -> tuple[float, float]:
    """Two-sided Hoeffding interval ``mean +- (b - a) sqrt(ln(2/delta) / (2E))`` of ``x [E]``, delta = 1 - c.

    ``value_range = (a, b)`` bounds each ``x_i``; default the observed ``(min x, max x)`` (module docstring).
    """
    x = np.asarray(x, dtype=np.float64)
    _check(confidence, x.size)
    half = _range(x, value_range) * np.sqrt(np.log(2.0 / (1.0 - confidence)) / (2.0 * x.size))
    return float(x.mean() - half), float(x.mean() + half)


def bernstein_ci(x: np.ndarray, confidence: float = 0.95,
                 value_range: tuple[float, float] | None = None) -> tuple[float, float]:
    """Two-sided empirical Bernstein interval of ``x [E]`` (Maurer & Pontil 2009, Thm 4, delta/2 per side).

    ``mean +- [sqrt(2 s^2 ln(4/delta) / E) + 7 (b - a) ln(4/delta) / (3 (E - 1))]`` with s^2 the sample variance
    (ddof 1); (nan, nan) when E < 2.
    """
    x = np.asarray(x, dtype=np.float64)
    _check(confidence, x.size)
    if x.size < 2:
        return float("nan"), float("nan")
    n, log_term = x.size, np.log(4.0 / (1.0 - confidence))
    half = np.sqrt(2 * x.var(ddof=1) * log_term / n) + 7 * _range(x, value_range) * log_term / (3 * (n - 1))
    return float(x.mean() - half), float(x.mean() + half)


def confidence_interval(kind: str, per_episode: np.ndarray, resample: Callable[[np.ndarray], np.ndarray] | None = None,
                        confidence: float = 0.95, n_boot: int = 1000, rng: int | np.random.Generator | None = None,
                        value_range: tuple[float, float] | None = None) -> tuple[float, float, list[str]]:
    """``(low, high, notes)`` of the interval ``kind`` (one of :data:`INTERVALS`) around an estimate.

    Args:
        kind: "bootstrap" (needs ``resample``), "t", "hoeffding" or "bernstein" (on ``per_episode``).
        per_episode: ``[E]`` terms whose mean is the estimate.
        resample: ``counts [b, E] -> [b]`` (:attr:`hybridrl.ope.core.Estimate.resample`); default: their mean.
        confidence, n_boot, rng, value_range: see the functions above.
    Returns: the bounds (NaN when the terms are not all finite, or too few) and notes on the interval's meaning.
    Raises: ConfigError for an unknown kind or bad arguments.
    """
    if kind not in INTERVALS:
        raise ConfigError(f"unknown interval {kind!r}; expected one of {list(INTERVALS)}")
    x = np.asarray(per_episode, dtype=np.float64)
    _check(confidence, x.size)
    if not np.isfinite(x).all():
        return float("nan"), float("nan"), [f"no {kind} interval: the per-episode terms are not all finite"]
    notes = []
    if kind == "bootstrap":
        stat = resample if resample is not None else (lambda c: c @ x / x.size)
        with np.errstate(invalid="ignore", over="ignore"):
            low, high = bootstrap_ci(stat, x.size, n_boot, confidence, rng)
    elif kind == "t":
        low, high = t_ci(x, confidence)
    else:
        low, high = (hoeffding_ci if kind == "hoeffding" else bernstein_ci)(x, confidence, value_range)
        if value_range is None:
            notes.append(_OBSERVED_RANGE_NOTE.format(kind=kind))
    return low, high, notes
