"""Exceptions raised at hybridrl's public boundary.

Every error a user can cause (bad file, bad shape, bad option) is a :class:`HybridRLError`
subclass whose message says what was wrong, what was expected and where (file, field). The CLI
prints the message without a traceback (``--debug`` shows it) and exits with status 2.
"""

from __future__ import annotations


class HybridRLError(Exception):
    """Base class of all user-facing hybridrl errors."""


class DatasetError(HybridRLError):
    """A dataset is missing, truncated, malformed or holds non-finite values."""


class ShapeError(HybridRLError, ValueError):
    """A tensor or array does not have the expected shape or dtype."""


class EnvError(HybridRLError):
    """An environment id is unknown or an environment does not match the data or policy."""


class PolicyError(HybridRLError):
    """A policy directory is missing files, is corrupt, or belongs to another environment."""


class ConfigError(HybridRLError):
    """An unknown algorithm, an invalid config key or value, or an invalid option combination."""


class RunExistsError(HybridRLError):
    """A run directory already holds results and neither ``--overwrite`` nor ``--resume`` was given."""


class DivergenceError(HybridRLError):
    """Training produced NaN or inf; the last good checkpoint is kept."""


class Interrupted(HybridRLError):
    """Training or collection was stopped by SIGINT (Ctrl-C) or SIGTERM.

    Attributes:
        step: environment or gradient steps completed when the signal arrived.
        checkpoint: the checkpoint written on the way out (None when there was nothing to save).
        signal_number: ``signal.SIGINT`` or ``signal.SIGTERM`` (the CLI exits ``128 + signal_number``: 130 or 143).
    """

    def __init__(self, step: int, checkpoint=None, signal_number: int = 2):
        self.step, self.checkpoint, self.signal_number = int(step), checkpoint, int(signal_number)
        where = f"; checkpoint {checkpoint} (continue with --resume)" if checkpoint is not None else "; nothing saved"
        super().__init__(f"interrupted at step {self.step}{where}")
