"""Pieces every loop shares: run start/resume, checkpoint and evaluation triggers, metric means, stop signals,
divergence checks, the rollout collector, progress bars.

Checkpoints: every ``checkpoint_every`` steps when given, else every :data:`DEFAULT_CHECKPOINT_SECONDS` (10 min) of
wall time; always at the end of training and on SIGINT/SIGTERM (then :class:`~hybridrl.errors.Interrupted` is
raised), so a run killed with default settings can continue with ``resume``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridrl.envs import true_next_obs
from hybridrl.errors import DivergenceError, Interrupted
from hybridrl.runs import (
    MetricsLogger,
    RunDir,
    latest_checkpoint,
    load_checkpoint,
    load_config,
    save_checkpoint,
    save_config,
)
from hybridrl.runs.metrics import nonfinite_keys
from hybridrl.runs.progress import console, progress_bar  # noqa: F401  (re-exported for the loops)


def open_run(run: RunDir | None, record: dict, resume: bool) -> tuple[RunDir | None, MetricsLogger | None]:
    """Write ``config.yaml`` (fresh runs) and open the metrics logger."""
    if run is None:
        return None, None
    if not resume or not run.config_path.exists():
        save_config(run.config_path, record)
    return run, MetricsLogger(run)


def start_run(run: RunDir | None, learner: Any, record: dict, resume: bool
              ) -> tuple[MetricsLogger | None, int, dict]:
    """Open ``run`` for ``learner``: write its config (fresh run) or restore the latest checkpoint (``resume``).

    Returns ``(logger, step, loop_state)``: the metrics logger (None without a run; rows logged after the
    checkpoint are dropped on resume), the step to continue from (0 on a fresh run) and the loop's saved state.
    """
    run, logger = open_run(run, record, resume)
    step, loop_state = restore(run, learner) if (resume and run is not None) else (0, {})
    if logger is not None and resume:
        logger.truncate(step)
    return logger, step, loop_state


def end_run(logger: MetricsLogger | None, run: RunDir | None, algo: str, step: int, unit: str = "steps") -> None:
    """Close the logger and say where the run is."""
    if logger is not None:
        logger.close()
    if run is not None:
        console.print(f"[green]{algo}[/] finished {step} {unit} in {run.path}")


def run_record(**kwargs: Any) -> dict:
    """A JSON/YAML-able record of a run's inputs (dataclass configs become dicts)."""
    out = {}
    for k, v in kwargs.items():
        if dataclasses.is_dataclass(v):
            v = {f.name: (list(x) if isinstance(x := getattr(v, f.name), tuple) else x) for f in dataclasses.fields(v)}
        elif isinstance(v, Path):
            v = str(v)
        out[k] = v
    return out


def saved_record(run: RunDir) -> dict:
    """The record a run was started with (for ``--resume``)."""
    return load_config(run.config_path)


def learner_modules(learner: Any) -> list[torch.nn.Module]:
    """The ``torch.nn.Module`` attributes of a learner (its networks), for divergence checks."""
    return [m for m in vars(learner).values() if isinstance(m, torch.nn.Module)]


def checkpoint(run: RunDir | None, step: int, learner: Any, extra: dict | None = None) -> Path | None:
    """Save learner state, RNG states and loop state as ``checkpoints/step_<step>/``."""
    if run is None:
        return None
    state = {"learner": learner.state_dict(), "torch_rng": torch.get_rng_state(), "loop": extra or {}}
    return save_checkpoint(run, step, state)


def restore(run: RunDir, learner: Any) -> tuple[int, dict]:
    """Load the latest checkpoint into ``learner``; returns ``(step, loop_state)``."""
    path = latest_checkpoint(run)
    if path is None:
        return 0, {}
    step, state = load_checkpoint(path)
    learner.load_state_dict(state["learner"])
    torch.set_rng_state(state["torch_rng"])
    console.print(f"[green]resumed[/] from {path} (step {step})")
    return step, state.get("loop", {})


def raise_if_nonfinite(metrics: dict[str, float], modules: list[torch.nn.Module], step: int,
                       run: RunDir | None) -> None:
    """Raise :class:`DivergenceError` if a metric or parameter is NaN/inf, naming the last good checkpoint."""
    bad = nonfinite_keys(metrics)
    if not bad:
        for m in modules:
            for name, p in m.named_parameters():
                if not torch.isfinite(p).all():
                    bad.append(f"parameter {name}")
                    break
    if bad:
        last = latest_checkpoint(run) if run is not None else None
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was written before it"
        raise DivergenceError(
            f"training diverged at step {step}: non-finite {', '.join(bad[:5])}; stopped without saving; {where}"
        )


