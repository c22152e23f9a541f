"""Off-policy evaluation (OPE) and selection (OPS).

* :mod:`hybridrl.ope.core`: the pure estimators :func:`pdis`, :func:`snpdis`, :func:`dr` on padded ``[E, T]``
  log-ratios, rewards and masks, and :func:`bootstrap_ci`.
* :mod:`hybridrl.ope.estimators`: the binding to datasets and policies: :func:`importance_weights`,
  :func:`episode_arrays`, :func:`fit_fqe`, :func:`estimate_value` (PDIS, SNPDIS, DM with FQE, DR with an interval),
  and :func:`evaluate_ope` (several estimators on several policies).
* :mod:`hybridrl.ope.behavior`: behaviour-cloning estimate of unknown behaviour log-probabilities.
* :mod:`hybridrl.ope.select`: ranking, Regret@k, rank correlation, nMSE and SharpeRatio@k.

Fitting nuisance models (FQE critic, behaviour policy) is kept apart from estimating: the estimators take a fitted
:class:`~hybridrl.algos.fqe.FQELearner` or log-probabilities as arguments.
"""

from hybridrl.ope.behavior import estimate_behavior_log_prob, fit_behavior_policy
from hybridrl.ope.core import Estimate, bootstrap_ci, dr, pdis, snpdis
from hybridrl.ope.estimators import (
    ESTIMATORS,
    OPEResult,
    check_policy_fits_dataset,
    episode_arrays,
    estimate_value,
    evaluate_ope,
    fit_fqe,
    importance_weights,
)
from hybridrl.ope.select import SelectionResult, rank_correlation, regret_at_k, select, sharpe_ratio_at_k, top_k

__all__ = [
    "ESTIMATORS", "Estimate", "OPEResult", "SelectionResult", "bootstrap_ci", "check_policy_fits_dataset", "dr",
    "episode_arrays", "estimate_behavior_log_prob", "estimate_value", "evaluate_ope", "fit_behavior_policy", "fit_fqe",
    "importance_weights", "pdis", "rank_correlation", "regret_at_k", "select", "sharpe_ratio_at_k", "snpdis", "top_k",
]
