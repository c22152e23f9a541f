"""Saving and loading policies, and the explicit registry of policy classes that :func:`load_policy` can rebuild.

A policy checkpoint is a folder with

* ``policy.json``: ``{"class": name in POLICY_CLASSES, "kwargs": constructor arguments, "env_id": str | null,
  "hybridrl_version": str, ...}``;
* ``model.safetensors``: the ``state_dict`` (weights and observation-normalisation statistics).

Loading never unpickles. A class is found through :data:`POLICY_CLASSES`, whose built-in entries are
``"module:qualname"`` paths imported on first use, so a saved policy loads whatever the caller imported before
(no registration by import side effect). User classes are added with :func:`register_policy_class`.

Every problem is a :class:`~hybridrl.errors.PolicyError` naming the file at fault: ``policy.json`` for a bad class
name, a missing or mistyped constructor argument (field, value and expected value), ``model.safetensors`` for
unreadable weights, weights that do not fit the class, or NaN/inf in a tensor.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
from pathlib import Path
from typing import Any

import torch

from hybridrl.errors import HybridRLError, PolicyError

__all__ = ["POLICY_CLASSES", "load_policy", "policy_class", "read_policy_meta", "register_policy_class", "save_policy"]

#: Class name (as written in ``policy.json``) -> the class, or its ``"module:qualname"`` imported on first use.
POLICY_CLASSES: dict[str, Any] = {
    "CategoricalPolicy": "hybridrl.nn:CategoricalPolicy",
    "DeterministicPolicy": "hybridrl.nn.deterministic:DeterministicPolicy",
    "GaussianPolicy": "hybridrl.nn:GaussianPolicy",
    "GaussianMixturePolicy": "hybridrl.nn.mixture:GaussianMixturePolicy",
    "TanhGaussianPolicy": "hybridrl.nn.tanh_gaussian:TanhGaussianPolicy",
    "TabularPolicy": "hybridrl.envs.toy:TabularPolicy",
    "FamilyPolicy": "hybridrl.algos.famo2o:FamilyPolicy",
}


def register_policy_class(cls: type, name: str | None = None) -> type:
    """Make :func:`load_policy` able to rebuild ``cls`` (a :class:`~hybridrl.nn.Policy` subclass); usable as decorator.

    ``name`` (default ``cls.__name__``) is what :func:`save_policy` writes as ``"class"``. Raises PolicyError if the
    name is already taken by another class.
    """
    from hybridrl.nn import Policy

    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise PolicyError(f"register_policy_class needs a hybridrl.nn.Policy subclass, got {cls!r}")
    name = name or cls.__name__
    current = POLICY_CLASSES.get(name)
    if current is not None and policy_class(name) is not cls:
        raise PolicyError(f"policy class name {name!r} is already registered for {current!r}")
    POLICY_CLASSES[name] = cls
    return cls


def policy_class(name: str) -> type:
    """The class registered as ``name`` (importing its module on first use). Raises PolicyError if unknown."""
    entry = POLICY_CLASSES.get(name) if isinstance(name, str) else None
    if entry is None:
        raise PolicyError(f"unknown policy class {name!r}; expected one of {sorted(POLICY_CLASSES)} "
                          "(register others with hybridrl.nn.register_policy_class)")
    if isinstance(entry, str):
        module, _, qualname = entry.partition(":")
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        POLICY_CLASSES[name] = entry = obj
    return entry


def save_policy(policy, directory: str | Path, env_id: str | None = None, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` + ``policy.json`` into ``directory`` atomically (temp dir + rename).

    The class must be registered (built in, or :func:`register_policy_class`); raises PolicyError otherwise.
    """
    from safetensors.torch import save_file

    from hybridrl import __version__
    from hybridrl.runs.io import atomic_dir

    name = type(policy).__name__
    if name not in POLICY_CLASSES or policy_class(name) is not type(policy):
        raise PolicyError(f"{type(policy).__qualname__} is not a registered policy class, so it could not be loaded "
                          "back; register it with hybridrl.nn.register_policy_class")
    directory = Path(directory)
    meta = {"class": name, "kwargs": policy.kwargs, "env_id": env_id, "hybridrl_version": __version__, **(extra or {})}
    with atomic_dir(directory) as tmp:
        tensors = {k: v.detach().contiguous().clone() for k, v in policy.state_dict().items()}
        save_file(tensors, str(tmp / "model.safetensors"))
        (tmp / "policy.json").write_text(json.dumps(meta, indent=2))
    return directory


# ------------------------------------------------------------------------------------- policy.json checks
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _kwarg_rules() -> dict[str, tuple[Any, str]]:
    from hybridrl.nn import ACTIVATIONS

    pos_int = (lambda x: _is_int(x) and x >= 1, "an integer >= 1")
    flag = (lambda x: isinstance(x, bool), "true or false")
    num = (_is_num, "a finite number")
    bounds = (lambda x: x is None or (isinstance(x, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v) for v in x)),
              "null or a list of numbers")
    return {
        "obs_dim": pos_int, "act_dim": pos_int, "n_actions": pos_int, "n_experts": pos_int,
        "hidden": (lambda x: isinstance(x, list) and all(_is_int(h) and h >= 1 for h in x),
                   "a list of integers >= 1 (hidden layer widths)"),
        "activation": (lambda x: x in ACTIVATIONS, f"one of {sorted(ACTIVATIONS)}"),
        "normalize_obs": flag, "tanh_mean": flag, "squash": flag, "state_dependent_std": flag,
        "log_std_init": num, "log_std_min": num, "log_std_max": num,
        "action_low": bounds, "action_high": bounds,
        "probs": (lambda x: isinstance(x, list) and all(isinstance(r, list) and all(_is_num(v) for v in r) for r in x),
                  "a list of rows of probabilities"),
    }


