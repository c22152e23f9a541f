"""The fine-tuning run every method shares (``hybridrl finetune``, the pipeline's fine-tuning stage, the Python API).

A *method* adapts an offline policy online; this module evaluates it before, during and after, and writes what a
user needs to judge the run: ``eval.json`` (start, final, curve, dip, gain; deterministic and stochastic returns),
``curves.png`` (evaluation return against environment steps with the offline start as a reference line) and
``report.md`` (which number is which, and in words whether the run lost its start).

Adding a method is one line in :data:`FINETUNE_METHODS` plus a function with this signature::

    fn(policy: Policy, *, env_id: str, dataset: Dataset | None, steps: int, run: RunDir | None, seed: int,
       overrides: list[str], callback: Callable[[int, Policy], None], progress: bool) -> Policy

- ``policy``: the starting (offline) policy; the method must not modify it (work on a copy).
- ``steps``: the online budget in environment steps (all of them: critic warm-up rollouts count).
- ``run``: where the method writes ``config.yaml``, ``metrics.csv`` and ``checkpoints/`` (None: nothing written);
  the wrapper writes ``finetune.json``, ``eval.json``, ``eval_curve.json``, ``policy/``, ``curves.png``, ``report.md``.
- ``overrides``: ``key=value`` fields of the method's own config (ConfigError for a bad one).
- ``callback(env_step, policy)``: called at least every 1,000 environment steps, or after every policy update when
  updates are rarer (on-policy rollouts); the wrapper decides when to evaluate. It must not be called from inside a
  gradient step (it runs episodes in another env).
- optional keyword ``resume: bool``: continue ``run`` from its latest checkpoint (methods without it cannot resume).
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hybridrl.data.dataset import Dataset
from hybridrl.errors import ConfigError, RunExistsError
from hybridrl.loops.common import console, json_ready
from hybridrl.loops.evaluate import evaluate_policy
from hybridrl.nn import Policy, save_policy
from hybridrl.runs import RunDir, load_config

FINETUNE_METHODS: dict[str, str] = {
    "ppo": "hybridrl.loops.finetune:finetune_ppo",
    "iql": "hybridrl.loops.finetune_off_policy:finetune_iql",
    "calql": "hybridrl.loops.finetune_off_policy:finetune_calql",
    "rlpd": "hybridrl.loops.finetune_off_policy:finetune_rlpd",
    "famo2o": "hybridrl.loops.finetune_off_policy:finetune_famo2o",
}
"""Fine-tuning method name -> ``"module:function"`` with the signature of the module docstring."""

DIP_WINDOW = 0.2
"""The dip is the lowest evaluation within this fraction of the online budget (issue 8)."""
BEST_DIR = "best_policy"
"""Run sub-directory holding the best evaluated policy of a fine-tuning run (the start if nothing beat it)."""
EVAL_SEED = 60_000
"""Episode ``i`` of every evaluation (start, grid, final) is reset with seed ``EVAL_SEED + i``: same start states."""


def get_finetune_method(name: str) -> Callable[..., Policy]:
    """The function registered under ``name`` in :data:`FINETUNE_METHODS`. Raises ConfigError (unknown name or an
    import failure), listing the known methods."""
    if name not in FINETUNE_METHODS:
        raise ConfigError(f"unknown fine-tuning method {name!r}; expected one of {sorted(FINETUNE_METHODS)}")
    module, _, func = FINETUNE_METHODS[name].partition(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"fine-tuning method {name}: cannot import {FINETUNE_METHODS[name]!r}: {e}") from None


def eval_grid(steps: int, points: int = 10) -> list[int]:
    """Environment steps at which to evaluate: 4 points in the first :data:`DIP_WINDOW` of the budget (the dip
    needs them) and ``points`` evenly spaced over the whole budget; sorted, unique, > 0, <= ``steps``."""
    early = [round(steps * DIP_WINDOW * k / 4) for k in range(1, 5)]
    even = [round(steps * k / points) for k in range(1, points + 1)]
    return sorted({s for s in early + even if 0 < s <= steps})


def dip_and_gain(start: float, curve_steps: list[int] | np.ndarray, curve_returns: list[float] | np.ndarray,
                 final: float, budget: int, window: float = DIP_WINDOW) -> dict[str, float | None]:
    """Dip and gain of one fine-tuning curve (issue 8's definitions).

    ``dip = min(returns at steps <= window * budget) / start`` (None when no evaluation falls in the window),
    ``gain = final / start``; ``dip_return`` is that lowest return. Both ratios are None when ``start <= 0`` (a
    ratio to a non-positive start means nothing; compare the returns instead).
    """
    xs, ys = np.asarray(curve_steps, dtype=np.float64), np.asarray(curve_returns, dtype=np.float64)
    early = ys[(xs > 0) & (xs <= window * budget)]
    low = float(early.min()) if early.size else None
    ok = start > 0
    return {"dip": (low / start if ok and low is not None else None), "dip_return": low,
            "gain": final / start if ok else None}


def _both(policy: Policy, env_id: str, episodes: int) -> dict[str, dict]:
    return {mode: evaluate_policy(policy, env_id, episodes, seed=EVAL_SEED, deterministic=mode == "deterministic")
            for mode in ("deterministic", "stochastic")}


def _summary(policy_eval: dict[str, dict]) -> dict[str, float]:
    return {m: policy_eval[m]["mean"] for m in ("deterministic", "stochastic")}


def run_finetune_in(run: RunDir, policy: Policy, *, algo: str, env_id: str, dataset: Dataset | None, steps: int,
                    seed: int = 0, overrides: list[str] | None = None, eval_episodes: int = 10, eval_points: int = 10,
                    resume: bool = False, progress: bool = True, source: str | None = None) -> dict:
    """Fine-tune ``policy`` with method ``algo`` inside the open run directory ``run``; write the outputs.

    Evaluates the start (deterministic and stochastic, ``eval_episodes`` each, the same episode seeds every time),
    evaluates at :func:`eval_grid` points through the method's callback, evaluates the result, and writes
    ``policy/``, ``eval.json``, ``eval_curve.json``, ``curves.png`` and ``report.md`` (the caller commits ``run``).
    ``best_policy/`` keeps the policy with the highest deterministic evaluation seen (ties: the higher stochastic one;
    the start included, so a run that lost its start still holds it; SB3's ``EvalCallback`` best model);
    ``eval.json["best"]`` says which.
    ``eval.json`` holds ``start``/``final``/``dip``/``gain`` as ``{"deterministic": x, "stochastic": y}``, the full
    ``curve``, ``lost_start`` (words, or None) and, for old readers, the final deterministic evaluation's fields
    (``mean``, ``std``, ``episodes``, ``normalized_score``). Returns that dict.

    Raises:
        ConfigError (unknown method, bad override, a method that cannot resume), and the method's errors.
    """
    fn = get_finetune_method(algo)
    extra = {}
    if resume:
        if "resume" not in inspect.signature(fn).parameters:
            raise ConfigError(f"fine-tuning method {algo} cannot resume a run; start a new one")
        extra["resume"] = True
    curve_path = run.path / "eval_curve.json"
    if resume and curve_path.exists():
        saved = load_config(curve_path)
        start, curve = saved["start"], saved["curve"]
        best = saved.get("best") or {"step": 0, **_summary(start)}
    else:
        console.print(f"evaluating the starting policy ({eval_episodes} episodes, deterministic and stochastic)")
        start, curve = _both(policy, env_id, eval_episodes), []
        best = {"step": 0, **_summary(start)}
    if not (run.path / BEST_DIR).exists():  # a new run, or one resumed from before best_policy/ existed
        save_policy(policy, run.path / BEST_DIR, env_id=env_id)
        best = {"step": 0, **_summary(start)}
    grid = eval_grid(steps, eval_points)

    def keep_if_best(env_step: int, pol: Policy, summary: dict) -> None:
        nonlocal best
        if (summary["deterministic"], summary["stochastic"]) > (best["deterministic"], best["stochastic"]):
            save_policy(pol, run.path / BEST_DIR, env_id=env_id)
            best = {"step": int(env_step), **summary}

    def callback(env_step: int, pol: Policy) -> None:
        nonlocal curve
        curve = [c for c in curve if c["step"] < env_step]  # a resumed run redoes the points past its checkpoint
        last = curve[-1]["step"] if curve else 0
        if not any(last < g <= env_step for g in grid):
            return
        ev = _both(pol, env_id, eval_episodes)
        curve.append({"step": int(env_step), **_summary(ev)})
        keep_if_best(env_step, pol, curve[-1])
        run.write_json("eval_curve.json", json_ready({"start": start, "curve": curve, "best": best}))

    if not curve:
        run.write_json("eval_curve.json", json_ready({"start": start, "curve": curve, "best": best}))
    final_policy = fn(policy, env_id=env_id, dataset=dataset, steps=steps, run=run, seed=seed,
                      overrides=list(overrides or []), callback=callback, progress=progress, **extra)
    final = _both(final_policy, env_id, eval_episodes)
    save_policy(final_policy, run.policy_dir, env_id=env_id)
    keep_if_best(steps, final_policy, _summary(final))
    result = finetune_result(algo, env_id, steps, start, final, curve, source, best)
    run.write_json("eval.json", json_ready(result))
    plot_finetune(run, result)
    write_finetune_report(run, result)
    return result


def finetune_result(algo: str, env_id: str, steps: int, start: dict, final: dict, curve: list[dict],
                    source: str | None = None, best: dict | None = None) -> dict:
    """The ``eval.json`` dict from the start/final evaluations (``{"deterministic": ev, "stochastic": ev}``), the
    curve rows ``{"step", "deterministic", "stochastic"}`` and the best evaluated point (same keys; in
    ``best_policy/``)."""
    out: dict[str, Any] = {"algo": algo, "env_id": env_id, "steps": steps, "start_policy": source,
                           "episodes": final["deterministic"]["episodes"], "seed_of_episode_0": EVAL_SEED,
                           "start": _summary(start), "final": _summary(final), "dip": {}, "dip_return": {},
                           "gain": {}, "curve": curve, "start_eval": start, "final_eval": final}
    for m in ("deterministic", "stochastic"):
        r = dip_and_gain(out["start"][m], [c["step"] for c in curve], [c[m] for c in curve], out["final"][m], steps)
        out["dip"][m], out["dip_return"][m], out["gain"][m] = r["dip"], r["dip_return"], r["gain"]
    out["best"] = None if best is None else {**best, "policy_dir": BEST_DIR}
    out["lost_start"] = lost_start_message(out)
    fd = final["deterministic"]
    out.update(mean=fd["mean"], std=fd["std"], normalized_score=fd["normalized_score"])
    return out


def _noise(result: dict, m: str) -> float | None:
    """Two standard errors of (final - start) for mode ``m`` from the evaluations' episode returns, or None."""
    try:
        ev = [result[k][m] for k in ("start_eval", "final_eval")]
        var = sum(e["std"] ** 2 / e["episodes"] for e in ev)
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    return 2.0 * math.sqrt(var)


def lost_start_message(result: dict) -> str | None:
    """Words saying where a run fell below its start (final below start, or a dip under 0.95x), or None.

    A final return below the start by less than two standard errors of the difference (independent 10-episode means,
    ``std / sqrt(episodes)`` each) is reported as within the evaluation noise, not as a lost start."""
    msgs = []
    for m in ("deterministic", "stochastic"):
        s, f, dip = result["start"][m], result["final"][m], result["dip"][m]
        noise = _noise(result, m)
        if f < s and noise is not None and s - f < noise:
            msgs.append(f"the final {m} return {f:.1f} is below the start {s:.1f} by {s - f:.1f}, within the "
                        f"evaluation noise (two standard errors: {noise:.1f}): no evidence either way")
        elif f < s:
            msgs.append(f"the final {m} return {f:.1f} is below the start {s:.1f}: this run lost its start")
        elif dip is not None and dip < 0.95:
            msgs.append(f"the {m} return dipped to {result['dip_return'][m]:.1f} ({dip:.2f}x the start) in the first "
                        f"{DIP_WINDOW:.0%} of the budget before ending at {f:.1f}")
    return "; ".join(msgs) or None


def plot_finetune(run: RunDir, result: dict) -> Path:
    """``curves.png``: evaluation return vs environment steps (deterministic and stochastic) with the start as dashed
    reference lines and the dip window shaded; training episode return from ``metrics.csv`` when logged."""
    from hybridrl.runs import read_metrics
    from hybridrl.runs.plots import _figure, _save

    metrics = read_metrics(run.metrics_csv) if run.metrics_csv.exists() else {}
    train = "episode_return" in metrics and np.isfinite(np.asarray(metrics["episode_return"], float)).any()
    fig, axes = _figure(1, 2 if train else 1, (6.0, 3.8))
    ax = axes[0, 0]
    xs = [0] + [c["step"] for c in result["curve"]]
    for m, color in (("deterministic", "C0"), ("stochastic", "C1")):
        ax.plot(xs, [result["start"][m]] + [c[m] for c in result["curve"]], marker=".", color=color,
                label=f"{m} policy")
        ax.axhline(result["start"][m], color=color, ls="--", lw=1, label=f"offline start ({m})")
    ax.axvspan(0, DIP_WINDOW * result["steps"], color="0.9", label="dip window")
    ax.set_xlabel("environment steps")
    ax.set_ylabel(f"evaluation return ({result['episodes']} episodes)")
    ax.set_title(f"{result['algo']} fine-tuning, {result['env_id']}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if train:
        ys = np.asarray(metrics["episode_return"], float)
        ok = np.isfinite(ys)
        axes[0, 1].plot(np.asarray(metrics["step"], float)[ok], ys[ok])
        axes[0, 1].set_title("training episode return (stochastic)")
        axes[0, 1].set_xlabel("environment steps")
        axes[0, 1].grid(alpha=0.3)
    return _save(fig, run.curves_png)


def _fmt(x: float | None, ratio: bool = False) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}" if ratio else f"{x:.1f}"


def finetune_table(result: dict) -> str:
    """Markdown table: start, lowest early evaluation, final, dip, gain for the deterministic and stochastic policy."""
    rows = ["| policy evaluated | start (offline) | lowest in first 20% | final | dip | gain |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for m in ("deterministic", "stochastic"):
        rows.append(f"| {m} ({'mean action' if m == 'deterministic' else 'sampled actions'}) | "
                    f"{_fmt(result['start'][m])} | {_fmt(result['dip_return'][m])} | {_fmt(result['final'][m])} | "
                    f"{_fmt(result['dip'][m], True)} | {_fmt(result['gain'][m], True)} |")
    return "\n".join(rows)


def finetune_explanation(result: dict, run_prefix: str = "") -> str:
    """The paragraph under :func:`finetune_table`: what each number is, and whether the run lost its start
    (``run_prefix``: the fine-tuning run's folder relative to the report, e.g. ``"finetune/"``)."""
    text = (f"Mean undiscounted return over {result['episodes']} episodes (the same start states, seeds "
            f"{EVAL_SEED}..{EVAL_SEED + result['episodes'] - 1}, at every evaluation). *Deterministic* acts with the "
            "policy's mean action, *stochastic* samples from it (what fine-tuning itself runs). *dip* = lowest "
            f"evaluation in the first {DIP_WINDOW:.0%} of the {result['steps']}-step online budget / start; "
            "*gain* = final / start. *n/a*: no evaluation fell in that window, or the start return is not positive "
            "(a ratio to it means nothing: compare the returns).")
    lost, best = result.get("lost_start"), result.get("best")
    if best:
        text += (f"\n\n`{run_prefix}{best['policy_dir']}/` holds the policy with the best deterministic evaluation: "
                 + ("the start (no evaluation beat it)" if best["step"] == 0 else
                    f"the one at step {best['step']} ({_fmt(best['deterministic'])} deterministic, "
                    f"{_fmt(best['stochastic'])} stochastic)")
                 + "; picked by the same evaluation episodes, so its return is an optimistic estimate.")
    return text + ("\n\n**" + lost[0].upper() + lost[1:] + ".**" if lost else
                   "\n\nThe run kept its start: no evaluation in the dip window fell below 0.95x the start and both "
                   "final returns are at or above it.")


def write_finetune_report(run: RunDir, result: dict) -> None:
    """``report.md`` of a fine-tuning run (the shared run report plus the fine-tuning section)."""
    from hybridrl.runs.report import write_report

    body = finetune_table(result) + "\n\n" + finetune_explanation(result)
    write_report(run, f"{result['algo']} fine-tuning on {result['env_id']}", None, [("Fine-tuning result", body)])


def finetune_run(policy_dir: str | Path, out: str | Path, *, algo: str = "ppo", env_id: str | None = None,
                 dataset: str | Path | Dataset | None = None, steps: int, seed: int | None = None,
                 overrides: list[str] | None = None, eval_episodes: int = 10, eval_points: int = 10,
                 resume: bool = False, overwrite: bool = False, progress: bool = True) -> RunDir:
    """``hybridrl finetune``: fine-tune the saved policy ``policy_dir`` with method ``algo`` into the run ``out``.

    ``env_id`` defaults to the dataset's env. Everything is checked before ``out`` is touched. ``finetune.json``
    records the settings; ``resume`` continues the run from its latest checkpoint and refuses different settings.

    Raises:
        ConfigError, RunExistsError, DatasetError, EnvError, PolicyError, and the method's errors.
    """
    from hybridrl.envs import check_env_matches, make_env
    from hybridrl.nn import load_policy

    get_finetune_method(algo)
    ds = dataset if dataset is None or isinstance(dataset, Dataset) else Dataset.load(dataset)
    env_id = env_id or (ds.env_id if ds is not None else None)
    if env_id is None:
        raise ConfigError("fine-tuning needs an env: pass --env ENV_ID (or a dataset that records its env)")
    env = make_env(env_id)
    if ds is not None:
        check_env_matches(env, ds.observation_space, ds.action_space, f"dataset {ds.path or 'in memory'}")
    env.close()
    policy = load_policy(policy_dir, env_id)
    settings = {"algo": algo, "env_id": env_id, "policy": str(Path(policy_dir).resolve()),
                "dataset": None if ds is None or ds.path is None else str(Path(ds.path).resolve()), "steps": steps,
                "seed": 0 if seed is None else seed, "overrides": list(overrides or []),
                "eval_episodes": eval_episodes, "eval_points": eval_points}
    if resume:
        if overwrite:
            raise ConfigError("--overwrite and --resume are mutually exclusive: pass one of them")
        saved_path = Path(out) / "finetune.json"
        if not saved_path.exists():
            raise ConfigError(f"nothing to resume: {saved_path} does not exist; start a new run")
        saved = load_config(saved_path)
        if seed is None:
            settings["seed"] = saved["seed"]
        diff = [k for k in settings if k != "steps" and settings[k] != saved.get(k)]
        if diff:
            raise RunExistsError(f"--resume continues {out} with its saved settings ({saved_path}); these differ: "
                                 + ", ".join(f"{k} {settings[k]!r} (saved {saved.get(k)!r})" for k in diff))
    run = RunDir.create(out, overwrite=overwrite, resume=resume)
    try:
        run.write_json("finetune.json", settings)
        result = run_finetune_in(run, policy, algo=algo, env_id=env_id, dataset=ds, steps=steps,
                                 seed=settings["seed"], overrides=overrides, eval_episodes=eval_episodes,
                                 eval_points=eval_points, resume=resume, progress=progress, source=settings["policy"])
        run.commit()
    except BaseException:
        run.abandon()
        raise
    finally:
        run.release()
    console.print(f"[bold]{algo}[/] fine-tuning: deterministic {result['start']['deterministic']:.1f} -> "
                  f"{result['final']['deterministic']:.1f}, stochastic {result['start']['stochastic']:.1f} -> "
                  f"{result['final']['stochastic']:.1f}"
                  + (f"; {result['lost_start']}" if result["lost_start"] else ""))
    return run
