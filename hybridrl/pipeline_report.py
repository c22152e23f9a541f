"""``report.md`` of a pipeline run: dataset, candidates, OPE vs truth, selection, fine-tuning."""

from __future__ import annotations

import datetime as _dt

from hybridrl.runs import RunDir


def _fmt(x) -> str:
    """Two decimals, or three significant digits in exponent form for huge values (degenerate IS weights)."""
    if x is None:
        return "n/a"
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    return f"{x:.3g}" if abs(x) >= 1e5 else f"{x:.2f}"


def write_pipeline_report(run: RunDir, cfg: dict, summary: dict, names, estimators, results, truth, selection,
                          ft_eval: dict | None, timings: dict, selection_info: dict | None = None) -> None:
    env_id, gamma = cfg["env_id"], cfg.get("gamma", 0.99)
    L = [f"# hybridrl pipeline on {env_id}", "",
         f"Written {_dt.datetime.now().isoformat(timespec='seconds')}. Every number below was measured in this run; "
         f"stage timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ".", ""]
    L += ["## 1. Dataset", "",
          f"`datasets/{cfg['collect'].get('name', 'pipeline-v0')}` (Minari format): {summary['episodes']} episodes, "
          f"{summary['steps']} steps; return mean {summary['return_mean']:.1f} ± {summary['return_std']:.1f} "
          f"(min {summary['return_min']:.1f}, max {summary['return_max']:.1f})"
          + (f", normalised score {summary['normalized_score_mean']:.1f}"
             if summary.get("normalized_score_mean") is not None else "")
          + ". Behaviour: "
          + "; ".join(f"{p.get('policy', 'random')} × {p['steps']} steps" for p in cfg["collect"]["parts"]) + ".",
          "", "![dataset returns](img/dataset_returns.png)", ""]
    first = next(iter(results[names[0]].values()))
    L += ["## 2. Offline candidates and 3. off-policy evaluation", "",
          f"Estimates of the discounted value (γ = {gamma}) of each candidate's stochastic policy from the dataset "
          f"alone, with {first.confidence:.0%} {first.interval} intervals ({first.interval_meaning}), next to its "
          f"true discounted return from {cfg.get('ope', {}).get('eval_episodes', 10)} online episodes. "
          "Importance-sampling estimators multiply per-step ratios over up to 1,000 steps; an estimate whose "
          "effective sample size (ESS) is too small or whose weights overflow is marked **degenerate** and shown "
          "without a number, and a critic-based estimate whose FQE fit did not converge is flagged.", "",
          "| candidate | algo | true (online) | " + " | ".join(estimators) + " |",
          "| --- | --- | ---: | " + " | ".join("---:" for _ in estimators) + " |"]
    algos = {c["name"]: c["algo"] + (" " + " ".join(c.get("set", [])) if c.get("set") else "")
             for c in cfg["candidates"]}
    for n in names:
        cells = []
        for e in estimators:
            r = results[n][e]
            ess = r.diagnostics.get("ess") if r.diagnostics else None
            cells.append(r.cell() if r.degenerate else
                         r.cell() + (f" ess {ess:.1f}" if ess is not None else ""))
        t = truth[n]
        L.append(f"| {n} | {algos[n]} | {t['discounted_mean']:.2f} ± {t['discounted_std']:.2f} "
                 f"(return {t['mean']:.0f}) | " + " | ".join(cells) + " |")
    L += [""] + [f"![{e}](img/ope_{e}.png)" for e in estimators] + [""]
    degenerate = [f"`{n}` / `{e}`: " + "; ".join(results[n][e].degenerate_reasons)
                  for n in names for e in estimators if results[n][e].degenerate]
    if degenerate:
        L += ["Degenerate estimates (not usable):", ""] + [f"- {d}" for d in degenerate] + [""]
    notes = sorted({note for n in names for e in estimators for note in results[n][e].notes})
    if notes:
        L += ["Notes:", ""] + [f"- {note}" for note in notes] + [""]
    sel = selection.to_dict()
    info = selection_info or {}
    by = info.get("selected_by", cfg.get("select", {}).get("by", "fqe"))
    L += ["## Selection", "",
          f"Ranked by `{by}`: " + ", ".join(sel["ranking"]) + f"; top-{len(sel['top_k'])}: " + ", ".join(sel["top_k"])
          + "." + (f" {info['selection_note'][0].upper()}{info['selection_note'][1:]}." if info.get("selection_note")
                   else "")]
    metrics = {k: v for k, v in sel.items() if k not in ("ranking", "top_k", "estimates", "true_values")}
    if metrics:
        L += ["", "| metric | value |", "| --- | ---: |"]
        L += [f"| {k} | {v if isinstance(v, str) else _fmt(v)} |" for k, v in metrics.items()
              if isinstance(v, (int, float, str))]
    L.append("")
    if ft_eval is not None:
        from hybridrl.loops.finetune_run import finetune_explanation, finetune_table

        L += ["## 4. Online fine-tuning", "",
              f"`{sel['top_k'][0]}` fine-tuned online with `{ft_eval['algo']}` for {cfg['finetune']['steps']} "
              "environment steps (settings: " + (", ".join(cfg["finetune"].get("set") or []) or "defaults")
              + "; `finetune/config.yaml`).", "", finetune_table(ft_eval), "",
              finetune_explanation(ft_eval, "finetune/"), "", "![fine-tuning curves](finetune/curves.png)", ""]
    L += ["## Where things are", "", "- `behavior/`: the behaviour-policy run", "- `datasets/`: the Minari dataset",
          "- `candidates/<name>/`: each offline run (config, metrics, policy)",
          "- `ope.json`, `selection.json`: estimates and selection", "- `finetune/`: the fine-tuning run",
          "- `summary.json`: the headline numbers", ""]
    run.write_text("report.md", "\n".join(L))
