"""The ``hybridrl`` command line: a thin typer layer over the Python API.

Machine-readable ``--json`` output goes to stdout alone; everything for people goes to stderr.
User errors print one readable message and exit with status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from hybridrl.errors import ConfigError, HybridRLError, Interrupted

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Policy-gradient RL from on-policy, off-policy and offline data.")
_state = {"debug": False}


def _console():
    from hybridrl.loops.common import console

    return console


def _emit_json(obj) -> None:
    from hybridrl.loops.common import json_ready

    sys.stdout.write(json.dumps(json_ready(obj), indent=2) + "\n")


def _stdout():
    """Console for results people read (stdout, so `> file` captures them); messages use the stderr console."""
    from rich.console import Console

    return Console(soft_wrap=True)


def _check_out_dir(out: Path, overwrite: bool, what: str) -> None:
    """Fail before any work if ``out`` cannot become a directory: a file, an existing non-empty directory without
    ``--overwrite``, or a parent that cannot be written. Raises ConfigError."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is an existing file; pass a directory for the {what}")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{what} {out} already exists; pass --overwrite to replace it")
    _check_writable(out)


def _check_out_file(path: Path, overwrite: bool, option: str) -> None:
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory; pass a file name such as returns.png")
    if path.exists() and not overwrite:
        raise ConfigError(f"{option} {path} already exists; pass --overwrite to replace it")
    _check_writable(path)


def _check_writable(path: Path) -> None:
    import os

    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and (not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK)):
        raise ConfigError(f"cannot write {path}: {parent} is " + ("not a directory" if not parent.is_dir()
                                                                   else "not writable"))


def _train_help() -> str:
    from hybridrl.algos import registry

    needs = {"env": "--env", "dataset": "--dataset", "env+dataset": "--env and --dataset"}
    lines = [f"{name}: {spec.summary} [{needs.get(spec.inputs, spec.inputs)}]"
             for name, spec in sorted(registry().items()) if spec.loop != "ope"]
    return ("Train an algorithm into a run directory (config, metrics, checkpoints, policy, eval, report).\n\n"
            "Algorithms (registered in hybridrl.algos):\n\n" + "\n\n".join(lines))


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
          threads: int = typer.Option(1, "--threads", min=1,
                                      help="torch CPU threads (1 is fastest for small MLPs).")) -> None:
    import torch

    _state["debug"] = debug
    torch.set_num_threads(threads)


