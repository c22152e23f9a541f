"""Pure importance-sampling OPE estimators on padded episode arrays (no datasets, no policies, no torch).

Inputs are ``[E, T]`` float arrays over E episodes padded to the longest length T, with a boolean ``mask [E, T]``
that is True on each episode's logged steps (a prefix of the row: padding only at the end):

* ``log_ratio[i, t] = log pi(a_t|s_t) - log pi_0(a_t|s_t)`` (natural log; ``-inf`` where pi gives probability 0),
* ``rewards[i, t] = r_t``, and for DR ``q_hat[i, t] = Qhat(s_t, a_t)``, ``v_hat[i, t] = E_{a~pi} Qhat(s_t, a)``.

Values at padded positions are ignored. Notation (SCOPE-RL, Kiyohara et al. 2023, arXiv:2311.18206):
``w_{0:t} = prod_{t'<=t} w_t'``, ``w_{0:-1} = 1``, t counted from 0 inside each episode.

    PDIS:    J = (1/n) sum_i sum_t gamma^t w^i_{0:t} r^i_t                          (Precup et al. 2000)
    SNPDIS:  J = (1/n) sum_i sum_t gamma^t w^i_{0:t} / ((1/n) sum_j w^j_{0:t} + 1e-10) r^i_t
    DR:      J = (1/n) sum_i sum_t gamma^t [ w^i_{0:t} (r^i_t - Qhat(s^i_t, a^i_t))
                                             + w^i_{0:t-1} sum_a pi(a|s^i_t) Qhat(s^i_t, a) ]   (Jiang & Li 2016, eq. 5)
    ESS:     (sum_i w^i)^2 / sum_i (w^i)^2 of the final weights w^i_{0:T_i-1}           (Kong 1992)

An episode that has ended is absorbing with reward 0: its rewards are padded with zeros and its cumulative weight
stays frozen at ``w_{0:T_i-1}``, so the SNPDIS normaliser at step t averages over ALL n episodes. (Normalising over
the episodes alive at t would estimate E[r_t] by E[r_t | alive at t], inflating the return whenever some episodes
terminate early.) With this rule SNPDIS = PDIS = the Monte-Carlo mean when pi = pi_0.

Numerics: weights are accumulated in log space (float64). SNPDIS rescales each step's weights by their maximum,
which cancels in the ratio, so it stays finite when raw weights overflow; PDIS and DR then return inf/NaN with a
note ("importance weights overflow"), and ``diagnostics["max_log_weight"]`` shows how far.

Confidence intervals: :func:`bootstrap_ci` over episodes, with the estimate's own ``resample`` statistic (the mean
of per-episode values for PDIS and DR; SNPDIS recomputes the self-normalised estimate on every resample).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.special import logsumexp

from hybridrl.errors import ConfigError, ShapeError

__all__ = ["Estimate", "bootstrap_ci", "dr", "log_weights", "mean_estimate", "pdis", "snpdis", "weight_diagnostics"]

SN_EPS = 1e-10  # SCOPE-RL's guard in the self-normaliser (discrete/basic_estimators.py)
LOG_MAX = float(np.log(np.finfo(np.float64).max))  # ~709.8: larger log-weights overflow to inf


@dataclass
class Estimate:
    """A point estimate of J(pi) with what a confidence interval needs.

    Attributes:
        estimate: the point estimate, in reward units.
        per_episode: ``[E]`` float64 terms whose mean is ``estimate`` (for SNPDIS the self-normalised terms,
            which are not independent).
        resample: ``counts [b, E] -> [b]``: the estimate recomputed on b bootstrap resamples, each given as how
            often every episode was drawn (see :func:`bootstrap_ci`).
        diagnostics: ``ess``, ``ess_fraction``, ``max_weight``, ``mean_weight``, ``max_log_weight`` (IS estimators).
        notes: human-readable caveats (e.g. overflowing weights).
    """

    estimate: float
    per_episode: np.ndarray
    resample: Callable[[np.ndarray], np.ndarray]
    diagnostics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _exp(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.exp(x)


def _check(gamma: float, mask: np.ndarray, **arrays: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Validate shapes (all ``[E, T]`` like ``mask``, E, T >= 1, padding only at the end) and gamma in [0, 1]."""
    if not 0.0 <= float(gamma) <= 1.0:
        raise ConfigError(f"gamma must be in [0, 1], got {gamma}")
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape[0] < 1 or mask.shape[1] < 1 or mask.dtype != bool:
        raise ShapeError(f"mask must be a boolean [E, T] array with E, T >= 1; got dtype {mask.dtype}, "
                         f"shape {mask.shape}")
    if (mask[:, 1:] & ~mask[:, :-1]).any():
        raise ShapeError("mask must be True on a prefix of each row (episodes padded at the end only)")
    out = {}
    for name, x in arrays.items():
        x = np.asarray(x, dtype=np.float64)
        if x.shape != mask.shape:
            raise ShapeError(f"{name} has shape {x.shape}; expected [E, T] = {mask.shape} like mask")
        out[name] = x
    return mask, out


