"""Environments: :func:`make_env`, :func:`make_vec_env`, reward scaling and reference scores.

Importing this package registers hybridrl's toy environments (``hybridrl/Chain-v0``,
``hybridrl/Bandit-v0``) with Gymnasium when ``hybridrl/envs/toy.py`` is present.
"""

from __future__ import annotations

import importlib
import importlib.util

from hybridrl.envs.make import (
    REFERENCE_SCORES,
    RewardScaler,
    check_env_matches,
    make_env,
    make_vec_env,
    normalized_score,
    true_next_obs,
)

__all__ = ["REFERENCE_SCORES", "RewardScaler", "check_env_matches", "make_env", "make_vec_env",
           "normalized_score", "true_next_obs"]

if importlib.util.find_spec("hybridrl.envs.toy") is not None:
    importlib.import_module("hybridrl.envs.toy")  # registers the toy envs
