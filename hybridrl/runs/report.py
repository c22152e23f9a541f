"""``report.md``: a human-readable summary of a run directory."""

from __future__ import annotations

import datetime as _dt

from hybridrl.runs.rundir import RunDir


def write_report(run: RunDir, title: str, evaluation: dict | None, sections: list[tuple[str, str]]) -> None:
    """Write ``report.md``: title, what ran (config.yaml), evaluation, curves, then ``sections`` (heading, markdown)."""
    lines = [f"# {title}", "", f"Written {_dt.datetime.now().isoformat(timespec='seconds')} by hybridrl.", ""]
    if run.config_path.exists():
        lines += ["## What ran", "", "```yaml", run.config_path.read_text(encoding="utf-8").strip(), "```", ""]
    if evaluation is not None:
        norm = evaluation.get("normalized_score")
        lines += [
            "## Evaluation", "",
            "| episodes | mean return | std | min | max | normalised score |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| {evaluation['episodes']} | {evaluation['mean']:.1f} | {evaluation['std']:.1f} "
            f"| {evaluation['min']:.1f} | {evaluation['max']:.1f} | {'n/a' if norm is None else f'{norm:.1f}'} |", "",
        ]
    if run.curves_png.exists():
        lines += ["## Learning curves", "", f"![curves]({run.curves_png.name})", ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", body.strip(), ""]
    files = sorted(p.name + ("/" if p.is_dir() else "") for p in run.path.iterdir() if not p.name.startswith("."))
    lines += ["## Files", "", *[f"- `{f}`" for f in files + (["report.md"] if "report.md" not in files else [])], ""]
    run.write_text("report.md", "\n".join(lines))
