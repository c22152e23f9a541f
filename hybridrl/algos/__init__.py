"""Learners: one ``<Algo>Config`` + ``<Algo>Learner`` per file, looked up with :func:`get_algo`.

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
    from hybridrl.algos.hnpg import HNPGConfig, HNPGLearner
    from hybridrl.algos.iql import IQLConfig, IQLLearner
    from hybridrl.algos.mdpo import MDPOConfig, MDPOLearner
    from hybridrl.algos.mdpo_off import MDPOOffConfig, MDPOOffLearner
    from hybridrl.algos.npg import NPGConfig, NPGLearner, TRPOConfig
    from hybridrl.algos.pmoe_ppo import PMOEPPOConfig, PMOEPPOLearner
    from hybridrl.algos.ppo import PPOConfig, PPOLearner
    from hybridrl.algos.props import PROPSConfig, PROPSLearner
    from hybridrl.algos.replay_pg import ReplayPGConfig, ReplayPGLearner
    from hybridrl.algos.sac import SACConfig, SACLearner

    return {
        "ppo": AlgoSpec(PPOConfig, PPOLearner, "on_policy"),
        "pmoe_ppo": AlgoSpec(PMOEPPOConfig, PMOEPPOLearner, "on_policy"),
        "props": AlgoSpec(PROPSConfig, PROPSLearner, "on_policy"),
        "mdpo": AlgoSpec(MDPOConfig, MDPOLearner, "on_policy"),
        "replay_pg": AlgoSpec(ReplayPGConfig, ReplayPGLearner, "on_policy"),
        "bc": AlgoSpec(BCConfig, BCLearner, "offline"),
        "iql": AlgoSpec(IQLConfig, IQLLearner, "offline"),
        "fqe": AlgoSpec(FQEConfig, FQELearner, "ope"),
        "sac": AlgoSpec(SACConfig, SACLearner, "off_policy"),
        "mdpo_off": AlgoSpec(MDPOOffConfig, MDPOOffLearner, "off_policy"),
        "npg": AlgoSpec(NPGConfig, NPGLearner, "on_policy"),
        "trpo": AlgoSpec(TRPOConfig, NPGLearner, "on_policy"),
        "hnpg": AlgoSpec(HNPGConfig, HNPGLearner, "on_policy"),
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


def gradient_step(optimizer, loss, max_grad_norm: float | None = None) -> float:
    """One optimiser step on ``loss``: zero the gradients, backpropagate, clip the global gradient norm of the
    optimiser's parameters to ``max_grad_norm`` (None: no clipping), step.

    Returns the gradient norm before clipping (NaN when not clipped), for the ``grad_norm`` metric.
    """
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = float("nan")
    if max_grad_norm is not None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True))
    optimizer.step()
    return norm


def check_config(config: Any, **rules: tuple[float | None, float | None]) -> None:
    """Raise :class:`ConfigError` unless each named field lies in its closed range ``(low, high)`` (None = open)."""
    name = type(config).__name__
    for field, (low, high) in rules.items():
        value = getattr(config, field)
        if value is None:
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(f"{name}.{field}={value!r} is out of range; expected {low if low is not None else '-inf'}"
                              f" <= {field} <= {high if high is not None else 'inf'}")
    activation = getattr(config, "activation", None)
    if activation is not None and activation not in ("tanh", "relu"):
        raise ConfigError(f"{name}.activation={activation!r}; expected 'tanh' or 'relu'")
    hidden = getattr(config, "hidden", None)
    if hidden is not None and (not hidden or any(int(h) <= 0 for h in hidden)):
        raise ConfigError(f"{name}.hidden={hidden!r}; expected positive layer widths such as 256,256")
