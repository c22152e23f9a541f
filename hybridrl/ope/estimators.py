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

import numpy as np
import torch

from hybridrl.algos.fqe import FQEConfig, FQELearner
from hybridrl.data.dataset import Dataset
from hybridrl.errors import ConfigError, DatasetError, DivergenceError, ShapeError
from hybridrl.nn import Policy, policy_matches_spaces
from hybridrl.ope import core
from hybridrl.runs.progress import progress_bar

__all__ = [
    "ESTIMATORS", "OPEResult", "check_policy_fits_dataset", "episode_arrays", "estimate_value", "evaluate_ope",
    "fit_fqe", "importance_weights",
]

#: Estimator names accepted by :func:`evaluate_ope` ("fqe" is the direct method with an FQE critic).
ESTIMATORS = ("fqe", "pdis", "snpdis", "dr")
_ALL = (*ESTIMATORS, "dm")  # what estimate_value accepts ("dm" = "fqe" under its textbook name)
_CHUNK = 65536  # rows per forward pass when evaluating a policy or critic on the whole dataset


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
        behavior_estimated: True when the importance weights used behaviour log-probabilities estimated by
            behaviour cloning (the dataset logged none); a note then says so too.
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

    def to_dict(self, per_episode: bool = False) -> dict:
        """The fields as plain Python (JSON-able; NaN stays NaN); ``per_episode`` (E floats) only when asked."""
        d = {"estimator": self.estimator, "estimate": float(self.estimate), "ci_low": float(self.ci_low),
             "ci_high": float(self.ci_high), "confidence": float(self.confidence), "n_episodes": int(self.n_episodes),
             "notes": list(self.notes), "diagnostics": {k: float(v) for k, v in self.diagnostics.items()},
             "behavior_estimated": bool(self.behavior_estimated)}
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


def _check_fqe(fqe: FQELearner, policy: Policy, gamma: float) -> None:
    if fqe is None:
        raise ConfigError("the estimator needs a fitted FQE critic (fqe=fit_fqe(dataset, policy, gamma))")
    if fqe.policy is not policy:
        raise ConfigError("the FQE critic was fitted for a different policy object; fit it for this policy")
    if abs(fqe.config.gamma - float(gamma)) > 1e-12:
        raise ConfigError(f"the FQE critic was fitted with gamma={fqe.config.gamma}, the estimate asks gamma={gamma}")


_DM_NOTE = "the interval covers only the spread of Vhat(s_0) over episodes, not the critic's fitting error"


def estimate_value(estimator: str, dataset: Dataset, policy: Policy, gamma: float, fqe: FQELearner | None = None,
                   behavior_log_prob: np.ndarray | None = None, n_boot: int = 1000, confidence: float = 0.95,
                   seed: int | np.random.Generator | None = 0) -> OPEResult:
    """One estimate of J(``policy``) from ``dataset`` with a bootstrap interval.

    Args:
        estimator: "pdis", "snpdis", "dr" (:mod:`hybridrl.ope.core`), or "dm"/"fqe" (mean over episodes of
            ``Vhat(s_0) = E_{a~pi} Qhat(s_0, a)``; the result is named as asked).
        dataset, policy, gamma: logged episodes, target policy pi, discount in [0, 1].
        fqe: critic of ``policy`` fitted with the same gamma (:func:`fit_fqe`); needed by "dr", "dm", "fqe".
        behavior_log_prob: ``[N]`` log pi_0 overriding ``dataset.behavior_log_prob`` (IS estimators).
        n_boot, confidence, seed: percentile bootstrap over episodes (:func:`hybridrl.ope.core.bootstrap_ci`).
    Raises:
        ConfigError: unknown estimator, bad gamma, missing critic, or one fitted for another policy object/gamma.
        DatasetError, ShapeError: see :func:`importance_weights`; ShapeError also when the policy does not fit.
    """
    if estimator not in _ALL:
        raise ConfigError(f"unknown OPE estimator {estimator!r}; expected one of {list(_ALL)}")
    _check_inputs(dataset, policy, gamma)
    if estimator in ("dm", "fqe"):
        _check_fqe(fqe, policy, gamma)
        s0 = np.asarray(dataset.observations, dtype=np.float32)[np.asarray(dataset.episode_starts)[:-1]]
        v0 = fqe.value(torch.as_tensor(s0)).double().numpy()
        est = core.mean_estimate(v0, {"v0_std": float(v0.std())}, [_DM_NOTE])
    else:
        if estimator == "dr":
            _check_fqe(fqe, policy, gamma)
        log_ratio, mask = episode_arrays(dataset, importance_weights(dataset, policy, behavior_log_prob))
        rewards = episode_arrays(dataset, dataset.rewards)[0]
        if estimator == "dr":
            q_hat = episode_arrays(dataset, _batched(fqe.q, dataset))[0]
            v_hat = episode_arrays(dataset, _batched(lambda o, a: fqe.value(o), dataset))[0]
            est = core.dr(log_ratio, rewards, mask, gamma, q_hat, v_hat)
        else:
            est = (core.pdis if estimator == "pdis" else core.snpdis)(log_ratio, rewards, mask, gamma)
    e = len(est.per_episode)
    with np.errstate(invalid="ignore", over="ignore"):
        low, high = core.bootstrap_ci(est.resample, e, n_boot, confidence, seed)
    return OPEResult(estimator, est.estimate, est.per_episode, low, high, confidence, e, est.notes, est.diagnostics)


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
    for name, policy in policies.items():  # fail before any fitting, naming the policy and both shapes
        check_policy_fits_dataset(policy, dataset, f"policy {name!r}")
    if dataset.n_episodes < 1:
        raise DatasetError(f"dataset {dataset.path or ''} holds no episodes; OPE needs at least one")
    note = None
    blp = dataset.behavior_log_prob
    if blp is None and any(e in ("pdis", "snpdis", "dr") for e in estimators):
        from hybridrl.ope.behavior import estimate_behavior_log_prob

        blp = estimate_behavior_log_prob(dataset, steps=behavior_steps, seed=seed)
        note = f"behaviour log-probabilities estimated by behaviour cloning ({behavior_steps} steps)"
    out: dict[str, dict[str, OPEResult]] = {}
    for p_idx, (pname, policy) in enumerate(policies.items()):
        fqe = None
        if "fqe" in estimators or "dr" in estimators:
            fqe = fit_fqe(dataset, policy, gamma, fqe_config, fqe_steps, seed, progress)
        res: dict[str, OPEResult] = {}
        for e_idx, name in enumerate(estimators):
            rng = np.random.default_rng([seed, p_idx, e_idx])
            r = estimate_value(name, dataset, policy, gamma, fqe, None if name == "fqe" else blp, n_boot, confidence,
                               rng)
            if note is not None and name != "fqe":
                r.notes.append(note)
                r.behavior_estimated = True
            res[name] = r
        out[pname] = res
    return out
