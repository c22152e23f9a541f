"""Aggregate reports of a sweep, as Agarwal et al. (2021) "Deep RL at the Edge of the Statistical Precipice" recommend:
interquartile mean (IQM) with stratified bootstrap confidence intervals, performance profiles and the probability of
improvement: point estimates from the ``rliable`` package (its reference implementation), stratified bootstrap intervals
in NumPy (see the note below on why not rliable's). No Ray needed.

Scores: each finished trial's final evaluation (``eval.json``): the normalised score when every trial has one
(D4RL-style reference returns), else the mean return. Per algorithm configuration ("variant") the scores form a matrix
``[runs, tasks]`` (tasks = datasets or envs, runs = seeds); the stratified bootstrap resamples runs within each task.

Outputs in the sweep directory: ``report.md``, ``report.html`` (self-contained: the plots are embedded as base64 PNG)
and ``plots/*.png``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from hybridrl.errors import ConfigError

CONFIDENCE = 0.95
REPS = 20000
"""Bootstrap replications per interval (rliable's default is 50,000)."""
INTERVAL_MEANING = (
    "Intervals are 95% percentile stratified bootstrap confidence intervals (Agarwal et al. 2021): runs (seeds) are "
    "resampled with replacement within each task, and the statistic is recomputed {reps} times. They describe "
    "run-to-run variability on these tasks at this budget; they say nothing about other tasks, budgets or "
    "implementations. With few runs per task (5 here) the interval ends are themselves uncertain, and a cell's "
    "interval cannot be wider than the range of its runs.")


# ---------------------------------------------------------------------------------------------------- statistics
# Point estimates come from rliable.metrics. rliable's bootstrap (rliable.library) cannot be used here: it needs the
# `arch` package, whose 7.x releases fail to import with pandas 3 and whose 8.x releases no longer accept the
# `random_state` keyword rliable passes. The stratified bootstrap below is the same procedure as rliable's
# StratifiedBootstrap (runs resampled with replacement within each task, percentile intervals), in NumPy.
def iqm(scores: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of all scores (25% trimmed from each end; Agarwal et al. 2021,
    Sec. 4.3). ``scores``: any shape, flattened."""
    from rliable import metrics

    return float(metrics.aggregate_iqm(np.asarray(scores, dtype=float)))


def _batched_iqm(x: np.ndarray) -> np.ndarray:
    from scipy.stats import trim_mean

    return trim_mean(x.reshape(len(x), -1), 0.25, axis=1)


STATISTICS = {
    "iqm": _batched_iqm,
    "median": lambda x: np.median(x.reshape(len(x), -1), axis=1),
    "mean": lambda x: x.reshape(len(x), -1).mean(axis=1),
}
"""Aggregate statistics over all runs and tasks of a batch ``[reps, runs, tasks] -> [reps]``."""


def stratified_resample(scores: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """``reps`` bootstrap copies of ``scores [runs, tasks]``: in each task (column) the runs are drawn with replacement
    from that task's own runs (the stratified bootstrap of Agarwal et al. 2021, Sec. 4.2). Returns ``[reps, runs,
    tasks]``."""
    scores = np.asarray(scores, dtype=float)
    runs, tasks = scores.shape
    idx = rng.integers(0, runs, size=(reps, runs, tasks))
    return scores[idx, np.arange(tasks)]


def _ci(samples: np.ndarray) -> tuple[float, float]:
    alpha = (1 - CONFIDENCE) / 2
    lo, hi = np.percentile(samples, [100 * alpha, 100 * (1 - alpha)], axis=0)
    return float(lo), float(hi)


def interval_estimates(score_dict: dict[str, np.ndarray], seed: int = 0, reps: int = REPS
                       ) -> dict[str, dict[str, tuple[float, float, float]]]:
    """IQM, median and mean of each ``[runs, tasks]`` matrix with 95% percentile stratified bootstrap CIs.

    Returns:
        ``{variant: {"iqm"|"median"|"mean": (point, low, high)}}``; points from ``rliable.metrics``.
    """
    from rliable import metrics

    points = {"iqm": metrics.aggregate_iqm, "median": metrics.aggregate_median, "mean": metrics.aggregate_mean}
    out = {}
    for k, scores in score_dict.items():
        scores = np.asarray(scores, dtype=float)
        boot = stratified_resample(scores, reps, np.random.default_rng(seed))
        out[k] = {name: (float(points[name](scores)), *_ci(STATISTICS[name](boot))) for name in points}
    return out


def _poi_batched(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + P(X = Y)/2 averaged over tasks, for batches ``x [reps, runs_x, tasks]``, ``y [reps, runs_y,
    tasks]``."""
    gt = (x[:, :, None, :] > y[:, None, :, :]).mean(axis=(1, 2))
    eq = (x[:, :, None, :] == y[:, None, :, :]).mean(axis=(1, 2))
    return (gt + 0.5 * eq).mean(axis=-1)


def probability_of_improvement(x: np.ndarray, y: np.ndarray, seed: int = 0, reps: int = REPS
                               ) -> tuple[float, float, float]:
    """P(X > Y): the probability that a run of X on a random task beats a run of Y on it (ties count half; the
    Mann-Whitney U statistic over ``runs_x * runs_y``, averaged over tasks; Agarwal et al. 2021, Sec. 4.3), with a
    95% CI from resampling X's and Y's runs independently within each task.

    Args:
        x, y: ``[runs_x, tasks]`` and ``[runs_y, tasks]`` scores of the same tasks.
    Returns:
        ``(point, low, high)``; the point from ``rliable.metrics.probability_of_improvement``.
    """
    from rliable import metrics

    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    bx, by = stratified_resample(x, reps, rng), stratified_resample(y, reps, rng)
    return (float(metrics.probability_of_improvement(x, y)), *_ci(_poi_batched(bx, by)))


def performance_profiles(score_dict: dict[str, np.ndarray], taus: np.ndarray, seed: int = 0, reps: int = 2000
                         ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Score distributions (Agarwal et al. 2021, Sec. 4.1): the fraction of all runs, over all tasks, with score
    > tau, for each tau ``[T]``; 95% stratified bootstrap bands ``[2, T]``."""
    taus = np.asarray(taus, dtype=float)
    profiles, bands = {}, {}
    for k, scores in score_dict.items():
        scores = np.asarray(scores, dtype=float)
        profiles[k] = (scores.ravel()[None, :] > taus[:, None]).mean(axis=1)
        boot = stratified_resample(scores, reps, np.random.default_rng(seed)).reshape(reps, -1)
        frac = (boot[:, None, :] > taus[None, :, None]).mean(axis=2)  # [reps, T]
        alpha = (1 - CONFIDENCE) / 2
        bands[k] = np.percentile(frac, [100 * alpha, 100 * (1 - alpha)], axis=0)
    return profiles, bands


# ---------------------------------------------------------------------------------------------------- collection
def collect_scores(out: str | Path) -> dict[str, Any]:
    """Read every finished trial of the sweep in ``out`` (``sweep.json`` + the runs' ``eval.json``).

    Returns:
        ``{"kind": "normalised score"|"return", "cells": {(variant, task): {seed: score}}, "variants", "tasks",
        "missing": [trial names without eval.json], "stopped": [...]}``.

    Raises:
        ConfigError: ``out`` is not a sweep directory, or no trial has finished.
    """
    out = Path(out)
    state_file = out / "sweep.json"
    if not state_file.exists():
        raise ConfigError(f"{out} is not a sweep directory: it has no sweep.json (run `hybridrl sweep` first)")
    state = json.loads(state_file.read_text())
    evals, missing, stopped = {}, [], []
    for name, entry in state["trials"].items():
        spec = entry["spec"]
        path = out / "runs" / name / "eval.json"
        if (out / "runs" / name / "report.md").exists() and path.exists():
            evals[name] = (spec, json.loads(path.read_text()))
        elif entry.get("status") == "stopped":
            stopped.append(name)
        else:
            missing.append(name)
    if not evals:
        raise ConfigError(f"{out}: no finished trial with an eval.json yet; nothing to report")
    normalised = all(ev.get("normalized_score") is not None for _, ev in evals.values())
    cells: dict[tuple[str, str], dict[int, float]] = {}
    for spec, ev in evals.values():
        score = ev["normalized_score"] if normalised else ev["mean"]
        cells.setdefault((spec["variant"], spec["task"]), {})[int(spec["seed"])] = float(score)
    variants = list(dict.fromkeys(v for v, _ in cells))
    tasks = list(dict.fromkeys(t for _, t in cells))
    return {"kind": "normalised score" if normalised else "return", "cells": cells, "variants": variants,
            "tasks": tasks, "missing": sorted(missing), "stopped": sorted(stopped), "name": state.get("name", ""),
            "scheduler": state.get("scheduler", "none")}


def score_matrices(data: dict[str, Any]) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """``{variant: [runs, tasks]}`` over the tasks every variant finished, using the seeds each variant finished on
    all of them (rliable needs rectangular matrices); plus notes on what was left out, and the tasks used."""
    cells, notes = data["cells"], []
    tasks = [t for t in data["tasks"] if all((v, t) in cells for v in data["variants"])]
    if len(tasks) < len(data["tasks"]):
        notes.append(f"tasks left out of the aggregates (not finished by every configuration): "
                     f"{', '.join(t for t in data['tasks'] if t not in tasks)}")
    mats = {}
    for v in data["variants"]:
        seeds = sorted(set.intersection(*[set(cells[(v, t)]) for t in tasks])) if tasks else []
        dropped = sum(len(cells[(v, t)]) for t in tasks) - len(seeds) * len(tasks)
        if dropped:
            notes.append(f"{v}: {dropped} run(s) left out of the aggregates (seeds not finished on every task)")
        if seeds:
            mats[v] = np.array([[cells[(v, t)][s] for t in tasks] for s in seeds])
    return mats, notes, tasks


# ---------------------------------------------------------------------------------------------------- plots
def _png(fig, path: Path) -> Path:
    import io

    from hybridrl.runs import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(path, buf.getvalue())


def _plot_intervals(est: dict[str, dict[str, tuple]], kind: str, path: Path) -> Path:
    from matplotlib.figure import Figure

    names = list(est)
    fig = Figure(figsize=(10, 0.5 * len(names) + 1.6), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    for ax, stat in zip(axes, ("iqm", "median", "mean")):
        for i, n in enumerate(names):
            p, lo, hi = est[n][stat]
            ax.plot([lo, hi], [i, i], lw=6, alpha=0.5, color=f"C{i % 10}")
            ax.plot([p], [i], "|", ms=14, color="k")
        ax.set_title(stat.upper() if stat == "iqm" else stat)
        ax.set_xlabel(kind)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), names)
    return _png(fig, path)


def _plot_profiles(taus, profiles, cis, kind: str, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (n, prof) in enumerate(profiles.items()):
        ax.plot(taus, prof, color=f"C{i % 10}", label=n)
        ax.fill_between(taus, cis[n][0], cis[n][1], color=f"C{i % 10}", alpha=0.2)
    ax.set_xlabel(f"{kind} threshold tau")
    ax.set_ylabel("fraction of runs with score > tau")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("Performance profiles (95% CI bands)")
    return _png(fig, path)


def _plot_poi(poi: dict[tuple[str, str], tuple], path: Path) -> Path:
    from matplotlib.figure import Figure

    pairs = list(poi)
    fig = Figure(figsize=(6.4, 0.45 * len(pairs) + 1.4), layout="constrained")
    ax = fig.subplots()
    for i, pair in enumerate(pairs):
        p, lo, hi = poi[pair]
        ax.plot([lo, hi], [i, i], lw=6, alpha=0.5, color="C0")
        ax.plot([p], [i], "|", ms=14, color="k")
    ax.axvline(0.5, color="grey", ls="--", lw=1)
    ax.set_yticks(range(len(pairs)), [f"P({x} > {y})" for x, y in pairs])
    ax.set_xlim(-0.03, 1.03)
    ax.set_xlabel("probability of improvement")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig, path)


# ---------------------------------------------------------------------------------------------------- report
def _fmt(t: tuple[float, float, float]) -> str:
    return f"{t[0]:.1f} [{t[1]:.1f}, {t[2]:.1f}]"


def build_report(out: str | Path, seed: int = 0, reps: int = REPS) -> dict[str, Any]:
    """Compute every table and plot of the report (plots written to ``out/plots``); returns the tables as data."""
    out = Path(out)
    data = collect_scores(out)
    kind, cells = data["kind"], data["cells"]
    plots_dir = out / "plots"
    plots_dir.mkdir(exist_ok=True)
    notes: list[str] = []
    per_cell = []
    for t in data["tasks"]:
        for v in data["variants"]:
            if (v, t) not in cells:
                continue
            x = np.array([cells[(v, t)][s] for s in sorted(cells[(v, t)])])
            row = {"variant": v, "task": t, "n": len(x), "mean": float(x.mean()),
                   "std": float(x.std(ddof=1)) if len(x) > 1 else float("nan"), "median": float(np.median(x))}
            if len(x) >= 2:
                row["iqm_ci"] = interval_estimates({v: x[:, None]}, seed=seed, reps=reps)[v]["iqm"]
            per_cell.append(row)
    if any(r["n"] < 4 for r in per_cell):
        notes.append("cells with fewer than 4 runs: their IQM trims nothing and equals the mean; their intervals "
                     "are too rough to compare algorithms")
    mats, more, tasks = score_matrices(data)
    notes += more
    result: dict[str, Any] = {"data": data, "per_cell": per_cell, "notes": notes, "tasks": tasks, "plots": {}}
    if kind == "return" and len(tasks) > 1:
        notes.append("scores are raw returns (no normalised score for these envs): returns of different tasks have "
                     "different scales, so the aggregates across tasks weight tasks by their return scale")
    if mats and all(m.shape[0] >= 2 for m in mats.values()):
        est = interval_estimates(mats, seed=seed, reps=reps)
        result["aggregate"] = est
        result["plots"]["intervals"] = _plot_intervals(est, kind, plots_dir / "aggregate_intervals.png")
        allv = np.concatenate([m.ravel() for m in mats.values()])
        taus = np.linspace(allv.min(), allv.max(), 81) if allv.max() > allv.min() else np.array([allv.min()])
        profiles, cis = performance_profiles(mats, taus, seed=seed)
        result["plots"]["profiles"] = _plot_profiles(taus, profiles, cis, kind, plots_dir / "performance_profiles.png")
        names = list(mats)
        poi = {(a, b): probability_of_improvement(mats[a], mats[b], seed=seed, reps=reps)
               for i, a in enumerate(names) for b in names[i + 1:]}
        result["poi"] = poi
        flat = [f"P({a} > {b}) = {p:.2f}" for (a, b), (p, lo, hi) in poi.items() if lo == hi]
        if flat:
            notes.append("zero-width probability-of-improvement intervals (" + "; ".join(flat) + "): the two "
                         "configurations' runs do not overlap on any task, so no resample can change the value; "
                         "the interval does not mean certainty beyond these runs")
        if poi:
            result["plots"]["poi"] = _plot_poi(poi, plots_dir / "probability_of_improvement.png")
    else:
        notes.append("no aggregate: some configuration has fewer than 2 complete runs")
    return result


def _tables_md(r: dict[str, Any]) -> list[str]:
    kind = r["data"]["kind"]
    lines = [f"## Per algorithm x dataset ({kind}, final evaluation)", "",
             "| algorithm | dataset/env | runs | mean | std | median | IQM [95% CI] |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for c in r["per_cell"]:
        lines.append(f"| {c['variant']} | {c['task']} | {c['n']} | {c['mean']:.1f} | {c['std']:.1f} | "
                     f"{c['median']:.1f} | {_fmt(c['iqm_ci']) if 'iqm_ci' in c else 'n/a (1 run)'} |")
    if "aggregate" in r:
        lines += ["", f"## Aggregate over {len(r['tasks'])} task(s): {', '.join(r['tasks'])}", "",
                  "| algorithm | IQM [95% CI] | median [95% CI] | mean [95% CI] |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {v} | {_fmt(e['iqm'])} | {_fmt(e['median'])} | {_fmt(e['mean'])} |"
                  for v, e in r["aggregate"].items()]
    if r.get("poi"):
        lines += ["", "## Probability of improvement", "", "| X | Y | P(X > Y) [95% CI] |", "| --- | --- | ---: |"]
        lines += [f"| {x} | {y} | {p:.2f} [{lo:.2f}, {hi:.2f}] |" for (x, y), (p, lo, hi) in r["poi"].items()]
    return lines


def _md_to_html_table(lines: list[str]) -> str:
    """The markdown tables/headings of :func:`_tables_md` as HTML."""
    parts, table = [], []

    def flush():
        if table:
            head, body = table[0], table[2:]
            cells = lambda row, tag: "".join(f"<{tag}>{html.escape(c.strip())}</{tag}>"
                                             for c in row.strip("|").split("|"))
            parts.append("<table><thead><tr>" + cells(head, "th") + "</tr></thead><tbody>"
                         + "".join("<tr>" + cells(b, "td") + "</tr>" for b in body) + "</tbody></table>")
            table.clear()

    for line in lines:
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("## "):
            parts.append(f"<h2>{html.escape(line[3:])}</h2>")
    flush()
    return "\n".join(parts)


def write_sweep_report(out: str | Path, seed: int = 0, reps: int = REPS) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (plus ``plots/``) for the sweep in ``out``; returns their paths.

    Raises:
        ConfigError: not a sweep directory, or nothing finished yet.
    """
    from hybridrl.runs import atomic_write_text

    out = Path(out)
    r = build_report(out, seed=seed, reps=reps)
    d = r["data"]
    n_runs = sum(len(v) for v in d["cells"].values())
    head = [f"# Sweep report: {d['name']}", "",
            f"Written {_dt.datetime.now().isoformat(timespec='seconds')} by hybridrl from {n_runs} finished trials "
            f"({len(d['variants'])} configurations x {len(d['tasks'])} datasets/envs; scheduler {d['scheduler']}). "
            f"Score: the {d['kind']} of each trial's final evaluation (`eval.json`).", ""]
    intervals = INTERVAL_MEANING.format(reps=reps)
    body = _tables_md(r)
    notes = list(r["notes"])
    if d["stopped"]:
        notes.append(f"{len(d['stopped'])} trial(s) stopped early by the scheduler are not scored: "
                     f"{', '.join(d['stopped'])}")
    if d["missing"]:
        notes.append(f"{len(d['missing'])} trial(s) not finished are not scored: {', '.join(d['missing'])}")
    plot_titles = {"intervals": "IQM, median and mean with 95% CIs", "profiles": "Performance profiles",
                   "poi": "Probability of improvement"}
    md = head + ["## What the intervals mean", "", intervals, ""] + body + [""]
    for key, path in r["plots"].items():
        md += [f"## {plot_titles[key]}", "", f"![{key}](plots/{path.name})", ""]
    if notes:
        md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    md_path = atomic_write_text(out / "report.md", "\n".join(md))
    imgs = "".join(f"<h2>{html.escape(plot_titles[k])}</h2><img alt='{k}' src='data:image/png;base64,"
                   f"{base64.b64encode(p.read_bytes()).decode()}'>" for k, p in r["plots"].items())
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>" + html.escape(head[0][2:]) +
            "</title><style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
            "margin:1em 0}td,th{border:1px solid #999;padding:4px 8px;text-align:right}th{background:#eee}"
            "td:first-child,td:nth-child(2){text-align:left}img{max-width:100%;display:block;margin:1em 0}</style>"
            "</head><body><h1>" + html.escape(head[0][2:]) + "</h1><p>" + html.escape(head[2]) + "</p>"
            "<h2>What the intervals mean</h2><p>" + html.escape(intervals) + "</p>" + _md_to_html_table(body) + imgs
            + ("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>" if notes else "")
            + "</body></html>\n")
    html_path = atomic_write_text(out / "report.html", page)
    return md_path, html_path
