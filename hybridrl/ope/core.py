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
    TIS:     J = (1/n) sum_i w^i_{0:T_i-1} sum_t gamma^t r^i_t                       (trajectory-wise IS)
    SNTIS:   J = (1/n) sum_i w^i_{0:T_i-1} / ((1/n) sum_j w^j_{0:T_j-1} + 1e-10) sum_t gamma^t r^i_t
    SNDR:    DR with w_{0:t} and w_{0:t-1} each divided by their mean over the n episodes (+1e-10)
    ESS:     (sum_i w^i)^2 / sum_i (w^i)^2 of the final weights w^i_{0:T_i-1}           (Kong 1992)

Per-step clipping (``clip=c``): every ``w_t`` is replaced by ``min(w_t, c)`` before the products. This bounds the
variance (each cumulative weight is at most c^t) at the price of bias: E_{pi_0}[min(w_t, c) f] <= E_{pi_0}[w_t f] for
f >= 0, so with non-negative rewards a clipped IS estimate is biased downwards, by E_{pi_0}[(w_t - c)_+ f] per step;
the bias vanishes only when no weight exceeds c (``diagnostics["clipped_fraction"]`` is the share of clipped steps).

An episode that has ended is absorbing with reward 0: its rewards are padded with zeros and its cumulative weight
stays frozen at ``w_{0:T_i-1}``, so the SNPDIS normaliser at step t averages over ALL n episodes. (Normalising over
the episodes alive at t would estimate E[r_t] by E[r_t | alive at t], inflating the return whenever some episodes
terminate early.) With this rule SNPDIS = PDIS = the Monte-Carlo mean when pi = pi_0.

Numerics: weights are accumulated in log space (float64). SNPDIS rescales each step's weights by their maximum,
which cancels in the ratio, so it stays finite when raw weights overflow; PDIS and DR then return inf/NaN with a
note ("importance weights overflow"), and ``diagnostics["max_log_weight"]`` shows how far.

Confidence intervals: :mod:`hybridrl.ope.intervals` over episodes, with the estimate's own ``resample`` statistic
for the bootstrap (the mean of per-episode values for PDIS, TIS and DR; the self-normalised estimators recompute
the normaliser on every resample). :func:`degeneracy` says in words when an estimate cannot be used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.special import logsumexp

from hybridrl.errors import ConfigError, ShapeError
from hybridrl.ope.intervals import bootstrap_ci

__all__ = [
    "MIN_ESS", "Estimate", "bootstrap_ci", "degeneracy", "dr", "log_weights", "mean_estimate", "pdis", "sndr", "snpdis",
    "sntis", "tis", "weight_diagnostics",
]

SN_EPS = 1e-10  # SCOPE-RL's guard in the self-normaliser (discrete/basic_estimators.py)
LOG_MAX = float(np.log(np.finfo(np.float64).max))  # ~709.8: larger log-weights overflow to inf
MIN_ESS = 10.0  # default ESS threshold of degeneracy (capped at a tenth of the episodes, see degeneracy())


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


def log_weights(log_ratio: np.ndarray, mask: np.ndarray, clip: float | None = None) -> np.ndarray:
    """``log w_{0:t}`` as float64 ``[E, T]``: cumulative log-ratios, frozen at the final value after an episode ends.

    ``clip = c > 0`` first replaces each per-step ratio by ``min(w_t, c)`` (module docstring: biased).
    """
    lr = np.where(mask, np.asarray(log_ratio, dtype=np.float64), 0.0)
    if clip is not None:
        if not clip > 0:
            raise ConfigError(f"clip must be > 0 (the largest per-step importance ratio kept), got {clip}")
        lr = np.minimum(lr, np.log(float(clip)))
    return np.cumsum(lr, axis=1)


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


