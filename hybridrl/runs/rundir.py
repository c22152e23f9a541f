"""The run directory: one folder per training/evaluation run, with fixed file names.

Layout of ``runs/<name>/``::

    config.yaml          fully resolved config (enough to rerun)
    metrics.csv, tb/     scalar metrics (CSV + TensorBoard events)
    checkpoints/step_<N>/  full training state for exact resume
    policy/              final policy (``hybridrl.nn.save_policy``)
    best_policy/         fine-tuning runs: the best evaluated policy (the start if nothing beat it)
    eval.json            evaluation summary
    curves.png, report.md

Every file is written atomically (temp sibling + rename), so a reader sees an old file or a new
one, never a partial one. An existing run is never clobbered: see :meth:`RunDir.create`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from hybridrl.errors import ConfigError, RunExistsError
from hybridrl.runs.io import atomic_write_text

STEP_DIR_RE = re.compile(r"step_(\d+)")
"""Name of a checkpoint directory under ``checkpoints/``; group 1 is the step."""
LOCK_NAME = ".lock"
"""Lock file of a run directory (``fcntl.flock``; holds the pid of the process that has it)."""


class RunDir:
    """Paths of one run directory. Constructing it touches nothing on disk; use :meth:`create` to start a run.

    Args:
        path: the run folder (``runs/<name>``); need not exist yet.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._replaced: Path | None = None  # old run moved aside by create(overwrite=True)
        self._created = False  # create() made the folder
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    config_path = property(lambda self: self.path / "config.yaml", doc="``config.yaml``: the resolved config.")
    metrics_csv = property(lambda self: self.path / "metrics.csv", doc="``metrics.csv``: one row per logged step.")
    tb_dir = property(lambda self: self.path / "tb", doc="``tb/``: TensorBoard event files.")
    checkpoints_dir = property(lambda self: self.path / "checkpoints", doc="``checkpoints/``: ``step_<N>/`` dirs.")
    policy_dir = property(lambda self: self.path / "policy", doc="``policy/``: the final policy.")
    eval_json = property(lambda self: self.path / "eval.json", doc="``eval.json``: evaluation summary.")
    curves_png = property(lambda self: self.path / "curves.png", doc="``curves.png``: learning curves.")
    report_md = property(lambda self: self.path / "report.md", doc="``report.md``: human-readable report.")

    @property
    def replaced_path(self) -> Path | None:
        """Hidden sibling holding the previous run while an ``overwrite`` run is uncommitted, else None."""
        return self._replaced

    def has_checkpoint(self) -> bool:
        """True when ``checkpoints/`` holds at least one complete ``step_<N>/`` directory."""
        d = self.checkpoints_dir
        return d.is_dir() and any(p.is_dir() and STEP_DIR_RE.fullmatch(p.name) for p in d.iterdir())

    @classmethod
    def create(cls, path: str | os.PathLike, overwrite: bool = False, resume: bool = False) -> RunDir:
        """Open ``path`` for a new run (or a resumed one) without ever losing finished results, and lock it.

        - missing or empty folder: created, returned.
        - non-empty folder, neither flag: raises :class:`RunExistsError`; nothing is touched.
        - ``resume=True``: the folder must hold a checkpoint (else :class:`ConfigError`: nothing to
          resume); it is returned unchanged and the caller restores the latest checkpoint.
        - ``overwrite=True``: the old run is *moved aside* to the hidden sibling
          ``.<name>.old-<timestamp>`` and a fresh empty folder is created. The old run is deleted
          by :meth:`commit` (once the new run has finished) or by :meth:`abandon` once the new run has a
          checkpoint; :meth:`abandon` before that (any failure, interrupts included) puts it back.

        The run is locked (``fcntl.flock`` on ``<run>/.lock``) until :meth:`release` or the process ends, so a
        second process opening it gets :class:`RunExistsError`; a lock left by a crashed process does not block.
        Check everything else (config, data, env) before calling this: it is the first step that writes.

        Raises:
            ConfigError: both flags given, ``resume`` with nothing to resume, or the folder cannot be written.
            RunExistsError: ``path`` is a file, a non-empty folder without a flag, or in use by another process.
        """
        path = Path(path)
        if overwrite and resume:
            raise ConfigError("--overwrite and --resume are mutually exclusive: pass one of them")
        if path.exists() and not path.is_dir():
            raise RunExistsError(f"run path {path} exists and is a file, not a run directory")
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise ConfigError(f"cannot create run directory {path}: {parent} is a file")
                break
        non_empty = path.is_dir() and any(p.name != LOCK_NAME for p in path.iterdir())
        run = cls(path)
        if resume:
            if not run.has_checkpoint():
                raise ConfigError(f"nothing to resume: {path} has no checkpoints/step_<N>/ directory; "
                                  "start a new run without --resume (or with --overwrite)")
            run._lock()
            return run
        if non_empty:
            if not overwrite:
                raise RunExistsError(f"run directory {path} already holds results; pass --overwrite to replace "
                                     "it, --resume to continue it, or choose another run name")
            run._lock()  # not while another process writes it
            stamp = time.strftime("%Y%m%d-%H%M%S")
            old = path.with_name(f".{path.name}.old-{stamp}")
            n = 1
            while old.exists():
                old, n = path.with_name(f".{path.name}.old-{stamp}-{n}"), n + 1
            _fs(os.replace, path, old, what=f"move the old run {path} aside")
            run.release()
            run._replaced = old
        try:
            existed = path.is_dir()
            _fs(path.mkdir, parents=True, exist_ok=True, what=f"create run directory {path}")
            run._created = not existed
            run._lock()
        except BaseException:
            run.abandon()
            raise
        return run

    def _lock(self) -> None:
        import fcntl

        lock = self.path / LOCK_NAME
        fd = _fs(os.open, lock, os.O_RDWR | os.O_CREAT, 0o666, what=f"lock run directory {self.path}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            pid = f" (pid {holder})" if holder else ""
            raise RunExistsError(f"run directory {self.path} is in use by another process{pid}; "
                                 "wait for it or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        """Release the lock taken by :meth:`create` (also released when the process ends); idempotent."""
        fd, self._lock_fd = getattr(self, "_lock_fd", None), None
        if fd is not None:
            os.close(fd)

    def commit(self) -> None:
        """Delete the old run moved aside by ``create(overwrite=True)``; a no-op otherwise."""
        if self._replaced is not None:
            shutil.rmtree(self._replaced, ignore_errors=True)
            self._replaced = None

    def rollback(self) -> None:
        """Discard this (partial) run and restore the old run moved aside by ``create(overwrite=True)``.

        A no-op when nothing was moved aside (the partial run is then left in place).
        """
        if self._replaced is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            os.replace(self._replaced, self.path)
            self._replaced = None

    def abandon(self) -> None:
        """Clean up after a failed run: with a checkpoint the new run stays (``--resume`` continues it) and the old
        one moved aside by ``overwrite`` is deleted; without one the old run is restored (:meth:`rollback`), and a
        folder this run created that holds nothing is removed."""
        if self.has_checkpoint():
            self.commit()
        elif self._replaced is not None:
            self.release()
            self.rollback()
        elif getattr(self, "_created", False) and self.path.is_dir() and \
                all(p.name == LOCK_NAME for p in self.path.iterdir()):
            self.release()
            shutil.rmtree(self.path, ignore_errors=True)

    def write_json(self, name: str, obj: Any) -> Path:
        """Atomically write ``obj`` as indented JSON to ``<run>/<name>``; NumPy/torch scalars and arrays,
        tuples and paths are converted to plain JSON. Returns the path."""
        return atomic_write_text(self.path / name, json.dumps(obj, indent=2, default=_json_default) + "\n")

    def write_text(self, name: str, text: str) -> Path:
        """Atomically write UTF-8 ``text`` to ``<run>/<name>``. Returns the path."""
        return atomic_write_text(self.path / name, text)


def _fs(fn, *args, what: str, **kwargs):
    """Call a filesystem function; an OSError (read-only, not a directory, no space) becomes a one-line ConfigError."""
    try:
        return fn(*args, **kwargs)
    except OSError as e:
        raise ConfigError(f"cannot {what}: {e.strerror or e}" + (f" ({e.filename})" if e.filename else "")) from e


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy arrays/scalars, torch tensors
        return obj.tolist()
    if isinstance(obj, (os.PathLike, set, frozenset)):
        return os.fspath(obj) if isinstance(obj, os.PathLike) else sorted(obj)
    raise TypeError(f"cannot write object of type {type(obj).__name__} to JSON")
