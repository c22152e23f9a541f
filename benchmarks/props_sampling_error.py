"""PROPS sampling error with a fixed target policy: PROPS collection vs on-policy collection as data accumulate.

For each env and seed, a fixed target pi_theta (the seeded initial policy, or a PPO policy after
``--pretrain-steps``) is never updated (``train_props(..., freeze_target=True)``; PPOROS ``--update-epochs 0``) and
the buffer keeps every step. Every ``--measure-every`` steps the sampling error of the whole buffer,
KL(pi_D || pi_theta), is measured:
  * ``hybridrl-test/Bandit3-v0`` (3-armed bandit, one state, pi_theta = [0.2, 0.3, 0.5]): exact, from counts;
  * other envs: the PROPS/ROS estimate, pi_D fitted to the buffer by maximum likelihood (``sampling_error``).
Collection: PROPS (``props=True``) vs on-policy (``props=False``: pi_theta acts), same seeds, same loop.
PROPS settings: ``PROPSConfig`` defaults (continuous) or PPOROS's discrete-file defaults (m 128, PROPS lr 1e-3,
lambda 0.1, delta 0.03) for discrete actions; ``--props-minibatch-size`` replaces PPOROS's 16 minibatches.

Writes ``benchmarks/results/props_sampling_error.json`` and ``docs/img/props_sampling_error.png``; prints a
markdown table (mean +- standard error over seeds at each measured size).
"""

from __future__ import annotations

import argparse
import json
import os
import time

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--envs", nargs="+", default=["hybridrl-test/Bandit3-v0", "CartPole-v1", "Hopper-v5"])
p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
p.add_argument("--steps", type=int, default=8192, help="env steps collected per run (bandit: steps / 16)")
p.add_argument("--measure-every", type=int, default=1024, help="steps between measurements (bandit: / 16)")
p.add_argument("--se-epochs", type=int, default=250, help="epochs of the maximum-likelihood fit (PPOROS 250)")
p.add_argument("--props-minibatch-size", type=int, default=256)
p.add_argument(
    "--pretrain-steps", type=int, default=0, help="PPO steps to train the fixed target first (0 = initial policy)"
)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--out", default="benchmarks/results/props_sampling_error.json")
p.add_argument("--plot", default="docs/img/props_sampling_error.png")
args = p.parse_args()
os.environ["OMP_NUM_THREADS"] = str(args.threads)

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import machine  # noqa: E402

from hybridrl.algos.props import PROPSConfig  # noqa: E402
from hybridrl.data.sampling_error import sampling_error, tabular_sampling_error  # noqa: E402
from hybridrl.envs import make_env  # noqa: E402
from hybridrl.loops.props import train_props  # noqa: E402
from hybridrl.nn import CategoricalPolicy, make_policy  # noqa: E402

torch.set_num_threads(args.threads)
BANDIT3, P3 = "hybridrl-test/Bandit3-v0", np.array([0.2, 0.3, 0.5])
if BANDIT3 not in gym.registry:
    gym.register(BANDIT3, entry_point="hybridrl.envs.toy:BanditEnv", kwargs={"n_arms": 3})


def target_policy(env_id: str, seed: int):
    """The fixed pi_theta: seeded initial policy (bandit: fixed probabilities), optionally PPO-pretrained."""
    torch.manual_seed(seed)
    if env_id == BANDIT3:
        pol = CategoricalPolicy(1, 3, hidden=(8,), normalize_obs=False)
        with torch.no_grad():
            pol.logits[-1].weight.zero_()
            pol.logits[-1].bias.copy_(torch.log(torch.tensor(P3)))
        return pol
    if args.pretrain_steps > 0:
        from hybridrl.algos.ppo import PPOConfig
        from hybridrl.loops.on_policy import train_on_policy

        return train_on_policy(env_id, PPOConfig(), args.pretrain_steps, seed=seed, progress=False).policy
    env = make_env(env_id)
    return make_policy(
        env.observation_space,
        env.action_space,
        **({} if isinstance(env.action_space, gym.spaces.Discrete) else {"tanh_mean": True}),
    )


