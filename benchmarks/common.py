"""What every benchmark script records: the machine and versions a result came from, and atomic JSON writes.

Scripts run as ``python benchmarks/<name>.py`` from the repository root, so ``benchmarks/`` is on ``sys.path`` and
they import this module as ``common``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone


def cpu_model() -> str:
    """The CPU's model name from ``lscpu`` (``platform.processor()`` where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in out if line.startswith("Model name")), platform.processor())


def machine(threads: int, **extra) -> dict:
    """Date (UTC), CPU, cores, thread count, Python and library versions, 1-min load average, the exact command."""
    info = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
            "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "load_avg_at_start": os.getloadavg()[0]}
    for lib in ("torch", "gymnasium", "mujoco", "stable_baselines3"):
        if importlib.util.find_spec(lib) is not None:
            info[lib] = __import__(lib).__version__
    info["command"] = " ".join([os.path.relpath(sys.executable), *sys.argv])
    return {**info, **extra}


def save_json(results: dict, path: str) -> None:
    """Write ``results`` to ``path`` atomically (temp file + rename), so a killed run keeps the previous file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace(path + ".tmp", path)
