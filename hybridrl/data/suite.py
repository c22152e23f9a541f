"""A D4RL-style dataset suite made here: ``random``, ``medium``, ``medium-replay``, ``medium-expert``, ``expert``.

Definitions follow D4RL (Fu et al. 2020, "D4RL: Datasets for Deep Data-Driven RL", sec. 5 "Gym-MuJoCo"), with PPO
as the online learner (D4RL used SAC):

* **expert**: the best evaluated policy of one PPO run at the budget (``train_steps`` environment steps); D4RL's
  "trained to completion". Its return is reported next to D4RL's expert reference, which it may fall short of.
* **medium**: the policy of the same run whose evaluated return is closest to one third of the expert's.
* **medium-replay**: the data of the training run up to the medium policy: each PPO policy of the run up to medium
  (one per update) acts for as many environment steps as it collected during training (whole episodes, so slightly
  more). Deviation: these are fresh episodes from the same sequence of policies, not the stored rollouts; every
  step's ``behavior_log_prob`` is the log-probability under the policy that acted (exact, from :func:`collect`).
* **random**: uniform random actions. **medium-expert**: the union of medium and expert.

Every dataset carries ``behavior_log_prob`` and D4RL's reference returns (``ref_min_score``/``ref_max_score``:
Hopper -20.272305 / 3234.3, HalfCheetah -280.178953 / 12135.0, Walker2d 1.629008 / 4592.3), so normalised scores
compare with the literature (on different data). ``suite.json`` records the budget, returns and build times;
datasets and trained policies are cached in ``out`` and reused by later calls with the same env, budget and seed.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybridrl.errors import ConfigError

KINDS = ("random", "medium", "medium-replay", "medium-expert", "expert")
MANIFEST = "suite.json"


@dataclass(frozen=True)
class SuiteBudget:
    """How much a suite costs. ``train_steps``: PPO environment steps; ``n_steps``/``num_envs``: PPO rollout shape;
    ``dataset_steps``: steps of the random, medium and expert datasets (medium-replay is as long as the training run
    up to medium); ``eval_points``/``eval_episodes``: policies of the run evaluated (evenly spaced) and episodes
    each, to find the medium and expert policies."""

    train_steps: int
    n_steps: int
    num_envs: int
    dataset_steps: int
    eval_points: int
    eval_episodes: int


BUDGETS = {
    # whole suite for one MuJoCo env: PPO 1M steps (~10-15 min at ~1.5-2k env steps/s on one core) + 3 x 100k steps
    "default": SuiteBudget(1_000_000, 2048, 1, 100_000, 40, 3),
    "reduced": SuiteBudget(200_000, 2048, 1, 50_000, 20, 3),
    "tiny": SuiteBudget(512, 128, 1, 300, 3, 1),
}


def dataset_name(env_id: str, kind: str) -> str:
    """``hopper-medium-replay-v0`` for ``("Hopper-v5", "medium-replay")`` (a valid Minari id)."""
    base = env_id.split("/")[-1].rsplit("-v", 1)[0].lower()
    return f"{base}-{kind}-v0"


def _parse_kinds(kinds: str | list[str]) -> list[str]:
    names = [k.strip() for k in (kinds.split(",") if isinstance(kinds, str) else kinds) if k.strip()]
    bad = [k for k in names if k not in KINDS]
    if bad or not names:
        raise ConfigError(f"--kinds {','.join(names)!r}: unknown {bad}; expected some of {', '.join(KINDS)}")
    return names


def _read_manifest(out: Path, env_id: str, budget: str, seed: int) -> dict[str, Any]:
    path = out / MANIFEST
    if not path.exists():
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"--out {out} exists and is not a dataset suite (no {MANIFEST}); pass a new directory")
        return {"env_id": env_id, "budget": budget, "seed": seed, "datasets": {}, "timings_s": {}}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} could not be read ({e}); pass a new --out directory") from None
    saved = (manifest.get("env_id"), manifest.get("budget"), manifest.get("seed"))
    if saved != (env_id, budget, seed):
        raise ConfigError(f"{path} holds a suite for env/budget/seed {saved}, not {(env_id, budget, seed)}; cached "
                          "datasets are never replaced: pass another --out")
    return manifest


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    from hybridrl.runs.io import atomic_write_text

    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))


def _train(env_id: str, b: SuiteBudget, seed: int, out: Path, progress: bool) -> dict[str, Any]:
    """One PPO run; evaluates ``eval_points`` of its policies; saves expert, medium and the replay policies."""
    from hybridrl.algos.ppo import PPOConfig
    from hybridrl.loops.evaluate import evaluate_policy
    from hybridrl.loops.on_policy import train_on_policy
    from hybridrl.nn import save_policy

    snapshots: list[tuple[int, Any]] = []  # (env steps collected before this policy acted, policy)

    def keep(step: int, learner) -> None:
        snapshots.append((step, copy.deepcopy(learner.policy)))

    cfg = PPOConfig(n_steps=b.n_steps, num_envs=b.num_envs)
    first = train_on_policy(env_id, cfg, b.train_steps, seed=seed, progress=progress, callback=keep)
    del first
    block = b.n_steps * b.num_envs
    # the policy after update k acted for the next block; the initial policy is not kept, so replay starts at block 2
    grid = np.unique(np.linspace(0, len(snapshots) - 1, min(b.eval_points, len(snapshots))).round().astype(int))
    returns = {int(i): evaluate_policy(snapshots[i][1], env_id, b.eval_episodes, seed=seed + 50_000)["mean"]
               for i in grid}
    expert_i = max(returns, key=returns.get)
    target = returns[expert_i] / 3.0
    medium_i = min((i for i in returns if i <= expert_i), key=lambda i: abs(returns[i] - target))
    pol_dir = out / "policies"
    save_policy(snapshots[expert_i][1], pol_dir / "expert", env_id=env_id)
    save_policy(snapshots[medium_i][1], pol_dir / "medium", env_id=env_id)
    for i in range(medium_i + 1):
        save_policy(snapshots[i][1], pol_dir / "replay" / f"update_{i:05d}", env_id=env_id)
    return {"algorithm": "ppo", "train_steps": b.train_steps, "block_steps": block,
            "evaluated_returns": {str(snapshots[i][0]): r for i, r in returns.items()},
            "expert": {"env_steps": snapshots[expert_i][0], "eval_return": returns[expert_i]},
            "medium": {"env_steps": snapshots[medium_i][0], "eval_return": returns[medium_i],
                       "target_return": target}, "replay_policies": medium_i + 1}


def make_suite(env_id: str, kinds: str | list[str], out: str | Path, budget: str = "default", seed: int = 0,
               progress: bool = True) -> dict[str, Any]:
    """Build (or reuse) the requested datasets of the suite in ``out``; returns the manifest (``suite.json``).

    Args:
        env_id: Gymnasium id (D4RL reference scores exist for Hopper-v5, HalfCheetah-v5, Walker2d-v5).
        kinds: comma-separated or list, from :data:`KINDS`.
        out: suite directory: ``<env>-<kind>-v0/`` datasets, ``policies/``, ``suite.json``.
        budget: a key of :data:`BUDGETS` ("default", "reduced", "tiny": seconds, for tests).
        seed: seeds PPO and every collection (kind k uses ``seed + index``).
    Raises:
        ConfigError: unknown kind or budget, ``out`` holds something else or a suite of another env/budget/seed.
        EnvError, DatasetError: from :func:`~hybridrl.data.collect.collect` and saving.
    """
    from hybridrl.data.collect import collect
    from hybridrl.data.dataset import Dataset
    from hybridrl.nn import load_policy

    names = _parse_kinds(kinds)
    if budget not in BUDGETS:
        raise ConfigError(f"--budget {budget!r}; expected one of {sorted(BUDGETS)}")
    b, out = BUDGETS[budget], Path(out)
    manifest = _read_manifest(out, env_id, budget, seed)
    out.mkdir(parents=True, exist_ok=True)
    timings = manifest.setdefault("timings_s", {})
    need_policies = any(k != "random" and k not in manifest["datasets"] for k in names)
    if need_policies and "training" not in manifest:
        t0 = time.perf_counter()
        manifest["training"] = _train(env_id, b, seed, out, progress)
        timings["train"] = time.perf_counter() - t0
        _write_manifest(out, manifest)
    built: dict[str, Dataset] = {}

    def get(kind: str) -> Dataset:
        if kind in built:
            return built[kind]
        if kind in manifest["datasets"]:
            built[kind] = Dataset.load(out / manifest["datasets"][kind]["path"])
            return built[kind]
        t0 = time.perf_counter()
        offset = KINDS.index(kind)
        if kind == "random":
            ds = collect(env_id, None, b.dataset_steps, seed=seed + offset, progress=progress)
        elif kind in ("medium", "expert"):
            ds = collect(env_id, load_policy(out / "policies" / kind, env_id), b.dataset_steps, seed=seed + offset,
                         progress=progress)
        elif kind == "medium-expert":
            ds = Dataset.concatenate([get("medium"), get("expert")])
        else:  # medium-replay: every policy up to medium acts for one training block
            block = manifest["training"]["block_steps"]
            parts = [collect(env_id, load_policy(p, env_id), block, seed=seed + 1000 + i, progress=False)
                     for i, p in enumerate(sorted((out / "policies" / "replay").iterdir()))]
            ds = Dataset.concatenate(parts)
        ds.metadata["suite"] = {"kind": kind, "env_id": env_id, "budget": budget, "seed": seed,
                                "definition": "D4RL (Fu et al. 2020), PPO as the online learner; see "
                                              "hybridrl.data.suite"}
        path = out / dataset_name(env_id, kind)
        ds.save(path)
        timings[kind] = time.perf_counter() - t0
        manifest["datasets"][kind] = {"path": path.name, "steps": len(ds), "episodes": ds.n_episodes,
                                      "return_mean": float(ds.episode_returns().mean()),
                                      "normalized_score": _score(ds)}
        _write_manifest(out, manifest)
        built[kind] = ds
        return ds

    for kind in names:
        get(kind)
    return manifest


def _score(ds) -> float | None:
    s = ds.normalized_score(ds.episode_returns().mean())
    return None if s is None else float(s)
