"""PROPS vs PPO-BUFFER vs PPO on Hopper-v5 (returns, several seeds, mean +- standard error bands).

All three run through the same loop (``hybridrl.loops.props.train_props``) with PPOROS's default PPO settings
(``PROPSConfig()``: n 2048, lr 1e-4 annealed, 10 epochs, clip 0.2, ent 0.01, target_kl 0.03, tanh mean), so
they differ only in how data are collected and kept:
  props       b = 2 buffered rollouts, collected by the adapted behaviour policy (m 1024, PROPS defaults)
  ppo_buffer  b = 2 buffered rollouts, collected by the target policy (PPOROS ``--props 0``)
  ppo         b = 1 (the current rollout only), target policy; minibatch 64 (PPOROS: 32 minibatches of the buffer)

Every ``--eval-every`` steps the target policy is evaluated deterministically over ``--eval-episodes`` episodes
(reset seeds 10000 + step + i); the last one is the final score. The JSON is rewritten after every run.
Writes ``benchmarks/results/props_hopper.json`` and ``docs/img/props_hopper.png``; prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--env", default="Hopper-v5")
p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
p.add_argument("--steps", type=int, default=1_000_000)
p.add_argument("--methods", nargs="+", default=["props", "ppo_buffer", "ppo"])
p.add_argument("--eval-every", type=int, default=20_480)
p.add_argument("--eval-episodes", type=int, default=10)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--out", default="benchmarks/results/props_hopper.json")
p.add_argument(
    "--resume",
    action="store_true",
    help="keep the runs already in --out (same env and steps) and only run the missing method x seed pairs",
)
p.add_argument("--plot", default="docs/img/props_hopper.png")
args = p.parse_args()
os.environ["OMP_NUM_THREADS"] = str(args.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import machine, save_json  # noqa: E402

from hybridrl.algos.props import PROPSConfig  # noqa: E402
from hybridrl.loops.evaluate import evaluate_policy  # noqa: E402
from hybridrl.loops.props import train_props  # noqa: E402

torch.set_num_threads(args.threads)
CONFIGS = {
    "props": PROPSConfig(),
    "ppo_buffer": PROPSConfig(props=False),
    "ppo": PROPSConfig(props=False, buffer_batches=1, minibatch_size=64),
}


def one_run(method: str, seed: int) -> dict:
    curve, t0 = [], time.time()
    rollout = CONFIGS[method].rollout_size
    final_step = -(-args.steps // rollout) * rollout  # train_props rounds up to whole target rollouts

    def evaluate(step, learner, buf):
        if step % args.eval_every == 0 or step == final_step:
            ev = evaluate_policy(learner.policy, args.env, args.eval_episodes, seed=10_000 + step)
            curve.append((step, ev["mean"]))
            print(f"{method} seed {seed} step {step}: eval {ev['mean']:.1f} ({time.time() - t0:.0f} s)", flush=True)
        return None

    train_props(args.env, CONFIGS[method], args.steps, seed=seed, progress=False, callback=evaluate)
    return {
        "method": method,
        "seed": seed,
        "steps": [s for s, _ in curve],
        "eval_return": [r for _, r in curve],
        "final": curve[-1][1],
        "best": max(r for _, r in curve),
        "wall_s": time.time() - t0,
    }


def mean_se(x) -> tuple[float, float]:
    x = np.asarray(x, dtype=float)
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def plot(runs: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for method, color in zip(args.methods, ("tab:red", "tab:green", "tab:blue")):
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue
        n = min(len(r["steps"]) for r in rs)
        x, y = np.array(rs[0]["steps"][:n]), np.array([r["eval_return"][:n] for r in rs])
        mean = y.mean(0)
        se = y.std(0, ddof=1) / np.sqrt(len(rs)) if len(rs) > 1 else np.zeros_like(mean)
        ax.plot(x, mean, color=color, label=f"{method} ({len(rs)} seeds)")
        ax.fill_between(x, mean - se, mean + se, color=color, alpha=0.25)
    ax.set(xlabel="env steps", ylabel="deterministic eval return", title=f"{args.env}: mean +- s.e. over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    results = {"machine": machine(args.threads), "args": vars(args), "runs": []}
    if args.resume and os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
        if (old["args"]["env"], old["args"]["steps"]) != (args.env, args.steps):
            sys.exit(
                f"{args.out} holds {old['args']['env']} x {old['args']['steps']} steps, not {args.env} x {args.steps}"
            )
        results["runs"] = old["runs"]
    done = {(r["method"], r["seed"]) for r in results["runs"]}
    for seed in args.seeds:  # methods alternate within a seed (A B C A B C) on the shared machine
        for method in args.methods:
            if (method, seed) in done:
                continue
            results["runs"].append(one_run(method, seed))
            save_json(results, args.out)  # atomic: a killed run leaves the previous JSON intact
    plot(results["runs"], args.plot)
    print(f"\n`{results['machine']['command']}`\n")
    print(
        "| method | seeds | final eval return | best eval return (during training) | wall s / run |\n"
        "| --- | --- | --- | --- | --- |"
    )
    for method in args.methods:
        rs = [r for r in results["runs"] if r["method"] == method]
        (f, fs), (b, bs), (w, _) = (
            mean_se([r["final"] for r in rs]),
            mean_se([r["best"] for r in rs]),
            mean_se([r["wall_s"] for r in rs]),
        )
        print(f"| {method} | {len(rs)} | {f:.1f} ± {fs:.1f} | {b:.1f} ± {bs:.1f} | {w:.0f} |")


if __name__ == "__main__":
    main()
