"""Learners: one ``<Algo>Config`` + ``<Algo>Learner`` per file, each registered by one :func:`register` call at the
bottom of its own file, and looked up with :func:`get_algo`.

A learner owns its networks and optimisers and exposes ``policy``, ``update(batch) -> dict[str, float]``,
``state_dict()`` and ``load_state_dict()``. It never steps an environment.

Extension points (see ``docs/architecture.md``):

- a new algorithm is one file that ends with ``register("name", Config, Learner, loop=..., inputs=..., ...)``;
  the package's own modules are found by importing every module of ``hybridrl.algos`` on the first lookup;
- third-party code calls :func:`register` itself, or declares an entry point in the group ``hybridrl.algos``
  (a module, imported on the first lookup, whose import registers its algorithms);
- ``loop`` names the training loop lazily (a kind such as ``"on_policy"``, resolved by ``hybridrl.loops.train``,
  or ``"package.module:function"``), so this package never imports the loops;
- ``build`` replaces the default ``learner_cls(config, observation_space, action_space, seed=...)`` construction for
  learners that are not built from gym spaces (e.g. sequence models), with ``inputs`` naming what they consume.
"""

from __future__ import annotations

import difflib
import importlib
import math
import pkgutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hybridrl.errors import ConfigError

LOOP_KINDS = ("on_policy", "off_policy", "offline", "ope")
"""Loop kinds resolved by :mod:`hybridrl.loops.train`; ``"ope"`` learners are not trained by ``train``."""
INPUTS = ("env", "dataset", "env+dataset", "dataset+policy")
"""Input kinds ``train`` knows how to supply; a custom kind (e.g. ``"sequences"``) gets the raw ``dataset`` argument."""


@dataclass(frozen=True)
class AlgoSpec:
    """A registered algorithm.

    Attributes:
        name: lower-case registry key (the ``hybridrl train`` argument).
        config_cls: frozen config dataclass (defaults = the algorithm's published settings).
        learner_cls: the learner class (``learner_cls(config, observation_space, action_space, seed=...)``).
        loop: which loop drives it: a kind in :data:`LOOP_KINDS` or ``"module:function"`` (resolved lazily).
        inputs: what training needs: ``"env"``, ``"dataset"``, ``"env+dataset"`` (hybrid), ``"dataset+policy"``
            (OPE), or a custom kind for learners not built from gym spaces.
        action_spaces: the action spaces it supports, a subset of ``("discrete", "continuous")`` (empty: not gym).
        tiny: config fields of a tiny instance for the contract tests (``tests/test_learners.py``).
        summary: one line for ``hybridrl train --help``.
        build: optional ``build(config, seed=..., **inputs) -> learner`` replacing the gym-space constructor.
    """

    name: str
    config_cls: type
    learner_cls: type | None
    loop: str
    inputs: str = "env"
    action_spaces: tuple[str, ...] = ("discrete", "continuous")
    tiny: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    build: Callable[..., Any] | None = None

    @property
    def regime(self) -> str:
        """The loop kind (``"custom"`` for a ``module:function`` loop); kept for the loops' own checks."""
        return self.loop if self.loop in LOOP_KINDS else "custom"

    def make(self, config: Any, observation_space=None, action_space=None, seed: int = 0, **kwargs: Any):
        """Build the learner: ``build(config, seed=seed, **kwargs)`` if given, else the gym-space constructor."""
        if self.build is not None:
            return self.build(config, seed=seed, **kwargs)
        return self.learner_cls(config, observation_space, action_space, seed=seed, **kwargs)


_ALGOS: dict[str, AlgoSpec] = {}
_discovered = False


def register(name: str, config_cls: type, learner_cls: type | None = None, *, loop: str, inputs: str = "env",
             action_spaces: tuple[str, ...] = ("discrete", "continuous"), tiny: dict[str, Any] | None = None,
             summary: str = "", build: Callable[..., Any] | None = None, replace: bool = False) -> AlgoSpec:
    """Register an algorithm under ``name`` (case-insensitive); returns its :class:`AlgoSpec`.

    Registering the same classes again (a re-imported module) is a no-op.

    Raises:
        ConfigError: ``name`` is taken by other classes (pass ``replace=True`` to override it), ``loop`` is neither
            a known kind nor ``"module:function"``, neither ``learner_cls`` nor ``build`` is given, or
            ``action_spaces`` names an unknown space.
    """
    key = name.lower()
    if loop not in LOOP_KINDS and ":" not in loop:
        raise ConfigError(f"register({name!r}): loop={loop!r}; expected one of {LOOP_KINDS} or 'module:function'")
    if learner_cls is None and build is None:
        raise ConfigError(f"register({name!r}): give learner_cls or build")
    if unknown := set(action_spaces) - {"discrete", "continuous"}:
        raise ConfigError(f"register({name!r}): unknown action spaces {sorted(unknown)}; expected discrete/continuous")
    spec = AlgoSpec(key, config_cls, learner_cls, loop, inputs, tuple(action_spaces), dict(tiny or {}), summary, build)
    old = _ALGOS.get(key)
    if old is not None and not replace and (old.config_cls, old.learner_cls) != (config_cls, learner_cls):
        raise ConfigError(f"algorithm {key!r} is already registered ({old.learner_cls}); pass replace=True to override")
    _ALGOS[key] = spec
    return spec


def unregister(name: str) -> None:
    """Remove ``name`` from the registry (e.g. a test's temporary learner); a no-op if absent."""
    _ALGOS.pop(name.lower(), None)


def _discover() -> None:
    """Import every module of this package (each registers its algorithms), then the ``hybridrl.algos`` entry points."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    from importlib.metadata import entry_points

    for ep in entry_points(group="hybridrl.algos"):
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plug-in must not break the built-in algorithms
            warnings.warn(f"hybridrl.algos entry point {ep.name!r} ({ep.value}) failed to load: {e}", stacklevel=2)


def registry() -> dict[str, AlgoSpec]:
    """All registered algorithms, name -> :class:`AlgoSpec` (discovers the built-in ones on first call)."""
    _discover()
    return dict(_ALGOS)


def get_algo(name: str) -> AlgoSpec:
    """Look up an algorithm by name (case-insensitive); :class:`ConfigError` with suggestions if unknown."""
    algos = registry()
    key = name.lower()
    if key not in algos:
        hint = difflib.get_close_matches(key, algos, n=1)
        raise ConfigError(f"unknown algorithm {name!r}; expected one of {sorted(algos)}"
                          + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    return algos[key]


def algo_names() -> list[str]:
    """Sorted names of every registered algorithm."""
    return sorted(registry())


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
    """Raise :class:`ConfigError` unless each named field is finite and lies in its closed range ``(low, high)``
    (None = open), and no float field of ``config`` is NaN."""
    name = type(config).__name__
    for key, value in vars(config).items():
        if isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"{name}.{key}=nan; expected a number")
    for key, (low, high) in rules.items():
        value = getattr(config, key)
        if value is None:
            continue
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(f"{name}.{key}={value!r} is out of range; expected a finite number, "
                              f"{low if low is not None else '-inf'} <= {key} <= {high if high is not None else 'inf'}")
    activation = getattr(config, "activation", None)
    if activation is not None and activation not in ("tanh", "relu"):
        raise ConfigError(f"{name}.activation={activation!r}; expected 'tanh' or 'relu'")
    hidden = getattr(config, "hidden", None)
    if hidden is not None and (not hidden or any(int(h) <= 0 for h in hidden)):
        raise ConfigError(f"{name}.hidden={hidden!r}; expected positive layer widths such as 256,256")
