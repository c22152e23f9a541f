"""``hybridrl sweep``: run a sweep file's trials with Ray Tune, each trial an ordinary ``hybridrl train`` run directory.

Layout of ``--out``::

    sweep.yaml        the sweep file as run (``--resume`` refuses a different one)
    sweep.json        every trial's arguments and status (pending / done / stopped / error), node and timings
    runs/<trial>/     the run directory ``hybridrl train`` writes for the same arguments (same ``metrics.csv``)
    logs/<trial>.log  that ``hybridrl train`` process's output
    tune/tune-<k>/    Ray Tune's own state for the k-th invocation (its checkpoints for PBT)
    report.md, report.html, plots/   the aggregate report (:mod:`hybridrl.scale.report`)

A trial runs ``hybridrl train`` (with the trial's arguments) as a child process of its Tune actor, its output in
``logs/<trial>.log``, and reports each new ``metrics.csv`` row to Tune (``step`` is the schedulers' time axis), so ASHA
can stop it early (the child gets SIGTERM, writes a checkpoint and exits; it dies with the actor if Ray kills it). PBT
gets the run's own checkpoints (``checkpoints/step_<N>/`` with ``config.yaml`` and ``metrics.csv``); an exploiting trial
copies the donor's checkpoint into its run directory, records its mutated config in ``config.yaml`` and continues with
``train(resume=True)``. A trial restarted after a failure (node lost, driver killed) resumes from its run directory's
latest checkpoint; a finished run directory (``report.md`` written) is never run again. Ray is imported only inside
these functions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hybridrl.errors import ConfigError
from hybridrl.scale.sweep_spec import Sweep, TrialSpec, load_sweep, trial_done

POLL_S = 0.2
"""Seconds between looks at a running trial's ``metrics.csv`` and ``checkpoints/``."""


# ----------------------------------------------------------------------------------------------------- trial side
def _rows(csv_path: Path, seen: int) -> tuple[list[dict[str, float]], int]:
    """Complete rows of ``metrics.csv`` after the first ``seen`` (as floats; empty cells left out)."""
    import csv

    if not csv_path.exists():
        return [], seen
    with open(csv_path, newline="", encoding="utf-8") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]  # a row still being written
    rows = list(csv.reader(lines))
    if not rows:
        return [], seen
    header, body = rows[0], rows[1:]
    out = []
    for r in body[seen:]:
        if len(r) == len(header):
            out.append({k: float(v) for k, v in zip(header, r) if v != ""})
    return out, len(body)


def _restore_from(ckpt_dir: Path, run_dir: Path, spec: TrialSpec, overrides: list[str]) -> None:
    """Put a reported project checkpoint (``checkpoint/`` = ``step_<N>/``, ``step``, ``config.yaml``, ``metrics.csv``)
    into ``run_dir`` so that ``train(resume=True)`` continues from it, with ``overrides`` (PBT's mutated values) in
    the saved config."""
    from hybridrl.loops.train import build_config
    from hybridrl.runs import dataclass_to_dict, load_config, save_config

    src, step_file = ckpt_dir / "checkpoint", ckpt_dir / "step"
    if not src.is_dir() or not step_file.is_file():
        raise ConfigError(f"Tune checkpoint {ckpt_dir} is not a hybridrl sweep checkpoint (no checkpoint/ and step)")
    step = int(step_file.read_text().strip())
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    shutil.copytree(src, run_dir / "checkpoints" / f"step_{step}")
    shutil.copy2(ckpt_dir / "metrics.csv", run_dir / "metrics.csv")
    record = load_config(ckpt_dir / "config.yaml")
    record["config"] = dataclass_to_dict(build_config(spec.algo, None, overrides))
    record["seed"] = spec.seed
    save_config(run_dir / "config.yaml", record)


def _start_step(run_dir: Path) -> int:
    """Step of the checkpoint a resumed run continues from; drops the metrics rows logged after it (as ``train``'s
    resume does), so that they are not reported twice."""
    from hybridrl.runs import MetricsLogger, list_checkpoints

    step = list_checkpoints(run_dir)[-1][0]
    if (run_dir / "metrics.csv").exists():
        MetricsLogger(run_dir, tensorboard=False).truncate(step)
    return step


