"""Ray rollout workers: weight-sync + transfer overhead at the default PPO rollout, and parallel efficiency 1 -> 2.

PPO's default rollout (``PPOConfig()``: 1 env x 2048 steps, 64x64 tanh policy) on Hopper-v5, collected three ways in
alternation (A B C A B C ...): in one process (``collect_block`` on a ``SyncVectorEnv``), by 1 Ray rollout worker, and
by 2 workers with one env each (2 x 2048 steps). Per Ray rollout:

- ``total``: wall time in the driver for one ``RayVecEnv.collect_block`` (``ray.put`` of the weights, the workers'
  ``sample``, the transfer of the blocks back, reward scaling and assembly);
- ``sample``: the slowest worker's own time inside ``sample`` (loading the weights, stepping, log-probs);
- overhead = ``(total - sample) / total``: what Ray adds around the rollout itself.

Parallel efficiency = (env-steps/s with 2 workers) / (2 x env-steps/s with 1 worker). Only 2 cores here: 1 -> 4 -> 8
workers is not measured.

    python benchmarks/ray_rollout.py --env Hopper-v5 --rounds 3 --out benchmarks/results/ray_rollout_hopper.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import machine, save_json  # noqa: E402

from hybridrl.algos import get_algo  # noqa: E402
from hybridrl.envs import RewardScaler, make_env, make_vec_env  # noqa: E402
from hybridrl.loops.common import EpisodeStats, collect_block  # noqa: E402
from hybridrl.scale import runtime  # noqa: E402
from hybridrl.scale.workers import RayVecEnv  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/ray_rollout.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    info = machine(threads=1)
    config = get_algo("ppo").config_cls()
    n_steps = config.n_steps
    env = make_env(args.env)
    learner = get_algo("ppo").learner_cls(config, env.observation_space, env.action_space, seed=0)
    policy = learner.policy
    runtime.connect(num_cpus=3)  # 3 actors, at most 2 busy at a time (the collectors alternate)
    local = make_vec_env(args.env, 1, seed=0)
    obs, _ = local.reset(seed=0)
    ray1 = RayVecEnv(args.env, 1, 1, 0, policy)
    ray2 = RayVecEnv(args.env, 2, 1, 0, policy)
    for vec in (ray1, ray2):
        vec.reset(0)
        vec.collect_block(policy, None, 64, EpisodeStats(vec.num_envs), RewardScaler(0.99))  # warm-up
    res = {"single": [], "ray1": [], "ray2": []}
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        obs, _ = collect_block(local, policy, obs, n_steps, EpisodeStats(1), RewardScaler(0.99))
        res["single"].append({"total_s": time.perf_counter() - t0})
        for name, vec in (("ray1", ray1), ("ray2", ray2)):
            vec.collect_block(policy, None, n_steps, EpisodeStats(vec.num_envs), RewardScaler(0.99))
            res[name].append(dict(vec.last_timing))
    med = {k: statistics.median(r["total_s"] for r in v) for k, v in res.items()}
    overhead = statistics.median((r["total_s"] - r["sample_s"]) / r["total_s"] for r in res["ray1"])
    overhead2 = statistics.median((r["total_s"] - r["sample_s"]) / r["total_s"] for r in res["ray2"])
    rate = {"single": n_steps / med["single"], "ray1": n_steps / med["ray1"], "ray2": 2 * n_steps / med["ray2"]}
    eff = rate["ray2"] / (2 * rate["ray1"])
    ray1.close()
    ray2.close()
    runtime.shutdown()
    info["load_avg_at_end"] = os.getloadavg()[0]
    save_json({"machine": info, "env": args.env, "n_steps": n_steps, "runs": res, "median_total_s": med,
               "env_steps_per_s": rate, "overhead_1_worker": overhead, "overhead_2_workers": overhead2,
               "parallel_efficiency_1_to_2": eff}, args.out)
    print(f"{args.env}, PPO default rollout ({n_steps} steps per env), {info['cores']} cores, "
          f"load {info['load_avg_at_start']:.1f} -> {info['load_avg_at_end']:.1f}, {args.rounds} rounds (medians)")
    print("| collector | rollout wall s | env-steps/s | Ray overhead (total - sample) / total |")
    print("|---|---|---|---|")
    print(f"| one process, 1 env | {med['single']:.2f} | {rate['single']:.0f} | - |")
    print(f"| 1 Ray worker x 1 env | {med['ray1']:.2f} | {rate['ray1']:.0f} | {overhead:.1%} |")
    print(f"| 2 Ray workers x 1 env | {med['ray2']:.2f} | {rate['ray2']:.0f} | {overhead2:.1%} |")
    print(f"parallel efficiency 1 -> 2 workers: {eff:.0%}")


if __name__ == "__main__":
    main()
