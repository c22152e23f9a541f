"""OPE on a :class:`~hybridrl.data.dataset.Dataset`: binds logged episodes and policies to :mod:`hybridrl.ope.core`.

This layer computes what the pure estimators take: per-step log-ratios ``log pi(a_t|s_t) - log pi_0(a_t|s_t)``
(:func:`importance_weights`), the episodes laid out as padded ``[E, T]`` arrays (:func:`episode_arrays`), FQE
critic values (:func:`fit_fqe`), and bootstrap intervals; :func:`estimate_value` returns an :class:`OPEResult`.
Equations, padding rule and numerics: :mod:`hybridrl.ope.core` (SCOPE-RL notation, Kiyohara et al. 2023,
arXiv:2311.18206). The direct method is

    DM:      J = (1/n) sum_i sum_a pi(a|s^i_0) Qhat(s^i_0, a)                     (Qhat from FQE)

All IS estimators estimate the return of episodes as long as the logged ones (time-limit truncation included);
DM with FQE estimates the infinite-horizon value (FQE bootstraps through truncation).

Confidence intervals are percentile bootstraps over episodes (:func:`hybridrl.ope.core.bootstrap_ci`): PDIS, DM
and DR from the per-episode values, SNPDIS by recomputing the self-normalised estimate on every resample.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from rich.markup import escape

from hybridrl.algos.fqe import FQEConfig, FQELearner, default_max_steps, value_bounds
from hybridrl.algos.fqe import fit as fqe_fit
from hybridrl.data.dataset import Dataset
from hybridrl.errors import ConfigError, DatasetError, ShapeError
from hybridrl.nn import Policy, policy_matches_spaces
from hybridrl.ope import core, extended, intervals
from hybridrl.runs.progress import console, progress_bar

__all__ = [
    "DEFAULT_ESTIMATORS", "ESTIMATORS", "IS_ESTIMATORS", "OPEResult", "check_policy_fits_dataset", "episode_arrays",
    "estimate_value", "evaluate_ope", "fit_fqe", "importance_weights",
]

#: Estimator names accepted by :func:`evaluate_ope` ("fqe" is the direct method with an FQE critic).
ESTIMATORS = ("fqe", "pdis", "snpdis", "dr", "tis", "sntis", "sndr", *extended.EXTENDED)
DEFAULT_ESTIMATORS = ("fqe", "pdis", "snpdis", "dr")
IS_ESTIMATORS = ("pdis", "snpdis", "dr", "tis", "sntis", "sndr", *extended.NEEDS_BEHAVIOR)  # need pi_0 log-probs
_NEEDS_FQE = ("fqe", "dm", "dr", "sndr", *extended.NEEDS_FQE)
_SELF_NORMALISED = ("snpdis", "sntis", "sndr", *extended.SELF_NORMALISED)
_ALL = (*ESTIMATORS, "dm")  # what estimate_value accepts ("dm" = "fqe" under its textbook name)
_CHUNK = 65536  # rows per forward pass when evaluating a policy or critic on the whole dataset
_CORE = {"pdis": core.pdis, "snpdis": core.snpdis, "tis": core.tis, "sntis": core.sntis}


@dataclass
class OPEResult:
    """One estimate of a policy value J(pi) (expected discounted return from the initial state).

    Attributes:
        estimator: name ("fqe"/"dm", "pdis", "snpdis", "dr", "tis", "sntis", "sndr").
        estimate: the point estimate, in reward units (do not use it when ``degenerate``).
        per_episode: ``[E]`` per-episode terms whose mean is ``estimate`` (for the self-normalised estimators the
            normalised terms, which are not independent); None where not defined.
        ci_low, ci_high: interval of kind ``interval`` at level ``confidence`` (NaN when not computed).
        confidence: interval level in (0, 1).
        n_episodes: episodes used.
        notes: human-readable caveats (e.g. estimated behaviour probabilities, an unconverged FQE fit).
        diagnostics: scalars such as ``ess`` (effective sample size of the final weights w_{0:T-1}),
            ``ess_fraction`` (ess / n), ``max_weight``, ``mean_weight``, ``max_log_weight``; ``fqe_converged`` etc.
            for critic-based estimators; ``behavior_heldout_mean_weight`` (~1 expected) and
            ``behavior_heldout_loglik`` when pi_0 was estimated.
        behavior_estimated: True when the importance weights used an estimated behaviour model.
        interval: "bootstrap", "t", "hoeffding" or "bernstein"; ``interval_meaning`` says what it covers.
        degenerate: True when the estimate cannot be used; ``degenerate_reasons`` says why in words
            (:func:`hybridrl.ope.core.degeneracy`).
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
    behavior_estimated: bool = False
    interval: str = "bootstrap"
    interval_meaning: str = ""
    degenerate: bool = False
    degenerate_reasons: list[str] = field(default_factory=list)
    distribution: dict | None = None  # distributional estimators: the CDF and its statistics (CDFEstimate.to_dict)

    @property
    def usable(self) -> bool:
        """Not degenerate and, for critic-based estimators, the FQE fit converged; for the marginal estimators the
        weight/MQL fit converged and its weights needed a self-normaliser within [0.5, 2] (``weights_ok``)."""
        return (not self.degenerate and self.diagnostics.get("fqe_converged", 1.0) == 1.0
                and self.diagnostics.get("weights_ok", 1.0) == 1.0)

    def cell(self, digits: int = 3) -> str:
        """Short text for a table: ``"12.3 [11, 13.5]"``, or ``"degenerate (ESS 1.0 of 50, weights overflow)"``
        instead of a number that cannot be used, with ``" (FQE not converged)"`` appended when that is the case."""
        if self.degenerate:
            bits = []
            ess = self.diagnostics.get("ess")
            if ess is not None:
                bits.append(f"ESS {ess:.1f} of {self.n_episodes}")
            if any("overflow" in r for r in self.degenerate_reasons):
                bits.append("weights overflow")
            if any("lies outside" in r for r in self.degenerate_reasons):
                bits.append("outside the possible range")
            if any("weights average" in r for r in self.degenerate_reasons):
                bits.append(f"mean weight {self.diagnostics['mean_weight']:.2g}")
            if any("not finite" in r for r in self.degenerate_reasons) and not bits:
                bits.append("not finite")
            return "degenerate (" + (", ".join(bits) or "see notes") + ")"
        text = f"{self.estimate:.{digits}g}"
        if np.isfinite(self.ci_low) or np.isfinite(self.ci_high):
            text += f" [{self.ci_low:.{digits}g}, {self.ci_high:.{digits}g}]"
        if self.diagnostics.get("fqe_converged", 1.0) != 1.0:
            text += " (FQE not converged)"
        if self.diagnostics.get("weights_converged", 1.0) != 1.0:
            text += " (weight/MQL fit not converged)"
        elif self.diagnostics.get("weights_ok", 1.0) != 1.0:
            text += " (weights off: see notes)"
        return text

    def to_dict(self, per_episode: bool = False) -> dict:
        """The fields as plain Python (JSON-able; NaN stays NaN); ``per_episode`` (E floats) only when asked."""
        d = {"estimator": self.estimator, "estimate": float(self.estimate), "ci_low": float(self.ci_low),
             "ci_high": float(self.ci_high), "confidence": float(self.confidence), "n_episodes": int(self.n_episodes),
             "interval": self.interval, "interval_meaning": self.interval_meaning,
             "degenerate": bool(self.degenerate), "degenerate_reasons": list(self.degenerate_reasons),
             "usable": self.usable, "notes": list(self.notes),
             "diagnostics": {k: float(v) for k, v in self.diagnostics.items()},
             "behavior_estimated": bool(self.behavior_estimated)}
        if self.distribution is not None:
            d["distribution"] = self.distribution
        if per_episode:
            d["per_episode"] = None if self.per_episode is None else np.asarray(self.per_episode, dtype=float).tolist()
        return d