def _snapshot(run_dir: Path, step_dir: Path) -> Path:
    """A Tune checkpoint directory holding a copy of the run's checkpoint ``step_dir`` (as ``checkpoint/``, its step in
    ``step``) plus the run's config and metrics."""
    tmp = Path(tempfile.mkdtemp(prefix="hybridrl-ckpt-"))
    # fixed names: Tune may copy a later checkpoint into the same folder after a restore, and then every file is
    # replaced by the later one's
    shutil.copytree(step_dir, tmp / "checkpoint")
    (tmp / "step").write_text(step_dir.name.removeprefix("step_") + "\n")
    for name in ("config.yaml", "metrics.csv"):
        shutil.copy2(run_dir / name, tmp / name)
    return tmp


def trial_main(config: dict[str, Any]) -> None:
    """Tune's function trainable: one ``hybridrl train`` run into ``<out>/runs/<name>``, reporting its metrics rows.

    ``config["trial"]`` is a :meth:`TrialSpec.to_dict` plus ``runs_dir``; other top-level keys are PBT's mutated
    config fields (added to the overrides).
    """
    import ray
    from ray import tune

    from hybridrl.runs import list_checkpoints

    t0 = time.monotonic()
    d = dict(config["trial"])
    runs_dir = Path(d.pop("runs_dir"))
    pbt = bool(d.pop("report_checkpoints", False))
    name = tune.get_context().get_trial_name() or d["name"]
    if name != d["name"]:  # PBT's exploit copied the donor's whole config: this trial's own spec is in sweep.json
        d = dict(json.loads((runs_dir.parent / "sweep.json").read_text())["trials"][name]["spec"])
    run_dir = runs_dir / name
    spec = TrialSpec.from_dict(d)
    mutated = [f"{k}={v}" for k, v in sorted(config.items()) if k != "trial"]
    overrides = [*spec.overrides, *mutated]
    node = ray.get_runtime_context().get_node_id()
    base = {"node_id": node, "trial": spec.name}
    if trial_done(run_dir):  # finished before (resumed sweep): report its result, run nothing
        tune.report({**base, **_final(run_dir), "train_s": 0.0, "trial_s": time.monotonic() - t0, "skipped": 1})
        return
    _wait_unlocked(run_dir)  # a trial paused by PBT: its previous `train` process may still be stopping
    resume = False
    ckpt = tune.get_checkpoint()
    if ckpt is not None:  # PBT exploit, or Tune restoring this trial: the project checkpoint inside it
        with ckpt.as_directory() as cdir:
            _restore_from(Path(cdir), run_dir, spec, overrides)
        resume = True
    elif (run_dir / "checkpoints").is_dir() and list_checkpoints(run_dir):
        resume = True  # restarted after a failure: continue the run directory
    elif run_dir.is_dir():
        shutil.rmtree(run_dir)  # left without a checkpoint by a killed trial: nothing to keep, start again
    log = run_dir.parent.parent / "logs" / f"{spec.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t_train = time.monotonic()
    with open(log, "ab") as log_file:
        child = subprocess.Popen(_train_command(spec, run_dir, overrides, resume), stdout=log_file, stderr=log_file,
                                 stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    try:
        _report_rows(child, run_dir, spec, pbt, resume, base)
    finally:
        _stop(child)
    train_s = time.monotonic() - t_train
    if child.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"trial {spec.name}: `hybridrl train` exited with status {child.returncode}; log {log}:\n"
                           f"{tail}")
    last = _last_row(run_dir)
    tune.report({**base, **last, **_final(run_dir), "train_s": train_s, "trial_s": time.monotonic() - t0,
                 "skipped": 0})


