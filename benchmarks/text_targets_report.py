"""Summarise `benchmarks/text_lm.py` result files against the issue-11 targets: a markdown table (final accuracy
mean ± s.e. over seeds, Δ vs the SFT start, well-formed, per seed), the targets checked from those numbers, the DPO
β × learning-rate grid, and a curves plot. Not a test; run from the repository root:

    .venv/bin/python benchmarks/text_targets_report.py --main benchmarks/results/text_targets_seed{0,1,2}.json \\
        --dpo benchmarks/results/text_targets_dpo_seed{0,1,2}.json --plot docs/img/text_targets.png

Each file holds one or more seeds; seeds are pooled across files (a seed present twice is an error).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def load(paths: list[str]) -> dict[str, dict]:
    seeds: dict[str, dict] = {}
    for p in paths:
        for seed, res in json.loads(Path(p).read_text())["seeds"].items():
            if seed in seeds:
                raise SystemExit(f"seed {seed} appears twice ({p})")
            seeds[seed] = res
    return seeds


def mean_se(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan"))


def summary(seeds: dict[str, dict]) -> dict[str, dict]:
    """method -> final/Δ/well-formed statistics over the seeds that ran it."""
    out = {}
    for name in next(iter(seeds.values()))["runs"]:
        rs = [(s["runs"][name], s["start"]["accuracy"]) for s in seeds.values() if name in s["runs"]]
        acc = [r["accuracy"] for r, _ in rs]
        delta = [r["accuracy"] - st for r, st in rs]
        well = [r["well_formed"] for r, _ in rs]
        out[name] = {"acc": mean_se(acc), "delta": mean_se(delta), "well": statistics.mean(well),
                     "well_min": min(well), "per_seed": acc, "well_per_seed": well,
                     "best": statistics.mean(r["best_accuracy"] for r, _ in rs), "n": len(rs),
                     "tail": statistics.mean(statistics.mean(c[1] for c in r["curve"][-5:]) for r, _ in rs)}
    return out


def find(stats: dict, prefix: str) -> dict | None:
    return next((v for k, v in stats.items() if k.startswith(prefix)), None)


def targets(st: dict) -> list[tuple[str, str, bool]]:
    """(target, measured, met) from the summary; a missing method gives no row."""
    rows = []
    naive, topr = find(st, "corpus: naive"), find(st, "corpus: TOPR")
    none = next((v for k, v in st.items() if k.endswith("no correction")), None)
    ppo = next((v for k, v in st.items() if k.endswith("PPO-clip") and k.startswith("replay")), None)
    tis = next((v for k, v in st.items() if k.endswith("truncated IS")), None)
    rec = next((v for k, v in st.items() if k.endswith("REC one-side mask")), None)
    stopr, spos = find(st, "small corpus: TOPR"), find(st, "small corpus: positive")
    if naive:
        rows.append(("naive REINFORCE ±1 on the corpus ends < 50% well-formed", f"{naive['well']:.3f} (seeds "
                     + " / ".join(f"{w:.3f}" for w in naive["well_per_seed"]) + ")", naive["well"] < 0.5))
    if topr:
        rows.append(("TOPR keeps ≥ 95% well-formed", f"{topr['well']:.3f} (min {topr['well_min']:.3f})",
                     topr["well_min"] >= 0.95))
        rows.append(("TOPR gains ≥ 0.3 accuracy over the start", f"{topr['delta'][0]:+.3f} ± {topr['delta'][1]:.3f}",
                     topr["delta"][0] >= 0.3))
    if none and ppo:
        gap = ppo["acc"][0] - none["acc"][0]
        rows.append(("replay without correction ends ≥ 0.2 below PPO-clip replay", f"{gap:+.3f} below", gap >= 0.2))
    for other, label in ((tis, "truncated IS"), (rec, "REC masking")):
        if ppo and other:
            d = ppo["acc"][0] - other["acc"][0]
            rows.append((f"PPO-clip replay within 0.05 of {label}", f"{d:+.3f}", abs(d) <= 0.05))
    if stopr and spos:
        d = stopr["acc"][0] - spos["acc"][0]
        rows.append(("TOPR ≥ positive-only on the small corpus", f"{d:+.3f} (TOPR − positive-only)", d >= 0))
    return rows


def plot(seeds: dict[str, dict], out: str) -> None:
    import numpy as np

    from hybridrl.runs.plots import _figure, _save

    fig, axes = _figure(1, 2, (6.0, 4.2))
    axes = axes[0]
    for name in next(iter(seeds.values()))["runs"]:
        curves = [np.array(s["runs"][name]["curve"]) for s in seeds.values() if name in s["runs"]]
        c = np.mean(curves, axis=0)
        style = "-" if "replay" in name or "on-policy" in name else "--"
        axes[0].plot(c[:, 0], c[:, 1], style, label=name)
        axes[1].plot(c[:, 0], c[:, 2], style, label=name)
    axes[0].set(xlabel="update", ylabel="greedy accuracy (mean over seeds)", title="accuracy")
    axes[1].set(xlabel="update", ylabel="fraction well-formed (mean over seeds)", title="well-formed outputs")
    axes[1].legend(fontsize=6)
    _save(fig, out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--main", nargs="+", required=True)
    ap.add_argument("--dpo", nargs="*", default=[])
    ap.add_argument("--plot", default="")
    args = ap.parse_args()
    seeds = load(args.main)
    st = summary(seeds)
    starts = [s["start"]["accuracy"] for s in seeds.values()]
    print(f"seeds {', '.join(seeds)}; start accuracy " + " / ".join(f"{x:.3f}" for x in starts)
          + "; corpus correct " + " / ".join(f"{s['corpus_correct']:.2f}" for s in seeds.values())
          + "; small corpus correct " + " / ".join(f"{s['small_corpus_correct']:.2f}" for s in seeds.values()))
    print("\n| method | final accuracy, mean ± s.e. | Δ vs start, mean ± s.e. | last 5 evals | best "
          "| well-formed (min) | per seed |\n|---|---|---|---|---|---|---|")
    for name, v in st.items():
        print(f"| {name} | {v['acc'][0]:.3f} ± {v['acc'][1]:.3f} | {v['delta'][0]:+.3f} ± {v['delta'][1]:.3f} | "
              f"{v['tail']:.3f} | {v['best']:.3f} | {v['well']:.3f} ({v['well_min']:.3f}) | "
              + " / ".join(f"{a:.3f}" for a in v["per_seed"]) + " |")
    print("\n| target | measured | met? |\n|---|---|---|")
    for t, m, ok in targets(st):
        print(f"| {t} | {m} | {'yes' if ok else '**no**'} |")
    if args.dpo:
        dpo = summary(load(args.dpo))
        print("\nDPO grid (final accuracy mean ± s.e. over seeds; well-formed)\n\n| cell | final accuracy | Δ vs start "
              "| well-formed | per seed |\n|---|---|---|---|---|")
        for name, v in dpo.items():
            print(f"| {name} | {v['acc'][0]:.3f} ± {v['acc'][1]:.3f} | {v['delta'][0]:+.3f} ± {v['delta'][1]:.3f} | "
                  f"{v['well']:.3f} | " + " / ".join(f"{a:.3f}" for a in v["per_seed"]) + " |")
    if args.plot:
        plot(seeds, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