class MetricMeans:
    """Running sums of metric dicts; :meth:`pop` returns the means since the last pop and starts again."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def means(self) -> dict[str, float]:
        """Means of the metrics added since the last :meth:`pop` (empty when none)."""
        return {k: v / self.count for k, v in self.sums.items()} if self.count else {}

    def pop(self) -> dict[str, float]:
        out = self.means()
        self.sums, self.count = {}, 0
        return out


class Every:
    """A step trigger: true at the first step at or past each multiple of ``interval`` (never when None)."""

    def __init__(self, interval: int | None, step: int = 0):
        self.interval = interval
        self.next = (step // interval + 1) * interval if interval else math.inf

    def __call__(self, step: int) -> bool:
        if step < self.next:
            return False
        self.next = (step // self.interval + 1) * self.interval
        return True


DEFAULT_CHECKPOINT_SECONDS = 600.0
"""Wall-time checkpoint interval when a loop is given no ``checkpoint_every`` (plus one at the end)."""


class CheckpointTrigger:
    """When to checkpoint: every ``every`` steps, or (``every`` None) every :data:`DEFAULT_CHECKPOINT_SECONDS` of
    wall time; always at ``total`` (the end of training)."""

    def __init__(self, every: int | None, step: int, total: int):
        self.steps, self.total = Every(every, step), total
        self.seconds = None if every else DEFAULT_CHECKPOINT_SECONDS
        self.last = time.monotonic()

    def __call__(self, step: int) -> bool:
        due = self.steps(step) or step >= self.total
        if self.seconds is not None and time.monotonic() - self.last >= self.seconds:
            due = True
        if due:
            self.last = time.monotonic()
        return due


class StopSignals:
    """Defer SIGINT and SIGTERM inside a training loop, so that it stops at a consistent point.

    The first signal only records ``signal_number``; the loop checks it after each completed update, writes a
    checkpoint and raises :class:`~hybridrl.errors.Interrupted` (see :func:`interrupted`). A second signal raises
    ``KeyboardInterrupt`` at once. Handlers are installed only in the main thread and restored on exit.
    """

    def __enter__(self) -> StopSignals:
        self.signal_number: int | None = None
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_number is not None:
            raise KeyboardInterrupt
        self.signal_number = signum
        console.print("[yellow]stopping after the current update[/] (a checkpoint follows; signal again to abort)")

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def interrupted(stop: StopSignals, run: RunDir | None, step: int, save: Callable[[], Path | None]) -> Interrupted:
    """The :class:`Interrupted` to raise after a stop signal, with the checkpoint ``save()`` wrote at ``step``."""
    path = save() if run is not None else None
    console.print(f"[yellow]interrupted at step {step}[/]" + (f"; checkpoint {path}" if path else ""))
    return Interrupted(step, path, stop.signal_number or signal.SIGINT)


def json_ready(obj: Any) -> Any:
    """Convert NumPy scalars/arrays inside ``obj`` to plain Python for ``json.dumps``."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def collect_block(envs, policy, obs: np.ndarray, n_steps: int, episodes: EpisodeStats, scaler=None,
                  store_scaled_reward: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Step a same-step-autoreset vector env ``n_steps`` times with ``policy``, starting from ``obs``.

    Actions come from ``policy.sampler()`` (a snapshot: the weights must not change meanwhile); the behaviour
    log-probabilities are computed afterwards for the whole block in one batched ``policy.log_prob``.
    ``scaler`` (a :class:`~hybridrl.envs.RewardScaler` or None) sees every raw reward; the block stores the
    scaled rewards when ``store_scaled_reward``, the raw ones otherwise. ``episodes`` records raw returns.

    Returns:
        ``(obs, block)``: the observation to continue from, and float32/bool/int64 arrays ``[n_steps, num_envs, ...]``
        named like :class:`~hybridrl.data.batches.Segments` fields: ``obs, action, reward, next_obs, terminated,
        truncated, behavior_log_prob``; ``next_obs`` is the true next observation at episode ends.
    """
    act = policy.sampler()
    block: dict[str, np.ndarray] = {}
    for t in range(n_steps):
        action = act(obs)
        next_obs, reward, term, trunc, infos = envs.step(action)
        done = term | trunc
        scaled = scaler(reward, done) if scaler is not None else reward
        row = {"obs": obs, "action": action, "reward": scaled if store_scaled_reward else reward,
               "next_obs": true_next_obs(next_obs, infos, done), "terminated": term, "truncated": trunc}
        if not block:  # allocate once the shapes are known
            block = {k: np.empty((n_steps, *np.shape(v)), bool if k in ("terminated", "truncated") else
                                 np.int64 if k == "action" and policy.discrete else np.float32) for k, v in row.items()}
        for k, v in row.items():
            block[k][t] = v
        episodes.add(reward, done)
        obs = next_obs
    t, n = block["reward"].shape
    with torch.no_grad():
        flat = (torch.from_numpy(block[k].reshape(t * n, *block[k].shape[2:])) for k in ("obs", "action"))
        block["behavior_log_prob"] = policy.log_prob(*flat).numpy().reshape(t, n)
    return obs, block


class EpisodeStats:
    """Undiscounted return and length of the episodes finished in ``n`` vector envs (mean of the last ``window``)."""

    def __init__(self, n: int, window: int = 20):
        self.ret, self.len = np.zeros(n), np.zeros(n, dtype=np.int64)
        self.recent: deque[tuple[float, int]] = deque(maxlen=window)

    def add(self, reward: np.ndarray, done: np.ndarray) -> None:
        """Record one vector step: ``reward [n]`` (raw, unscaled), ``done [n]`` (terminated or truncated)."""
        self.ret += reward
        self.len += 1
        for i in np.flatnonzero(done):
            self.recent.append((float(self.ret[i]), int(self.len[i])))
            self.ret[i], self.len[i] = 0.0, 0

    def summary(self) -> dict[str, float]:
        """``{"episode_return", "episode_length"}`` over the recent episodes (empty before the first one ends)."""
        if not self.recent:
            return {}
        return {"episode_return": float(np.mean([r for r, _ in self.recent])),
                "episode_length": float(np.mean([n for _, n in self.recent]))}