def _report_rows(child: subprocess.Popen, run_dir: Path, spec: TrialSpec, pbt: bool, resume: bool,
                 base: dict[str, Any]) -> None:
    """Report each new ``metrics.csv`` row of the running ``train`` to Tune (with the checkpoint of its step, for
    PBT) until the process ends."""
    from ray import tune

    from hybridrl.runs import list_checkpoints

    seen, done_step, last, pending = 0, _start_step(run_dir) if resume else -1, {}, []
    every = spec.checkpoint_every
    while True:
        alive = child.poll() is None
        rows, seen = _rows(run_dir / "metrics.csv", seen)
        pending += [r for r in rows if int(r["step"]) > done_step]
        while pending:
            step = int(pending[0]["step"])
            ckpts = dict(list_checkpoints(run_dir)) if pbt else {}
            due = pbt and (step >= spec.steps or (every and step // every > max(done_step, 0) // every))
            if due and step not in ckpts and alive:
                break  # the loop logs a row, then writes the checkpoint of that step: report them together
            row = pending.pop(0)
            last.update(row)
            report = {**base, **last, "step": step}
            if step in ckpts:
                snap = _snapshot(run_dir, ckpts[step])
                try:
                    tune.report(report, checkpoint=tune.Checkpoint.from_directory(str(snap)))
                finally:
                    shutil.rmtree(snap, ignore_errors=True)
            else:
                tune.report(report)
            done_step = step
        if not alive and not pending:
            break
        time.sleep(POLL_S)


def _train_command(spec: TrialSpec, run_dir: Path, overrides: list[str], resume: bool) -> list[str]:
    """The ``hybridrl train`` command line of a trial (``--resume`` continues the run with its saved config)."""
    cmd = [sys.executable, "-m", "hybridrl.cli", "train", spec.algo, "--out", str(run_dir), "--steps",
           str(spec.steps), "--eval-episodes", str(spec.eval_episodes)]
    if spec.checkpoint_every:
        cmd += ["--checkpoint-every", str(spec.checkpoint_every)]
    if resume:
        return cmd + ["--resume"]
    cmd += ["--seed", str(spec.seed)] + (["--env", spec.env_id] if spec.env_id else [])
    cmd += ["--dataset", spec.dataset] if spec.dataset else []
    return cmd + [a for o in overrides for a in ("--set", o)]


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the trial's process dies (Ray kills stopped trial actors)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stop(child: subprocess.Popen) -> None:
    """End a trial's ``train`` process that is still running (the trial was stopped by the scheduler): SIGTERM lets
    it write a checkpoint and exit; SIGKILL after 30 s."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _wait_unlocked(run_dir: Path, timeout_s: float = 60.0) -> None:
    import fcntl

    lock = run_dir / ".lock"
    t = time.monotonic()
    while lock.exists() and time.monotonic() - t < timeout_s:
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            time.sleep(0.5)
        finally:
            os.close(fd)


def _last_row(run_dir: Path) -> dict[str, float]:
    rows, _ = _rows(run_dir / "metrics.csv", 0)
    last: dict[str, float] = {}
    for r in rows:
        last.update(r)
    return last


def _final(run_dir: Path) -> dict[str, float]:
    """``eval_mean`` (and ``eval_normalized`` when the env has reference scores) from the run's ``eval.json``."""
    path = run_dir / "eval.json"
    if not path.exists():
        return {}
    ev = json.loads(path.read_text())
    out = {"eval_mean": float(ev["mean"])}
    if ev.get("normalized_score") is not None:
        out["eval_normalized"] = float(ev["normalized_score"])
    return out


# ---------------------------------------------------------------------------------------------------- driver side
def _state_path(out: Path) -> Path:
    return out / "sweep.json"


def _read_state(out: Path) -> dict[str, Any]:
    return json.loads(_state_path(out).read_text()) if _state_path(out).exists() else {}


def _write_state(out: Path, state: dict[str, Any]) -> None:
    from hybridrl.runs import atomic_write_text

    atomic_write_text(_state_path(out), json.dumps(state, indent=2) + "\n")


def _prepare_out(sweep: Sweep, out: Path, resume: bool) -> dict[str, Any]:
    """Create ``out`` (or check it for ``--resume``) and return the sweep state, finished trials marked done."""
    from hybridrl.runs import atomic_write_text

    text = sweep.path.read_text(encoding="utf-8")
    if resume:
        if not _state_path(out).exists():
            raise ConfigError(f"nothing to resume: {out} has no sweep.json; run the sweep without --resume")
        if (out / "sweep.yaml").read_text(encoding="utf-8") != text:
            raise ConfigError(f"--resume continues {out} with its own sweep file {out / 'sweep.yaml'}, and "
                              f"{sweep.path} differs from it; pass that file, or another --out")
        state = _read_state(out)
    else:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"sweep directory {out} already exists; pass --resume to continue it, or another --out")
        (out / "runs").mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "sweep.yaml", text)
        state = {"name": sweep.name, "scheduler": sweep.scheduler, "metric": sweep.metric, "mode": sweep.mode,
                 "trials": {t.name: {"spec": t.to_dict(), "status": "pending"} for t in sweep.trials}}
    for t in sweep.trials:
        entry = state["trials"].setdefault(t.name, {"spec": t.to_dict(), "status": "pending"})
        if trial_done(out / "runs" / t.name):
            entry["status"] = "done"
    _write_state(out, state)
    return state


