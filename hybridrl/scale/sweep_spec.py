"""Sweep files: a YAML grid over algorithms x datasets (or envs) x config values x seeds, checked before anything runs.

No Ray here: :func:`load_sweep` reads and validates a sweep file (every trial's config is built with the same code as
``hybridrl train --set``), and :func:`trial_done` says whether a trial's run directory is finished. Format::

    name: offline-small            # optional; default: the file's stem
    steps: 2000                    # env steps (online) or gradient steps (offline), as `train --steps`
    eval_episodes: 10              # as `train --eval-episodes`
    checkpoint_every: 1000         # optional, as `train --checkpoint-every` (PBT: its perturbation interval)
    algorithms: [bc, iql]          # or a mapping: {ppo: {set: [ent_coef=0.01], grid: {lr: [3e-4, 1e-3]}}}
    datasets: [runs/suite/random-v0, runs/suite/medium-v0]   # offline/hybrid learners (paths, relative to the
                                   # working directory, or Minari ids)
    envs: [Hopper-v5]              # online learners (--env); both lists may be given for hybrid learners
    set: [batch_size=64]           # overrides for every trial (`train --set`)
    grid: {lr: [3.0e-4, 1.0e-3]}   # config values: every combination becomes a configuration
    seeds: 5                       # 5 -> seeds 0..4, or an explicit list [0, 1, 2]
    metric: eval_return            # a metrics.csv column that schedulers compare (default: the loop's return)
    mode: max
    scheduler:                     # optional; `--scheduler` on the command line wins
      asha: {grace_period: 1000, reduction_factor: 2}
      pbt: {perturbation_interval: 1000, mutations: {lr: [1.0e-4, 3.0e-4, 1.0e-3]}}
    resources: {cpu: 1}            # per trial
    max_concurrent: 0              # 0: as many as the cluster's CPUs allow

Each trial's run directory is ``<out>/runs/<algo>-<data>[-<k=v>...]-s<seed>`` and holds exactly what ``hybridrl
train`` writes for the same arguments.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridrl.errors import ConfigError

SCHEDULERS = ("none", "asha", "pbt")
_KEYS = {"name", "steps", "eval_episodes", "checkpoint_every", "algorithms", "datasets", "envs", "set", "grid",
         "seeds", "metric", "mode", "scheduler", "resources", "max_concurrent"}


@dataclass(frozen=True)
class TrialSpec:
    """One trial: the arguments of one ``hybridrl train`` call, and the names the report groups it by.

    ``variant`` names the configuration (``"bc"`` or ``"ppo[lr=0.001]"``); ``task`` the dataset or env.
    """

    name: str
    algo: str
    variant: str
    task: str
    seed: int
    steps: int
    overrides: tuple[str, ...]
    dataset: str | None = None
    env_id: str | None = None
    eval_episodes: int = 10
    checkpoint_every: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["overrides"] = list(self.overrides)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialSpec:
        return cls(**{**d, "overrides": tuple(d.get("overrides", ()))})


@dataclass
class Sweep:
    """A validated sweep file: its trials and the settings the Tune driver needs."""

    name: str
    path: Path
    trials: list[TrialSpec]
    metric: str
    mode: str
    scheduler: str
    scheduler_args: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1})
    max_concurrent: int = 0


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", str(text)).strip("_") or "x"


def _task_name(ref: str) -> str:
    p = Path(str(ref))
    return _slug(p.name if p.name else str(ref))


def _need(cond: bool, path: Path, field_: str, expected: str, got: Any) -> None:
    if not cond:
        raise ConfigError(f"{path}: field {field_!r}: expected {expected}, got {got!r}")


def _as_list(value: Any, path: Path, field_: str) -> list:
    if value is None:
        return []
    if isinstance(value, (str, int, float)):
        return [value]
    _need(isinstance(value, list), path, field_, "a list", value)
    return list(value)


def _grid_points(grid: Any, path: Path, field_: str) -> list[list[str]]:
    """``{key: [v1, v2]}`` -> every combination as a list of ``key=value`` overrides (one empty list if no grid)."""
    if not grid:
        return [[]]
    _need(isinstance(grid, dict), path, field_, "a mapping of config field -> list of values", grid)
    keys = list(grid)
    values = [_as_list(grid[k], path, f"{field_}.{k}") for k in keys]
    for k, v in zip(keys, values):
        _need(len(v) > 0, path, f"{field_}.{k}", "a non-empty list of values", grid[k])
    return [[f"{k}={_yaml_value(v)}" for k, v in zip(keys, combo)] for combo in itertools.product(*values)]


def _yaml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_yaml_value(x) for x in v) + "]"
    return str(v)


def load_sweep(path: str | Path, scheduler: str | None = None) -> Sweep:
    """Read and check a sweep file; build every trial's config (so a bad value fails before Ray starts).

    Args:
        path: the sweep YAML. scheduler: ``none``, ``asha`` or ``pbt`` (overrides the file's ``scheduler``).

    Returns:
        the :class:`Sweep`, trials ordered algorithm, configuration, task, seed.

    Raises:
        ConfigError: unknown field, wrong type, unknown algorithm or config key, an algorithm without the inputs it
            needs (datasets for offline learners, envs for online ones), duplicate trial names.
    """
    from hybridrl.algos import get_algo
    from hybridrl.loops.train import build_config
    from hybridrl.runs import load_config

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    data = load_config(path)
    _need(isinstance(data, dict), path, "<top level>", "a mapping", type(data).__name__)
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {', '.join(unknown)}; expected some of {', '.join(sorted(_KEYS))}")
    steps = data.get("steps")
    _need(isinstance(steps, int) and not isinstance(steps, bool) and steps > 0, path, "steps", "a positive int", steps)
    eval_episodes = data.get("eval_episodes", 10)
    _need(isinstance(eval_episodes, int) and eval_episodes >= 0, path, "eval_episodes", "an int >= 0", eval_episodes)
    ckpt = data.get("checkpoint_every")
    _need(ckpt is None or (isinstance(ckpt, int) and ckpt > 0), path, "checkpoint_every", "a positive int", ckpt)
    seeds = data.get("seeds", 1)
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        _need(seeds > 0, path, "seeds", "a positive count or a list of ints", seeds)
        seeds = list(range(seeds))
    seeds = _as_list(seeds, path, "seeds")
    _need(all(isinstance(s, int) for s in seeds) and len(set(seeds)) == len(seeds) and seeds, path, "seeds",
          "distinct ints", seeds)
    algos = data.get("algorithms")
    _need(isinstance(algos, (list, dict, str)) and algos, path, "algorithms", "a list or mapping of algorithms", algos)
    algos = {a: {} for a in _as_list(algos, path, "algorithms")} if not isinstance(algos, dict) else algos
    # a dataset path is made absolute (trials run in other working directories); anything else is a Minari id
    datasets = [str(Path(d).resolve()) if Path(str(d)).exists() else str(d)
                for d in _as_list(data.get("datasets"), path, "datasets")]
    envs = [str(e) for e in _as_list(data.get("envs"), path, "envs")]
    common = [str(s) for s in _as_list(data.get("set"), path, "set")]
    grid = _grid_points(data.get("grid"), path, "grid")

    trials: list[TrialSpec] = []
    for algo, extra in algos.items():
        extra = extra or {}
        _need(isinstance(extra, dict) and set(extra) <= {"set", "grid"}, path, f"algorithms.{algo}",
              "a mapping with optional 'set' and 'grid'", extra)
        spec = get_algo(str(algo))  # ConfigError naming the known algorithms
        own = [str(s) for s in _as_list(extra.get("set"), path, f"algorithms.{algo}.set")]
        needs = spec.inputs.split("+")
        if "dataset" in needs and not datasets:
            raise ConfigError(f"{path}: {algo} learns from logged data: list 'datasets'")
        if "env" in needs and not envs:
            raise ConfigError(f"{path}: {algo} learns online: list 'envs'")
        if "dataset" in needs and "env" in needs:
            tasks = [(d, e) for d in datasets for e in envs]
        elif "dataset" in needs:
            tasks = [(d, None) for d in datasets]
        else:
            tasks = [(None, e) for e in envs]
        for point in itertools.product(grid, _grid_points(extra.get("grid"), path, f"algorithms.{algo}.grid")):
            varied = point[0] + point[1]
            overrides = tuple(common + own + varied)
            build_config(spec.name, None, list(overrides))  # ConfigError: unknown key / bad value, now
            variant = spec.name + (f"[{','.join(varied)}]" if varied else "")
            for (ds, env), seed in itertools.product(tasks, seeds):
                task = "+".join(_task_name(x) for x in (ds, env) if x is not None)
                name = "-".join([spec.name, task, *[_slug(v) for v in varied], f"s{seed}"])
                trials.append(TrialSpec(name=name, algo=spec.name, variant=variant, task=task, seed=int(seed),
                                        steps=steps, overrides=overrides, dataset=ds, env_id=env,
                                        eval_episodes=eval_episodes, checkpoint_every=ckpt))
    names = [t.name for t in trials]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{path}: two trials would share the run directory {dup[0]}; give the datasets distinct "
                          "folder names")
    sched_field = data.get("scheduler") or {}
    if isinstance(sched_field, str):
        sched_field = {sched_field: {}}
    _need(isinstance(sched_field, dict) and len(sched_field) <= 1 and set(sched_field) <= set(SCHEDULERS), path,
          "scheduler", "one of none/asha/pbt, or a mapping {asha|pbt: {...}}", sched_field)
    chosen = scheduler or next(iter(sched_field), "none")
    if chosen not in SCHEDULERS:
        raise ConfigError(f"--scheduler {chosen!r}; expected one of {', '.join(SCHEDULERS)}")
    sched_args = dict(sched_field.get(chosen) or {})
    mode = data.get("mode", "max")
    _need(mode in ("max", "min"), path, "mode", "max or min", mode)
    resources = data.get("resources", {"cpu": 1})
    _need(isinstance(resources, dict) and set(resources) <= {"cpu", "gpu"}, path, "resources",
          "a mapping {cpu: N, gpu: N}", resources)
    max_conc = data.get("max_concurrent", 0)
    _need(isinstance(max_conc, int) and max_conc >= 0, path, "max_concurrent", "an int >= 0", max_conc)
    if chosen == "pbt":
        muts = sched_args.get("mutations")
        _need(isinstance(muts, dict) and muts, path, "scheduler.pbt.mutations",
              "a mapping of config field -> list of values", muts)
        if len({(t.algo, t.task) for t in trials}) > 1:
            raise ConfigError(f"{path}: PBT exploits checkpoints within one population: give it one algorithm and "
                              "one dataset/env (seeds and grid values vary); run one sweep per algorithm and task")
        for t in trials[:1]:
            for k, vals in muts.items():
                for v in _as_list(vals, path, f"scheduler.pbt.mutations.{k}"):
                    build_config(t.algo, None, [*t.overrides, f"{k}={_yaml_value(v)}"])
    default_metric = "episode_return" if all(t.dataset is None for t in trials) else "eval_mean"
    metric = str(data.get("metric", default_metric))
    if chosen != "none" and metric in ("eval_mean", "eval_normalized"):
        raise ConfigError(f"{path}: scheduler {chosen} compares trials while they train, but metric {metric!r} is "
                          "known only at the end; set 'metric' to a metrics.csv column (e.g. episode_return, "
                          "bc_loss with mode: min)")
    return Sweep(name=_slug(data.get("name") or path.stem), path=path, trials=trials,
                 metric=metric, mode=mode, scheduler=chosen,
                 scheduler_args=sched_args, resources={k: float(v) for k, v in resources.items()},
                 max_concurrent=max_conc)


def trial_done(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a finished run: ``train`` writes ``report.md`` last, after the final checkpoint,
    the policy and ``eval.json``."""
    return (Path(run_dir) / "report.md").is_file()
