"""Replayed policy gradient vs PPO: sample efficiency on CartPole-v1 / Hopper-v5 (protocol: docs/benchmarks.md).

For every env and seed, the variants run one after the other with the same hyperparameters except the replay
settings (PPO = ``algo="ppo"``; replay variants = ``replay_pg`` with k rollouts and a correction). Reported per
variant: final deterministic evaluation (10 episodes, reset seeds 10000..), the mean training return over the whole
run (area under the learning curve / steps, the sample-efficiency figure), the first env step at which the mean of the
last 20 training episodes reached ``--threshold``, wall-clock steps/s, and for replay the mean ESS fraction of the
oldest stored rollout. Mean +- standard error over seeds. The JSON is rewritten after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--envs", nargs="+", default=["CartPole-v1", "Hopper-v5"])
p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
p.add_argument("--steps", type=int, nargs="+", default=None,
               help="env steps per run, one per env (default: CartPole 100k, Hopper 1M)")
p.add_argument("--variants", nargs="+", default=["ppo", "k4-none", "k4-truncated", "k4-vtrace", "k4-vtrace-reinforce"],
               help="'ppo' or 'k<K>-<correction>[-reinforce]'")
p.add_argument("--threshold", type=float, nargs="+", default=None, help="return threshold per env (default 475 / 1000)")
p.add_argument("--threads", type=int, default=1)
p.add_argument("--eval-episodes", type=int, default=10)
p.add_argument("--report", default=None, help="only print the table of an existing results JSON")
p.add_argument("--out", default="benchmarks/results/replay_pg.json")
args = p.parse_args()
os.environ["OMP_NUM_THREADS"] = str(args.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import machine  # noqa: E402

from hybridrl.algos.ppo import PPOConfig  # noqa: E402
from hybridrl.algos.replay_pg import ReplayPGConfig  # noqa: E402
from hybridrl.loops.evaluate import evaluate_policy  # noqa: E402
from hybridrl.loops.on_policy import train_on_policy  # noqa: E402
from hybridrl.runs import RunDir, read_metrics  # noqa: E402

torch.set_num_threads(args.threads)
DEFAULT_STEPS = {"CartPole-v1": 100_000, "Hopper-v5": 1_000_000}
DEFAULT_THRESHOLD = {"CartPole-v1": 475.0, "Hopper-v5": 1000.0}
# CartPole: RL Zoo PPO settings (as tests/test_learning.py) without LR annealing; MuJoCo: PPOConfig defaults.
BASE = {"CartPole-v1": dict(num_envs=8, n_steps=32, minibatch_size=256, n_epochs=20, gamma=0.98, gae_lambda=0.8,
                            lr=1e-3, anneal_lr=False, normalize_reward=False)}


def config(env_id: str, variant: str):
    base = BASE.get(env_id, {})
    if variant == "ppo":
        return "ppo", PPOConfig(**base)
    parts = variant.split("-")
    k, correction = int(parts[0][1:]), parts[1]
    objective = "reinforce" if parts[2:] == ["reinforce"] else "ppo"
    return "replay_pg", ReplayPGConfig(**base, n_rollouts=k, correction=correction, objective=objective)


def run_one(env_id: str, variant: str, seed: int, steps: int, threshold: float) -> dict:
    algo, cfg = config(env_id, variant)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir.create(os.path.join(tmp, "run"))
        t0 = time.perf_counter()
        learner = train_on_policy(env_id, cfg, steps, run=run, seed=seed, progress=False, algo=algo)
        wall = time.perf_counter() - t0
        m = read_metrics(run.metrics_csv)
    ev = evaluate_policy(learner.policy, env_id, args.eval_episodes, seed=10_000)
    ret = m["episode_return"]
    ok = ~np.isnan(ret)
    hit = np.flatnonzero(ret[ok] >= threshold)
    ages = sorted(k for k in m if k.startswith("ess_fraction_age"))
    return {"env": env_id, "variant": variant, "seed": seed, "steps": int(m["step"].max()), "final_eval": ev["mean"],
            "mean_train_return": float(np.mean(ret[ok])) if ok.any() else float("nan"),
            "steps_to_threshold": int(m["step"][ok][hit[0]]) if len(hit) else None, "steps_per_s": steps / wall,
            "ess_oldest": float(np.nanmean(m[ages[-1]])) if ages else None,
            "curve": {"step": m["step"][ok].tolist(), "episode_return": ret[ok].tolist()}}


def mean_se(xs: list[float], digits: int = 1) -> str:
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    if not xs:
        return "-"
    se = np.std(xs, ddof=1) / np.sqrt(len(xs)) if len(xs) > 1 else 0.0
    return f"{np.mean(xs):.{digits}f} ± {se:.{digits}f}"


def table(results: list[dict]) -> str:
    lines = ["| env | variant | seeds | final eval | mean train return | steps to threshold (reached) | env steps/s | "
             "ESS frac. oldest |", "|---|---|---|---|---|---|---|---|"]
    for env_id in dict.fromkeys(r["env"] for r in results):
        for variant in dict.fromkeys(r["variant"] for r in results if r["env"] == env_id):
            rs = [r for r in results if r["env"] == env_id and r["variant"] == variant]
            hits = [r["steps_to_threshold"] for r in rs if r["steps_to_threshold"] is not None]
            lines.append(f"| {env_id} | {variant} | {len(rs)} | {mean_se([r['final_eval'] for r in rs])} | "
                         f"{mean_se([r['mean_train_return'] for r in rs])} | "
                         f"{mean_se(hits) if hits else '-'} ({len(hits)}/{len(rs)}) | "
                         f"{mean_se([r['steps_per_s'] for r in rs])} | "
                         f"{mean_se([r['ess_oldest'] for r in rs], 3) if rs[0]['ess_oldest'] is not None else '-'} |")
    return "\n".join(lines)


def main() -> None:
    if args.report:
        with open(args.report) as f:
            done = json.load(f)
        print(f"\n`{done['machine']['command']}` ({len(done['results'])} runs)\n")
        print(table(done["results"]))
        return
    steps = args.steps or [DEFAULT_STEPS.get(e, 1_000_000) for e in args.envs]
    thresholds = args.threshold or [DEFAULT_THRESHOLD.get(e, float("inf")) for e in args.envs]
    out = {"machine": machine(args.threads), "results": []}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for env_id, n, thr in zip(args.envs, steps, thresholds):
        for seed in args.seeds:
            for variant in args.variants:
                r = run_one(env_id, variant, seed, n, thr)
                out["results"].append(r)
                print(f"{env_id} {variant} seed {seed}: final {r['final_eval']:.1f}, mean train "
                      f"{r['mean_train_return']:.1f}, {r['steps_per_s']:.0f} steps/s", flush=True)
                with open(args.out, "w") as f:
                    json.dump(out, f, indent=1)
    print(f"\n`{out['machine']['command']}`\n")
    print(table(out["results"]))


if __name__ == "__main__":
    main()
