"""Off-policy selection: rank candidate policies by their OPE estimates and score the ranking.

With true values J (e.g. from online rollouts) the ranking is scored by

    Regret@k      = max_pi J(pi) - max_{pi in Pi_k} J(pi)             (Pi_k: top-k by the estimate)
    RankCorr      = Spearman correlation of estimates and true values (scipy.stats.spearmanr, average ranks on ties)
    MSE / nMSE    = mean (Jhat - J)^2,  nMSE = MSE / (max J - min J)^2  (our normalisation; NaN if all J equal)
    SharpeRatio@k = max(best@k - J(pi_b), 0) / std@k                  (Kiyohara et al. 2023, arXiv:2311.18207)
        best@k = max_{pi in Pi_k} J(pi),  std@k = sample std (ddof = 1) of {J(pi) : pi in Pi_k}
    top-k statistics: best@k, worst@k, mean@k, std@k of the true values {J(pi) : pi in Pi_k}     (SCOPE-RL)
    Type I error rate  = #{pi : J(pi) < h and Jhat(pi) >= h} / #{pi : J(pi) < h}   (unsafe policies passed)
    Type II error rate = #{pi : J(pi) >= h and Jhat(pi) < h} / #{pi : J(pi) >= h}  (safe policies rejected)
        for a threshold h (e.g. the behaviour policy's value); NaN when the denominator is 0. SCOPE-RL compares the
        estimate (or an interval's lower bound) with h the same way; ``use_lower_bound`` does the latter.

SharpeRatio@k follows the SCOPE-RL code (scope_rl/ope/ops.py), not the written formula: the numerator is
clipped at 0 and std@k uses ddof = 1, so k = 1 gives NaN; a portfolio with std@k = 0 gives +inf when the
clipped numerator is positive and NaN when it is 0. J(pi_b) is the behaviour policy's value, the
"risk-free" baseline; to let pi_b compete as a candidate, add it to the estimates and true values.
SCOPE-RL adds 1e-10 to J(pi_b); we do not (it only changes the ``best@k == J(pi_b)`` tie).

Ranking ties are broken by the order of the ``estimates`` mapping (stable sort).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from hybridrl.errors import ConfigError

__all__ = [
    "SelectionResult", "error_rates", "pick_estimator", "rank_correlation", "regret_at_k", "select",
    "sharpe_ratio_at_k", "top_k", "top_k_stats",
]


def _value(x) -> float:
    return float(getattr(x, "estimate", x))


def _lower(x) -> float:
    low = getattr(x, "ci_low", None)
    if low is None:
        raise ConfigError("use_lower_bound needs OPEResults (with ci_low), got plain values")
    return float(low)


def _arrays(estimated, true) -> tuple[np.ndarray, np.ndarray]:
    """Align ``estimated`` and ``true`` (two mappings with the same keys, or two equal-length sequences)."""
    if isinstance(estimated, Mapping):
        if not isinstance(true, Mapping):
            raise ConfigError("estimated is a dict of policy names; true values must be a dict too")
        missing = [k for k in estimated if k not in true]
        if missing:
            raise ConfigError(f"true values are missing for policies {missing}")
        return (np.array([_value(v) for v in estimated.values()], dtype=np.float64),
                np.array([float(true[k]) for k in estimated], dtype=np.float64))
    est = np.array([_value(v) for v in estimated], dtype=np.float64)
    tru = np.asarray(true, dtype=np.float64).reshape(-1)
    if est.shape != tru.shape:
        raise ConfigError(f"estimated has {est.size} values but true has {tru.size}")
    return est, tru


def top_k(estimated: Sequence[float] | np.ndarray, k: int) -> np.ndarray:
    """Indices ``[k]`` of the k largest estimates, best first (stable: ties keep input order).

    Raises ConfigError unless ``1 <= k <= len(estimated)``.
    """
    est = np.asarray(estimated, dtype=np.float64)
    if not 1 <= int(k) <= est.size:
        raise ConfigError(f"k must be in [1, {est.size}] (the number of candidates), got {k}")
    return np.argsort(-est, kind="stable")[: int(k)]


def regret_at_k(estimated, true, k: int) -> float:
    """Regret@k = best true value - best true value among the top-k by estimate (>= 0, reward units).

    ``estimated``/``true``: dicts with the same keys (values or OPEResults) or aligned sequences.
    Raises ConfigError on misaligned inputs or a bad k.
    """
    est, tru = _arrays(estimated, true)
    return float(tru.max() - tru[top_k(est, k)].max())


def rank_correlation(estimated, true) -> float:
    """Spearman rank correlation in [-1, 1] of estimates vs true values (NaN if either is constant)."""
    est, tru = _arrays(estimated, true)
    if est.size < 2 or np.ptp(est) == 0 or np.ptp(tru) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(est, tru).statistic)


def sharpe_ratio_at_k(estimated, true, behavior_value: float, k: int) -> float:
    """SharpeRatio@k = max(best@k - J(pi_b), 0) / std@k (ddof = 1), SCOPE-RL code convention (module docstring).

    Args:
        estimated, true: dicts with the same keys or aligned sequences of estimated / true values.
        behavior_value: J(pi_b), the baseline.
        k: portfolio size, ``1 <= k <= n``.
    Returns: the ratio; NaN for k = 1 (sample std undefined) or 0/0; +inf for a positive return with zero std.
    Raises: ConfigError on misaligned inputs or a bad k.
    """
    est, tru = _arrays(estimated, true)
    vals = tru[top_k(est, k)]
    if vals.size < 2:
        return float("nan")
    num = max(float(vals.max()) - float(behavior_value), 0.0)
    std = float(vals.std(ddof=1))
    if std == 0.0:
        return float("inf") if num > 0 else float("nan")
    return num / std


def top_k_stats(estimated, true, k: int) -> dict[str, float]:
    """True values of the top-k by estimate: ``{"best", "worst", "mean", "std"}`` (std: ddof = 1, NaN for k = 1).

    Raises ConfigError on misaligned inputs or a bad k.
    """
    est, tru = _arrays(estimated, true)
    vals = tru[top_k(est, k)]
    return {"best": float(vals.max()), "worst": float(vals.min()), "mean": float(vals.mean()),
            "std": float(vals.std(ddof=1)) if vals.size > 1 else float("nan")}


def error_rates(estimated, true, threshold: float, use_lower_bound: bool = False) -> tuple[float, float]:
    """``(type I, type II)`` error rates of passing policies whose estimate is >= ``threshold`` (module docstring).

    ``use_lower_bound``: compare each OPEResult's ``ci_low`` instead of its estimate (a safer pass rule).
    Returns NaN for a rate whose denominator (truly unsafe / truly safe policies) is 0.
    Raises ConfigError on misaligned inputs, or ``use_lower_bound`` with plain values.
    """
    _, tru = _arrays(estimated, true)
    vals = list(estimated.values()) if isinstance(estimated, Mapping) else list(estimated)
    est = np.array([_lower(v) if use_lower_bound else _value(v) for v in vals], dtype=np.float64)
    h = float(threshold)
    unsafe, passed = tru < h, est >= h
    t1 = float((unsafe & passed).sum() / unsafe.sum()) if unsafe.any() else float("nan")
    t2 = float((~unsafe & ~passed).sum() / (~unsafe).sum()) if (~unsafe).any() else float("nan")
    return t1, t2


@dataclass
class SelectionResult:
    """Outcome of :func:`select`.

    Attributes:
        ranking: candidate names, best estimate first.
        top_k: the first ``k`` of ``ranking``.
        k: portfolio size.
        estimates: name -> estimated value.
        regret_at_k, rank_correlation, mse, nmse: None unless true values were given.
        best_at_k, std_at_k: true max and sample std (ddof=1; NaN for k=1) over the top-k; None without true values.
        worst_at_k, mean_at_k: true min and mean over the top-k; None without true values.
        threshold, type_i_error_rate, type_ii_error_rate: with ``threshold`` and true values (:func:`error_rates`).
        sharpe_ratio_at_k: None unless true values and ``behavior_value`` were given.
        true_values, behavior_value: the inputs (None when not given).
    """

    ranking: list[str]
    top_k: list[str]
    k: int
    estimates: dict[str, float]
    regret_at_k: float | None = None
    rank_correlation: float | None = None
    mse: float | None = None
    nmse: float | None = None
    best_at_k: float | None = None
    std_at_k: float | None = None
    sharpe_ratio_at_k: float | None = None
    true_values: dict[str, float] | None = None
    behavior_value: float | None = None
    worst_at_k: float | None = None
    mean_at_k: float | None = None
    threshold: float | None = None
    type_i_error_rate: float | None = None
    type_ii_error_rate: float | None = None

    def to_dict(self) -> dict:
        """All fields as plain Python (JSON-able; NaN/inf stay floats)."""
        return dataclasses.asdict(self)


def select(estimates: Mapping[str, float], k: int, true_values: Mapping[str, float] | None = None,
           behavior_value: float | None = None, threshold: float | None = None) -> SelectionResult:
    """Rank candidates by estimate, keep the top k, and (with true values) score the selection.

    Args:
        estimates: name -> estimated value (a float or an :class:`~hybridrl.ope.estimators.OPEResult`).
        k: number of policies to deploy, ``1 <= k <= len(estimates)``.
        true_values: name -> true value J(pi) for every candidate, or None.
        behavior_value: J(pi_b) for SharpeRatio@k (needs ``true_values``).
        threshold: value h for the type I/II error rates (needs ``true_values``).
    Raises:
        ConfigError: empty ``estimates``, bad ``k``, missing true values, or ``behavior_value``/``threshold`` without
            them.
    """
    if not estimates:
        raise ConfigError("select needs at least one candidate estimate")
    names = list(estimates)
    est = np.array([_value(estimates[n]) for n in names], dtype=np.float64)
    order = top_k(est, len(names))
    ranking = [names[i] for i in order]
    kk = int(k)
    top_k(est, kk)  # validates k
    res = SelectionResult(ranking, ranking[:kk], kk, {n: float(v) for n, v in zip(names, est)})
    if true_values is None:
        if behavior_value is not None or threshold is not None:
            raise ConfigError("behavior_value (SharpeRatio@k) and threshold (type I/II errors) need true_values")
        return res
    _, tru = _arrays(estimates, true_values)
    res.true_values = {n: float(v) for n, v in zip(names, tru)}
    res.behavior_value = None if behavior_value is None else float(behavior_value)
    vals = tru[order[:kk]]
    spread = float(np.ptp(tru))
    res.regret_at_k = regret_at_k(est, tru, kk)
    res.rank_correlation = rank_correlation(est, tru)
    res.mse = float(np.mean((est - tru) ** 2))
    res.nmse = res.mse / spread**2 if spread > 0 else float("nan")
    res.best_at_k = float(vals.max())
    res.worst_at_k, res.mean_at_k = float(vals.min()), float(vals.mean())
    if threshold is not None:
        res.threshold = float(threshold)
        res.type_i_error_rate, res.type_ii_error_rate = error_rates(estimates, true_values, threshold)
    res.std_at_k = float(vals.std(ddof=1)) if kk > 1 else float("nan")
    if behavior_value is not None:
        res.sharpe_ratio_at_k = sharpe_ratio_at_k(est, tru, behavior_value, kk)
    return res


def pick_estimator(results: Mapping[str, Mapping[str, object]], preferred: str,
                   order: Sequence[str]) -> tuple[str, list[str], str]:
    """Which estimator to rank by: ``preferred`` if its result is usable for every candidate, otherwise the first of
    ``order`` that is (usable: not degenerate and, for critic-based estimators, a converged FQE fit).

    Args:
        results: ``{candidate: {estimator: OPEResult}}`` (:func:`hybridrl.ope.evaluate_ope`).
        preferred: the estimator asked for.
        order: estimators to fall back to, in order of preference.
    Returns: ``(estimator, usable_estimators, message)``; the message says in words what was chosen and why. When
        no estimator is usable for every candidate, ``preferred`` is returned with a message saying not to trust it.
    Raises: ConfigError if ``preferred`` is not among the results.
    """
    names = list(results)
    if not names or any(preferred not in results[n] for n in names):
        raise ConfigError(f"pick_estimator: {preferred!r} is not among the estimates of every candidate")
    cands = [preferred, *[e for e in order if e != preferred]]
    usable = [e for e in cands if all(e in results[n] and getattr(results[n][e], "usable", True) for n in names)]

    def why(e: str) -> str:
        bad = []
        for n in names:
            r = results[n][e]
            if getattr(r, "degenerate", False):
                bad.append(f"{n}: degenerate, " + "; ".join(r.degenerate_reasons))
            elif not getattr(r, "usable", True):
                bad.append(f"{n}: FQE did not converge")
        return " | ".join(bad)

    if preferred in usable:
        return preferred, usable, f"ranked by {preferred} (its diagnostics pass for every candidate)"
    if usable:
        return usable[0], usable, (f"ranked by {usable[0]} instead of {preferred}, whose diagnostics fail "
                                   f"({why(preferred)}); estimators that pass for every candidate: {', '.join(usable)}")
    return preferred, [], (f"no estimator passes its diagnostics for every candidate; ranked by {preferred} anyway "
                           f"({why(preferred)}): do not trust this selection")


def read_true_values(path, names: Sequence[str]) -> dict[str, float]:
    """``--true-values`` JSON: an object {policy name: number} covering every name in ``names``.

    Raises:
        ConfigError: the file cannot be read as such an object, or a name has no value (names the file and both sets).
    """
    import json
    from pathlib import Path

    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--true-values {path}: cannot read a JSON object ({e})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, (int, float)) for v in raw.values()):
        raise ConfigError(f"--true-values {path}: expected a JSON object {{policy name: number}}")
    missing = [n for n in names if n not in raw]
    if missing:
        raise ConfigError(f"--true-values {path} has no value for {missing}; it has {sorted(raw)}")
    return {n: float(raw[n]) for n in names}
