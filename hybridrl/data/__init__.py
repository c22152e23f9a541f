"""Data: batch types, the Minari-backed :class:`Dataset`, collection and dataset measures.

``Transitions``/``Segments`` are imported eagerly (they sit at the top of the module map and are
imported by ``ops``/``losses``); ``Dataset``, ``collect`` and the measures are loaded on first access
so that ``import hybridrl.data.batches`` never pulls in envs, Minari or the policy code.
``collect`` is not re-exported (its name is also a submodule's): use
``from hybridrl.data.collect import collect``.
"""

from __future__ import annotations

import importlib
from typing import Any

from hybridrl.data.batches import Segments, Transitions

_LAZY = {
    "Dataset": "hybridrl.data.dataset",
    "minari_root": "hybridrl.data.dataset",
    "dataset_id_for_path": "hybridrl.data.dataset",
    "dataset_summary": "hybridrl.data.measures",
    "trajectory_quality": "hybridrl.data.measures",
    "state_action_coverage": "hybridrl.data.measures",
    "unique_state_actions": "hybridrl.data.measures",
    "plot_return_histogram": "hybridrl.data.measures",
}

__all__ = ["Segments", "Transitions", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hybridrl.data' has no attribute {name!r}")
