"""NPG and TRPO on MuJoCo (default Hopper-v5): return vs environment steps, with hybridrl PPO run side by side.

For every env x seed the algorithms run one after another (NPG, TRPO, PPO: A B C A B C), each with its default
config (``NPGConfig()``, ``TRPOConfig()``, ``PPOConfig()``) and the same thread count. Recorded per run: the
learning curve (mean return of the last 20 training episodes after every rollout), the final deterministic
evaluation (10 episodes, reset seeds 10000..10009), wall time and env steps/s. The JSON is rewritten after
every run.

No installed library provides a TRPO/NPG anchor (sb3-contrib is not installed); Tianshou's published 1M-step
Hopper returns (TRPO 2,046.0, NPG 1,915.2; MuJoCo v3, ~10 seeds; Tianshou's README benchmark table) are printed
as an external
reference, not as a side-by-side measurement.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--envs", nargs="+", default=["Hopper-v5"])
p.add_argument("--algos", nargs="+", default=["npg", "trpo", "ppo"], choices=["npg", "trpo", "ppo"])
p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
p.add_argument("--steps", type=int, default=1_000_000, help="env steps per run (rounded up to whole rollouts)")
p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads and OMP_NUM_THREADS")
p.add_argument("--eval-episodes", type=int, default=10)
p.add_argument("--out", default="benchmarks/results/npg_hopper.json")
args = p.parse_args()
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import machine, save_json  # noqa: E402

from hybridrl.algos import get_algo  # noqa: E402
from hybridrl.loops.evaluate import evaluate_policy  # noqa: E402
from hybridrl.loops.on_policy import train_on_policy  # noqa: E402
from hybridrl.runs import RunDir, read_metrics  # noqa: E402

torch.set_num_threads(args.threads)
EVAL_SEED = 10_000
TIANSHOU_1M = {"Hopper-v5": {"trpo": 2046.0, "npg": 1915.2}}  # Tianshou README, Hopper-v3


def run_one(algo: str, env_id: str, seed: int, tmp: str) -> dict:
    run = RunDir(os.path.join(tmp, f"{algo}_{env_id}_{seed}"))
    config = get_algo(algo).config_cls()
    t0 = time.perf_counter()
    learner = train_on_policy(env_id, config, args.steps, run=run, seed=seed, progress=False, algo=algo)
    wall = time.perf_counter() - t0
    m = read_metrics(run.metrics_csv)
    ok = ~np.isnan(m.get("episode_return", np.full(len(m["step"]), np.nan)))
    curve = list(zip(m["step"][ok].astype(int).tolist(), m["episode_return"][ok].tolist()))
    ev = evaluate_policy(learner.policy, env_id, args.eval_episodes, seed=EVAL_SEED)
    steps = int(m["step"].max())
    extra = {k: float(np.nanmean(m[k])) for k in ("kl", "line_search_accepted", "cg_residual") if k in m}
    return {
        "algo": algo,
        "env_id": env_id,
        "seed": seed,
        "steps": steps,
        "wall_s": wall,
        "steps_per_s": steps / wall,
        "final_eval_mean": ev["mean"],
        "final_eval_std": ev["std"],
        "eval_episodes": args.eval_episodes,
        "train_return_last": curve[-1][1] if curve else None,
        "curve": curve,
        "means_over_updates": extra,
    }


def mean_se(xs: list[float]) -> str:
    m = float(np.mean(xs))
    return f"{m:,.1f} ± {float(np.std(xs, ddof=1)) / len(xs) ** 0.5:,.1f}" if len(xs) > 1 else f"{m:,.1f} (1 seed)"


def report(results: dict) -> None:
    m = results["machine"]
    print(
        f"\n{m['date']} | {m['cpu']}, {m['cores']} cores, {m['threads']} thread(s) | torch {m['torch']}, "
        f"gymnasium {m['gymnasium']}, mujoco {m['mujoco']}\n`{m['command']}`\n"
    )
    print(
        "| algo | env | seeds | steps | final deterministic eval (mean ± s.e.) | last training return | "
        "env steps/s | mean KL per update |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    groups: dict = {}
    for r in results["runs"]:
        groups.setdefault((r["algo"], r["env_id"], r["steps"]), []).append(r)
    for (algo, env_id, steps), rs in groups.items():
        last = [r["train_return_last"] for r in rs if r["train_return_last"] is not None]
        kl = [r["means_over_updates"]["kl"] for r in rs if "kl" in r["means_over_updates"]]
        print(
            f"| {algo} | {env_id} | {len(rs)} | {steps:,} | {mean_se([r['final_eval_mean'] for r in rs])} | "
            f"{mean_se(last) if last else '-'} | {np.mean([r['steps_per_s'] for r in rs]):,.0f} | "
            f"{f'{np.mean(kl):.4f}' if kl else '-'} |"
        )
    refs = [f"{a.upper()} {v:,.1f}" for e in args.envs for a, v in TIANSHOU_1M.get(e, {}).items()]
    if refs:
        print(f"\nExternal reference, not side by side: Tianshou, 1M steps, Hopper-v3, ~10 seeds: {', '.join(refs)}.")


def main() -> None:
    results = {"machine": machine(args.threads), "args": vars(args), "runs": []}
    tmp = tempfile.mkdtemp(prefix="hybridrl_npg_bench_")
    for env_id in args.envs:
        for seed in args.seeds:
            for algo in args.algos:
                r = run_one(algo, env_id, seed, tmp)
                results["runs"].append(r)
                save_json(results, args.out)
                print(
                    f"[{algo}] {env_id} seed {seed}: {r['steps']:,} steps in {r['wall_s'] / 60:.1f} min, final "
                    f"eval {r['final_eval_mean']:,.1f}, last training return {r['train_return_last']}",
                    flush=True,
                )
    report(results)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
