"""Off-policy evaluation (OPE) and selection (OPS).

* :mod:`hybridrl.ope.estimators`: PDIS, SNPDIS, DM (FQE), per-decision DR with bootstrap confidence
  intervals; :func:`evaluate_ope` runs several estimators on several policies.
* :mod:`hybridrl.ope.behavior`: behaviour-cloning estimate of unknown behaviour log-probabilities.
* :mod:`hybridrl.ope.select`: ranking, Regret@k, rank correlation, nMSE and SharpeRatio@k.

Fitting nuisance models (FQE critic, behaviour policy) is kept apart from estimating: the estimator
functions take a fitted :class:`~hybridrl.algos.fqe.FQELearner` or log-probabilities as arguments.
"""

from hybridrl.ope.behavior import estimate_behavior_log_prob, fit_behavior_policy
from hybridrl.ope.estimators import (
    ESTIMATORS,
    OPEResult,
    bootstrap_ci,
    dm,
    dr,
    evaluate_ope,
    fit_fqe,
    importance_weights,
    pdis,
    snpdis,
)
from hybridrl.ope.select import SelectionResult, rank_correlation, regret_at_k, select, sharpe_ratio_at_k, top_k

__all__ = [
    "ESTIMATORS", "OPEResult", "SelectionResult", "bootstrap_ci", "dm", "dr", "estimate_behavior_log_prob",
    "evaluate_ope", "fit_behavior_policy", "fit_fqe", "importance_weights", "pdis", "rank_correlation",
    "regret_at_k", "select", "sharpe_ratio_at_k", "snpdis", "top_k",
]