def _weights(log_ratio, mask, clip) -> tuple[np.ndarray, dict[str, float], list[str]]:
    """``log w_{0:t}`` (clipped if asked), diagnostics and notes, with the clipping share and its bias note."""
    logw = log_weights(log_ratio, mask, clip)
    diag, notes = weight_diagnostics(logw)
    if clip is not None:
        n_clipped = int((np.asarray(log_ratio)[mask] > np.log(float(clip))).sum())
        diag["clip"] = float(clip)
        diag["clipped_fraction"] = n_clipped / max(int(mask.sum()), 1)
        notes.append(f"per-step importance ratios clipped at {clip:g} ({n_clipped} of {int(mask.sum())} steps): "
                     "the estimate is biased (downwards for non-negative rewards)")
    return logw, diag, notes


def degeneracy(estimate: float, diagnostics: dict[str, float], n_episodes: int, min_ess: float = MIN_ESS,
               self_normalised: bool = False, value_bounds: tuple[float, float] | None = None,
               check_mean_weight: bool = False) -> list[str]:
    """Reasons, in words, why an estimate cannot be used (empty list: usable).

    Degenerate when: the estimate is not finite; a log-weight exceeds log(float64 max) (``max_log_weight``; not for
    ``self_normalised`` estimators, which rescale the weights and stay finite); or the
    effective sample size ``ess`` is below ``min(min_ess, max(n_episodes / 10, 1.5))`` (an IS estimate then rests on a
    handful of episodes; the cap keeps small datasets from being flagged for their size alone, the floor of 1.5 still
    flags an estimate that rests on a single episode); or the estimate lies outside ``value_bounds = (lo, hi)``, the
    values any policy can have (e.g. ``r_min / (1 - gamma), r_max / (1 - gamma)``), by more than 1% of ``hi - lo``;
    or, with ``check_mean_weight`` (plain IS: PDIS, TIS, unclipped), the sample mean of the final trajectory weights
    (``mean_weight``) lies outside [0.5, 2]: under the behaviour policy E[w_{0:T}] = 1 exactly (a product of ratios
    with mean 1, stopped at the episode's end), so a mean far from 1 says that the episodes carrying most of the
    weight are missing from the sample (the heavy tail of long-horizon weights) or that the behaviour
    log-probabilities are off. The ESS cannot see this: it is computed from the same sample.
    """
    reasons = []
    if not np.isfinite(estimate):
        reasons.append(f"the estimate is {estimate} (not finite)")
    mx = diagnostics.get("max_log_weight")
    if mx is not None and mx > LOG_MAX and not self_normalised:
        reasons.append(f"importance weights overflow float64 (largest log-weight {mx:.0f} > {LOG_MAX:.0f})")
    if value_bounds is not None and np.isfinite(estimate):
        lo, hi = (float(b) for b in value_bounds)
        slack = 0.01 * (hi - lo)
        if not lo - slack <= estimate <= hi + slack:
            reasons.append(f"the estimate {estimate:.4g} lies outside [{lo:.4g}, {hi:.4g}], the values any policy can "
                           "have with these rewards and gamma")
    ess = diagnostics.get("ess")
    threshold = min(float(min_ess), max(n_episodes / 10.0, 1.5))
    if ess is not None and ess < threshold:
        reasons.append(f"effective sample size {ess:.1f} of {n_episodes} episodes is below {threshold:g}")
    mw = diagnostics.get("mean_weight")
    if check_mean_weight and mw is not None and np.isfinite(mw) and not 0.5 <= mw <= 2.0:
        reasons.append(f"the importance weights average {mw:.3g} where 1 is expected (E[w] = 1 under the behaviour "
                       "policy): the episodes that carry most of the weight are missing from the data, or the "
                       "behaviour log-probabilities are off")
    return reasons


def mean_estimate(per_episode: np.ndarray, diagnostics: dict[str, float] | None = None,
                  notes: list[str] | None = None) -> Estimate:
    """The mean of independent per-episode values ``[E]`` (PDIS, DR, DM); resamples average the drawn episodes."""
    per_ep = np.asarray(per_episode, dtype=np.float64)
    e = len(per_ep)
    return Estimate(float(per_ep.mean()), per_ep, lambda c: c @ per_ep / e, dict(diagnostics or {}), list(notes or []))


