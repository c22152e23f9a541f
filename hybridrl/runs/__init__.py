"""Run directories: config files and overrides, metrics (CSV + TensorBoard), checkpoints, plots."""

from hybridrl.runs.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from hybridrl.runs.config import apply_overrides, dataclass_from_dict, dataclass_to_dict, load_config, save_config
from hybridrl.runs.io import atomic_dir, atomic_write_bytes, atomic_write_text
from hybridrl.runs.metrics import MetricsLogger, check_finite, read_metrics
from hybridrl.runs.plots import plot_curves, plot_estimates, plot_histogram
from hybridrl.runs.rundir import RunDir

__all__ = [
    "RunDir", "save_config", "load_config", "apply_overrides", "dataclass_from_dict", "dataclass_to_dict",
    "MetricsLogger", "read_metrics", "check_finite", "save_checkpoint", "load_checkpoint", "latest_checkpoint",
    "list_checkpoints", "plot_curves", "plot_estimates", "plot_histogram", "atomic_write_bytes",
    "atomic_write_text", "atomic_dir",
]
