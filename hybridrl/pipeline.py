"""The whole offline-to-online pipeline from one YAML config (``hybridrl pipeline`` and ``hybridrl demo``).

collect (random + a briefly trained behaviour policy) -> offline candidates -> OPE vs true returns ->
select top-k -> fine-tune the best online -> ``report.md`` with plots. See ``configs/demo.yaml``.
"""

from __future__ import annotations

import math
import re
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from hybridrl.algos import get_algo
from hybridrl.algos.fqe import FQEConfig
from hybridrl.data.collect import collect
from hybridrl.data.dataset import Dataset
from hybridrl.data.measures import dataset_summary, plot_return_histogram
from hybridrl.envs import make_env
from hybridrl.errors import ConfigError
from hybridrl.loops.common import console, json_ready
from hybridrl.loops.evaluate import evaluate_policy
from hybridrl.loops.finetune import FinetuneConfig
from hybridrl.loops.finetune_run import get_finetune_method, run_finetune_in
from hybridrl.loops.train import build_config, train
from hybridrl.nn import load_policy
from hybridrl.ope import INTERVALS, evaluate_ope, pick_estimator, select
from hybridrl.runs import RunDir, apply_overrides, dataclass_from_dict, load_config, plot_estimates, save_config

PIPELINE_KEYS = {"env_id", "seed", "gamma", "behavior", "collect", "candidates", "ope", "select", "finetune"}


