"""Scalar metrics: ``metrics.csv`` (one row per logged step) plus TensorBoard events in ``tb/``.

CSV layout: column ``step`` first, then the metric names sorted; a metric absent from a row is an
empty cell (read back as NaN). Rows are appended; when a new metric name appears, the whole file is
rewritten atomically with the union header.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hybridrl.errors import HybridRLError
from hybridrl.runs.io import atomic_write_text
from hybridrl.runs.rundir import RunDir


def _to_float(key: str, value: Any) -> float:
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"metric '{key}' must be a real scalar, got {type(value).__name__}: {value!r}") from e


def nonfinite_keys(metrics: Mapping[str, Any]) -> list[str]:
    """Names of the metrics whose value is NaN or +-inf (scalars, NumPy or one-element torch values)."""
    return [k for k, v in metrics.items() if not math.isfinite(_to_float(k, v))]


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or not rows[0] or rows[0][0] != "step":
        raise HybridRLError(f"metrics file {path} is not a hybridrl metrics CSV: its first column must be 'step'")
    return rows[0], rows[1:]


def _csv_text(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


class MetricsLogger:
    """Append scalar metrics of a run to ``run.metrics_csv`` and (optionally) TensorBoard ``run.tb_dir``.

    Continues an existing ``metrics.csv`` (resume); call :meth:`truncate` first to drop rows logged
    after the checkpoint being resumed. Use as a context manager or call :meth:`close`.

    Args:
        run: the run directory. tensorboard: also write TensorBoard scalars (writer created lazily).
    """

    def __init__(self, run: RunDir | str | os.PathLike, tensorboard: bool = True):
        self.run = run if isinstance(run, RunDir) else RunDir(run)
        self.tensorboard = tensorboard
        self._writer = None
        self._purge_step: int | None = None
        path = self.run.metrics_csv
        self._keys: list[str] = _read_rows(path)[0][1:] if path.exists() else []

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def log(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> None:
        """Record ``metrics`` at ``step`` (e.g. environment steps or gradient updates).

        Args:
            step: integer x-coordinate (>= 0).
            metrics: name -> real scalar (float, int, NumPy scalar, one-element tensor). NaN/inf are kept.
            prefix: namespace joined with ``/``: ``prefix="train"`` logs ``loss`` as ``train/loss``.

        Raises:
            TypeError: ``step`` is not an integer or a value is not a real scalar.
        """
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(f"step must be an integer, got {type(step).__name__}: {step!r}")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        values = {prefix + k: _to_float(prefix + k, v) for k, v in metrics.items()}
        path = self.run.metrics_csv
        new = set(values) - set(self._keys)
        if new or not path.exists():
            old_rows: list[dict[str, str]] = []
            if path.exists():
                header, rows = _read_rows(path)
                old_rows = [dict(zip(header, r)) for r in rows]
            self._keys = sorted(set(self._keys) | set(values))
            cols = ["step", *self._keys]
            table = [cols] + [[r.get(c, "") or "" for c in cols] for r in old_rows] + [self._row(step, values)]
            atomic_write_text(path, _csv_text(table))
        else:
            with open(path, "a", newline="", encoding="utf-8") as f:
                f.write(_csv_text([self._row(step, values)]))
        if self.tensorboard:
            writer = self._tb()
            for k, v in values.items():
                writer.add_scalar(k, v, int(step))

    def _row(self, step: int, values: Mapping[str, float]) -> list[str]:
        return [str(int(step))] + [repr(values[k]) if k in values else "" for k in self._keys]

    def _tb(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # heavy import: only when used

            self._writer = SummaryWriter(str(self.run.tb_dir), purge_step=self._purge_step)
            self._purge_step = None
        return self._writer

    def truncate(self, after_step: int) -> int:
        """Drop CSV rows with ``step > after_step`` (atomically) before resuming from a checkpoint.

        TensorBoard events past ``after_step`` are purged (hidden) when the writer next opens.
        Rows whose step cell is unreadable (a line cut short by a crash) are dropped too.
        Returns the number of rows dropped.
        """
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._purge_step = int(after_step) + 1
        path = self.run.metrics_csv
        if not path.exists():
            return 0
        header, rows = _read_rows(path)

        def keep(r: list[str]) -> bool:
            try:
                return len(r) == len(header) and int(r[0]) <= after_step
            except ValueError:
                return False

        kept = [r for r in rows if keep(r)]
        atomic_write_text(path, _csv_text([header, *kept]))
        return len(rows) - len(kept)

    def close(self) -> None:
        """Flush and close the TensorBoard writer (the CSV is written through on every :meth:`log`)."""
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def read_metrics(csv_path: str | os.PathLike | RunDir) -> dict[str, np.ndarray]:
    """Read a metrics CSV into columns.

    Args:
        csv_path: ``metrics.csv`` or a :class:`RunDir`.

    Returns:
        ``{"step": int64 [R], name: float64 [R], ...}`` in file order; empty cells are NaN. A last line
        cut short by a crash is ignored.

    Raises:
        HybridRLError: the file is missing, lacks the ``step`` column, or holds a non-numeric cell
            (names file, line and column).
    """
    path = csv_path.metrics_csv if isinstance(csv_path, RunDir) else Path(csv_path)
    if not path.is_file():
        raise HybridRLError(f"metrics file {path} does not exist")
    header, rows = _read_rows(path)
    data = np.full((len(rows), len(header)), np.nan)
    n = 0
    for i, row in enumerate(rows):
        try:
            if len(row) != len(header) or not row[0].strip():
                raise ValueError(f"expected {len(header)} cells, found {len(row)}")
            data[n] = [float(c) if c.strip() else np.nan for c in row]
            n += 1
        except ValueError as e:
            if i == len(rows) - 1:  # partial last line from an interrupted append
                break
            raise HybridRLError(f"metrics file {path}, line {i + 2}: unreadable row {row!r} ({e})") from None
    out = {c: data[:n, j].copy() for j, c in enumerate(header)}
    out["step"] = out["step"].astype(np.int64)
    return out
