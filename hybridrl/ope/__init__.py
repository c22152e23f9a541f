"""Off-policy evaluation (OPE) and selection (OPS).

* :mod:`hybridrl.ope.core`: the pure estimators :func:`pdis`, :func:`snpdis`, :func:`tis`, :func:`sntis`,
  :func:`dr`, :func:`sndr` on padded ``[E, T]`` log-ratios, rewards and masks (optional per-step clipping), and
  :func:`degeneracy` (when an estimate cannot be used, in words).
* :mod:`hybridrl.ope.intervals`: bootstrap, Student-t, Hoeffding and empirical-Bernstein intervals.
* :mod:`hybridrl.ope.estimators`: the binding to datasets and policies: :func:`importance_weights`,
  :func:`episode_arrays`, :func:`fit_fqe` (with a convergence check), :func:`estimate_value` and
  :func:`evaluate_ope` (several estimators on several policies).
* :mod:`hybridrl.ope.behavior`: a calibrated behaviour-cloning model of unknown behaviour log-probabilities.
* :mod:`hybridrl.ope.marginal` (marginal IS/DR), :mod:`hybridrl.ope.weights` (DualDICE, MWL, MQL),
  :mod:`hybridrl.ope.kernel` (kernel-smoothed IS for deterministic continuous policies),
  :mod:`hybridrl.ope.distributional` (CD-DM/IS/DR/SNIS/SNDR return CDFs), bound to datasets by
  :mod:`hybridrl.ope.extended`; :mod:`hybridrl.ope.plots` (OPS plots).
* :mod:`hybridrl.ope.select`: ranking, Regret@k, rank correlation, nMSE, SharpeRatio@k, type I/II error rates and
  top-k statistics.

Fitting nuisance models (FQE critic, behaviour policy) is kept apart from estimating: the estimators take a fitted
:class:`~hybridrl.algos.fqe.FQELearner` or log-probabilities as arguments.
"""

from hybridrl.ope.behavior import BehaviorModel, estimate_behavior_log_prob, fit_behavior_model, fit_behavior_policy
from hybridrl.ope.core import Estimate, degeneracy, dr, pdis, sndr, snpdis, sntis, tis
from hybridrl.ope.distributional import CD_ESTIMATORS, CDFEstimate, cdf_estimate, plot_cdfs
from hybridrl.ope.estimators import (
    DEFAULT_ESTIMATORS,
    ESTIMATORS,
    IS_ESTIMATORS,
    OPEResult,
    check_policy_fits_dataset,
    episode_arrays,
    estimate_value,
    evaluate_ope,
    fit_fqe,
    importance_weights,
)
from hybridrl.ope.intervals import INTERVALS, bernstein_ci, bootstrap_ci, confidence_interval, hoeffding_ci, t_ci
from hybridrl.ope.kernel import log_kernel_ratio
from hybridrl.ope.marginal import mdr, mis
from hybridrl.ope.plots import plot_estimates_vs_truth, plot_top_k_curve, write_ope_plots
from hybridrl.ope.select import (
    SelectionResult,
    error_rates,
    pick_estimator,
    rank_correlation,
    regret_at_k,
    select,
    sharpe_ratio_at_k,
    top_k,
    top_k_stats,
)
from hybridrl.ope.weights import WeightConfig, WeightFit, fit_weights

__all__ = [
    "CD_ESTIMATORS", "CDFEstimate", "WeightConfig", "WeightFit", "cdf_estimate", "fit_weights", "log_kernel_ratio",
    "mdr", "mis", "plot_cdfs", "plot_estimates_vs_truth", "plot_top_k_curve", "write_ope_plots",
    "DEFAULT_ESTIMATORS", "ESTIMATORS", "INTERVALS", "IS_ESTIMATORS", "BehaviorModel", "Estimate", "OPEResult",
    "SelectionResult", "bernstein_ci", "bootstrap_ci", "check_policy_fits_dataset", "confidence_interval",
    "degeneracy", "dr", "episode_arrays", "error_rates", "estimate_behavior_log_prob", "estimate_value",
    "evaluate_ope", "fit_behavior_model", "fit_behavior_policy", "fit_fqe", "hoeffding_ci", "importance_weights",
    "pdis", "pick_estimator", "rank_correlation", "regret_at_k", "select", "sharpe_ratio_at_k", "sndr", "snpdis",
    "sntis", "t_ci", "tis", "top_k", "top_k_stats",
]