def _self_normalised(logw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights rescaled per column by ``exp(-max_i log w)`` and the 1e-10 guard scaled alike (cancels in ratios)."""
    m = logw.max(0)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.exp(logw - m), SN_EPS * _exp(-m)


def pdis(log_ratio: np.ndarray, rewards: np.ndarray, mask: np.ndarray, gamma: float,
         clip: float | None = None) -> Estimate:
    """Per-decision importance sampling (Precup, Sutton & Singh 2000; module docstring).

    Args: ``log_ratio``, ``rewards``, ``mask``: ``[E, T]`` (module docstring); ``gamma`` in [0, 1]; ``clip``: per-step
    ratio cap c > 0 or None (biased when it binds; module docstring).
    Returns: :class:`Estimate` with per-episode ``sum_t gamma^t w_{0:t} r_t`` and weight diagnostics.
    Raises: ShapeError (shapes, mask not a prefix), ConfigError (gamma, clip).
    Unbiased for the value of episodes as long as the logged ones when pi_0 covers pi's support (and no clipping).
    """
    mask, a = _check(gamma, mask, log_ratio=log_ratio, rewards=rewards)
    logw, diag, notes = _weights(a["log_ratio"], mask, clip)
    disc = float(gamma) ** np.arange(logw.shape[1])
    with np.errstate(invalid="ignore"):
        per_ep = (disc * _exp(logw) * np.where(mask, a["rewards"], 0.0)).sum(1)
    return mean_estimate(per_ep, diag, notes)


def tis(log_ratio: np.ndarray, rewards: np.ndarray, mask: np.ndarray, gamma: float,
        clip: float | None = None) -> Estimate:
    """Trajectory-wise importance sampling: ``(1/n) sum_i w^i_{0:T_i-1} sum_t gamma^t r^i_t`` (module docstring).

    Arguments, errors and diagnostics as :func:`pdis`. Unbiased under coverage; its variance is at least PDIS's
    for non-negative rewards, since every reward carries the whole episode's weight.
    """
    mask, a = _check(gamma, mask, log_ratio=log_ratio, rewards=rewards)
    logw, diag, notes = _weights(a["log_ratio"], mask, clip)
    disc = float(gamma) ** np.arange(logw.shape[1])
    ret = (disc * np.where(mask, a["rewards"], 0.0)).sum(1)
    with np.errstate(invalid="ignore"):
        per_ep = _exp(logw[:, -1]) * ret
    return mean_estimate(per_ep, diag, notes)


def sntis(log_ratio: np.ndarray, rewards: np.ndarray, mask: np.ndarray, gamma: float,
          clip: float | None = None) -> Estimate:
    """Self-normalised TIS: final weights divided by their mean over the n episodes (+1e-10; module docstring).

    Arguments, errors and diagnostics as :func:`pdis`. Consistent, biased, bounded by the range of the discounted
    returns; finite when raw weights overflow. ``resample`` recomputes the normaliser.
    """
    mask, a = _check(gamma, mask, log_ratio=log_ratio, rewards=rewards)
    logw, diag, notes = _weights(a["log_ratio"], mask, clip)
    disc = float(gamma) ** np.arange(logw.shape[1])
    ret = (disc * np.where(mask, a["rewards"], 0.0)).sum(1)
    w, eps = _self_normalised(logw[:, -1:])
    w, eps = w[:, 0], float(eps[0])
    e = len(w)
    per_ep = w * ret / (w.mean() + eps)
    return Estimate(float(per_ep.mean()), per_ep, lambda c: (c @ (w * ret) / e) / (c @ w / e + eps), diag,
                    [n for n in notes if "overflow" not in n])


def snpdis(log_ratio: np.ndarray, rewards: np.ndarray, mask: np.ndarray, gamma: float,
           clip: float | None = None) -> Estimate:
    """Self-normalised PDIS: at each step t the weights are divided by their mean over all E episodes (+1e-10).

    Arguments, errors and diagnostics as :func:`pdis`. Ended episodes keep their final weight (module docstring).
    Consistent but biased; bounded by the reward range. ``resample`` recomputes the self-normalisation.
    """
    mask, a = _check(gamma, mask, log_ratio=log_ratio, rewards=rewards)
    logw, diag, notes = _weights(a["log_ratio"], mask, clip)
    disc = float(gamma) ** np.arange(logw.shape[1])
    # Scale each step's weights by exp(-max_i log w) (cancels in the ratio; the 1e-10 guard is scaled alike),
    # so that the self-normalised estimate stays finite when the raw weights overflow.
    w, eps = _self_normalised(logw)
    wr = w * np.where(mask, a["rewards"], 0.0)
    e = w.shape[0]
    per_ep = (disc * wr / (w.mean(0) + eps)).sum(1)

    def resample(c: np.ndarray) -> np.ndarray:
        return ((c @ wr / e) / (c @ w / e + eps) * disc).sum(1)

    return Estimate(float(per_ep.mean()), per_ep, resample, diag, [n for n in notes if "overflow" not in n])


def _dr_inputs(log_ratio, rewards, mask, gamma, q_hat, v_hat, clip):
    mask, a = _check(gamma, mask, log_ratio=log_ratio, rewards=rewards, q_hat=q_hat, v_hat=v_hat)
    logw, diag, notes = _weights(a["log_ratio"], mask, clip)
    logw_prev = np.concatenate([np.zeros((logw.shape[0], 1)), logw[:, :-1]], axis=1)  # log w_{0:t-1}
    q, v = np.where(mask, a["q_hat"], 0.0), np.where(mask, a["v_hat"], 0.0)
    r = np.where(mask, a["rewards"], 0.0)
    disc = float(gamma) ** np.arange(logw.shape[1])
    return mask, logw, logw_prev, r, q, v, disc, diag, notes


def dr(log_ratio: np.ndarray, rewards: np.ndarray, mask: np.ndarray, gamma: float, q_hat: np.ndarray,
       v_hat: np.ndarray, clip: float | None = None) -> Estimate:
    """Per-decision doubly robust estimator (Jiang & Li 2016, eq. 5; SCOPE-RL's DR; module docstring).

    Args: as :func:`pdis`, plus ``q_hat [E, T]`` = Qhat(s_t, a_t) and ``v_hat [E, T]`` = E_{a~pi} Qhat(s_t, a).
    Returns/raises as :func:`pdis`. Unbiased (like PDIS) for any critic when pi_0 is known; lower variance when
    Qhat is accurate.
    """
    mask, logw, logw_prev, r, q, v, disc, diag, notes = _dr_inputs(log_ratio, rewards, mask, gamma, q_hat, v_hat,
                                                                    clip)
    with np.errstate(invalid="ignore"):
        terms = _exp(logw) * (r - q) + _exp(logw_prev) * v
        per_ep = (disc * np.where(mask, terms, 0.0)).sum(1)
    return mean_estimate(per_ep, diag, notes)


def sndr(log_ratio: np.ndarray, rewards: np.ndarray, mask: np.ndarray, gamma: float, q_hat: np.ndarray,
         v_hat: np.ndarray, clip: float | None = None) -> Estimate:
    """Self-normalised DR (SCOPE-RL's SNDR): DR with ``w_{0:t}`` and ``w_{0:t-1}`` each divided by their mean over
    the n episodes (+1e-10). Arguments as :func:`dr`. Consistent, biased; finite when raw weights overflow.
    ``resample`` recomputes both normalisers.
    """
    mask, logw, logw_prev, r, q, v, disc, diag, notes = _dr_inputs(log_ratio, rewards, mask, gamma, q_hat, v_hat,
                                                                    clip)
    w, eps = _self_normalised(logw)
    wp, epsp = _self_normalised(logw_prev)
    a_term = np.where(mask, w * (r - q), 0.0)
    b_term = np.where(mask, wp * v, 0.0)
    e = w.shape[0]
    per_ep = (disc * (a_term / (w.mean(0) + eps) + b_term / (wp.mean(0) + epsp))).sum(1)

    def resample(c: np.ndarray) -> np.ndarray:
        return (disc * ((c @ a_term / e) / (c @ w / e + eps) + (c @ b_term / e) / (c @ wp / e + epsp))).sum(1)

    return Estimate(float(per_ep.mean()), per_ep, resample, diag, [n for n in notes if "overflow" not in n])
