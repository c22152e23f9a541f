"""Config files (YAML) and typed ``key=value`` overrides of frozen config dataclasses.

Values are converted by the field's annotated type (string annotations from
``from __future__ import annotations`` are resolved with ``typing.get_type_hints``):

- ``bool``: true/false, 1/0, yes/no, on/off (case-insensitive); ``"False"`` is False.
- ``int``: ``"10"``, ``"1_000"``, ``"1e6"`` (an integral float); ``float``: ``"3e-4"``, ``"0.99"``.
- ``tuple[int, ...]`` / ``list[...]``: ``"256,256"``, ``"[256, 256]"``, ``"(256,256)"``, ``"[]"``.
- ``X | None`` / ``Optional[X]``: ``"none"`` or ``"null"`` give None; ``Literal[...]``: one of the choices.
- a nested dataclass: a mapping; with overrides use dotted keys (``optim.lr=1e-3``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import os
import types
import typing
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from hybridrl.errors import ConfigError
from hybridrl.runs.io import atomic_write_text

T = TypeVar("T")
_BOOLS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False, "on": True, "off": False}


class _AliasError(yaml.YAMLError):
    pass


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``): a few lines of nested aliases expand to billions of
    nodes (the "billion laughs" bomb), and config files never need them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise _AliasError(f"line {mark.line + 1}, column {mark.column + 1}: YAML aliases (*name) are not allowed "
                              "in hybridrl config files; write the values out")
        return super().compose_node(parent, index)


def safe_load_yaml(text: str) -> Any:
    """``yaml.safe_load`` without aliases. Raises ``yaml.YAMLError`` (also for an alias)."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def save_config(path: str | os.PathLike, config: Mapping[str, Any] | Any) -> Path:
    """Atomically write ``config`` (a mapping or a config dataclass) to ``path`` as YAML, keys in order.

    Tuples become lists, paths strings, enums their values, NumPy scalars Python scalars.
    """
    data = dataclass_to_dict(config) if dataclasses.is_dataclass(config) else _plain(config)
    return atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` (an empty file gives ``{}``).

    Raises:
        ConfigError: the file is missing, is not valid YAML (with line/column), or is not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    try:
        data = safe_load_yaml(text)
    except _AliasError as e:
        raise ConfigError(f"config file {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value, found a {type(data).__name__}")
    return data


def apply_overrides(config: T, overrides: Sequence[str] | Mapping[str, Any]) -> T:
    """Return a copy of the frozen dataclass ``config`` with ``key=value`` overrides applied.

    Args:
        config: a dataclass instance (e.g. ``PPOConfig()``); it is not modified.
        overrides: strings ``"key=value"`` (later ones win; dotted keys reach nested dataclasses), or a
            mapping ``{key: value}`` whose values are converted the same way.

    Raises:
        ConfigError: a string without ``=``; an unknown key (lists the valid keys and a close match);
            a value not convertible to the field's type (names key, value and type); or the new config
            rejected by its ``__post_init__``.
    """
    if isinstance(overrides, Mapping):
        changes = dict(overrides)
    else:
        if isinstance(overrides, str):
            overrides = [overrides]
        changes = {}
        for item in overrides:
            key, sep, raw = str(item).partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"invalid override {item!r}: expected key=value, e.g. lr=3e-4")
            changes[key.strip()] = raw.strip()
    return _replace(config, changes, "")


def dataclass_from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping (e.g. a loaded YAML section), converting values by field type.

    Args:
        cls: a dataclass type. data: field name -> value; omitted fields take their defaults.
        where: prefix for error messages, e.g. the file name.

    Raises:
        ConfigError: ``data`` is not a mapping, has unknown keys, lacks a required field, holds a value of
            the wrong type, or ``cls.__post_init__`` rejects it.
    """
    pre = f"{where}: " if where else ""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{pre}expected a mapping of {cls.__name__} keys, found a {type(data).__name__}")
    hints = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise ConfigError(pre + _unknown_msg(str(key), hints, cls))
        try:
            kwargs[key] = _coerce(value, hints[key], key)
        except ConfigError as e:
            raise ConfigError(f"{pre}{e}") from None
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{pre}{cls.__name__} requires key(s) {', '.join(missing)}")
    return _construct(lambda: cls(**kwargs), f"{pre}invalid {cls.__name__}")


def dataclass_to_dict(config: Any) -> dict[str, Any]:
    """Plain dict (YAML/JSON-ready) of a dataclass's init fields; nested dataclasses become dicts, tuples lists."""
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init}


# --- helpers ---------------------------------------------------------------------------------------------

def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclass_to_dict(obj)
    if isinstance(obj, Mapping):
        return {_plain(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        return obj.item()
    return obj


def _field_types(cls: type) -> dict[str, Any]:
    """Init field name -> resolved type (unresolvable string annotations become ``Any``)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - annotations naming TYPE_CHECKING-only imports
        hints = {}
    return {f.name: hints.get(f.name, f.type if not isinstance(f.type, str) else Any)
            for f in dataclasses.fields(cls) if f.init}


def _unknown_msg(key: str, hints: Mapping[str, Any], cls: type) -> str:
    renamed = getattr(cls, "RENAMED_KEYS", {}).get(key.rsplit(".", 1)[-1])  # a config's old key -> its new key
    if renamed is not None:
        return f"config key '{key}' of {cls.__name__} was renamed to '{renamed}'"
    close = difflib.get_close_matches(key, list(hints), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else "."
    return f"unknown config key '{key}' for {cls.__name__}{hint} Valid keys: {', '.join(hints)}"


def _construct(make, what: str):
    try:
        return make()
    except (ValueError, TypeError) as e:  # __post_init__ validation written as ValueError
        raise ConfigError(f"{what}: {e}") from e


def _replace(obj: Any, changes: Mapping[str, Any], prefix: str) -> Any:
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise ConfigError(f"cannot apply overrides to a {type(obj).__name__}: expected a config dataclass")
    hints = _field_types(type(obj))
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, raw in changes.items():
        head, dot, rest = key.partition(".")
        if head not in hints:
            raise ConfigError(_unknown_msg(prefix + head, {prefix + k: v for k, v in hints.items()}, type(obj)))
        if dot:
            if not dataclasses.is_dataclass(getattr(obj, head)):
                raise ConfigError(f"config key '{prefix}{head}' is not a nested config; cannot set '{prefix}{key}'")
            nested.setdefault(head, {})[rest] = raw
        else:
            direct[head] = _coerce(raw, hints[head], prefix + head)
    for head, sub in nested.items():
        direct[head] = _replace(direct.get(head, getattr(obj, head)), sub, f"{prefix}{head}.")
    return _construct(lambda: dataclasses.replace(obj, **direct), f"invalid {type(obj).__name__} after overrides")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "None")


def _split(text: str) -> list[str]:
    s = text.strip()
    if len(s) >= 2 and (s[0], s[-1]) in (("[", "]"), ("(", ")")):
        s = s[1:-1].strip()
    return [p.strip() for p in s.split(",")] if s else []


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (a CLI string or a YAML-loaded object) to type ``tp``; ConfigError names ``key``."""
    def bad(extra: str = "") -> ConfigError:
        return ConfigError(f"invalid value {value!r} for config key '{key}': expected {_type_name(tp)}{extra}")

    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        is_none = value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null"))
        if type(None) in args and is_none:
            return None
        for a in args:
            if a is not type(None):
                try:
                    return _coerce(value, a, key)
                except ConfigError:
                    pass
        raise bad()
    if origin is Literal:
        for c in args:
            if value == c and type(value) is type(c):
                return c
            if isinstance(value, str) and not isinstance(c, str):
                try:
                    if _coerce(value, type(c), key) == c:
                        return c
                except ConfigError:
                    pass
        raise bad(f" (one of {', '.join(map(repr, args))})")
    if origin in (tuple, list) or tp in (tuple, list):
        seq = _split(value) if isinstance(value, str) else value
        if not isinstance(seq, (list, tuple)):
            raise bad()
        container = origin or tp
        if not args or (container is tuple and len(args) == 2 and args[1] is Ellipsis) or container is list:
            elem = args[0] if args else Any
            return container(_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(seq))
        if args == ((),):  # tuple[()]
            args = ()
        if len(seq) != len(args):
            raise bad(f" ({len(args)} items, found {len(seq)})")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(seq, args)))
    if origin is dict or tp is dict:
        if isinstance(value, str):
            try:
                value = safe_load_yaml(value) if value.strip() else {}
            except yaml.YAMLError:
                raise bad() from None
        if not isinstance(value, Mapping):
            raise bad()
        kt, vt = args or (Any, Any)
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, numbers.Integral) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
        raise bad(" (true/false, yes/no, 1/0)")
    if tp is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    value_f = float(value)
                except ValueError:
                    raise bad() from None
        else:
            value_f = value
        if isinstance(value_f, numbers.Real) and math.isfinite(value_f) and float(value_f).is_integer():
            return int(value_f)
        raise bad()
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise bad() from None
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value):
            return float(value)
        raise bad(" (a number, not NaN)" if isinstance(value, numbers.Real) else "")
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad()
    if isinstance(tp, type) and issubclass(tp, os.PathLike):
        if isinstance(value, (str, os.PathLike)):
            return Path(value)
        raise bad()
    if isinstance(tp, type) and issubclass(tp, Enum):
        for m in tp:
            if value == m or value == m.value or value == m.name or (isinstance(value, str) and str(m.value) == value):
                return m
        raise bad(f" (one of {', '.join(str(m.value) for m in tp)})")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return dataclass_from_dict(tp, value, where=f"config key '{key}'")
        raise bad(" (a mapping)")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise bad()
    return value
