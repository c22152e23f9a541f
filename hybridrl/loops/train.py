"""``train``: build a config, check the inputs, open a run directory, call the registered loop, write the outputs.

``train`` never tests algorithm names: the registry (:mod:`hybridrl.algos`) says which loop drives a learner
(``AlgoSpec.loop``: a kind in :data:`LOOPS` or ``"module:function"``) and what it needs (``AlgoSpec.inputs``), and the
loop is called with the uniform keywords :data:`LOOP_KEYWORDS`.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hybridrl.algos import INPUTS, AlgoSpec, get_algo
from hybridrl.data.dataset import Dataset
from hybridrl.errors import ConfigError, EnvError, RunExistsError
from hybridrl.loops.common import console, json_ready, run_record, saved_record
from hybridrl.nn import Policy
from hybridrl.runs import RunDir, apply_overrides, dataclass_from_dict, dataclass_to_dict, load_config, read_metrics

LOOPS = {"on_policy": "hybridrl.loops.on_policy:train_on_policy",
         "off_policy": "hybridrl.loops.off_policy:train_off_policy",
         "offline": "hybridrl.loops.offline:train_offline"}
"""Loop kind -> ``"module:function"`` of the loop that drives it."""
LOOP_KEYWORDS = ("config", "steps", "env_id", "dataset", "algo", "run", "seed", "resume", "checkpoint_every",
                 "progress", "record")
"""Keywords every training loop accepts (``dataset`` is a :class:`Dataset` or None)."""
CURVE_KEYS = ["episode_return", "eval_return", "policy_loss", "value_loss", "approx_kl", "entropy",
              "bc_loss", "actor_loss", "q_loss", "q_mean", "alpha"]


def resolve_loop(spec: AlgoSpec) -> Callable[..., Any]:
    """The loop function of ``spec``: its kind looked up in :data:`LOOPS`, or its ``"module:function"`` imported.

    Raises:
        ConfigError: an OPE-only learner, or a loop that cannot be imported.
    """
    if spec.loop == "ope":
        raise ConfigError(f"{spec.name} is an off-policy evaluation method; use `hybridrl ope`")
    target = LOOPS.get(spec.loop, spec.loop)
    module, _, func = target.partition(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{spec.name}: cannot import its training loop {target!r}: {e}") from None


def build_config(algo: str, config_file: str | Path | None = None, overrides: list[str] | None = None):
    """Defaults of ``algo``'s config, updated by a YAML file (a mapping of fields) then by ``key=value`` overrides.

    Raises:
        ConfigError: unknown algorithm, unknown key, or a value of the wrong type.
    """
    spec = get_algo(algo)
    config = spec.config_cls()
    if config_file is not None:
        data = load_config(config_file)
        data = data.get("config", data) if isinstance(data, dict) else data
        if not isinstance(data, dict):
            raise ConfigError(f"{config_file}: expected a mapping of {spec.config_cls.__name__} fields")
        config = dataclass_from_dict(spec.config_cls, data, where=str(config_file))
    return apply_overrides(config, overrides or [])


def finish_run(run: RunDir, policy: Any, env_id: str | None, eval_episodes: int = 10, seed: int = 0,
               title: str = "", extra_sections: list[tuple[str, str]] | None = None) -> dict | None:
    """Write ``policy/`` (a :class:`Policy`), ``eval.json`` (if an env is known), ``curves.png`` and ``report.md``;
    commit the run."""
    from hybridrl.loops.evaluate import evaluate_policy
    from hybridrl.nn import save_policy
    from hybridrl.runs import plot_curves
    from hybridrl.runs.report import write_report

    ev = None
    if isinstance(policy, Policy):
        save_policy(policy, run.policy_dir, env_id=env_id)
        if env_id is not None and eval_episodes > 0:
            ev = evaluate_policy(policy, env_id, eval_episodes, seed=100_000 + seed)
            run.write_json("eval.json", json_ready(ev))
    metrics = read_metrics(run.metrics_csv) if run.metrics_csv.exists() else {}
    keys = [k for k in CURVE_KEYS if k in metrics]
    if keys:
        plot_curves(metrics, keys, run.curves_png, title=title)
    write_report(run, title or run.path.name, ev, extra_sections or [])
    run.commit()
    return ev


def _dataset_ref(ds: Any) -> str | None:
    """What ``config.yaml`` records as the dataset: a path or id, or None (in-memory data)."""
    if isinstance(ds, Dataset):
        return None if ds.path is None else str(ds.path)
    return str(ds) if isinstance(ds, (str, Path)) else None


def _load_dataset(dataset: str | Path | Dataset | None) -> Dataset | None:
    return dataset if dataset is None or isinstance(dataset, Dataset) else Dataset.load(dataset)


def _check_env(spec: AlgoSpec, env_id: str | None, ds: Dataset | None, evaluate: bool = True) -> str | None:
    """The env to train/evaluate in; checks it exists and matches the dataset (unless it is only the dataset's env
    and nothing will be evaluated). Raises ConfigError/EnvError/ShapeError."""
    if "env" in spec.inputs.split("+") and env_id is None:
        raise ConfigError(f"{spec.name} learns online: pass --env ENV_ID")
    if "dataset" in spec.inputs.split("+") and ds is None:
        raise ConfigError(f"{spec.name} learns from logged data: pass --dataset DATASET")
    if isinstance(ds, Dataset) and env_id is not None and ds.env_id is not None and env_id != ds.env_id:
        raise EnvError(f"--env {env_id} differs from the env of dataset {ds.path or 'in memory'} ({ds.env_id}); "
                       "drop --env or pass a dataset collected in it")
    given = env_id is not None
    env_id = env_id or (ds.env_id if isinstance(ds, Dataset) else None)
    if env_id is not None and spec.inputs in ("env", "dataset", "env+dataset") and (given or evaluate):
        from hybridrl.envs import check_env_matches, make_env

        env = make_env(env_id)  # EnvError for an unknown id, before anything is written
        if isinstance(ds, Dataset):
            check_env_matches(env, ds.observation_space, ds.action_space, f"dataset {ds.path or 'in memory'}")
        env.close()
    return env_id


def _check_resume(run: RunDir, spec: AlgoSpec, env_id, dataset, seed, config_file, overrides) -> dict:
    """The saved record of ``run``; refuses settings that differ from it (a resumed run keeps its config)."""
    if not run.has_checkpoint():
        raise ConfigError(f"nothing to resume: {run.path} has no checkpoints/step_<N>/ directory; "
                          "start a new run without --resume (or with --overwrite)")
    record = saved_record(run)
    if record.get("algo") != spec.name:
        raise RunExistsError(f"{run.config_path} is a {record.get('algo')!r} run, not {spec.name!r}")
    saved = dataclass_from_dict(spec.config_cls, record["config"], where=str(run.config_path))
    changed = []
    if config_file is not None or overrides:
        wanted = build_config(spec.name, config_file, overrides)
        changed = [k for k, v in dataclass_to_dict(wanted).items()
                   if v != dataclass_to_dict(saved).get(k) and (config_file is not None or _named(k, overrides))]
    given = {"--env": (env_id, record.get("env_id")), "--seed": (seed, record.get("seed"))}
    if dataset is not None:
        path = dataset.path if isinstance(dataset, Dataset) else dataset
        old = record.get("dataset")
        given["--dataset"] = (path and os.path.realpath(path), old and os.path.realpath(old))
    changed += [f"{opt} {new} (saved: {old})" for opt, (new, old) in given.items()
                if new is not None and old is not None and str(new) != str(old)]
    if changed:
        raise ConfigError(f"--resume continues {run.path} with its saved settings ({run.config_path}); these differ: "
                          f"{', '.join(changed)}. Drop them, or start a new run (--overwrite or another --out)")
    return record


def _named(key: str, overrides) -> bool:
    return any(str(o).partition("=")[0].strip().split(".")[0] == key for o in overrides or [])


def train(
    algo: str,
    out: str | Path,
    steps: int,
    env_id: str | None = None,
    dataset: str | Path | Dataset | None = None,
    seed: int | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    checkpoint_every: int | None = None,
    eval_episodes: int = 10,
    progress: bool = True,
    scale: dict | None = None,
) -> RunDir:
    """Train ``algo`` into the run directory ``out`` (the ``hybridrl train`` verb).

    What ``algo`` needs comes from its registration: ``--env`` (online), ``--dataset`` (path or Minari id; offline
    learners are evaluated online when the dataset's env is known), or both (hybrid). Everything is checked before
    ``out`` is touched. With ``resume`` the run's saved ``config.yaml`` is used and training continues from its
    latest checkpoint up to ``steps``; a ``config_file``, ``overrides``, ``env_id``, ``dataset`` or ``seed`` that
    differ from the saved ones are refused. With ``overwrite`` the old run stays restorable until the new one has
    written its first checkpoint, and is put back if the new one fails before that.

    ``scale`` (on-policy learners only): ``{"vector": "sync"|"async"}`` and/or ``{"workers": N, "envs_per_worker": M,
    "address": str | None}`` (Ray rollout workers; ``num_envs`` becomes ``N * M``), passed to the loop.

    Raises:
        ConfigError, RunExistsError, DatasetError, EnvError, DivergenceError, Interrupted.
    """
    spec = get_algo(algo)
    loop = resolve_loop(spec)
    scale = {k: v for k, v in (scale or {}).items() if v is not None}
    if scale and spec.loop != "on_policy":
        raise ConfigError(f"--vector/--workers/--envs-per-worker/--address need an on-policy learner; {spec.name} "
                          f"runs in the {spec.loop!r} loop")
    if resume:
        if overwrite:
            raise ConfigError("--overwrite and --resume are mutually exclusive: pass one of them")
        record = _check_resume(RunDir(out), spec, env_id, dataset, seed, config_file, overrides)
        config = dataclass_from_dict(spec.config_cls, record["config"])
        env_id, dataset = record.get("env_id") or env_id, record.get("dataset") or dataset
        seed = int(record.get("seed", 0))
    else:
        config = build_config(algo, config_file, overrides)
        seed = 0 if seed is None else seed
    if scale.get("workers") is not None:
        envs = scale["workers"] * scale.get("envs_per_worker", 1)
        if resume and config.num_envs != envs:
            raise ConfigError(f"--resume: {out} was trained with num_envs={config.num_envs}; pass --workers and "
                              f"--envs-per-worker whose product is {config.num_envs}")
        config = dataclasses.replace(config, num_envs=envs)
    ds = _load_dataset(dataset) if spec.inputs in INPUTS else dataset  # a custom kind gets the argument as given
    env_id = _check_env(spec, env_id, ds, evaluate=eval_episodes > 0)
    record = run_record(algo=spec.name, env_id=env_id, dataset=_dataset_ref(ds), steps=steps, seed=seed,
                        config=config, **({"scale": scale} if scale else {}))
    run = RunDir.create(out, overwrite=overwrite, resume=resume)
    try:
        learner = loop(config=config, steps=steps, env_id=env_id, dataset=ds, algo=spec.name, run=run, seed=seed,
                       resume=resume, checkpoint_every=checkpoint_every, progress=progress, record=record, **scale)
        ev = finish_run(run, getattr(learner, "policy", None), env_id, eval_episodes, seed,
                        title=f"{spec.name} on {env_id or _dataset_ref(ds) or 'data'}")
    except BaseException:
        run.abandon()
        raise
    finally:
        run.release()
    if ev is not None:
        console.print(f"[bold]{spec.name}[/] eval return {ev['mean']:.1f} ± {ev['std']:.1f} over {ev['episodes']} "
                      "episodes")
    return run
