"""Combine the returns JSONs of ``ppo_mujoco.py --mode returns`` (one per seed or group of seeds).

Prints a markdown table (final deterministic evaluation, mean ± standard error over seeds) and plots
the training curves (mean of the last 20 training episodes against environment steps) with a band of
± one standard error across seeds.

    .venv/bin/python benchmarks/aggregate_returns.py benchmarks/results/ppo_hopper_returns*.json \
        --plot docs/img/bench_ppo_hopper.png

Also reads ``hnpg_hopper.py`` results (``runs`` with ``algo``); ``--labels`` names each file's runs.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--plot", default=None)
    parser.add_argument("--labels", nargs="+", default=None,
                        help="one label per file, prefixed to its runs' names (e.g. to tell two HNPG settings apart)")
    args = parser.parse_args()
    runs = defaultdict(list)
    for i, f in enumerate(args.files):
        data = json.load(open(f))
        # ppo_mujoco.py writes {"returns": [{lib, env_id, ...}]}; hnpg_hopper.py {"runs": [{algo, ...}], "args": {env}}
        for r in data.get("returns") or data["runs"]:
            name = r.get("lib") or r["algo"]
            if args.labels:
                name = f"{args.labels[i]} {name}".strip()
            runs[(name, r.get("env_id") or data["args"]["env"])].append(r)
    print("| run | env | seeds | steps | final deterministic eval, mean ± s.e. | per seed |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for (lib, env), rs in sorted(runs.items()):
        finals = np.array([r["final_eval_mean"] for r in rs])
        se = finals.std(ddof=1) / np.sqrt(len(finals)) if len(finals) > 1 else float("nan")
        print(f"| {lib} | {env} | {len(rs)} | {rs[0]['steps']:,} | {finals.mean():,.1f} ± {se:,.1f} | "
              + ", ".join(f"{x:,.0f} (seed {r['seed']})" for x, r in zip(finals, rs)) + " |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for (lib, env), rs in sorted(runs.items()):
            grid = np.linspace(0, min(max(s for s, _ in r["curve"]) for r in rs), 200)
            ys = np.array([np.interp(grid, *zip(*r["curve"])) for r in rs])
            mean = ys.mean(0)
            se = ys.std(0, ddof=1) / np.sqrt(len(ys)) if len(ys) > 1 else np.zeros_like(mean)
            ax.plot(grid, mean, label=f"{lib} {env} ({len(rs)} seeds)")
            ax.fill_between(grid, mean - se, mean + se, alpha=0.25)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("training episode return (last 20)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