def demo_config_path() -> Path:
    """Path of the YAML config that ships with the package."""
    return Path(str(resources.files("hybridrl") / "configs" / "demo.yaml"))


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""Dataset and candidate names: they become folder names under ``--out``, so no separators and no ``..``."""
_SECTIONS = {  # key -> (type, required keys, optional keys) of each mapping section
    "behavior": ({"steps"}, {"algo", "set"}),
    "collect": ({"parts"}, {"name"}),
    "ope": (set(), {"estimators", "fqe_steps", "fqe", "eval_episodes", "ci", "fqe_batch"}),
    "select": (set(), {"by", "k"}),
    "finetune": ({"steps"}, {"algo", "mix_offline", "set", "eval_points"}),
}
_TYPES = {"env_id": str, "seed": int, "gamma": float, "algo": str, "steps": int, "set": list, "name": str,
          "parts": list, "policy": str, "action_noise": float, "epsilon": float, "estimators": list,
          "fqe_steps": int, "fqe": dict, "eval_episodes": int, "by": str, "k": int, "mix_offline": bool, "ci": str,
          "eval_points": int, "fqe_batch": bool}
_PART_KEYS = {"policy", "steps", "action_noise", "epsilon"}


def _check(source: str, where: str, value: Any, key: str) -> Any:
    """``value`` of ``key`` has the type in :data:`_TYPES` (ints accepted as floats; positive counts)."""
    tp = _TYPES[key]
    ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok or (key == "action_noise" and value is None)
    if tp is list and ok:
        ok = all(isinstance(v, str) for v in value)
    if not ok:
        expected = "a list of strings" if tp is list else tp.__name__
        raise ConfigError(f"{source}: {where} = {value!r}; expected {expected}")
    if key in ("steps", "fqe_steps", "eval_episodes", "k", "eval_points") and value < 1:
        raise ConfigError(f"{source}: {where} = {value!r}; expected a positive integer")
    if key == "name" and (not SAFE_NAME.fullmatch(value) or ".." in value):
        raise ConfigError(f"{source}: {where} = {value!r}; expected a plain folder name (letters, digits, _ . -; "
                          "no path separators or '..'), since it is created under --out")
    return value


def _check_mapping(source: str, where: str, value: Any, required: set[str], optional: set[str]) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {where} must be a mapping with keys {sorted(required | optional)}, "
                          f"found {type(value).__name__}")
    unknown, missing = set(value) - required - optional, required - set(value)
    if unknown or missing:
        raise ConfigError(f"{source}: {where}: unknown keys {sorted(map(str, unknown))}, missing keys "
                          f"{sorted(missing)}; expected keys {sorted(required | optional)}")
    for k, v in value.items():
        if k in _TYPES and not (k == "parts" or k == "fqe"):
            _check(source, f"{where}.{k}", v, k)
    return value


def _validate(cfg: Any, source: str) -> dict:
    """Check the whole pipeline config before anything is written: structure, types, names, every algorithm's
    config overrides. Raises :class:`ConfigError` naming the field."""
    top = _check_mapping(source, "the pipeline config", cfg, {"env_id", "collect", "candidates"},
                         PIPELINE_KEYS - {"env_id", "collect", "candidates"})
    if "gamma" in top and not 0.0 <= top["gamma"] <= 1.0:
        raise ConfigError(f"{source}: gamma = {top['gamma']!r}; expected 0 <= gamma <= 1")
    for sec, (req, opt) in _SECTIONS.items():
        if sec in top and not (sec == "finetune" and top[sec] is None):
            _check_mapping(source, sec, top[sec], req, opt)
    parts = top["collect"]["parts"]
    if not isinstance(parts, list) or not parts:
        raise ConfigError(f"{source}: collect.parts must be a non-empty list of {{policy, steps}} mappings")
    for i, part in enumerate(parts):
        _check_mapping(source, f"collect.parts[{i}]", part, {"steps"}, _PART_KEYS - {"steps"})
    cands = top["candidates"]
    if not isinstance(cands, list) or not cands:
        raise ConfigError(f"{source}: candidates must be a non-empty list of {{name, algo, steps}} mappings")
    for i, c in enumerate(cands):
        _check_mapping(source, f"candidates[{i}]", c, {"name", "algo", "steps"}, {"set"})
        try:
            if "dataset" not in get_algo(c["algo"]).inputs:
                raise ConfigError(f"{c['algo']} does not learn from a dataset; expected an offline algorithm")
            build_config(c["algo"], overrides=c.get("set"))
        except ConfigError as e:
            raise ConfigError(f"{source}: candidates[{i}] ({c['name']}): {e}") from None
    names = [c["name"] for c in cands]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: candidate names must be unique, got {names}")
    for sec in ("behavior", "finetune"):
        if top.get(sec):
            try:
                if sec == "behavior":
                    build_config(top[sec].get("algo", "ppo"), overrides=top[sec].get("set"))
                else:
                    _check_finetune(top[sec])
            except ConfigError as e:
                raise ConfigError(f"{source}: {sec}.set: {e}") from None
    ope = top.get("ope", {})
    if "fqe" in ope:
        dataclass_from_dict(FQEConfig, ope["fqe"], where=f"{source}: ope.fqe")
    if ope.get("ci", "bootstrap") not in INTERVALS:
        raise ConfigError(f"{source}: ope.ci = {ope['ci']!r}; expected one of {list(INTERVALS)}")
    by = top.get("select", {}).get("by", "fqe")
    if by not in ope.get("estimators", ["fqe", "pdis", "snpdis", "dr"]):
        raise ConfigError(f"{source}: select.by = {by!r} is not one of ope.estimators")
    return top


def run_pipeline(config: dict | str | Path, out: str | Path, overwrite: bool = False, progress: bool = True) -> RunDir:
    """Run every stage of the pipeline into ``out`` and return the run directory.

    Layout: ``config.yaml``, ``behavior/`` (run), ``datasets/<name>/`` (Minari), ``candidates/<name>/`` (runs),
    ``ope.json``, ``selection.json``, ``finetune/`` (run), ``img/*.png``, ``report.md``, ``summary.json``.

    Raises:
        ConfigError for a malformed config; the errors of each stage otherwise.
    """
    source = str(config)
    cfg = _validate(load_config(config) if not isinstance(config, dict) else config, source)
    make_env(cfg["env_id"]).close()  # EnvError for an unknown id, before anything is written
    run = RunDir.create(out, overwrite=overwrite)
    try:
        _run_stages(run, cfg, source, progress)
    except BaseException:
        run.abandon()
        raise
    finally:
        run.release()
    return run


def _run_stages(run: RunDir, cfg: dict, source: str, progress: bool) -> None:
    env_id, seed, gamma = cfg["env_id"], int(cfg.get("seed", 0)), float(cfg.get("gamma", 0.99))
    save_config(run.config_path, cfg)
    img = run.path / "img"
    img.mkdir(exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    # 1. Behaviour policy (optional) and the mixed dataset.
    behavior_policy = None
    if "behavior" in cfg:
        b = cfg["behavior"]
        console.rule(f"[bold]1a. behaviour policy: {b.get('algo', 'ppo')} for {b['steps']} steps")
        brun = train(b.get("algo", "ppo"), run.path / "behavior", int(b["steps"]), env_id=env_id, seed=seed,
                     overrides=b.get("set"), eval_episodes=5, progress=progress)
        behavior_policy = load_policy(brun.policy_dir, env_id)
    console.rule("[bold]1b. collect the dataset")
    parts = []
    for i, part in enumerate(cfg["collect"]["parts"]):
        pol = part.get("policy", "random")
        policy = None if pol == "random" else (behavior_policy if pol == "behavior" else load_policy(pol, env_id))
        parts.append(collect(env_id, policy, int(part["steps"]), seed=seed + 1000 * i,
                             action_noise=part.get("action_noise"), epsilon=float(part.get("epsilon", 0.0)),
                             progress=progress))
    dataset = Dataset.concatenate(parts)
    dataset.save(run.path / "datasets" / cfg["collect"].get("name", "pipeline-v0"))
    dataset = Dataset.load(run.path / "datasets" / cfg["collect"].get("name", "pipeline-v0"))
    summary = dataset_summary(dataset)
    plot_return_histogram(dataset, img / "dataset_returns.png")
    timings["data"] = time.perf_counter() - t0

    # 2. Offline candidates.
    names, policies = [], {}
    for c in cfg["candidates"]:
        console.rule(f"[bold]2. offline candidate {c['name']}: {c['algo']} for {c['steps']} steps")
        crun = train(c["algo"], run.path / "candidates" / c["name"], int(c["steps"]), dataset=dataset, env_id=env_id,
                     seed=seed, overrides=c.get("set"), eval_episodes=0, progress=progress)
        names.append(c["name"])
        policies[c["name"]] = load_policy(crun.policy_dir, env_id)
    timings["offline"] = time.perf_counter() - t0 - sum(timings.values())

    # 3. OPE of each candidate vs its true (online, stochastic-policy) discounted value, then selection.
    ope_cfg = cfg.get("ope", {})
    console.rule("[bold]3. off-policy evaluation and selection")
    estimators = tuple(ope_cfg.get("estimators", ["fqe", "pdis", "snpdis", "dr"]))
    fqe_config = dataclass_from_dict(FQEConfig, ope_cfg["fqe"], where=f"{source}: ope.fqe") if "fqe" in ope_cfg \
        else None
    fqe_steps = ope_cfg.get("fqe_steps")  # None: a budget that fits the discount horizon, with an early stop
    results = evaluate_ope(dataset, policies, estimators=estimators, gamma=gamma, fqe_config=fqe_config,
                           fqe_steps=None if fqe_steps is None else int(fqe_steps), seed=seed, progress=progress,
                           ci=ope_cfg.get("ci", "bootstrap"), fqe_batch=ope_cfg.get("fqe_batch", True))
    n_eval = int(ope_cfg.get("eval_episodes", 10))
    truth = {n: evaluate_policy(policies[n], env_id, n_eval, seed=50_000, deterministic=False, gamma=gamma)
             for n in names}
    behavior_value = float(np.mean(dataset.episode_returns(gamma)))
    sel_cfg = cfg.get("select", {})
    asked, k = sel_cfg.get("by", "fqe"), int(sel_cfg.get("k", 1))
    by, usable, why = pick_estimator(results, asked, estimators)  # falls back to estimators whose diagnostics pass
    console.print(f"selection: {why}")
    selection = select({n: results[n][by] for n in names}, k=min(k, len(names)),
                       true_values={n: truth[n]["discounted_mean"] for n in names}, behavior_value=behavior_value,
                       threshold=behavior_value)
    sel_info = {"selected_by": by, "requested_by": asked, "usable_estimators": usable, "selection_note": why}
    best = selection.top_k[0]
    ope_table = {n: {e: json_ready(r.to_dict()) for e, r in results[n].items()} for n in names}
    run.write_json("ope.json", {"gamma": gamma, "estimates": ope_table, "true": json_ready(truth)})
    run.write_json("selection.json", json_ready({**selection.to_dict(), **sel_info}))
    for est in estimators:
        rs = [results[n][est] for n in names]
        lo_est_hi = [[float("nan")] * 3 if r.degenerate else [r.ci_low, r.estimate, r.ci_high] for r in rs]
        lo, mid, hi = (list(x) for x in zip(*lo_est_hi))  # a degenerate estimate is not drawn as a number
        plot_estimates(names, mid, lo, hi,
                       true_values=[truth[n]["discounted_mean"] for n in names], out_png=img / f"ope_{est}.png",
                       title=f"{est} estimate ({rs[0].interval} CI) vs true discounted return, {env_id}")
    timings["ope"] = time.perf_counter() - t0 - sum(timings.values())

    # 4. Fine-tune the selected candidate online.
    ft = cfg.get("finetune")
    ft_eval = None
    if ft:
        algo = ft.get("algo", "ppo")
        console.rule(f"[bold]4. fine-tune {best} online with {algo} for {ft['steps']} steps")
        frun = RunDir.create(run.path / "finetune", overwrite=True)
        frun.release()  # inside the locked pipeline run
        start = load_policy(run.path / "candidates" / best / "policy", env_id)
        ft_eval = run_finetune_in(frun, start, algo=algo, env_id=env_id, dataset=dataset, steps=int(ft["steps"]),
                                  seed=seed, overrides=ft.get("set") or [], eval_episodes=n_eval,
                                  eval_points=int(ft.get("eval_points", 10)), progress=progress,
                                  source=f"candidates/{best}/policy")
        frun.commit()
        ft_eval["before"] = ft_eval["start_eval"]["deterministic"]
    timings["finetune"] = time.perf_counter() - t0 - sum(timings.values())

    summary_out = {"env_id": env_id, "dataset": summary, "selected": best,
                   "selection": json_ready({**selection.to_dict(), **sel_info}),
                   "finetune": ft_eval, "timings_s": timings}
    run.write_json("summary.json", json_ready(summary_out))
    from hybridrl.pipeline_report import write_pipeline_report

    write_pipeline_report(run, cfg, summary, names, estimators, results, truth, selection, ft_eval, timings,
                          selection_info=sel_info)
    run.commit()
    console.print(f"[green]pipeline finished[/] in {sum(timings.values()):.0f} s: see {run.report_md}")


def run_demo(out: str | Path = "runs/demo", overwrite: bool = False, progress: bool = True,
             seed: int | None = None) -> RunDir:
    """``hybridrl demo``: the pipeline on the config shipped with the package (``seed`` replaces its seed)."""
    if seed is None:
        return run_pipeline(demo_config_path(), out, overwrite=overwrite, progress=progress)
    return run_pipeline({**load_config(demo_config_path()), "seed": int(seed)}, out, overwrite=overwrite,
                        progress=progress)


def _check_finetune(ft: dict) -> None:
    """The fine-tuning section: a known method; for ``ppo`` its overrides, and ``mix_offline`` consistent with
    ``bc_coef`` (the BC term is on exactly when ``bc_coef > 0``). Raises ConfigError."""
    algo = ft.get("algo", "ppo")
    get_finetune_method(algo)
    if algo != "ppo":
        return
    bc = apply_overrides(FinetuneConfig(), ft.get("set") or []).bc_coef
    if "mix_offline" in ft and bool(ft["mix_offline"]) != (bc > 0):
        raise ConfigError(f"mix_offline={ft['mix_offline']} but bc_coef={bc}: the BC term on the dataset is on "
                          "exactly when bc_coef > 0; drop mix_offline")
