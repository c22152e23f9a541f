"""Training checkpoints for exact resume, without pickle.

``checkpoints/step_<N>/`` holds

- ``state.safetensors``: every tensor and NumPy array of the state, under path-like keys
  (``learner/actor_optim/state/0/exp_avg``);
- ``state.json``: the skeleton of the state tree, with placeholders for those arrays and tags that
  keep what JSON loses: int (or other non-str) dict keys, tuple vs list, ``OrderedDict``, NumPy
  arrays vs torch tensors, NumPy scalar dtypes. Python ints of any size (NumPy ``bit_generator``
  states) and NaN/inf floats round-trip exactly.

So ``load_checkpoint`` returns a tree equal to the saved one that ``nn.Module.load_state_dict``,
``torch.optim.Optimizer.load_state_dict``, ``np.random.Generator.bit_generator.state = ...`` and
``torch.set_rng_state`` accept. Tensors come back on the CPU (optimizers move state to their
parameters' device on load).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridrl.errors import ConfigError, HybridRLError
from hybridrl.runs.io import atomic_dir
from hybridrl.runs.rundir import STEP_DIR_RE, RunDir

_FORMAT, _VERSION = "hybridrl-checkpoint", 1
_STATE_JSON, _STATE_ST = "state.json", "state.safetensors"


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    def store(t: torch.Tensor) -> str:
        key = path or "."
        if key in tensors:
            key = f"{key}#{len(tensors)}"
        tensors[key] = t.detach().to("cpu", copy=True).contiguous()  # copy: no shared storage for safetensors
        return key

    if isinstance(obj, np.generic):  # before float: np.float64 subclasses float
        if obj.dtype.kind in "biufUS?":
            return {"t": "np", "dtype": obj.dtype.str, "v": obj.item()}
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    elif isinstance(obj, torch.Tensor):
        return {"t": "tensor", "k": store(obj)}
    elif isinstance(obj, np.ndarray):
        if not obj.dtype.hasobject:
            a = np.ascontiguousarray(obj)
            try:
                return {"t": "ndarray", "k": store(torch.from_numpy(a)), "dtype": obj.dtype.str}
            except TypeError:  # dtype torch lacks (big-endian, complex, datetime, old torch's uint32): raw bytes
                return {"t": "ndarray", "k": store(torch.from_numpy(a.reshape(-1).view(np.uint8))),
                        "dtype": obj.dtype.str, "shape": list(obj.shape)}
    elif isinstance(obj, dict):
        kind = "odict" if isinstance(obj, collections.OrderedDict) else "dict"
        items = [(k, _encode(v, f"{path}/{k}" if path else str(k), tensors)) for k, v in obj.items()]
        if all(type(k) is str for k in obj):
            return {"t": kind, "d": dict(items)}
        return {"t": kind, "items": [[_encode(k, path, {}), v] for k, v in items]}
    elif isinstance(obj, (list, tuple)):
        return {"t": "tuple" if isinstance(obj, tuple) else "list",
                "v": [_encode(v, f"{path}/{i}" if path else str(i), tensors) for i, v in enumerate(obj)]}
    raise HybridRLError(f"cannot checkpoint {type(obj).__name__} at '{path or '.'}' "
                        f"(dtype {getattr(obj, 'dtype', '-')}): supported are dicts, lists, tuples, torch tensors, "
                        "numeric NumPy arrays/scalars, and Python None/bool/int/float/str")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if not isinstance(node, dict):
        return node
    t = node["t"]
    if t == "tensor":
        return tensors[node["k"]]
    if t == "ndarray":
        a = tensors[node["k"]].numpy()
        return a.view(np.dtype(node["dtype"])).reshape(node["shape"]) if "shape" in node else a
    if t == "np":
        return np.dtype(node["dtype"]).type(node["v"])
    if t in ("list", "tuple"):
        seq = [_decode(v, tensors) for v in node["v"]]
        return tuple(seq) if t == "tuple" else seq
    if t in ("dict", "odict"):
        cls = collections.OrderedDict if t == "odict" else dict
        if "d" in node:
            return cls((k, _decode(v, tensors)) for k, v in node["d"].items())
        return cls((_decode(k, tensors), _decode(v, tensors)) for k, v in node["items"])
    raise KeyError(f"unknown node type {t!r}")


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def list_checkpoints(run: RunDir | str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(step, checkpoint dir), ...]`` of a run, ascending by step (temp/hidden dirs ignored)."""
    d = (run if isinstance(run, RunDir) else RunDir(run)).checkpoints_dir
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if p.is_dir() and (m := STEP_DIR_RE.fullmatch(p.name))]
    return sorted(found)


