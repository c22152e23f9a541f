"""Running the real ``hybridrl`` command line in a child process, for the subprocess-tier tests."""

from __future__ import annotations

import os
import subprocess
import sys

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args, cwd=None, check=True, env_extra=None, timeout=300) -> subprocess.CompletedProcess:
    """Run ``python -m hybridrl.cli ARGS``; with ``check``, fail the test (showing both streams) unless it exits 0."""
    proc = subprocess.run([sys.executable, "-m", "hybridrl.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**ENV, **(env_extra or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def expect_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user error: exit status 2, no traceback, and every fragment in stderr (whitespace-normalised)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    text = " ".join(proc.stderr.split())
    for f in fragments:
        assert f in text, (f, proc.stderr)
