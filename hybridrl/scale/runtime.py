"""Connecting to Ray safely: a local runtime on loopback without a dashboard, or an existing cluster, with timeouts.

Ray 2.60's defaults listen on every address and start a dashboard; a local runtime started here binds to 127.0.0.1
only and has no dashboard. Every blocking Ray call made by the project goes through :func:`get` (a timeout on every
``ray.get``), and :func:`connect` turns an unreachable address or a version mismatch into a
:class:`hybridrl.errors.ConfigError` within ``timeout_s`` instead of a hang.
"""

from __future__ import annotations

import os
from typing import Any

from hybridrl.errors import ConfigError

RAY_EXTRA = "pip install 'hybridrl[ray]'"
DEFAULT_TIMEOUT_S = 60.0


def require_ray():
    """Import and return the ``ray`` module.

    Raises:
        ConfigError: Ray is not installed (names the extra to install).
    """
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"this command needs Ray, which is not installed: {RAY_EXTRA}") from exc
    return ray


def _safe_local_env() -> None:
    # Loopback-only local runtime, no usage reporting (there is no internet here, and users should opt in).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def connect(address: str | None = None, *, num_cpus: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
            log_to_driver: bool = False) -> Any:
    """Start a local Ray runtime on 127.0.0.1 or connect to a running cluster, at most once per process.

    Args:
        address: None starts a local runtime bound to 127.0.0.1 with no dashboard; ``"auto"`` or ``"HOST:PORT"``
            connects to an existing cluster (``ray start --head`` / ``ray://`` client addresses are passed through).
        num_cpus: CPUs the local runtime offers (None: all of this machine's). Ignored for an existing cluster.
        timeout_s: seconds to wait for the connection before giving up.
        log_to_driver: forward worker stdout/stderr to this process.

    Returns:
        The ``ray`` module, initialised.

    Raises:
        ConfigError: Ray is missing, the address cannot be reached within ``timeout_s``, or the cluster runs another
            Ray version (the message names the address and both versions when Ray reports them).
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": log_to_driver,
                              "configure_logging": False}
    if address is None:
        _safe_local_env()
        kwargs.update(num_cpus=num_cpus, _node_ip_address="127.0.0.1")
    else:
        kwargs["address"] = address
    where = "a local runtime on 127.0.0.1" if address is None else f"the Ray cluster at {address!r}"
    try:
        ray.init(**kwargs)
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = " (the cluster and this machine must run the same Ray and Python versions)" \
            if "version" in str(exc).lower() else ""
        raise ConfigError(f"could not connect to {where}: {text}{hint}") from exc
    return ray


def get(refs: Any, *, timeout_s: float = 3600.0, what: str = "Ray tasks") -> Any:
    """``ray.get`` with a timeout that becomes a clear error.

    Raises:
        ConfigError: the results did not arrive within ``timeout_s`` (names ``what``).
    """
    ray = require_ray()
    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as exc:
        raise ConfigError(f"{what} did not finish within {timeout_s:.0f} s") from exc


def shutdown() -> None:
    """Stop this process's connection (and the local runtime it started, if any). Safe without Ray."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()
