"""Off-policy evaluation estimators over the episodes of a :class:`~hybridrl.data.dataset.Dataset`.

Notation (SCOPE-RL, Kiyohara et al. 2023, arXiv:2311.18206; see docs ALGORITHMS.md section 8): ``n`` episodes
from the behaviour policy pi_0, ``w_t = pi(a_t|s_t) / pi_0(a_t|s_t)``, ``w_{0:t} = prod_{t'<=t} w_t'``,
``w_{0:-1} = 1``, ``t`` counted from 0 inside each episode.

    PDIS:    J = (1/n) sum_i sum_t gamma^t w^i_{0:t} r^i_t                          (Precup et al. 2000)
    SNPDIS:  J = (1/n) sum_i sum_t gamma^t w^i_{0:t} / ((1/n) sum_j w^j_{0:t} + 1e-10) r^i_t
    DM:      J = (1/n) sum_i sum_a pi(a|s^i_0) Qhat(s^i_0, a)                     (Qhat from FQE)
    DR:      J = (1/n) sum_i sum_t gamma^t [ w^i_{0:t} (r^i_t - Qhat(s^i_t, a^i_t))
                                             + w^i_{0:t-1} sum_a pi(a|s^i_t) Qhat(s^i_t, a) ]   (Jiang & Li 2016, eq. 5)

Episodes of different lengths: an episode that has ended (terminated, truncated, or the data simply stops)
is treated as absorbing with reward 0 and no further actions, so its rewards are padded with zeros and
its cumulative weight stays frozen at its final value ``w_{0:T_i-1}``. The self-normaliser of SNPDIS at
step t therefore averages over ALL n episodes, not only those still running at t. (Normalising over the
episodes alive at t would be biased: even with w = 1 it would estimate E[r_t] by E[r_t | alive at t],
inflating the return whenever some episodes terminate early.) With this rule SNPDIS = PDIS = the
Monte-Carlo mean when pi = pi_0. All IS estimators estimate the return of episodes as long as the logged ones (time-limit
truncation included); DM with FQE estimates the infinite-horizon value (FQE bootstraps through truncation).

Numerics: weights are accumulated in log space (float64). SNPDIS rescales each step's weights by their
maximum, which cancels in the ratio, so it stays finite when raw weights overflow; PDIS and DR then return
inf/NaN with a note ("importance weights overflow"), and ``diagnostics["max_log_weight"]`` shows how far.

Confidence intervals are percentile bootstraps over episodes (:func:`bootstrap_ci`): PDIS, DM and DR from
the per-episode values, SNPDIS by recomputing the self-normalised estimate on every resample.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.special import logsumexp

from hybridrl.algos.fqe import FQEConfig, FQELearner
from hybridrl.data.dataset import Dataset
from hybridrl.errors import ConfigError, DatasetError, DivergenceError, PolicyError, ShapeError
from hybridrl.nn import Policy, policy_matches_spaces
from hybridrl.runs.progress import progress_bar

__all__ = [
    "ESTIMATORS", "OPEResult", "bootstrap_ci", "dm", "dr", "evaluate_ope", "fit_fqe", "importance_weights",
    "pdis", "snpdis",
]

#: Estimator names accepted by :func:`evaluate_ope` ("fqe" is the direct method with an FQE critic).
ESTIMATORS = ("fqe", "pdis", "snpdis", "dr")
_SN_EPS = 1e-10  # SCOPE-RL's guard in the self-normaliser (discrete/basic_estimators.py)
_CHUNK = 65536  # rows per forward pass when evaluating a policy or critic on the whole dataset
_LOG_MAX = float(np.log(np.finfo(np.float64).max))  # ~709.8: larger log-weights overflow to inf


@dataclass
class OPEResult:
    """One estimate of a policy value J(pi) (expected discounted return from the initial state).

    Attributes:
        estimator: name ("pdis", "snpdis", "fqe"/"dm", "dr").
        estimate: the point estimate, in reward units.
        per_episode: ``[E]`` per-episode terms whose mean is ``estimate`` (for SNPDIS the self-normalised
            terms, which are not independent); None where not defined.
        ci_low, ci_high: percentile-bootstrap interval at level ``confidence`` (NaN when ``n_boot = 0``).
        confidence: interval level in (0, 1).
        n_episodes: episodes used.
        notes: human-readable caveats (e.g. estimated behaviour probabilities).
        diagnostics: scalars such as ``ess`` (effective sample size of the final weights w_{0:T-1}),
            ``ess_fraction`` (ess / n), ``max_weight``, ``mean_weight`` (about 1 when pi_0's support covers pi).
    """

    estimator: str
    estimate: float
    per_episode: np.ndarray | None
    ci_low: float
    ci_high: float
    confidence: float = 0.95
    n_episodes: int = 0
    notes: list[str] = field(default_factory=list)
    diagnostics: dict[str, float] = field(default_factory=dict)

    def to_dict(self, per_episode: bool = False) -> dict:
        """The fields as plain Python (JSON-able; NaN stays NaN); ``per_episode`` (E floats) only when asked."""
        d = {"estimator": self.estimator, "estimate": float(self.estimate), "ci_low": float(self.ci_low),
             "ci_high": float(self.ci_high), "confidence": float(self.confidence), "n_episodes": int(self.n_episodes),
             "notes": list(self.notes), "diagnostics": {k: float(v) for k, v in self.diagnostics.items()}}
        if per_episode:
            d["per_episode"] = None if self.per_episode is None else np.asarray(self.per_episode, dtype=float).tolist()
        return d


# ------------------------------------------------------------------------------------------------- helpers
def _check_inputs(dataset: Dataset, policy: Policy, gamma: float) -> None:
    if not 0.0 <= float(gamma) <= 1.0:
        raise ConfigError(f"gamma must be in [0, 1], got {gamma}")
    if dataset.n_episodes < 1:
        raise DatasetError(f"dataset {dataset.path or ''} holds no episodes; OPE needs at least one")
    reason = policy_matches_spaces(policy, dataset.observation_space, dataset.action_space)
    if reason is not None:
        raise PolicyError(f"the evaluated policy does not fit the dataset: {reason}")


def _episode_grid(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Index matrix ``[E, T_max]`` into the dataset's steps (0 where padded) and its validity mask."""
    starts = np.asarray(dataset.episode_starts, dtype=np.int64)
    lengths = np.diff(starts)
    t = np.arange(int(lengths.max()))
    mask = t[None, :] < lengths[:, None]
    return np.where(mask, starts[:-1, None] + t[None, :], 0), mask


def _pad(x: np.ndarray, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    idx, mask = grid
    return np.where(mask, np.asarray(x, dtype=np.float64)[idx], 0.0)


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], dataset: Dataset) -> np.ndarray:
    """Apply ``fn(obs, action) -> [B]`` over the whole dataset in chunks; float64 ``[N]``."""
    out = []
    for i in range(0, len(dataset), _CHUNK):
        obs = torch.as_tensor(np.asarray(dataset.observations[i:i + _CHUNK], dtype=np.float32))
        act = torch.as_tensor(np.asarray(dataset.actions[i:i + _CHUNK]))
        out.append(fn(obs, act).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def importance_weights(dataset: Dataset, policy: Policy, behavior_log_prob: np.ndarray | None = None) -> np.ndarray:
    """Per-step log importance ratios ``log pi(a_t|s_t) - log pi_0(a_t|s_t)``, natural log, float64 ``[N]``.

    Args:
        dataset: logged steps (``observations [N, D]``, ``actions [N, ...]``).
        policy: target policy pi; evaluated under ``torch.no_grad`` in chunks.
        behavior_log_prob: ``[N]`` log pi_0(a_t|s_t); default ``dataset.behavior_log_prob``.
    Returns:
        ``[N]`` float64 (``-inf`` where pi gives the logged action probability 0).
    Raises:
        DatasetError: no behaviour log-probabilities, or non-finite ones.
        ShapeError: ``behavior_log_prob`` is not ``[N]``.
    """
    blp = dataset.behavior_log_prob if behavior_log_prob is None else behavior_log_prob
    if blp is None:
        raise DatasetError("dataset.behavior_log_prob is missing; pass behavior_log_prob= (e.g. from "
                           "hybridrl.ope.estimate_behavior_log_prob) or use evaluate_ope, which estimates it")
    blp = np.asarray(blp, dtype=np.float64)
    if blp.shape != (len(dataset),):
        raise ShapeError(f"behavior_log_prob has shape {blp.shape}; expected [N] = ({len(dataset)},)")
    if not np.isfinite(blp).all():
        raise DatasetError(f"behavior_log_prob holds {int((~np.isfinite(blp)).sum())} non-finite values; the "
                           "behaviour policy must give the logged actions positive probability")
    return _batched(policy.log_prob, dataset) - blp


def _log_weights(log_ratio: np.ndarray, grid) -> np.ndarray:
    """``log w_{0:t}`` as ``[E, T]``, frozen at the episode's final value after it ends (padded ratios are 1)."""
    return np.cumsum(_pad(log_ratio, grid), axis=1)


def _exp(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.exp(x)


def _weight_report(logw: np.ndarray) -> tuple[dict[str, float], list[str]]:
    """Diagnostics of the final weights ``w_{0:T_i-1}`` (computed in log space) and an overflow note if any."""
    final = logw[:, -1]
    n = len(final)
    lse1, lse2 = logsumexp(final), logsumexp(2 * final)
    ess = float(np.exp(2 * lse1 - lse2)) if np.isfinite(lse1) else 0.0
    mx = float(logw.max())
    diag = {"ess": ess, "ess_fraction": ess / n, "max_weight": float(_exp(final.max())),
            "mean_weight": float(_exp(lse1 - np.log(n))), "max_log_weight": mx}
    notes = []
    if mx > _LOG_MAX:
        notes.append(f"importance weights overflow float64 (largest log-weight {mx:.0f}); the estimate is degenerate")
    return diag, notes


def bootstrap_ci(statistic: Callable[[np.ndarray], np.ndarray], n_episodes: int, n_boot: int = 1000,
                 confidence: float = 0.95, rng: int | np.random.Generator | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of an episode-level statistic (Efron & Tibshirani 1993, ch. 13).

    Each resample draws ``n_episodes`` episodes with replacement. It is passed to ``statistic`` as a
    counts matrix ``C [b, E]`` float64 (``C[k, i]`` = how often episode i was drawn in resample k; each row
    sums to E), equivalent to the resampled indices but usable in matrix products. ``statistic(C)`` must
    return ``[b]``. Resamples are processed in blocks of about 4e6 counts, fully vectorised.

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
    gen, e = _rng(rng), int(n_episodes)
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


def _mean_result(name: str, per_ep: np.ndarray, n_boot: int, confidence: float, seed, **extra) -> OPEResult:
    e = len(per_ep)
    with np.errstate(invalid="ignore", over="ignore"):
        low, high = bootstrap_ci(lambda c: c @ per_ep / e, e, n_boot, confidence, seed)
    return OPEResult(name, float(per_ep.mean()), per_ep, low, high, confidence, e, **extra)


# ---------------------------------------------------------------------------------------------- estimators
def pdis(dataset: Dataset, policy: Policy, gamma: float, behavior_log_prob: np.ndarray | None = None,
         n_boot: int = 1000, confidence: float = 0.95, seed: int | np.random.Generator | None = 0) -> OPEResult:
    """Per-decision importance sampling (Precup, Sutton & Singh 2000; SCOPE-RL PDIS, module docstring).

    Unbiased for the value of episodes as long as the logged ones when pi_0 covers pi's support.
    ``behavior_log_prob [N]`` overrides ``dataset.behavior_log_prob``. Errors: see :func:`importance_weights`.
    """
    _check_inputs(dataset, policy, gamma)
    grid = _episode_grid(dataset)
    logw = _log_weights(importance_weights(dataset, policy, behavior_log_prob), grid)
    disc = float(gamma) ** np.arange(logw.shape[1])
    with np.errstate(invalid="ignore"):
        per_ep = (disc * _exp(logw) * _pad(dataset.rewards, grid)).sum(1)
    diag, notes = _weight_report(logw)
    return _mean_result("pdis", per_ep, n_boot, confidence, seed, notes=notes, diagnostics=diag)


def snpdis(dataset: Dataset, policy: Policy, gamma: float, behavior_log_prob: np.ndarray | None = None,
           n_boot: int = 1000, confidence: float = 0.95, seed: int | np.random.Generator | None = 0) -> OPEResult:
    """Self-normalised PDIS: at each step t the weights are divided by their mean over all episodes (+1e-10).

    Ended episodes keep their final weight (module docstring), so the normaliser always averages n weights.
    Consistent but biased; bounded by the reward range. The bootstrap recomputes the self-normalised
    estimate on each resample. Errors: see :func:`importance_weights`.
    """
    _check_inputs(dataset, policy, gamma)
    grid = _episode_grid(dataset)
    logw = _log_weights(importance_weights(dataset, policy, behavior_log_prob), grid)
    disc = float(gamma) ** np.arange(logw.shape[1])
    # Scale each step's weights by exp(-max_i log w) (cancels in the ratio; the 1e-10 guard is scaled alike),
    # so that the self-normalised estimate stays finite when the raw weights overflow.
    m = logw.max(0)
    m = np.where(np.isfinite(m), m, 0.0)
    w = np.exp(logw - m)
    eps = _SN_EPS * _exp(-m)
    wr = w * _pad(dataset.rewards, grid)
    e = w.shape[0]
    per_ep = (disc * wr / (w.mean(0) + eps)).sum(1)

    def stat(c: np.ndarray) -> np.ndarray:
        return ((c @ wr / e) / (c @ w / e + eps) * disc).sum(1)

    low, high = bootstrap_ci(stat, e, n_boot, confidence, seed)
    diag, _ = _weight_report(logw)
    return OPEResult("snpdis", float(per_ep.mean()), per_ep, low, high, confidence, e, diagnostics=diag)


def _check_fqe(fqe: FQELearner, policy: Policy, gamma: float) -> None:
    if fqe.policy is not policy:
        raise ConfigError("the FQE critic was fitted for a different policy object; fit it for this policy")
    if abs(fqe.config.gamma - float(gamma)) > 1e-12:
        raise ConfigError(f"the FQE critic was fitted with gamma={fqe.config.gamma}, the estimate asks gamma={gamma}")


def dm(dataset: Dataset, policy: Policy, gamma: float, fqe: FQELearner, n_boot: int = 1000,
       confidence: float = 0.95, seed: int | np.random.Generator | None = 0) -> OPEResult:
    """Direct method: mean over episodes of ``Vhat(s_0) = E_{a~pi} Qhat(s_0, a)`` with ``fqe`` (:func:`fit_fqe`).

    Raises ConfigError if ``fqe`` was fitted for another policy object or another gamma.
    """
    _check_inputs(dataset, policy, gamma)
    _check_fqe(fqe, policy, gamma)
    s0 = np.asarray(dataset.observations, dtype=np.float32)[np.asarray(dataset.episode_starts)[:-1]]
    v0 = fqe.value(torch.as_tensor(s0)).double().numpy()
    note = "the interval covers only the spread of Vhat(s_0) over episodes, not the critic's fitting error"
    return _mean_result("dm", v0, n_boot, confidence, seed, notes=[note], diagnostics={"v0_std": float(v0.std())})


def dr(dataset: Dataset, policy: Policy, gamma: float, fqe: FQELearner, behavior_log_prob: np.ndarray | None = None,
       n_boot: int = 1000, confidence: float = 0.95, seed: int | np.random.Generator | None = 0) -> OPEResult:
    """Per-decision doubly robust estimator (Jiang & Li 2016, eq. 5; SCOPE-RL DR, module docstring).

    Unbiased (like PDIS) for any critic ``fqe`` when pi_0 is known; lower variance when Qhat is accurate.
    Raises as :func:`importance_weights` and :func:`dm`.
    """
    _check_inputs(dataset, policy, gamma)
    _check_fqe(fqe, policy, gamma)
    grid = _episode_grid(dataset)
    logw = _log_weights(importance_weights(dataset, policy, behavior_log_prob), grid)
    logw_prev = np.concatenate([np.zeros((logw.shape[0], 1)), logw[:, :-1]], axis=1)  # log w_{0:t-1}
    q = _pad(_batched(fqe.q, dataset), grid)
    v = _pad(_batched(lambda o, a: fqe.value(o), dataset), grid)
    disc = float(gamma) ** np.arange(logw.shape[1])
    with np.errstate(invalid="ignore"):
        terms = _exp(logw) * (_pad(dataset.rewards, grid) - q) + _exp(logw_prev) * v
        per_ep = (disc * np.where(grid[1], terms, 0.0)).sum(1)
    diag, notes = _weight_report(logw)
    return _mean_result("dr", per_ep, n_boot, confidence, seed, notes=notes, diagnostics=diag)


# ------------------------------------------------------------------------------------------------ pipeline
def fit_fqe(dataset: Dataset, policy: Policy, gamma: float, config: FQEConfig | None = None, steps: int = 10_000,
            seed: int = 0, progress: bool = False) -> FQELearner:
    """Fit an FQE critic of ``policy`` on ``dataset`` for ``steps`` gradient steps (batches from ``dataset.sample``).

    ``config.gamma`` is replaced by ``gamma``. A progress bar goes to stderr when ``progress``.
    Raises: ConfigError (bad steps/config), DivergenceError if the TD loss becomes NaN or inf.
    """
    if steps < 0:
        raise ConfigError(f"fit_fqe: steps must be >= 0, got {steps}")
    config = dataclasses.replace(config or FQEConfig(), gamma=float(gamma))
    learner = FQELearner(config, dataset.observation_space, dataset.action_space, seed=seed, policy=policy)
    rng = np.random.default_rng(seed)
    every = max(1, steps // 100)
    with progress_bar(progress) as bar:
        task = bar.add_task("fqe", total=steps, info="")
        for i in range(steps):
            metrics = learner.update(dataset.sample(config.batch_size, rng))
            if not np.isfinite(metrics["q_loss"]):
                raise DivergenceError(f"fit_fqe: TD loss became {metrics['q_loss']} at step {i + 1}; "
                                      "lower the learning rate or check the rewards")
            if (i + 1) % every == 0 or i + 1 == steps:
                bar.update(task, completed=i + 1, info=f"q_loss {metrics['q_loss']:.3g} q_mean {metrics['q_mean']:.3g}")
    return learner


def evaluate_ope(dataset: Dataset, policies: dict[str, Policy], estimators: tuple[str, ...] | list[str] = ESTIMATORS,
                 gamma: float = 0.99, fqe_steps: int = 10_000, fqe_config: FQEConfig | None = None,
                 behavior_steps: int = 2000, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
                 progress: bool = False) -> dict[str, dict[str, OPEResult]]:
    """Estimate the value of each policy with each estimator.

    One FQE critic is fitted per policy (when "fqe" or "dr" is asked) and shared by the direct method
    ("fqe") and DR. If ``dataset.behavior_log_prob`` is None and an IS-based estimator ("pdis", "snpdis",
    "dr") is asked, pi_0's log-probabilities are estimated once by behaviour cloning
    (:func:`hybridrl.ope.behavior.estimate_behavior_log_prob`, ``behavior_steps`` steps) and a note is added
    to each IS-based result.

    Returns: ``{policy_name: {estimator: OPEResult}}``.
    Raises: ConfigError for an unknown estimator (the message lists the valid ones) or no policies;
        the errors of the estimators.
    """
    estimators = [estimators] if isinstance(estimators, str) else list(estimators)
    for name in estimators:
        if name not in ESTIMATORS:
            hint = difflib.get_close_matches(name, ESTIMATORS, n=1)
            raise ConfigError(f"unknown OPE estimator {name!r}; expected one of {list(ESTIMATORS)}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    if not estimators or not policies:
        raise ConfigError("evaluate_ope needs at least one estimator and one policy")
    if not 0.0 <= float(gamma) <= 1.0:
        raise ConfigError(f"gamma must be in [0, 1], got {gamma}")
    notes: list[str] = []
    blp = dataset.behavior_log_prob
    if blp is None and any(e in ("pdis", "snpdis", "dr") for e in estimators):
        from hybridrl.ope.behavior import estimate_behavior_log_prob

        blp = estimate_behavior_log_prob(dataset, steps=behavior_steps, seed=seed)
        notes.append(f"behaviour log-probabilities estimated by behaviour cloning ({behavior_steps} steps)")
    out: dict[str, dict[str, OPEResult]] = {}
    for p_idx, (pname, policy) in enumerate(policies.items()):
        fqe = None
        if "fqe" in estimators or "dr" in estimators:
            fqe = fit_fqe(dataset, policy, gamma, fqe_config, fqe_steps, seed, progress)
        res: dict[str, OPEResult] = {}
        for e_idx, name in enumerate(estimators):
            rng = np.random.default_rng([seed, p_idx, e_idx])
            common = dict(n_boot=n_boot, confidence=confidence, seed=rng)
            if name == "fqe":
                r = dataclasses.replace(dm(dataset, policy, gamma, fqe, **common), estimator="fqe")
            else:
                fn = {"pdis": pdis, "snpdis": snpdis}.get(name)
                r = fn(dataset, policy, gamma, blp, **common) if fn else dr(dataset, policy, gamma, fqe, blp, **common)
                r.notes.extend(notes)
            res[name] = r
        out[pname] = res
    return out
