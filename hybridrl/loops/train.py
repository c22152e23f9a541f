"""``train``: build a config, open a run directory, dispatch to the right loop, write the run's outputs."""

from __future__ import annotations

from pathlib import Path

from hybridrl.algos import get_algo
from hybridrl.data.dataset import Dataset
from hybridrl.errors import ConfigError, RunExistsError
from hybridrl.loops.common import console, json_ready, run_record, saved_record
from hybridrl.loops.evaluate import evaluate_policy
from hybridrl.loops.off_policy import train_off_policy
from hybridrl.loops.offline import train_offline
from hybridrl.loops.on_policy import train_on_policy
from hybridrl.loops.props import train_props
from hybridrl.nn import Policy, save_policy
from hybridrl.runs import RunDir, apply_overrides, dataclass_from_dict, load_config, plot_curves, read_metrics
from hybridrl.runs.report import write_report

CURVE_KEYS = ["episode_return", "eval_return", "policy_loss", "value_loss", "approx_kl", "entropy",
              "bc_loss", "actor_loss", "q_loss", "q_mean", "alpha"]


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
        config = dataclass_from_dict(spec.config_cls, data)
    return apply_overrides(config, overrides or [])


def finish_run(run: RunDir, policy: Policy, env_id: str | None, eval_episodes: int = 10, seed: int = 0,
               title: str = "", extra_sections: list[tuple[str, str]] | None = None) -> dict | None:
    """Write ``policy/``, ``eval.json`` (if an env is known), ``curves.png`` and ``report.md``; commit the run."""
    save_policy(policy, run.policy_dir, env_id=env_id)
    ev = None
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


def train(
    algo: str,
    out: str | Path,
    steps: int,
    env_id: str | None = None,
    dataset: str | Path | Dataset | None = None,
    seed: int = 0,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    checkpoint_every: int | None = None,
    eval_episodes: int = 10,
    progress: bool = True,
) -> RunDir:
    """Train ``algo`` into the run directory ``out`` (the ``hybridrl train`` verb).

    On-policy and off-policy (``sac``) algorithms need ``env_id``; offline ones need ``dataset`` (path or
    Minari id) and are evaluated online when the dataset's env (or ``env_id``) is known. With ``resume`` the run's saved
    ``config.yaml`` is used and training continues from its latest checkpoint up to ``steps``.

    Raises:
        ConfigError, RunExistsError, DatasetError, EnvError, DivergenceError.
    """
    spec = get_algo(algo)
    run = RunDir.create(out, overwrite=overwrite, resume=resume)
    if resume:
        record = saved_record(run)
        if record.get("algo") != algo.lower():
            raise RunExistsError(f"{run.config_path} is a {record.get('algo')!r} run, not {algo!r}")
        config = dataclass_from_dict(spec.config_cls, record["config"])
        env_id = record.get("env_id") or env_id
        dataset = record.get("dataset") or dataset
        seed = int(record.get("seed", seed))
    else:
        config = build_config(algo, config_file, overrides)
    if spec.regime == "on_policy":
        if env_id is None:
            raise ConfigError(f"{algo} is on-policy: pass --env ENV_ID")
        # Hybrid on-policy learners (e.g. HNPG) also receive the offline dataset as flat transitions.
        ds = None if dataset is None else (dataset if isinstance(dataset, Dataset) else Dataset.load(dataset))
        record = run_record(algo=algo.lower(), env_id=env_id, dataset=None if ds is None else str(ds.path), steps=steps,
                            seed=seed, config=config)
        loop = train_props if algo.lower() == "props" else train_on_policy  # PROPS acts with its behaviour policy
        learner = loop(env_id, config, steps, run=run, seed=seed, resume=resume,
                       offline=None if ds is None else ds.transitions(),
                       checkpoint_every=checkpoint_every, progress=progress, record=record, algo=algo.lower())
    elif spec.regime == "offline":
        if dataset is None:
            raise ConfigError(f"{algo} is offline: pass --dataset DATASET")
        ds = dataset if isinstance(dataset, Dataset) else Dataset.load(dataset)
        env_id = env_id or ds.env_id
        record = run_record(algo=algo.lower(), dataset=str(ds.path), env_id=env_id, steps=steps, seed=seed, config=config)
        learner = train_offline(algo, ds, config, steps, run=run, seed=seed, resume=resume,
                                checkpoint_every=checkpoint_every, progress=progress, record=record)
    elif spec.regime == "off_policy":
        if env_id is None:
            raise ConfigError(f"{algo} is off-policy: pass --env ENV_ID")
        record = run_record(algo=algo.lower(), env_id=env_id, steps=steps, seed=seed, config=config)
        learner = train_off_policy(env_id, config, steps, run=run, seed=seed, algo=algo.lower(), resume=resume,
                                   checkpoint_every=checkpoint_every, progress=progress, record=record)
    else:
        raise ConfigError(f"{algo} is an off-policy evaluation method; use `hybridrl ope`")
    ev = finish_run(run, learner.policy, env_id, eval_episodes, seed, title=f"{algo} on {env_id or dataset}")
    if ev is not None:
        console.print(f"[bold]{algo}[/] eval return {ev['mean']:.1f} ± {ev['std']:.1f} over {ev['episodes']} episodes")
    return run
