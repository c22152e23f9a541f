"""PMOE vs unimodal policies on one MuJoCo task: PMOE-SAC vs SAC and PMOE-PPO vs PPO (hybridrl only).

Every seed runs the methods back to back in the order given (A B C D, then the next seed), each for its budget
of env steps, with the same hyperparameters apart from the policy:

  sac       SACConfig() defaults (Haarnoja et al. 2018 v2: 256x256 ReLU, lr 3e-4, batch 256, tau 0.005,
            1 update per env step, auto-temperature with target entropy -|A|), tanh-Gaussian policy
  pmoe-sac  the same with policy="mixture", n_experts=4 (PMOE official defaults, Ren et al. 2021, arXiv:2104.09122)
  ppo       PPOConfig() defaults (CleanRL MuJoCo settings)
  pmoe-ppo  PMOEPPOConfig(n_experts=4) (algo "pmoe_ppo")

Reported per method: the FINAL deterministic evaluation (10 episodes, reset seeds 10000..10009), the best
evaluation during training (labelled as such, every ``--eval-every`` steps, 5 episodes), the mean return of
the last 20 training episodes, wall time and env steps/s. Mean ± standard error over seeds. The JSON is
rewritten after every run. ``--anchor-sac`` also trains Stable-Baselines3 SAC with the same settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import datetime

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--env", default="Hopper-v5")
p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
p.add_argument("--methods", nargs="+", default=["sac", "pmoe-sac", "ppo", "pmoe-ppo"],
               choices=["sac", "pmoe-sac", "ppo", "pmoe-ppo"])
p.add_argument("--sac-steps", type=int, default=1_000_000, help="env steps per SAC / PMOE-SAC run")
p.add_argument("--ppo-steps", type=int, default=1_000_000, help="env steps per PPO / PMOE-PPO run")
p.add_argument("--learning-starts", type=int, default=5000, help="SAC random warm-up steps")
p.add_argument("--n-experts", type=int, default=4)
p.add_argument("--eval-every", type=int, default=None,
               help="env steps between 5-episode evaluations (default: budget / 10)")
p.add_argument("--eval-episodes", type=int, default=10, help="episodes of the final evaluation")
p.add_argument("--threads", type=int, default=1)
p.add_argument("--anchor-sac", action="store_true", help="also train SB3 SAC with the same settings")
p.add_argument("--out", default="benchmarks/results/pmoe_mujoco.json")
args = p.parse_args()
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import machine  # noqa: E402

from hybridrl.algos.pmoe_ppo import PMOEPPOConfig  # noqa: E402
from hybridrl.algos.ppo import PPOConfig  # noqa: E402
from hybridrl.algos.sac import SACConfig  # noqa: E402
from hybridrl.loops.evaluate import evaluate_policy  # noqa: E402
from hybridrl.loops.off_policy import train_off_policy  # noqa: E402
from hybridrl.loops.on_policy import train_on_policy  # noqa: E402
from hybridrl.runs import RunDir, read_metrics  # noqa: E402

torch.set_num_threads(args.threads)
EVAL_SEED = 10_000


def run_hybridrl(method: str, seed: int) -> dict:
    sac = method.endswith("sac")
    steps = args.sac_steps if sac else args.ppo_steps
    every = args.eval_every or max(steps // 10, 1)
    policy = "mixture" if method.startswith("pmoe") else "gaussian"
    with tempfile.TemporaryDirectory() as d:
        run = RunDir.create(os.path.join(d, "run"))
        t0 = time.perf_counter()
        if sac:
            cfg = SACConfig(learning_starts=args.learning_starts, policy=policy, n_experts=args.n_experts)
            learner = train_off_policy(args.env, cfg, steps, run=run, seed=seed, eval_every=every, progress=False)
        else:
            cfg = PMOEPPOConfig(n_experts=args.n_experts) if policy == "mixture" else PPOConfig()
            learner = train_on_policy(args.env, cfg, steps, run=run, seed=seed, eval_every=every, progress=False,
                                      algo="pmoe_ppo" if policy == "mixture" else "ppo")
        wall = time.perf_counter() - t0
        m = read_metrics(run.metrics_csv)
    steps = int(m["step"].max())  # PPO rounds the budget up to whole rollouts
    ev = evaluate_policy(learner.policy, args.env, args.eval_episodes, seed=EVAL_SEED)
    evals = m["eval_return"][~np.isnan(m["eval_return"])] if "eval_return" in m else np.array([])
    ret = m.get("episode_return", np.array([np.nan]))
    curve = [(int(s), float(r)) for s, r in zip(m["step"], ret) if np.isfinite(r)]
    return {"method": method, "seed": seed, "steps": steps, "final_eval": ev["mean"],
            "final_eval_returns": ev["returns"],
            "best_eval_during_training": float(evals.max()) if len(evals) else None,
            "last_train_return": curve[-1][1] if curve else None, "wall_s": wall, "steps_per_s": steps / wall,
            "curve": curve[:: max(len(curve) // 50, 1)]}


def run_sb3_sac(seed: int) -> dict:
    from stable_baselines3 import SAC

    env = gym.make(args.env)
    model = SAC("MlpPolicy", env, learning_rate=3e-4, buffer_size=1_000_000, learning_starts=args.learning_starts,
                batch_size=256, tau=0.005, gamma=0.99, train_freq=1, gradient_steps=1, ent_coef="auto",
                policy_kwargs=dict(net_arch=[256, 256]), seed=seed, device="cpu", verbose=0)
    t0 = time.perf_counter()
    model.learn(args.sac_steps)
    wall = time.perf_counter() - t0
    returns = []
    for i in range(args.eval_episodes):
        e = gym.make(args.env)
        obs, _ = e.reset(seed=EVAL_SEED + i)
        done, total = False, 0.0
        while not done:
            obs, r, term, trunc, _ = e.step(model.predict(obs, deterministic=True)[0])
            total, done = total + float(r), term or trunc
        returns.append(total)
    return {"method": "sb3-sac", "seed": seed, "steps": args.sac_steps, "final_eval": float(np.mean(returns)),
            "final_eval_returns": returns, "best_eval_during_training": None, "last_train_return": None,
            "wall_s": wall, "steps_per_s": args.sac_steps / wall, "curve": []}


def mean_se(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.1f}"
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs) / len(xs) ** 0.5:.1f}"


def table(results: list[dict]) -> str:
    rows = ["| method | steps | seeds | final eval (10 ep) | best eval during training | last 20 train episodes "
            "| env steps/s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for method in dict.fromkeys(r["method"] for r in results):
        rs = [r for r in results if r["method"] == method]
        rows.append(f"| {method} | {rs[0]['steps']:,} | {len(rs)} | {mean_se([r['final_eval'] for r in rs])} | "
                    f"{mean_se([r['best_eval_during_training'] for r in rs])} | "
                    f"{mean_se([r['last_train_return'] for r in rs])} | "
                    f"{statistics.median(r['steps_per_s'] for r in rs):.0f} |")
    return "\n".join(rows)


def main() -> None:
    info, results = machine(args.threads), []
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for seed in args.seeds:
        for method in args.methods + (["sb3-sac"] if args.anchor_sac else []):
            print(f"[{datetime.now():%H:%M:%S}] {method} seed {seed}", flush=True)
            res = run_sb3_sac(seed) if method == "sb3-sac" else run_hybridrl(method, seed)
            print(f"  final eval {res['final_eval']:.1f}  ({res['wall_s']:.0f} s)", flush=True)
            results.append(res)
            with open(args.out, "w") as f:
                json.dump({"machine": info, "env": args.env, "args": vars(args), "results": results}, f, indent=1)
    print(f"\n{args.env}, command: `{info['command']}`\n")
    print(table(results))


if __name__ == "__main__":
    main()