# ------------------------------------------------------------------------------------------------- binding
def _check_inputs(dataset: Dataset, policy: Policy, gamma: float) -> None:
    """gamma in [0, 1], at least one episode, and a policy that acts in the dataset's spaces."""
    if not 0.0 <= float(gamma) <= 1.0:
        raise ConfigError(f"gamma must be in [0, 1], got {gamma}")
    if dataset.n_episodes < 1:
        raise DatasetError(f"dataset {dataset.path or ''} holds no episodes; OPE needs at least one")
    check_policy_fits_dataset(policy, dataset)


def check_policy_fits_dataset(policy: Policy, dataset: Dataset, name: str = "the evaluated policy") -> None:
    """Raise ShapeError naming both shapes when ``policy`` cannot act in ``dataset``'s observation/action spaces."""
    reason = policy_matches_spaces(policy, dataset.observation_space, dataset.action_space, where="dataset")
    if reason is not None:
        where = f" {dataset.path}" if dataset.path else ""
        raise ShapeError(f"{name} does not fit the dataset{where} (observations {dataset.observation_space.shape}, "
                         f"actions {dataset.action_space}): {reason}")


def episode_arrays(dataset: Dataset, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lay per-step ``values [N]`` out by episode: ``([E, T_max] float64, 0 where padded; mask [E, T_max] bool)``."""
    starts = np.asarray(dataset.episode_starts, dtype=np.int64)
    lengths = np.diff(starts)
    t = np.arange(int(lengths.max()))
    mask = t[None, :] < lengths[:, None]
    idx = np.where(mask, starts[:-1, None] + t[None, :], 0)
    return np.where(mask, np.asarray(values, dtype=np.float64)[idx], 0.0), mask


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], dataset: Dataset) -> np.ndarray:
    """Apply ``fn(obs, action) -> [B]`` over the whole dataset in chunks; float64 ``[N]``."""
    out = []
    for i in range(0, len(dataset), _CHUNK):
        obs = torch.as_tensor(np.asarray(dataset.observations[i:i + _CHUNK], dtype=np.float32))
        act = torch.as_tensor(np.asarray(dataset.actions[i:i + _CHUNK]))
        out.append(fn(obs, act).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def importance_weights(dataset: Dataset, policy: Policy, behavior_log_prob: np.ndarray | None = None,
                       cache: dict | None = None) -> np.ndarray:
    """Per-step log importance ratios ``log pi(a_t|s_t) - log pi_0(a_t|s_t)``, natural log, float64 ``[N]``.

    Args:
        dataset: logged steps (``observations [N, D]``, ``actions [N, ...]``).
        policy: target policy pi; evaluated under ``torch.no_grad`` in chunks.
        behavior_log_prob: ``[N]`` log pi_0(a_t|s_t); default ``dataset.behavior_log_prob``.
        cache: optional per-policy dict keeping log pi(a_t|s_t) (:func:`policy_log_prob`).
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
    return policy_log_prob(dataset, policy, cache) - blp


def policy_log_prob(dataset: Dataset, policy: Policy, cache: dict | None = None) -> np.ndarray:
    """``[N]`` log pi(a_t|s_t) of the logged actions (no grad, in chunks), kept in ``cache`` for the same dataset and
    policy objects: one pass serves the IS estimators and the behaviour model's diagnostics."""
    return _reuse(cache, "policy_log_prob", (dataset, policy), lambda: _batched(policy.log_prob, dataset))


def _check_fqe(fqe: FQELearner, policy: Policy, gamma: float) -> None:
    if fqe is None:
        raise ConfigError("the estimator needs a fitted FQE critic (fqe=fit_fqe(dataset, policy, gamma))")
    if fqe.policy is not policy:
        raise ConfigError("the FQE critic was fitted for a different policy object; fit it for this policy")
    if abs(fqe.config.gamma - float(gamma)) > 1e-12:
        raise ConfigError(f"the FQE critic was fitted with gamma={fqe.config.gamma}, the estimate asks gamma={gamma}")


LOW_ESS_SHARE = 0.05
"""An IS estimate with ESS below this share of the episodes gets a warning note (a heuristic; on CartPole PDIS/SNTIS
at 1.6-3.9% were 9-81% off, at 8-25% 9-18%)."""
_DM_NOTE = "the interval covers only the spread of Vhat(s_0) over episodes, not the critic's fitting error"


def _say(progress: bool, msg: str) -> None:
    """``ope: msg`` on stderr; ``msg`` as text, not rich markup (so "E[w] = 1" keeps its brackets)."""
    if progress:
        console.print(f"[dim]ope:[/] {escape(msg)}")


def _reuse(cache: dict | None, key: str, sources: tuple, make: Callable[[], Any]) -> Any:
    """``make()``, kept in ``cache[key]`` while asked with the same ``sources`` objects (compared by identity and
    held, so a new object never hits a stale entry)."""
    if cache is None:
        return make()
    hit = cache.get(key)
    if hit is None or len(hit[0]) != len(sources) or any(a is not b for a, b in zip(hit[0], sources)):
        hit = cache[key] = (sources, make())
    return hit[1]


def _fqe_notes(fqe) -> tuple[dict[str, float], list[str]]:
    report = getattr(fqe, "fit_report", None)
    if report is None:
        return {}, []
    return report.diagnostics(), [f"warning: {w}" for w in report.warnings]


def estimate_value(estimator: str, dataset: Dataset, policy: Policy, gamma: float, fqe: FQELearner | None = None,
                   behavior_log_prob: np.ndarray | None = None, n_boot: int = 1000, confidence: float = 0.95,
                   seed: int | np.random.Generator | None = 0, ci: str = "bootstrap", clip: float | None = None,
                   min_ess: float = core.MIN_ESS, value_range: tuple[float, float] | None = None,
                   weight_config=None, bandwidth: float = extended.DEFAULT_BANDWIDTH, cvar_alpha: float = 0.1,
                   cache: dict | None = None, progress: bool = False) -> OPEResult:
    """One estimate of J(``policy``) from ``dataset`` with a confidence interval and a degeneracy verdict.

    Args:
        estimator: "pdis", "snpdis", "tis", "sntis", "dr", "sndr" (:mod:`hybridrl.ope.core`), or "dm"/"fqe" (mean
            over episodes of ``Vhat(s_0) = E_{a~pi} Qhat(s_0, a)``; the result is named as asked).
        dataset, policy, gamma: logged episodes, target policy pi, discount in [0, 1].
        fqe: critic of ``policy`` fitted with the same gamma (:func:`fit_fqe`); needed by "dr", "sndr", "dm", "fqe".
            A critic from :func:`fit_fqe` carries its fit report: an unconverged fit adds a warning note.
        behavior_log_prob: ``[N]`` log pi_0 overriding ``dataset.behavior_log_prob`` (IS estimators).
        n_boot, confidence, seed: interval settings (bootstrap: ``n_boot`` resamples over episodes).
        ci: interval kind, one of :data:`hybridrl.ope.intervals.INTERVALS`; ``value_range`` bounds the per-episode
            terms for "hoeffding"/"bernstein" (default: their observed range).
        clip: per-step importance-ratio cap c > 0 or None (biased when it binds; :mod:`hybridrl.ope.core`).
        min_ess: ESS threshold of degeneracy (:func:`hybridrl.ope.core.degeneracy`).
        weight_config, bandwidth, cvar_alpha, cache, progress: DualDICE/MWL/MQL settings
            (:class:`~hybridrl.ope.weights.WeightConfig`), kernel bandwidth (fraction of the action half-width),
            CVaR level (:mod:`hybridrl.ope.extended`); a per-policy dict reusing weight fits, log-probabilities and
            the IS/DR episode arrays between estimators; a progress bar for the weight fits.
    Raises:
        ConfigError: unknown estimator or interval, bad gamma/clip, missing critic, or one fitted for another policy
            object/gamma.
        DatasetError, ShapeError: see :func:`importance_weights`; ShapeError also when the policy does not fit.
    """
    if estimator not in _ALL:
        raise ConfigError(f"unknown OPE estimator {estimator!r}; expected one of {list(_ALL)}")
    if ci not in intervals.INTERVALS:
        raise ConfigError(f"unknown interval {ci!r}; expected one of {list(intervals.INTERVALS)}")
    _check_inputs(dataset, policy, gamma)
    extra_diag, extra_notes, distribution = {}, [], None
    if estimator in _NEEDS_FQE:
        _check_fqe(fqe, policy, gamma)
        extra_diag, extra_notes = _fqe_notes(fqe)
    if estimator in ("dm", "fqe"):
        s0 = np.asarray(dataset.observations, dtype=np.float32)[np.asarray(dataset.episode_starts)[:-1]]
        v0 = fqe.value(torch.as_tensor(s0)).double().numpy()
        est = core.mean_estimate(v0, {"v0_std": float(v0.std())}, [_DM_NOTE])
    elif estimator in extended.EXTENDED:
        est, more_diag, more_notes, cdf = extended.estimate(
            estimator, dataset, policy, gamma, fqe, behavior_log_prob, cache, weight_config, bandwidth, cvar_alpha,
            clip, seed if isinstance(seed, int) else int(np.random.default_rng(seed).integers(2**31)), progress)
        extra_diag.update(more_diag)
        extra_notes = more_notes + extra_notes
        distribution = None if cdf is None else cdf.to_dict()
    else:
        log_ratio, mask, rewards = _reuse(cache, "is_arrays", (dataset, policy, behavior_log_prob), lambda: (
            *episode_arrays(dataset, importance_weights(dataset, policy, behavior_log_prob, cache)),
            episode_arrays(dataset, dataset.rewards)[0]))
        if estimator in ("dr", "sndr"):
            q_hat, v_hat = _reuse(cache, "dr_arrays", (dataset, fqe), lambda: (
                episode_arrays(dataset, _batched(fqe.q, dataset))[0],
                episode_arrays(dataset, _batched(lambda o, a: fqe.value(o), dataset))[0]))
            est = (core.dr if estimator == "dr" else core.sndr)(log_ratio, rewards, mask, gamma, q_hat, v_hat, clip)
        else:
            est = _CORE[estimator](log_ratio, rewards, mask, gamma, clip)
    e = len(est.per_episode)
    low, high, ci_notes = intervals.confidence_interval(ci, est.per_episode, est.resample, confidence, n_boot, seed,
                                                        value_range)
    reasons = core.degeneracy(est.estimate, est.diagnostics, e, min_ess, estimator in _SELF_NORMALISED,
                              value_bounds(dataset.rewards, gamma), check_mean_weight=estimator in ("pdis", "tis")
                              and clip is None)
    notes = [n for n in est.notes if "overflow" not in n or not reasons] + ci_notes + extra_notes
    share = est.diagnostics.get("ess_fraction")
    if share is not None and share < LOW_ESS_SHARE and not reasons:
        notes.append(f"warning: the effective sample size is {est.diagnostics['ess']:.1f} of {e} episodes "
                     f"({share:.1%}): the estimate rests on a few episodes' weights and can be far off although it "
                     "passes the degeneracy checks")
    return OPEResult(estimator, est.estimate, est.per_episode, low, high, confidence, e, notes,
                     {**est.diagnostics, **extra_diag}, interval=ci, interval_meaning=intervals.MEANINGS[ci],
                     degenerate=bool(reasons), degenerate_reasons=reasons, distribution=distribution)


# ------------------------------------------------------------------------------------------------ pipeline
def fit_fqe(dataset: Dataset, policy: Policy, gamma: float, config: FQEConfig | None = None, steps: int | None = None,
            seed: int = 0, progress: bool = False, early_stop: bool = True, tol: float = 0.02,
            name: str = "fqe") -> FQELearner:
    """Fit an FQE critic of ``policy`` on ``dataset`` (:func:`hybridrl.algos.fqe.fit`) and attach its report.

    ``config.gamma`` is replaced by ``gamma``. ``steps`` is the budget (default
    :func:`hybridrl.algos.fqe.default_max_steps`, which fits the discount horizon); with ``early_stop`` the fit ends
    when the value has converged (held-out check, tolerance ``tol``), otherwise it runs all ``steps`` and still
    reports convergence. The learner's ``fit_report`` (:class:`~hybridrl.algos.fqe.FQEFitReport`) says whether it
    converged; estimates made with it carry a warning note when it did not. A progress bar goes to stderr when
    ``progress``.
    Raises: ConfigError (bad steps/config), DivergenceError if the TD loss becomes NaN or inf.
    """
    if steps is not None and steps < 0:
        raise ConfigError(f"fit_fqe: steps must be >= 0, got {steps}")
    config = dataclasses.replace(config or FQEConfig(), gamma=float(gamma))
    budget = default_max_steps(config.gamma, config.tau) if steps is None else int(steps)
    with progress_bar(progress) as bar:
        task = bar.add_task(name, total=budget, info="")

        def on_check(step, total, row):
            bar.update(task, completed=step, info=f"V(s0) {row[1]:.4g} held-out Bellman {row[2]:.3g}")

        learner, report = fqe_fit(dataset, policy, config, budget, seed, tol=tol, on_check=on_check,
                                  min_steps=None if early_stop else budget)
        bar.update(task, completed=budget if report.converged or not early_stop else report.steps,
                   info=("converged" if report.converged else "NOT converged") + f" after {report.steps} steps")
    learner.fit_report = report
    return learner


def evaluate_ope(dataset: Dataset, policies: dict[str, Policy],
                 estimators: tuple[str, ...] | list[str] = DEFAULT_ESTIMATORS, gamma: float = 0.99,
                 fqe_steps: int | None = None, fqe_config: FQEConfig | None = None, behavior_steps: int = 2000,
                 n_boot: int = 1000, confidence: float = 0.95, seed: int = 0, progress: bool = False,
                 ci: str = "bootstrap", clip: float | None = None, min_ess: float = core.MIN_ESS,
                 value_range: tuple[float, float] | None = None, weight_config=None,
                 bandwidth: float = extended.DEFAULT_BANDWIDTH, cvar_alpha: float = 0.1, workers: int | None = None,
                 address: str | None = None, fqe_batch: bool = True) -> dict[str, dict[str, OPEResult]]:
    """Estimate the value of each policy with each estimator.

    One FQE critic is fitted per policy (when "fqe", "dr" or "sndr" is asked; ``fqe_steps`` is its budget, default
    from the discount horizon, with an early stop) and shared by the critic-based estimators. If
    ``dataset.behavior_log_prob`` is None and an IS-based estimator is asked, a calibrated behaviour model is fitted
    once (:func:`hybridrl.ope.behavior.fit_behavior_model`, ``behavior_steps`` BC steps); each IS-based result then
    carries a note and the model's held-out diagnostics (``behavior_heldout_mean_weight``, ~1 expected, and
    ``behavior_heldout_loglik``). ``ci``, ``clip``, ``min_ess``, ``value_range``, ``weight_config``, ``bandwidth``,
    ``cvar_alpha``: see :func:`estimate_value`; DualDICE/MWL/MQL fits are shared between a policy's estimators.
    With ``progress``, each stage is announced on stderr and FQE shows a progress bar.
    ``workers``: fit the candidates in parallel as Ray tasks (:func:`hybridrl.scale.ope.evaluate_parallel`, local
    runtime or ``address``); each task fits its own FQE, so the results are identical to ``fqe_batch=False``.
    ``fqe_batch`` (default): with two or more candidates (and no ``workers``), their FQE critics are fitted together
    (:func:`hybridrl.algos.fqe_batched.fit_fqe_batched`: the sequential fits' initialisation and minibatches, all
    Q-networks stacked; same values for discrete actions, target-action sampling noise for continuous ones).

    Returns: ``{policy_name: {estimator: OPEResult}}``.
    Raises: ConfigError for an unknown estimator/interval (the message lists the valid ones) or no policies;
        the errors of the estimators.
    """
    estimators = [estimators] if isinstance(estimators, str) else list(estimators)
    for name in estimators:
        if name not in ESTIMATORS:
            hint = difflib.get_close_matches(name, ESTIMATORS, n=1)
            raise ConfigError(f"unknown OPE estimator {name!r}; expected one of {list(ESTIMATORS)}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    if ci not in intervals.INTERVALS:
        raise ConfigError(f"unknown interval {ci!r}; expected one of {list(intervals.INTERVALS)}")
    if not estimators or not policies:
        raise ConfigError("evaluate_ope needs at least one estimator and one policy")
    if not 0.0 <= float(gamma) <= 1.0:
        raise ConfigError(f"gamma must be in [0, 1], got {gamma}")
    for name, policy in policies.items():  # fail before any fitting, naming the policy and both shapes
        check_policy_fits_dataset(policy, dataset, f"policy {name!r}")
    if dataset.n_episodes < 1:
        raise DatasetError(f"dataset {dataset.path or ''} holds no episodes; OPE needs at least one")

    model = None
    blp = dataset.behavior_log_prob
    if blp is None and any(e in IS_ESTIMATORS for e in estimators):
        from hybridrl.ope.behavior import fit_behavior_model

        _say(progress, "the dataset logs no behaviour probabilities: fitting a behaviour model "
                       f"({behavior_steps} BC steps)")
        model = fit_behavior_model(dataset, steps=behavior_steps, seed=seed)
        blp = model.log_prob
        _say(progress, model.describe())
    job = _PolicyJob(tuple(estimators), gamma, fqe_config, fqe_steps, seed, progress, model, n_boot, confidence, ci,
                     clip, min_ess, value_range, len(policies), weight_config, bandwidth, cvar_alpha)
    if workers is not None:
        from hybridrl.scale.ope import evaluate_parallel

        _say(progress, f"{len(policies)} candidates as Ray tasks on {workers} workers (the dataset goes to the "
                       "object store once)")
        return evaluate_parallel(dataset, policies, job, workers, address)
    fqes = {}
    if fqe_batch and len(policies) > 1 and any(e in _NEEDS_FQE for e in estimators):
        from hybridrl.algos.fqe_batched import fit_fqe_batched

        _say(progress, f"fitting FQE for the {len(policies)} candidates together (batched; --no-fqe-batch fits "
                       "them in turn)")
        fqes = fit_fqe_batched(dataset, policies, gamma, fqe_config, fqe_steps, seed, progress)
    return {pname: job(dataset, p_idx, pname, policy, fqes.get(pname))
            for p_idx, (pname, policy) in enumerate(policies.items())}


@dataclass
class _PolicyJob:
    """Every estimator for one candidate (FQE fitted once if asked; behaviour log-probs from the dataset or ``model``),
    each with ``rng = default_rng([seed, p_idx, e_idx])``: results do not depend on which process runs it."""

    estimators: tuple[str, ...]
    gamma: float
    fqe_config: FQEConfig | None
    fqe_steps: int | None
    seed: int
    progress: bool
    model: Any
    n_boot: int
    confidence: float
    ci: str
    clip: float | None
    min_ess: float
    value_range: tuple[float, float] | None
    n_policies: int
    weight_config: Any
    bandwidth: float
    cvar_alpha: float

    def __call__(self, dataset: Dataset, p_idx: int, pname: str, policy: Policy,
                 fqe: FQELearner | None = None) -> dict[str, OPEResult]:
        estimators, gamma, seed, model, ci = self.estimators, self.gamma, self.seed, self.model, self.ci
        clip, min_ess, value_range, n_boot, confidence = self.clip, self.min_ess, self.value_range, self.n_boot, \
            self.confidence
        progress, policies = self.progress, range(self.n_policies)
        weight_config, bandwidth, cvar_alpha = self.weight_config, self.bandwidth, self.cvar_alpha
        blp = dataset.behavior_log_prob if model is None else model.log_prob

        if fqe is None and any(e in _NEEDS_FQE for e in estimators):
            _say(progress, f"policy {pname} ({p_idx + 1}/{len(policies)}): fitting FQE")
            fqe = fit_fqe(dataset, policy, gamma, self.fqe_config, self.fqe_steps, seed, progress, name=f"fqe {pname}")
        _say(progress, f"policy {pname} ({p_idx + 1}/{len(policies)}): " + ", ".join(estimators)
             + f" with {ci} intervals")
        cache: dict = {}  # log-probs, IS/DR episode arrays, weight / MQL fits shared between this policy's estimators
        behavior_diag = {}
        if model is not None:
            behavior_diag = model.diagnostics(policy_log_prob(dataset, policy, cache))
        res: dict[str, OPEResult] = {}
        for e_idx, name in enumerate(estimators):
            rng = np.random.default_rng([seed, p_idx, e_idx])
            if name in extended.MARGINAL:
                _say(progress, f"policy {pname}: {name} (fits DualDICE/MWL/MQL once per policy)")
            r = estimate_value(name, dataset, policy, gamma, fqe, None if name == "fqe" else blp, n_boot, confidence,
                               rng, ci, clip if name != "fqe" else None, min_ess, value_range, weight_config,
                               bandwidth, cvar_alpha, cache, progress)
            if model is not None and name in IS_ESTIMATORS:
                r.notes.append(model.describe())
                r.diagnostics.update(behavior_diag)
                r.behavior_estimated = True
                mw = behavior_diag["behavior_heldout_mean_weight"]
                if np.isfinite(mw) and not 0.8 <= mw <= 1.25:
                    r.notes.append(f"warning: the behaviour model's held-out mean importance weight for this policy "
                                   f"is {mw:.3g} (about 1 expected): the estimated behaviour policy is off")
            res[name] = r
            if r.degenerate:
                _say(progress, f"policy {pname}: {name} is degenerate: " + "; ".join(r.degenerate_reasons))
        return res
