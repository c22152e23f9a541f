"""Connecting to Ray safely: a local runtime on loopback without a dashboard, or an existing cluster, with timeouts.

Ray 2.60 on Linux takes the machine's outward IP as the node address (even when ``ray.init`` is given
``_node_ip_address="127.0.0.1"``: it maps loopback back to that IP) and its gRPC servers (GCS, raylet, every worker)
then listen on all addresses. Ray's own switch ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` ("no multi-node cluster")
makes the node address 127.0.0.1, and then every listener of the local runtime (GCS, raylet, object manager, core
workers, runtime-env agent) binds to 127.0.0.1 only; ``tests/test_scale_runtime.py`` checks the sockets. Ray reads
that variable when ``ray`` is imported, so :func:`connect` sets it before the import (and, if ``ray`` was imported
already, sets the constant Ray derived from it).

Every blocking Ray call made by the project goes through :func:`get` (a timeout on every ``ray.get``), and
:func:`connect` turns an unreachable address or a version mismatch into a :class:`hybridrl.errors.ConfigError`
within ``timeout_s`` instead of a hang: it first opens a TCP connection to the cluster's GCS port (so a dead or
firewalled address fails in seconds, without entering ``ray.init``, whose own GCS wait is 60 s).
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from hybridrl.errors import ConfigError

RAY_EXTRA = "pip install 'hybridrl[ray]'"
DEFAULT_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 5.0
"""Seconds to wait for the TCP connection to a cluster's GCS port before :func:`connect` gives up."""


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
    """Loopback-only local runtime, no usage reporting (there is no internet here, and users should opt in)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import sys

    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # ray was imported before the variable was set: give it the value the variable means
        constants.ENABLE_RAY_CLUSTER = False


def _cluster_address(address: str) -> str:
    """``HOST:PORT`` of the GCS that ``address`` names (``auto``: ``RAY_ADDRESS`` or the file ``ray start`` writes).

    Raises: ConfigError (``auto`` with no running cluster recorded, or no ``:PORT``).
    """
    addr = address
    if addr == "auto":
        addr = os.environ.get("RAY_ADDRESS", "")
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if not addr and current.is_file():
            addr = current.read_text().strip()
        if not addr or addr == "auto":
            raise ConfigError("--address auto: no running Ray cluster found on this machine (start one with "
                              "`ray start --head`, or pass --address HOST:PORT, or set RAY_ADDRESS)")
    addr = addr.removeprefix("ray://")
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r}: expected 'auto' or HOST:PORT (e.g. 10.0.0.5:6379)")
    return f"{host.strip('[]')}:{port}"


def probe(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """Open (and close) a TCP connection to the GCS of ``address``; return its ``HOST:PORT``.

    Raises:
        ConfigError: nothing accepts connections there within ``timeout_s`` (names the address and the OS error).
    """
    hostport = _cluster_address(address)
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise ConfigError(f"cannot reach the Ray cluster at {hostport} (from --address {address!r}): {reason} "
                          f"within {timeout_s:.0f} s; is `ray start --head` running there and the port open to "
                          "this machine?") from None
    return hostport


def connect(address: str | None = None, *, num_cpus: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
            log_to_driver: bool = False) -> Any:
    """Start a local Ray runtime on 127.0.0.1 or connect to a running cluster, at most once per process.

    Args:
        address: None starts a new local runtime bound to 127.0.0.1 with no dashboard (even when another Ray
            instance runs on this machine, which plain ``ray.init()`` would join); ``"auto"`` or ``"HOST:PORT"``
            connects to an existing cluster (``ray start --head`` / ``ray://`` client addresses are passed through).
        num_cpus: CPUs the local runtime offers (None: all of this machine's). Ignored for an existing cluster.
        timeout_s: seconds to wait for the connection before giving up (the TCP probe of a cluster waits
            ``min(timeout_s, 5)``).
        log_to_driver: forward worker stdout/stderr to this process.

    Returns:
        The ``ray`` module, initialised.

    Raises:
        ConfigError: Ray is missing, the address cannot be reached within ``timeout_s``, or the cluster runs another
            Ray version (the message names the address and both versions when Ray reports them).
    """
    if address is None:
        _safe_local_env()  # before `import ray`: Ray reads it at import
    else:
        hostport = probe(address, min(timeout_s, PROBE_TIMEOUT_S))
        if hostport.rpartition(":")[0] in ("127.0.0.1", "localhost"):
            _safe_local_env()  # a cluster on this machine's loopback: keep Ray from rewriting it to the outward IP
    ray = require_ray()
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": log_to_driver,
                              "configure_logging": False}
    if address is None:
        # "local": always a new runtime of our own, never a cluster someone else started on this machine (plain
        # ray.init() would join the one in /tmp/ray/ray_current_cluster)
        kwargs.update(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1")
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
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