def config(env_id: str, props: bool, steps: int, m: int) -> PROPSConfig:
    discrete = isinstance(make_env(env_id).action_space, gym.spaces.Discrete)
    extra = dict(props_lr=1e-3, props_kl_coef=0.1, props_target_kl=0.03) if discrete else {}
    if env_id == BANDIT3:
        extra.update(props_lr=1e-2, hidden=(8,), normalize_obs=False)
    n = steps  # one "target batch" = the whole run; 2 of them so the buffer never evicts
    return PROPSConfig(
        n_steps=n,
        buffer_batches=2,
        props_n_steps=m,
        minibatch_size=n,
        props=props,
        props_minibatch_size=args.props_minibatch_size,
        normalize_reward=False,
        **extra,
    )


def one_run(env_id: str, seed: int, props: bool) -> dict:
    scale = 16 if env_id == BANDIT3 else 1
    steps, every = args.steps // scale, args.measure_every // scale
    discrete = isinstance(make_env(env_id).action_space, gym.spaces.Discrete)
    m = 8 if env_id == BANDIT3 else (128 if discrete else 1024)
    m = min(m, every)
    target = target_policy(env_id, seed)
    curve = []

    def measure(step, learner, buf):
        if step % every:
            return None
        obs, act = buf.data["obs"][0, : buf.size], buf.data["action"][0, : buf.size]
        if env_id == BANDIT3:
            kl = tabular_sampling_error(np.zeros(len(act), int), act, P3[None])
        else:
            kl = sampling_error(learner.policy, obs, act, epochs=args.se_epochs, seed=seed)["kl"]
        curve.append((step, kl))
        return {"sampling_error": kl}

    t0 = time.time()
    train_props(
        env_id,
        config(env_id, props, steps, m),
        steps,
        seed=seed,
        policy=target,
        freeze_target=True,
        progress=False,
        callback=measure,
    )
    return {
        "env_id": env_id,
        "seed": seed,
        "method": "props" if props else "on_policy",
        "m": m,
        "steps": [s for s, _ in curve],
        "kl": [k for _, k in curve],
        "wall_s": time.time() - t0,
    }


def plot(runs: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(dict.fromkeys(r["env_id"] for r in runs))
    fig, axes = plt.subplots(1, len(envs), figsize=(4.2 * len(envs), 3.4), squeeze=False)
    for ax, env_id in zip(axes[0], envs):
        for method, color in (("on_policy", "tab:blue"), ("props", "tab:red")):
            rs = [r for r in runs if r["env_id"] == env_id and r["method"] == method]
            x, y = np.array(rs[0]["steps"]), np.array([r["kl"] for r in rs])
            mean, se = y.mean(0), y.std(0, ddof=1) / np.sqrt(len(rs)) if len(rs) > 1 else 0 * y[0]
            ax.plot(x, mean, color=color, label=f"{method} ({len(rs)} seeds)")
            ax.fill_between(x, mean - se, mean + se, color=color, alpha=0.25)
        ax.set(title=env_id.split("/")[-1], xlabel="env steps in buffer", ylabel="KL(pi_D || pi_theta)", yscale="log")
        ax.legend(fontsize=8)
    fig.suptitle("Sampling error with a fixed target policy (mean +- s.e.)", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    results = {"machine": machine(args.threads), "args": vars(args), "runs": []}
    for env_id in args.envs:
        for seed in args.seeds:
            for props in (True, False):
                results["runs"].append(one_run(env_id, seed, props))
                os.makedirs(os.path.dirname(args.out), exist_ok=True)
                with open(args.out, "w") as f:
                    json.dump(results, f, indent=1)
    plot(results["runs"], args.plot)
    print(f"\n`{results['machine']['command']}`\n")
    print("| env | steps | on-policy KL | PROPS KL | ratio |\n| --- | --- | --- | --- | --- |")
    for env_id in args.envs:
        by = {
            m: np.array([r["kl"] for r in results["runs"] if r["env_id"] == env_id and r["method"] == m])
            for m in ("on_policy", "props")
        }
        steps = next(r["steps"] for r in results["runs"] if r["env_id"] == env_id)
        for j in sorted({0, len(steps) // 2, len(steps) - 1}):
            cells = [f"{by[m][:, j].mean():.2e} ± {by[m][:, j].std(ddof=1) / np.sqrt(len(by[m])):.1e}" for m in by]
            print(
                f"| {env_id} | {steps[j]} | {cells[0]} | {cells[1]} | "
                f"{by['props'][:, j].mean() / by['on_policy'][:, j].mean():.2f} |"
            )


if __name__ == "__main__":
    main()
