"""Pieces every loop shares: run set-up, checkpoint/resume, divergence checks, progress bars, final outputs."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridrl.envs import true_next_obs
from hybridrl.errors import DivergenceError
from hybridrl.runs import (
    MetricsLogger,
    RunDir,
    latest_checkpoint,
    load_checkpoint,
    load_config,
    save_checkpoint,
    save_config,
)
from hybridrl.runs.progress import console, progress_bar  # noqa: F401  (re-exported for the loops)


def open_run(run: RunDir | None, record: dict, resume: bool) -> tuple[RunDir | None, MetricsLogger | None]:
    """Write ``config.yaml`` (fresh runs) and open the metrics logger."""
    if run is None:
        return None, None
    if not resume or not run.config_path.exists():
        save_config(run.config_path, record)
    return run, MetricsLogger(run)


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


def check_finite(metrics: dict[str, float], modules: list[torch.nn.Module], step: int, run: RunDir | None) -> None:
    """Raise :class:`DivergenceError` if a metric or parameter is NaN/inf, naming the last good checkpoint."""
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
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