def log_weights(log_ratio: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``log w_{0:t}`` as float64 ``[E, T]``: cumulative log-ratios, frozen at the final value after an episode ends."""
    return np.cumsum(np.where(mask, np.asarray(log_ratio, dtype=np.float64), 0.0), axis=1)


def weight_diagnostics(logw: np.ndarray) -> tuple[dict[str, float], list[str]]:
    """Diagnostics of the final weights ``w_{0:T_i-1}`` (``logw [E, T]`` from :func:`log_weights`) and notes.

    Returns ``({"ess", "ess_fraction", "max_weight", "mean_weight", "max_log_weight"}, notes)``; ESS is Kong's
    ``(sum w)^2 / sum w^2`` computed in log space; a note is added when a log-weight exceeds log(float64 max).
    """
    final = logw[:, -1]
    n = len(final)
    lse1, lse2 = logsumexp(final), logsumexp(2 * final)
    ess = float(np.exp(2 * lse1 - lse2)) if np.isfinite(lse1) else 0.0
    mx = float(logw.max())
    diag = {"ess": ess, "ess_fraction": ess / n, "max_weight": float(_exp(final.max())),
            "mean_weight": float(_exp(lse1 - np.log(n))), "max_log_weight": mx}
    notes = []
    if mx > LOG_MAX:
        notes.append(f"importance weights overflow float64 (largest log-weight {mx:.0f}); the estimate is degenerate")
    return diag, notes


def mean_estimate(per_episode: np.ndarray, diagnostics: dict[str, float] | None = None,
                  notes: list[str] | None = None) -> Estimate:
    """The mean of independent per-episode values ``[E]`` (PDIS, DR, DM); resamples average the drawn episodes."""
    per_ep = np.asarray(per_episode, dtype=np.float64)
    e = len(per_ep)
    return Estimate(float(per_ep.mean()), per_ep, lambda c: c @ per_ep / e, dict(diagnostics or {}), list(notes or []))


def pdis(log_ratio: np.ndarray, rewards: np.ndarray, mask: np.ndarray, gamma: float) -> Estimate:
    """Per-decision importance sampling (Precup, Sutton & Singh 2000; module docstring).

    Args: ``log_ratio``, ``rewards``, ``mask``: ``[E, T]`` (module docstring); ``gamma`` in [0, 1].
    Returns: :class:`Estimate` with per-episode ``sum_t gamma^t w_{0:t} r_t`` and weight diagnostics.
    Raises: ShapeError (shapes, mask not a prefix), ConfigError (gamma).
    Unbiased for the value of episodes as long as the logged ones when pi_0 covers pi's support.
    """
    mask, a = _check(gamma, mask, log_ratio=log_ratio, rewards=rewards)
    logw = log_weights(a["log_ratio"], mask)
    disc = float(gamma) ** np.arange(logw.shape[1])
    with np.errstate(invalid="ignore"):
        per_ep = (disc * _exp(logw) * np.where(mask, a["rewards"], 0.0)).sum(1)
    return mean_estimate(per_ep, *weight_diagnostics(logw))


def snpdis(log_ratio: np.ndarray, rewards: np.ndarray, mask: np.ndarray, gamma: float) -> Estimate:
    """Self-normalised PDIS: at each step t the weights are divided by their mean over all E episodes (+1e-10).

    Arguments, errors and diagnostics as :func:`pdis`. Ended episodes keep their final weight (module docstring).
    Consistent but biased; bounded by the reward range. ``resample`` recomputes the self-normalisation.
    """
    mask, a = _check(gamma, mask, log_ratio=log_ratio, rewards=rewards)
    logw = log_weights(a["log_ratio"], mask)
    disc = float(gamma) ** np.arange(logw.shape[1])
    # Scale each step's weights by exp(-max_i log w) (cancels in the ratio; the 1e-10 guard is scaled alike),
    # so that the self-normalised estimate stays finite when the raw weights overflow.
    m = logw.max(0)
    m = np.where(np.isfinite(m), m, 0.0)
    w = np.exp(logw - m)
    eps = SN_EPS * _exp(-m)
    wr = w * np.where(mask, a["rewards"], 0.0)
    e = w.shape[0]
    per_ep = (disc * wr / (w.mean(0) + eps)).sum(1)

    def resample(c: np.ndarray) -> np.ndarray:
        return ((c @ wr / e) / (c @ w / e + eps) * disc).sum(1)

    diag, _ = weight_diagnostics(logw)
    return Estimate(float(per_ep.mean()), per_ep, resample, diag, [])


def dr(log_ratio: np.ndarray, rewards: np.ndarray, mask: np.ndarray, gamma: float, q_hat: np.ndarray,
       v_hat: np.ndarray) -> Estimate:
    """Per-decision doubly robust estimator (Jiang & Li 2016, eq. 5; SCOPE-RL's DR; module docstring).

    Args: as :func:`pdis`, plus ``q_hat [E, T]`` = Qhat(s_t, a_t) and ``v_hat [E, T]`` = E_{a~pi} Qhat(s_t, a).
    Returns/raises as :func:`pdis`. Unbiased (like PDIS) for any critic when pi_0 is known; lower variance when
    Qhat is accurate.
    """
    mask, a = _check(gamma, mask, log_ratio=log_ratio, rewards=rewards, q_hat=q_hat, v_hat=v_hat)
    logw = log_weights(a["log_ratio"], mask)
    logw_prev = np.concatenate([np.zeros((logw.shape[0], 1)), logw[:, :-1]], axis=1)  # log w_{0:t-1}
    q, v = np.where(mask, a["q_hat"], 0.0), np.where(mask, a["v_hat"], 0.0)
    disc = float(gamma) ** np.arange(logw.shape[1])
    with np.errstate(invalid="ignore"):
        terms = _exp(logw) * (np.where(mask, a["rewards"], 0.0) - q) + _exp(logw_prev) * v
        per_ep = (disc * np.where(mask, terms, 0.0)).sum(1)
    return mean_estimate(per_ep, *weight_diagnostics(logw))


def bootstrap_ci(statistic: Callable[[np.ndarray], np.ndarray], n_episodes: int, n_boot: int = 1000,
                 confidence: float = 0.95, rng: int | np.random.Generator | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of an episode-level statistic (Efron & Tibshirani 1993, ch. 13).

    Each resample draws ``n_episodes`` episodes with replacement. It is passed to ``statistic`` as a
    counts matrix ``C [b, E]`` float64 (``C[k, i]`` = how often episode i was drawn in resample k; each row
    sums to E), equivalent to the resampled indices but usable in matrix products. ``statistic(C)`` must
    return ``[b]`` (e.g. :attr:`Estimate.resample`). Resamples are processed in blocks of about 4e6 counts.

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
    stats = []
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        idx = gen.integers(0, e, size=(b, e)) + e * np.arange(b)[:, None]
        counts = np.bincount(idx.ravel(), minlength=b * e).reshape(b, e).astype(np.float64)
        stats.append(np.asarray(statistic(counts), dtype=np.float64).reshape(b))
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(np.concatenate(stats), [alpha, 1.0 - alpha])
    return float(low), float(high)