def _check_kwargs(cls: type, kwargs: Any, meta_path: Path) -> None:
    """Missing, unknown and mistyped constructor arguments -> PolicyError naming ``policy.json`` and the field."""
    if not isinstance(kwargs, dict):
        raise PolicyError(f"{meta_path}: field 'kwargs' is {kwargs!r}; expected an object of constructor arguments")
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    required = [k for k, p in params.items() if p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [k for k in required if k not in kwargs]
    if missing:
        raise PolicyError(f"{meta_path}: field 'kwargs' lacks {missing}; {cls.__name__} needs {required}")
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in kwargs if k not in params]
        if unknown:
            raise PolicyError(f"{meta_path}: field 'kwargs' has {unknown}, which {cls.__name__} does not take; "
                              f"expected some of {sorted(params)}")
    rules = _kwarg_rules()
    for key, value in kwargs.items():
        if key in rules and not (value is None and key in params and params[key].default is None):
            ok, expected = rules[key]
            if not ok(value):
                raise PolicyError(f"{meta_path}: field 'kwargs.{key}' is {value!r}; expected {expected}")


def read_policy_meta(directory: str | Path) -> dict:
    """Read and check ``policy.json``: a JSON object, a registered ``class``, an object ``kwargs``, a string/null
    ``env_id``. Raises :class:`PolicyError` naming ``policy.json``, the field and the expected value."""
    directory = Path(directory)
    meta_path = directory / "policy.json"
    if not directory.is_dir():
        raise PolicyError(f"policy directory {directory} does not exist")
    if not meta_path.is_file():
        raise PolicyError(f"{meta_path} is missing; a policy directory holds policy.json and model.safetensors")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PolicyError(f"{meta_path} is not valid JSON: {e}") from None
    except OSError as e:
        raise PolicyError(f"{meta_path} could not be read: {e}") from None
    if not isinstance(meta, dict):
        raise PolicyError(f"{meta_path} holds {type(meta).__name__}; expected a JSON object with 'class' and 'kwargs'")
    cls = meta.get("class")
    if not isinstance(cls, str) or cls not in POLICY_CLASSES:
        raise PolicyError(f"{meta_path}: field 'class' is {cls!r}; expected one of {sorted(POLICY_CLASSES)} "
                          "(register others with hybridrl.nn.register_policy_class)")
    if not isinstance(meta.get("kwargs"), dict):
        raise PolicyError(f"{meta_path}: field 'kwargs' is {meta.get('kwargs')!r}; expected an object of "
                          "constructor arguments")
    if not isinstance(meta.get("env_id"), (str, type(None))):
        raise PolicyError(f"{meta_path}: field 'env_id' is {meta['env_id']!r}; expected a string or null")
    return meta


def load_policy(directory: str | Path, env_id: str | None = None):
    """Rebuild a policy saved by :func:`save_policy` (no unpickling), in eval mode, with ``policy.env_id`` set.

    Args:
        directory: the policy folder.
        env_id: if given, the policy must have been trained on this env (or have no env recorded).
    Raises:
        PolicyError: missing files; a bad ``policy.json`` (class, kwargs field and expected value, env_id, or a
            policy from another env); an unreadable ``model.safetensors``, weights that do not fit the class, or a
            tensor holding NaN/inf (named).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = read_policy_meta(directory)
    meta_path = directory / "policy.json"
    if env_id is not None and meta.get("env_id") not in (None, env_id):
        raise PolicyError(f"{meta_path}: policy was trained on env {meta['env_id']!r}, not {env_id!r}")
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise PolicyError(f"{weights} is missing; a policy directory holds policy.json and model.safetensors")
    cls = policy_class(meta["class"])
    _check_kwargs(cls, meta["kwargs"], meta_path)
    try:
        policy = cls(**meta["kwargs"])
    except (HybridRLError, TypeError, ValueError, IndexError, KeyError) as e:
        raise PolicyError(f"{meta_path}: field 'kwargs' does not describe a valid {meta['class']}: {e}") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise PolicyError(f"{weights} could not be read: {e}") from None
    for name, t in state.items():
        bad = torch.isnan(t) | (t == math.inf) if t.is_floating_point() else None
        if bad is not None and name not in getattr(cls, "neg_inf_ok", ()):
            bad = bad | (t == -math.inf)
        if bad is not None and bool(bad.any()):
            raise PolicyError(f"{weights}: tensor {name!r} holds {int(bad.sum())} NaN/inf values of {t.numel()}; "
                              "the policy diverged or the file is corrupt")
    try:
        policy.load_state_dict(state)
    except RuntimeError as e:
        raise PolicyError(f"{weights} does not fit the {meta['class']} that {meta_path.name} describes: {e}") from None
    policy.env_id = meta.get("env_id")
    policy.eval()
    return policy