@app.command("collect")
def collect_cmd(
    env: str = typer.Option(..., "--env", help="Gymnasium env id, e.g. Hopper-v5."),
    policy: str = typer.Option("random", "--policy", help="'random' or a policy directory."),
    steps: int = typer.Option(..., "--steps", min=1,
                              help="Environment steps (whole episodes; the last one is finished)."),
    out: Path = typer.Option(..., "--out", help="Dataset directory to write (Minari format; name it like name-v0)."),
    seed: int = typer.Option(0, "--seed"),
    action_noise: float | None = typer.Option(None, "--action-noise", min=0.0,
                                              help="Gaussian noise std around the policy mean."),
    epsilon: float = typer.Option(0.0, "--epsilon", min=0.0, max=1.0, help="Probability of a uniformly random action."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset."),
    json_out: bool = typer.Option(False, "--json", help="Print the dataset summary as JSON on stdout."),
) -> None:
    """Collect trajectories with a behaviour policy into a Minari dataset."""
    from hybridrl.data.collect import collect
    from hybridrl.data.measures import dataset_summary
    from hybridrl.nn import load_policy

    _check_out_dir(out, overwrite, "dataset")
    pol = None if policy == "random" else load_policy(policy, env)
    ds = collect(env, pol, steps, seed=seed, action_noise=action_noise, epsilon=epsilon, progress=not json_out)
    ds.save(out, overwrite=overwrite)
    summary = dataset_summary(ds)
    if json_out:
        _emit_json(summary)
    else:
        _stdout().print(f"wrote {summary['episodes']} episodes / {summary['steps']} steps to {out}; "
                         f"return {summary['return_mean']:.1f} ± {summary['return_std']:.1f}")


@app.command("inspect")
def inspect_cmd(
    dataset: str = typer.Argument(..., help="Dataset directory or Minari dataset id."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a return histogram PNG to this path."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --plot file."),
) -> None:
    """Summarise a dataset (episodes, steps, returns, normalised score, coverage) on stdout; --plot writes a return
    histogram. Nothing is written into the dataset."""
    from hybridrl.data.dataset import Dataset
    from hybridrl.data.measures import dataset_summary, plot_return_histogram

    if plot is not None:
        _check_out_file(plot, overwrite, "--plot")
    ds = Dataset.load(dataset)
    summary = dataset_summary(ds)
    if plot is not None:
        plot_return_histogram(ds, plot, overwrite=overwrite)
        summary["histogram"] = str(plot)
    if json_out:
        _emit_json(summary)
        return
    from rich.table import Table

    table = Table(title=f"dataset {dataset}")
    table.add_column("field")
    table.add_column("value", justify="right")
    for k, v in summary.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    _stdout().print(table)


@app.command("train", help=_train_help())
def train_cmd(
    algo: str = typer.Argument(..., help="Algorithm name (see the list above)."),
    env: str | None = typer.Option(None, "--env", help="Gymnasium env id (online algorithms, or evaluation env)."),
    dataset: str | None = typer.Option(None, "--dataset", help="Dataset directory or Minari id (offline algorithms)."),
    steps: int = typer.Option(..., "--steps", min=1, help="Environment steps (online) or gradient steps (offline)."),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (default 0; a resumed run keeps its own)."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of config fields."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field: key=value (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run."),
    checkpoint_every: int | None = typer.Option(None, "--checkpoint-every", min=1, help="Steps between checkpoints."),
    eval_episodes: int = typer.Option(10, "--eval-episodes", min=0),
    vector: str | None = typer.Option(None, "--vector", help="On-policy: 'sync' (default) or 'async' vector envs."),
    workers: int | None = typer.Option(None, "--workers", min=1,
                                       help="On-policy: collect with N Ray rollout workers (needs hybridrl[ray])."),
    envs_per_worker: int = typer.Option(1, "--envs-per-worker", min=1, help="Envs per Ray rollout worker."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster for --workers: 'auto' or HOST:PORT "
                                                               "(default: a local runtime on 127.0.0.1)."),
) -> None:
    from hybridrl.loops.train import train

    if workers is None and address is not None:
        raise ConfigError("--address needs --workers N")
    scale = {"vector": vector} if vector is not None else {}
    if workers is not None:
        scale.update(workers=workers, envs_per_worker=envs_per_worker, address=address)
    train(algo, out, steps, env_id=env, dataset=dataset, seed=seed, config_file=config, overrides=set_,
          resume=resume, overwrite=overwrite, checkpoint_every=checkpoint_every, eval_episodes=eval_episodes,
          scale=scale)


@app.command("evaluate")
def evaluate_cmd(
    policy: Path = typer.Argument(..., help="Policy directory (policy.json + model.safetensors)."),
    env: str = typer.Option(..., "--env"),
    episodes: int = typer.Option(10, "--episodes", min=1),
    seed: int = typer.Option(0, "--seed"),
    stochastic: bool = typer.Option(False, "--stochastic", help="Sample actions instead of the mode."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Evaluate a saved policy online."""
    from hybridrl.loops.evaluate import evaluate_policy
    from hybridrl.nn import load_policy

    result = evaluate_policy(load_policy(policy, env), env, episodes, seed=seed, deterministic=not stochastic)
    if json_out:
        _emit_json(result)
    else:
        _stdout().print(f"{env}: return {result['mean']:.1f} ± {result['std']:.1f} over {episodes} episodes"
                        + (f", normalised score {result['normalized_score']:.1f}"
                           if result["normalized_score"] is not None else ""))


@app.command("ope")
def ope_cmd(
    dataset: str = typer.Option(..., "--dataset"),
    policy: list[Path] = typer.Option(..., "--policy", help="Candidate policy directory (repeatable)."),
    estimators: str = typer.Option("fqe,pdis,snpdis,dr", "--estimators",
                                   help="Comma-separated: fqe, pdis, snpdis, dr, tis, sntis, sndr; marginal "
                                        "mis_dualdice, mis_mwl, mdr_dualdice, mdr_mwl, dm_mql, mdr_mql, smis_mwl, "
                                        "smdr_mwl; kernel "
                                        "(continuous) kis, ksnis, kdr, ksndr; distributional cd_dm, cd_is, cd_dr, "
                                        "cd_snis, cd_sndr."),
    gamma: float = typer.Option(0.99, "--gamma", min=0.0, max=1.0),
    fqe_steps: int = typer.Option(None, "--fqe-steps", min=1,
                                  help="FQE step budget (default: fits the discount horizon; stops early when "
                                       "converged)."),
    ci: str = typer.Option("bootstrap", "--ci", help="Interval: bootstrap, t, hoeffding or bernstein."),
    clip: float = typer.Option(None, "--clip", help="Clip per-step importance ratios at this value (biased)."),
    min_ess: float = typer.Option(10.0, "--min-ess", help="ESS below which an IS estimate is marked degenerate "
                                                          "(capped at a tenth of the episodes)."),
    k: int = typer.Option(1, "--k", min=1, help="Top-k to select."),
    seed: int = typer.Option(0, "--seed"),
    json_out: bool = typer.Option(False, "--json"),
    bandwidth: float = typer.Option(0.2, "--bandwidth", min=1e-6,
                                    help="Kernel IS bandwidth (kis, kdr, ...) as a fraction of the action half-width."),
    cvar_alpha: float = typer.Option(0.1, "--cvar-alpha", min=1e-6, max=1.0, help="CVaR level of cd_* estimators."),
    weight_steps: int = typer.Option(2000, "--weight-steps", min=1, help="DualDICE/MWL/MQL gradient steps."),
    plot: Path | None = typer.Option(None, "--plot", help="Directory for estimates.png, top_k.png (with "
                                                          "--true-values) and cdf.png (cd_* estimators)."),
    true_values: Path | None = typer.Option(None, "--true-values", help="JSON {policy: true value} (e.g. online "
                                                                        "returns) for selection metrics and plots."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing --plot files."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Fit the candidates as Ray tasks, N at a time "
                                                                        "(needs hybridrl[ray]); same results."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster for --workers: 'auto' or HOST:PORT "
                                                               "(default: a local runtime on 127.0.0.1)."),
    fqe_batch: bool = typer.Option(True, "--fqe-batch/--no-fqe-batch", help="Fit the candidates' FQE together."),
) -> None:
    """Estimate candidate policies' values from logged data and select the top-k by the first usable estimator.

    Progress goes to stderr in every mode (``--json`` included). Degenerate estimates (tiny effective sample size,
    overflowing weights) are shown as such, never as a number; an unconverged FQE fit is flagged.
    """
    from hybridrl.data.dataset import Dataset
    from hybridrl.nn import load_policy
    from hybridrl.ope import evaluate_ope, pick_estimator, select
    from hybridrl.ope.plots import check_plot_dir
    from hybridrl.ope.select import read_true_values

    console = _console()
    if workers is None and address is not None:
        raise ConfigError("--address needs --workers N")
    ds = Dataset.load(dataset)
    names = [p.name if p.name != "policy" else p.parent.name for p in policy]
    if len(set(names)) != len(names):
        names = [str(p) for p in policy]
    policies = {n: load_policy(p, ds.env_id) for n, p in zip(names, policy)}
    ests = tuple(e.strip() for e in estimators.split(",") if e.strip())
    truth = read_true_values(true_values, names) if true_values is not None else None
    if plot is not None:
        _check_writable(check_plot_dir(plot, overwrite, ests, truth is not None))
    console.print(f"ope: {dataset}: {ds.n_episodes} episodes, {len(ds)} steps; {len(names)} candidates; "
                  f"estimators {', '.join(ests)}; {ci} intervals")
    from hybridrl.ope.weights import WeightConfig

    results = evaluate_ope(ds, policies, estimators=ests, gamma=gamma, fqe_steps=fqe_steps, seed=seed,
                           progress=True, ci=ci, clip=clip, min_ess=min_ess, bandwidth=bandwidth,
                           cvar_alpha=cvar_alpha, weight_config=WeightConfig(steps=weight_steps), workers=workers,
                           address=address, fqe_batch=fqe_batch)
    by, usable, why = pick_estimator(results, ests[0], ests)
    selection = select({n: results[n][by] for n in names}, k=min(k, len(names)), true_values=truth)
    out = {"estimates": {n: {e: r.to_dict() for e, r in results[n].items()} for n in names},
           "selection": selection.to_dict(), "selected_by": by, "selection_note": why, "usable_estimators": usable}
    if plot is not None:
        from hybridrl.ope.plots import write_ope_plots

        out["plots"] = [str(p) for p in write_ope_plots(results, ests, plot, truth, overwrite=overwrite)]
        console.print(f"ope: plots written: {', '.join(out['plots'])}")
    console.print(f"ope: done; {why}")
    if json_out:
        _emit_json(out)
        return
    from rich.table import Table

    conf = next(iter(results[names[0]].values())).confidence
    table = Table(title=f"OPE on {dataset} (gamma {gamma}, {conf:.0%} {ci} intervals)")
    table.add_column("policy")
    for e in ests:
        table.add_column(e, justify="right")
    for n in names:
        table.add_row(n, *[results[n][e].cell() for e in ests])
    _stdout().print(table)
    _stdout().print(f"top-{len(selection.top_k)}: {', '.join(selection.top_k)}; {why}", markup=False)
    first = next(iter(results[names[0]].values()))
    _stdout().print(f"interval: {first.interval_meaning}", markup=False)
    lines = [f"{n} / {e}: degenerate: " + "; ".join(results[n][e].degenerate_reasons)
             for n in names for e in ests if results[n][e].degenerate]
    lines += list(dict.fromkeys(note for n in names for e in ests for note in results[n][e].notes))
    for line in lines:  # degeneracy reasons, unconverged FQE warnings, the behaviour model, clipping bias
        _stdout().print(f"note: {line}", soft_wrap=True, markup=False)  # reasons hold brackets: "E[w] = 1"


def _finetune_help() -> str:
    from hybridrl.loops.finetune_run import FINETUNE_METHODS

    return ("Fine-tune a saved (offline) policy online into a run directory: evaluates the start and a grid of points "
            "(deterministic and stochastic), writes eval.json (start, final, dip, gain), curves.png, report.md.\n\n"
            "Methods (hybridrl.loops.finetune_run.FINETUNE_METHODS): " + ", ".join(sorted(FINETUNE_METHODS)) + ".")


@app.command("finetune", help=_finetune_help())
def finetune_cmd(
    policy: Path = typer.Argument(..., help="Policy directory (policy.json + model.safetensors) to start from."),
    env: str | None = typer.Option(None, "--env", help="Gymnasium env id (default: the dataset's env)."),
    dataset: str | None = typer.Option(None, "--dataset", help="The offline dataset (directory or Minari id)."),
    algo: str = typer.Option("ppo", "--algo", help="Fine-tuning method (see above)."),
    steps: int = typer.Option(..., "--steps", min=1, help="Online budget in environment steps."),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (default 0; a resumed run keeps its own)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field of the method's config: key=value."),
    eval_episodes: int = typer.Option(10, "--eval-episodes", min=1, help="Episodes per evaluation (each mode)."),
    eval_points: int = typer.Option(10, "--eval-points", min=1, help="Evenly spaced evaluations (plus 4 early)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run."),
    json_out: bool = typer.Option(False, "--json", help="Print eval.json's start/final/dip/gain on stdout."),
) -> None:
    from hybridrl.loops.finetune_run import finetune_run

    run = finetune_run(policy, out, algo=algo, env_id=env, dataset=dataset, steps=steps, seed=seed, overrides=set_,
                       eval_episodes=eval_episodes, eval_points=eval_points, resume=resume, overwrite=overwrite,
                       progress=not json_out)
    if json_out:
        result = json.loads((run.path / "eval.json").read_text())
        _emit_json({k: result[k] for k in ("algo", "env_id", "steps", "start", "final", "dip", "gain", "lost_start")})


@app.command("pipeline")
def pipeline_cmd(
    config: Path = typer.Argument(..., help="Pipeline YAML (see hybridrl/configs/demo.yaml)."),
    out: Path = typer.Option(..., "--out"),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Run collect -> offline candidates -> OPE/selection -> online fine-tuning -> report from a config."""
    from hybridrl.pipeline import run_pipeline

    run_pipeline(config, out, overwrite=overwrite)


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), "--out"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    seed: int | None = typer.Option(None, "--seed", help="Replace the config's seed (default: the config's, 0)."),
) -> None:
    """The whole pipeline on Hopper-v5 from the config shipped in the package (about 10 minutes on 2 cores)."""
    from hybridrl.pipeline import run_demo

    run_demo(out, overwrite=overwrite, seed=seed)


from hybridrl.text.cli import app as _text_app  # noqa: E402, I001  (the `hybridrl text ...` sub-app)
app.add_typer(_text_app, name="text")


datasets_app = typer.Typer(no_args_is_help=True, help="Dataset suites made by hybridrl (D4RL-style).")
app.add_typer(datasets_app, name="datasets")


@datasets_app.command("make")
def datasets_make_cmd(
    env: str = typer.Option(..., "--env", help="Gymnasium env id, e.g. Hopper-v5."),
    kinds: str = typer.Option("random,medium,medium-replay,medium-expert,expert", "--kinds",
                              help="Comma-separated: random, medium, medium-replay, medium-expert, expert."),
    out: Path = typer.Option(..., "--out", help="Suite directory (datasets, policies, suite.json); reused if cached."),
    budget: str = typer.Option("default", "--budget", help="default (PPO 1M steps, 100k per kind), reduced, tiny."),
    seed: int = typer.Option(0, "--seed"),
    json_out: bool = typer.Option(False, "--json", help="Print suite.json on stdout."),
) -> None:
    """Build a D4RL-style suite (random, medium, medium-replay, medium-expert, expert) with PPO as the online
    learner; datasets already in --out are reused, never replaced (see hybridrl/data/suite.py)."""
    from hybridrl.data.suite import make_suite

    manifest = make_suite(env, kinds, out, budget=budget, seed=seed, progress=not json_out)
    if json_out:
        _emit_json(manifest)
        return
    for kind, info in manifest["datasets"].items():
        score = info["normalized_score"]
        _stdout().print(f"{kind}: {out / info['path']} ({info['steps']} steps, {info['episodes']} episodes, return "
                        f"{info['return_mean']:.1f}" + (f", normalised {score:.1f})" if score is not None else ")"))


@app.command("sweep")
def sweep_cmd(
    sweep_file: Path = typer.Argument(..., help="Sweep YAML: algorithms, datasets/envs, grid, seeds (docs/sweep.md)."),
    out: Path = typer.Option(..., "--out", help="Sweep directory (runs/<trial>/, sweep.json, report.md/html)."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster: 'auto' or HOST:PORT (default: a local "
                                                               "runtime on 127.0.0.1)."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="none, asha or pbt (default: the file's)."),
    resume: bool = typer.Option(False, "--resume", help="Continue --out: finished trials are not rerun."),
    num_cpus: int | None = typer.Option(None, "--num-cpus", min=1, help="CPUs of the local runtime (default: all)."),
    report_only: bool = typer.Option(False, "--report-only", help="Only regenerate report.md/report.html of --out."),
    json_out: bool = typer.Option(False, "--json", help="Print the sweep summary as JSON on stdout."),
) -> None:
    """Run a grid of `train` runs (algorithms x datasets x config values x seeds) with Ray Tune; each trial is an
    ordinary run directory. Then write the aggregate report (IQM, bootstrap intervals, performance profiles)."""
    if report_only:
        return sweep_report_cmd(out)
    from hybridrl.scale.sweep import run_sweep

    summary = run_sweep(sweep_file, out, address=address, scheduler=scheduler, resume=resume, num_cpus=num_cpus)
    if json_out:
        _emit_json(summary)
        return
    _stdout().print(f"sweep {out}: {summary['done']} done, {summary['stopped']} stopped early, {summary['error']} "
                    f"errors, {summary['pending']} not run; wall {summary['wall_s']:.0f} s"
                    + (f"; report {out / 'report.md'}" if (out / "report.md").exists() else ""))


@app.command("sweep-report")
def sweep_report_cmd(
    directory: Path = typer.Argument(..., help="A sweep directory written by `hybridrl sweep`."),
) -> None:
    """(Re)write report.md and report.html of a sweep from its finished run directories (no Ray needed)."""
    from hybridrl.scale.report import write_sweep_report

    md, page = write_sweep_report(directory)
    _stdout().print(f"wrote {md} and {page}")


def _on_signal(signum, frame) -> None:
    _state["signal"] = signum
    raise KeyboardInterrupt


def _interrupted(step: int | None, detail: str) -> None:
    import signal

    sig = _state.get("signal") or signal.SIGINT
    where = f" at step {step}" if step is not None else ""
    name = signal.Signals(sig).name
    sys.stderr.write(f"interrupted{where} by {name}{detail}\n")
    sys.exit(128 + int(sig))


def main() -> None:
    """Entry point: run the app. HybridRLError (and OSError) -> one message, exit 2; SIGINT/SIGTERM -> exit 130/143."""
    import signal

    # Both signals raise KeyboardInterrupt (remembering which), also when SIGINT was inherited as ignored (`cmd &`).
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        rc = app(standalone_mode=False)  # typer turns KeyboardInterrupt into a *returned* 130
        if isinstance(rc, int) and rc != 0:
            if rc == 130 and "signal" in _state:
                _interrupted(None, "; continue from the last checkpoint, if any, with --resume")
            sys.exit(rc)
    except Interrupted as e:
        if "signal" not in _state:
            _state["signal"] = e.signal_number
        _interrupted(e.step, f"; checkpoint {e.checkpoint} (continue with --resume)" if e.checkpoint is not None
                     else "; nothing saved")
    except KeyboardInterrupt:
        _interrupted(None, "; continue from the last checkpoint, if any, with --resume")
    except (HybridRLError, OSError) as e:
        if _state["debug"]:
            raise
        from rich.text import Text

        msg = f"{type(e).__name__}: {e}" if isinstance(e, HybridRLError) else _os_message(e)
        _console().print(Text.assemble(("error: ", "bold red"), msg), soft_wrap=True)
        sys.exit(2)
    except Exception as e:  # typer/click usage errors carry their own message and exit code
        if type(e).__name__ == "Abort" and isinstance(e.__context__, KeyboardInterrupt):  # click wraps Ctrl-C
            _interrupted(None, "; continue from the last checkpoint, if any, with --resume")
        show, code = getattr(e, "show", None), getattr(e, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        if type(e).__name__ == "Abort":
            sys.exit(1)
        raise


def _os_message(e: OSError) -> str:
    where = f": {e.filename}" if e.filename else ""
    return f"{type(e).__name__}: {e.strerror or e}{where}"


if __name__ == "__main__":
    main()
