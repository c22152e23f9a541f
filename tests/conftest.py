"""Shared test settings: one torch thread per test process (pytest-xdist runs one process per core)."""

import os

import matplotlib
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)
os.environ.setdefault("MUJOCO_GL", "egl")


# --- Ray (tests marked `ray`): one local runtime per test process, shared by the session, always shut down. -----
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def _ray_session():
    pytest.importorskip("ray")
    from hybridrl.scale import runtime

    yield runtime
    runtime.shutdown()


@pytest.fixture
def ray_runtime(_ray_session):
    """A local Ray runtime (2 CPUs, 127.0.0.1 only, no dashboard) shared by this test process; skips without Ray.

    Started on first use (again if a test shut it down) and stopped at the end of the session. Under pytest-xdist
    every worker process starts its own runtime; Ray picks free ports and a fresh session directory.
    """
    return _ray_session.connect(num_cpus=2, timeout_s=60)