def _callback(out: Path, state: dict[str, Any]):
    from ray import tune

    class SweepState(tune.Callback):
        """Records each trial's outcome in ``sweep.json`` as it happens, so a killed driver loses nothing (Tune calls
        callbacks from the driver's one control thread)."""

        def _set(self, trial, status: str) -> None:
            name = str(trial)  # the trial's own name (trial_name_creator); PBT may have copied another's config
            res = trial.last_result or {}
            entry = state["trials"][name]
            if status == "terminated":
                status = "done" if trial_done(out / "runs" / name) else "stopped"
            entry["status"] = status
            for k in ("node_id", "train_s", "trial_s", "eval_mean", "eval_normalized", "step", "skipped"):
                if k in res:
                    entry[k] = res[k]
            if status == "error":
                entry["error"] = str(getattr(trial, "error_file", "") or "see the Tune trial's error.txt")
            _write_state(out, state)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._set(trial, "terminated")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._set(trial, "error")

    return SweepState()


def _scheduler(sweep: Sweep):
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    args = dict(sweep.scheduler_args)
    if sweep.scheduler == "asha":
        # past the last step (on-policy loops may overshoot `steps` by part of a rollout): ASHA stops a trial that
        # reaches max_t, which would cut off train's final evaluation
        args.setdefault("max_t", 2 * sweep.trials[0].steps + 1)
        args.setdefault("grace_period", max(1, sweep.trials[0].steps // 8))
        return ASHAScheduler(time_attr="step", metric=sweep.metric, mode=sweep.mode, **args)
    if sweep.scheduler == "pbt":
        muts = args.pop("mutations")
        args.setdefault("perturbation_interval", sweep.trials[0].checkpoint_every or max(1, sweep.trials[0].steps // 4))
        return PopulationBasedTraining(time_attr="step", metric=sweep.metric, mode=sweep.mode,
                                       hyperparam_mutations=muts, **args)
    return None


def run_sweep(sweep_file: str | Path, out: str | Path, address: str | None = None, scheduler: str | None = None,
              resume: bool = False, num_cpus: int | None = None, report: bool = True,
              timeout_s: float = 60.0) -> dict[str, Any]:
    """Run (or continue) a sweep; write ``sweep.json``, the trials' run directories and the aggregate report.

    Args:
        sweep_file: the sweep YAML (:mod:`hybridrl.scale.sweep_spec`). out: the sweep directory.
        address: None starts a loopback-only local Ray runtime; ``"auto"``/``"HOST:PORT"`` joins a cluster.
        scheduler: ``none``, ``asha`` or ``pbt`` (None: the file's). resume: continue ``out``; finished trials are
            not rerun, unfinished ones continue from their latest checkpoint.
        num_cpus: CPUs of the local runtime (None: all). report: write report.md/html at the end.
        timeout_s: seconds to wait for the Ray connection.

    Returns:
        a summary: trials to run, done/stopped/error/pending counts, trials per node, seconds spent connecting
        (``connect_s``), in ``tune.fit`` (``fit_s``), in the trials' ``hybridrl train`` processes (``train_s_sum``),
        writing the report (``report_s``) and in all (``wall_s``); ``overhead_per_trial_s`` = (slots x fit_s -
        train_s_sum) / trials run: everything Tune adds per trial (actor start-up, scheduling, idle slots at the
        end), an upper bound.

    Raises:
        ConfigError: a bad sweep file, an ``out`` that exists (without ``resume``) or differs (with it), no Ray.
    """
    from hybridrl.scale import runtime

    out = Path(out)
    sweep = load_sweep(sweep_file, scheduler)
    state = _prepare_out(sweep, out, resume)
    state.update(scheduler=sweep.scheduler)
    todo = [t for t in sweep.trials if state["trials"][t.name]["status"] not in ("done", "stopped")]
    t0 = time.monotonic()
    results: dict[str, Any] = {"trials": len(sweep.trials), "to_run": len(todo)}
    if todo:
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/JSON/TensorBoard copies
        os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        ray = runtime.connect(address, num_cpus=num_cpus, timeout_s=timeout_s)
        from ray import tune

        results["connect_s"] = time.monotonic() - t0

        k = 1 + sum(1 for p in (out / "tune").glob("tune-*")) if (out / "tune").is_dir() else 1
        runs_dir = str((out / "runs").resolve())
        space: dict[str, Any] = {"trial": tune.grid_search([{**t.to_dict(), "runs_dir": runs_dir,
                                                     "report_checkpoints": sweep.scheduler == "pbt"} for t in todo])}
        if sweep.scheduler == "pbt":
            for key, vals in sweep.scheduler_args["mutations"].items():
                space[key] = tune.choice(list(vals))
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1) // max(sweep.resources.get("cpu", 1), 1e-9)))
        tuner = tune.Tuner(
            tune.with_resources(trial_main, {k2: v for k2, v in sweep.resources.items()}),
            param_space=space,
            tune_config=tune.TuneConfig(scheduler=_scheduler(sweep), reuse_actors=False,
                                        max_concurrent_trials=sweep.max_concurrent or None,
                                        trial_name_creator=lambda t: t.config["trial"]["name"],
                                        trial_dirname_creator=lambda t: t.config["trial"]["name"]),
            run_config=tune.RunConfig(name=f"tune-{k}", storage_path=str((out / "tune").resolve()), verbose=0,
                                      callbacks=[_callback(out, state)], log_to_file=True,
                                      failure_config=tune.FailureConfig(max_failures=2),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=4)),
        )
        import logging

        # the per-trial result files it looks for are the loggers switched off above; sweep.json has the results
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
        t_fit = time.monotonic()
        grid = tuner.fit()
        results["fit_s"] = time.monotonic() - t_fit
        results["errors"] = sum(1 for r in grid if r.error is not None)
        results["slots"] = min(cpus, len(todo), sweep.max_concurrent or len(todo))
    statuses = [e["status"] for e in state["trials"].values()]
    nodes: dict[str, int] = {}
    for e in state["trials"].values():
        if "node_id" in e and not e.get("skipped"):
            nodes[e["node_id"]] = nodes.get(e["node_id"], 0) + 1
    results.update(nodes=nodes, done=statuses.count("done"), stopped=statuses.count("stopped"),
                   error=statuses.count("error"), pending=statuses.count("pending"))
    ran = [state["trials"][t.name] for t in todo]
    timed = [e for e in ran if "train_s" in e and not e.get("skipped")]
    if timed and len(timed) == len(ran):  # Tune overhead: slot time in tune.fit not spent in `hybridrl train`
        results["train_s_sum"] = sum(e["train_s"] for e in timed)
        results["trial_in_actor_overhead_s"] = sum(e["trial_s"] - e["train_s"] for e in timed) / len(timed)
        results["overhead_per_trial_s"] = (results["slots"] * results["fit_s"] - results["train_s_sum"]) / len(timed)
    if todo:
        runtime.shutdown()
    if report and statuses.count("done"):
        from hybridrl.scale.report import write_sweep_report

        t_report = time.monotonic()
        write_sweep_report(out)
        results["report_s"] = time.monotonic() - t_report
    results["wall_s"] = time.monotonic() - t0
    return results
