"""Learners: one ``<Algo>Config`` + ``<Algo>Learner`` per file, registered in :data:`ALGOS`.

A learner owns its networks and optimisers and exposes ``policy``, ``update(batch) -> dict[str, float]``,
``state_dict()`` and ``load_state_dict()``. It never steps an environment.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from hybridrl.errors import ConfigError


@dataclass(frozen=True)
class AlgoSpec:
    """How a learner is built and which loop drives it (``regime``: on_policy, offline or ope)."""

    config_cls: type
    learner_cls: type
    regime: str


def _registry() -> dict[str, AlgoSpec]:
    from hybridrl.algos.bc import BCConfig, BCLearner
    from hybridrl.algos.fqe import FQEConfig, FQELearner
    from hybridrl.algos.iql import IQLConfig, IQLLearner
    from hybridrl.algos.ppo import PPOConfig, PPOLearner

    return {
        "ppo": AlgoSpec(PPOConfig, PPOLearner, "on_policy"),
        "bc": AlgoSpec(BCConfig, BCLearner, "offline"),
        "iql": AlgoSpec(IQLConfig, IQLLearner, "offline"),
        "fqe": AlgoSpec(FQEConfig, FQELearner, "ope"),
    }


def get_algo(name: str) -> AlgoSpec:
    """Look up an algorithm by name (case-insensitive); :class:`ConfigError` with suggestions if unknown."""
    algos = _registry()
    key = name.lower()
    if key not in algos:
        hint = difflib.get_close_matches(key, algos, n=1)
        raise ConfigError(
            f"unknown algorithm {name!r}; expected one of {sorted(algos)}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    return algos[key]


def algo_names() -> list[str]:
    return sorted(_registry())


def optimizer_state(optimizers: dict[str, Any]) -> dict[str, Any]:
    return {k: opt.state_dict() for k, opt in optimizers.items()}