def latest_checkpoint(run: RunDir | str | os.PathLike) -> Path | None:
    """Checkpoint directory with the highest step, or None when the run has none."""
    found = list_checkpoints(run)
    return found[-1][1] if found else None


def save_checkpoint(run: RunDir | str | os.PathLike, step: int, state: dict, keep_last: int | None = 2) -> Path:
    """Write ``state`` to ``<run>/checkpoints/step_<step>/`` atomically, then prune old checkpoints.

    Args:
        run: the run directory. step: integer >= 0 (an existing ``step_<step>`` is replaced atomically).
        state: nested dicts/lists/tuples whose leaves are torch tensors, numeric NumPy arrays or
            scalars, or Python None/bool/int/float/str (e.g. ``{"learner": learner.state_dict(),
            "rng": np_rng.bit_generator.state, "torch_rng": torch.get_rng_state()}``). Not modified.
        keep_last: keep this many checkpoints (the new one included, others by highest step); older
            ones are deleted only after the new one is complete. None keeps all.

    Returns:
        The checkpoint directory.

    Raises:
        ConfigError: bad ``step`` or ``keep_last``. HybridRLError: an unsupported leaf (names its path).
    """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ConfigError(f"checkpoint step must be an integer >= 0, got {step!r}")
    if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
        raise ConfigError(f"keep_last must be an integer >= 1 or None, got {keep_last!r}")
    from safetensors.torch import save

    run = run if isinstance(run, RunDir) else RunDir(run)
    tensors: dict[str, torch.Tensor] = {}
    meta = {"format": _FORMAT, "version": _VERSION, "step": int(step), "tree": _encode(state, "", tensors)}
    final = run.checkpoints_dir / f"step_{int(step)}"
    with atomic_dir(final) as tmp:
        _write_synced(tmp / _STATE_ST, save(tensors, metadata={"format": _FORMAT, "step": str(int(step))}))
        _write_synced(tmp / _STATE_JSON, json.dumps(meta).encode("utf-8"))
    if keep_last is not None:
        others = [p for _, p in list_checkpoints(run) if p != final]
        for p in others[: max(len(others) - (keep_last - 1), 0)]:
            shutil.rmtree(p, ignore_errors=True)
    return final


def load_checkpoint(path: str | os.PathLike) -> tuple[int, Any]:
    """Read a checkpoint directory written by :func:`save_checkpoint`.

    Args:
        path: a ``checkpoints/step_<N>/`` directory (see :func:`latest_checkpoint`).

    Returns:
        ``(step, state)``: ``state`` equals the saved tree (tensors on CPU, NumPy arrays as NumPy arrays,
        int dict keys, tuples and ``OrderedDict`` preserved).

    Raises:
        HybridRLError: the directory or one of its files is missing, truncated or corrupt (names the
            file and suggests deleting the directory to fall back to an earlier checkpoint).
    """
    from safetensors.torch import load

    path = Path(path)
    if not path.is_dir():
        raise HybridRLError(f"checkpoint directory {path} does not exist")
    hint = f"; delete {path} to resume from an earlier checkpoint"
    for name in (_STATE_JSON, _STATE_ST):
        if not (path / name).is_file():
            raise HybridRLError(f"checkpoint {path} is incomplete: {name} is missing{hint}")
    try:
        meta = json.loads((path / _STATE_JSON).read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT or "tree" not in meta:
            raise ValueError(f"not a {_FORMAT} file")
        if meta.get("version") != _VERSION:
            raise ValueError(f"format version {meta.get('version')!r}, this hybridrl reads version {_VERSION}")
    except (ValueError, UnicodeDecodeError) as e:
        raise HybridRLError(f"checkpoint file {path / _STATE_JSON} is corrupt: {e}{hint}") from None
    try:
        tensors = load((path / _STATE_ST).read_bytes())
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise HybridRLError(f"checkpoint file {path / _STATE_ST} is truncated or corrupt ({e}){hint}") from None
    try:
        state = _decode(meta["tree"], tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise HybridRLError(f"checkpoint {path} is inconsistent: {_STATE_JSON} does not match "
                            f"{_STATE_ST} ({e}){hint}") from None
    return int(meta["step"]), state
