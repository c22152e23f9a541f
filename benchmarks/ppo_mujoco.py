"""PPO on MuJoCo: hybridrl vs Stable-Baselines3, side by side (protocol: docs/benchmarks.md).

Modes
  speed    A B A B pairs (hybridrl, then SB3) of ``--speed-steps`` env steps each, same hyperparameters
           and thread count; steps/s over the whole run (env + model construction, rollouts, updates),
           ratio hybridrl/SB3 per pair and the median ratio.
  returns  hybridrl PPO for ``--steps`` per env x seed; final deterministic evaluation over 10 episodes
           and the learning curve (mean return of the last 20 training episodes, every rollout).
           ``--anchor-returns`` runs SB3 the same way. The JSON is rewritten after every run.
  profile  where hybridrl's time goes: policy.act, env.step, one PPO update (synthetic 2048-step
           rollout), plus SB3's policy forward and ``train()`` on one rollout for comparison.

CleanRL is not a dependency and its script is not vendored. To include it in ``speed`` mode, give a Python that
can run CleanRL 1.2.0's ``ppo_continuous_action.py`` (it needs gymnasium 0.29, so it runs the ``-v4`` envs):

    python3.11 -m venv /tmp/crl && /tmp/crl/bin/pip install torch==2.13.0 "gymnasium[mujoco]==0.29.1" tensorboard
    pip download cleanrl==1.2.0 --no-deps --ignore-requires-python -d /tmp/crl_whl
    unzip /tmp/crl_whl/*.whl -d /tmp/cleanrl_src
    ... --envs Hopper-v4 --cleanrl-python /tmp/crl/bin/python \
        --cleanrl-script /tmp/cleanrl_src/cleanrl/ppo_continuous_action.py

Each pair then becomes a triple (hybridrl, SB3, CleanRL in a subprocess with the same thread count). CleanRL's
steps/s is the ``SPS`` it prints (clock started after its env and model are built, which slightly favours it);
hybridrl's and SB3's include construction. The raw env step rate with random actions is measured in both Pythons
(``env_only_sps``), so the difference between Gymnasium versions is visible.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--envs", nargs="+", default=["Hopper-v5"])
p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
p.add_argument("--steps", type=int, default=1_000_000, help="env steps per returns run")
p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads and OMP_NUM_THREADS, both libraries")
p.add_argument("--mode", choices=["speed", "returns", "both"], default="speed")
p.add_argument("--speed-steps", type=int, default=20480, help="env steps per speed run (whole rollouts of 2048)")
p.add_argument("--pairs", type=int, default=3)
p.add_argument("--anchor-returns", action="store_true", help="also train SB3 PPO in returns mode")
p.add_argument(
    "--libs",
    nargs="+",
    choices=["hybridrl", "sb3"],
    default=None,
    help="returns mode: train only these (default hybridrl, plus sb3 with --anchor-returns)",
)
p.add_argument("--eval-episodes", type=int, default=10)
p.add_argument("--profile", action="store_true", help="time rollout pieces vs update (instead of --mode)")
p.add_argument("--profile-repeats", type=int, default=5)
p.add_argument("--cleanrl-python", default=None, help="Python able to run CleanRL's script (see above)")
p.add_argument("--cleanrl-script", default=None, help="path to CleanRL 1.2.0 ppo_continuous_action.py")
p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/ppo_<mode>.json)")
args = p.parse_args()
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import machine, save_json  # noqa: E402
from torch import nn  # noqa: E402

from hybridrl.algos.ppo import PPOConfig, PPOLearner  # noqa: E402
from hybridrl.data.batches import Segments  # noqa: E402
from hybridrl.envs import make_vec_env  # noqa: E402
from hybridrl.loops.evaluate import evaluate_policy  # noqa: E402
from hybridrl.loops.on_policy import train_on_policy  # noqa: E402
from hybridrl.runs import RunDir, read_metrics  # noqa: E402

torch.set_num_threads(args.threads)
EVAL_SEED = 10_000


def sb3_model(env_id: str, seed: int):
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    env = VecNormalize(DummyVecEnv([lambda: Monitor(gym.make(env_id))]), gamma=0.99)
    return PPO(
        "MlpPolicy",
        env,
        n_steps=2048,
        batch_size=64,
        n_epochs=10,
        learning_rate=lambda f: 3e-4 * f,
        gamma=0.99,
        gae_lambda=0.95,
        clip_range=0.2,
        ent_coef=0.0,
        vf_coef=0.5,
        max_grad_norm=0.5,
        policy_kwargs=dict(
            net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=nn.Tanh, ortho_init=True, log_std_init=0.0
        ),
        seed=seed,
        device="cpu",
        verbose=0,
    )


def whole_rollouts(steps: int, rollout: int = 2048) -> int:
    return -(-steps // rollout) * rollout


def run_hybrid(env_id: str, steps: int, seed: int, run: RunDir | None = None):
    t0 = time.perf_counter()
    learner = train_on_policy(env_id, PPOConfig(), steps, run=run, seed=seed, progress=False)
    return learner, whole_rollouts(steps), time.perf_counter() - t0


def run_sb3(env_id: str, steps: int, seed: int, curve: list | None = None):
    from stable_baselines3.common.callbacks import BaseCallback

    class Curve(BaseCallback):
        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            if curve is not None and len(self.model.ep_info_buffer):
                curve.append((self.num_timesteps, float(np.mean([e["r"] for e in self.model.ep_info_buffer]))))

    t0 = time.perf_counter()
    model = sb3_model(env_id, seed)
    model.learn(steps, callback=Curve())
    return model, model.num_timesteps, time.perf_counter() - t0


def evaluate_sb3(model, env_id: str, episodes: int) -> float:
    vn, env, returns = model.get_env(), gym.make(env_id), []
    for i in range(episodes):
        obs, _ = env.reset(seed=EVAL_SEED + i)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(vn.normalize_obs(obs[None]), deterministic=True)
            obs, r, term, trunc, _ = env.step(action[0])
            total, done = total + float(r), term or trunc
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def mean_se(xs: list[float]) -> str:
    m = float(np.mean(xs))
    return f"{m:,.1f} ± {float(np.std(xs, ddof=1)) / len(xs) ** 0.5:,.1f}" if len(xs) > 1 else f"{m:,.1f} (1 seed)"


ENV_ONLY = """
import sys, time, numpy as np, gymnasium as gym
env = gym.make(sys.argv[1]); env.reset(seed=0)
acts = np.random.default_rng(0).uniform(-1, 1, (int(sys.argv[2]),) + env.action_space.shape)
t0 = time.perf_counter()
for a in acts:
    _, _, term, trunc, _ = env.step(a)
    if term or trunc:
        env.reset()
print(len(acts) / (time.perf_counter() - t0))
"""


def env_only_sps(python: str, env_id: str, steps: int = 20480) -> float:
    """Steps/s of ``gym.make(env_id)`` with random actions in ``python`` (no learning)."""
    out = subprocess.run(
        [python, "-c", ENV_ONLY, env_id, str(steps)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
    )
    return float(out.stdout.strip().splitlines()[-1])


def run_cleanrl(env_id: str, steps: int, seed: int) -> tuple[int, float, float]:
    """CleanRL's script in a subprocess: ``(steps, its last printed SPS, subprocess wall seconds)``."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cleanrl_") as cwd:  # it writes runs/ (TensorBoard) into the cwd
        out = subprocess.run(
            [
                args.cleanrl_python,
                args.cleanrl_script,
                "--env-id",
                env_id,
                "--total-timesteps",
                str(steps),
                "--seed",
                str(seed),
                "--cuda",
                "False",
                "--track",
                "False",
            ],
            cwd=cwd,
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
        )
    if out.returncode:
        raise RuntimeError(f"CleanRL failed ({out.returncode}): {out.stderr[-2000:]}")
    sps = [float(line.split(":", 1)[1]) for line in out.stdout.splitlines() if line.startswith("SPS:")]
    return whole_rollouts(steps), sps[-1], time.perf_counter() - t0


def speed(env_id: str) -> dict:
    cleanrl = args.cleanrl_python is not None
    # Warm-up: one rollout each (imports, allocator, MuJoCo model load), not recorded.
    run_hybrid(env_id, 2048, 99)
    run_sb3(env_id, 2048, 99)
    pairs = []
    for i in range(args.pairs):
        _, n_h, t_h = run_hybrid(env_id, args.speed_steps, i)
        _, n_s, t_s = run_sb3(env_id, args.speed_steps, i)
        pair = {
            "pair": i,
            "seed": i,
            "hybridrl_steps": n_h,
            "hybridrl_s": t_h,
            "hybridrl_sps": n_h / t_h,
            "sb3_steps": n_s,
            "sb3_s": t_s,
            "sb3_sps": n_s / t_s,
        }
        pair["ratio"] = pair["hybridrl_sps"] / pair["sb3_sps"]
        line = (
            f"[speed] {env_id} pair {i}: hybridrl {pair['hybridrl_sps']:,.0f} steps/s, "
            f"SB3 {pair['sb3_sps']:,.0f} steps/s, ratio {pair['ratio']:.3f}"
        )
        if cleanrl:
            n_c, sps_c, wall_c = run_cleanrl(env_id, args.speed_steps, i)
            pair.update(
                cleanrl_steps=n_c, cleanrl_sps=sps_c, cleanrl_wall_s=wall_c, ratio_cleanrl=pair["hybridrl_sps"] / sps_c
            )
            line += f"; CleanRL {sps_c:,.0f} steps/s, ratio {pair['ratio_cleanrl']:.3f}"
        pairs.append(pair)
        print(line, flush=True)
    keys = ["hybridrl_sps", "sb3_sps", "ratio"] + (["cleanrl_sps", "ratio_cleanrl"] if cleanrl else [])
    med = {k: statistics.median(p[k] for p in pairs) for k in keys}
    env_only = {"hybridrl_python": env_only_sps(sys.executable, env_id)}
    if cleanrl:
        env_only["cleanrl_python"] = env_only_sps(args.cleanrl_python, env_id)
    return {"env_id": env_id, "pairs": pairs, "median": med, "env_only_sps": env_only}


def returns(results: dict, out: str) -> None:
    tmp = tempfile.mkdtemp(prefix="hybridrl_bench_")
    for env_id in args.envs:
        for seed in args.seeds:
            libs = args.libs or ["hybridrl"] + (["sb3"] if args.anchor_returns else [])
            for lib in libs:
                if lib == "hybridrl":
                    run = RunDir(os.path.join(tmp, f"{env_id}_{seed}"))
                    learner, n, t = run_hybrid(env_id, args.steps, seed, run)
                    m = read_metrics(run)
                    ok = ~np.isnan(m.get("episode_return", np.full(len(m["step"]), np.nan)))
                    curve = (
                        list(zip(m["step"][ok].astype(int).tolist(), m["episode_return"][ok].tolist()))
                        if ok.any()
                        else []
                    )
                    final = evaluate_policy(learner.policy, env_id, args.eval_episodes, seed=EVAL_SEED)["mean"]
                else:
                    curve = []
                    model, n, t = run_sb3(env_id, args.steps, seed, curve)
                    final = evaluate_sb3(model, env_id, args.eval_episodes)
                results["returns"].append(
                    {
                        "lib": lib,
                        "env_id": env_id,
                        "seed": seed,
                        "steps": n,
                        "wall_s": t,
                        "final_eval_mean": final,
                        "eval_episodes": args.eval_episodes,
                        "train_return_last": curve[-1][1] if curve else None,
                        "curve": curve,
                    }
                )
                print(
                    f"[returns] {lib} {env_id} seed {seed}: {n} steps in {t / 60:.1f} min, final deterministic "
                    f"eval ({args.eval_episodes} ep) {final:,.1f}",
                    flush=True,
                )
                save_json(results, out)


def profile(env_id: str) -> dict:
    reps, n = args.profile_repeats, 2048
    envs = make_vec_env(env_id, 1, seed=0)
    learner = PPOLearner(PPOConfig(), envs.single_observation_space, envs.single_action_space)
    obs, _ = envs.reset(seed=0)
    buf = {k: [] for k in ("obs", "act", "next", "term", "trunc", "logp")}
    for _ in range(n):  # one real rollout for realistic observations
        a, lp = learner.policy.act(obs)
        nxt, r, te, tr, _ = envs.step(a)
        for k, v in zip(buf, (obs, a, nxt, te, tr, lp)):
            buf[k].append(v[0])
        obs = nxt
    learner.policy.obs_norm.update(np.stack(buf["obs"]))
    ob = np.stack(buf["obs"])[:, None]

    def timed(fn) -> float:
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    act = learner.policy.sampler()  # what train_on_policy calls per step (log-probs come batched after the rollout)
    act_s = timed(lambda: [act(ob[i]) for i in range(n)])
    rand = np.random.default_rng(0).uniform(-1, 1, (n, 1, 3)).astype(np.float32)
    env_s = timed(lambda: [envs.step(rand[i]) for i in range(n)])
    seg = Segments(
        obs=torch.from_numpy(np.stack(buf["obs"])[None]),
        action=torch.from_numpy(np.stack(buf["act"])[None]),
        reward=torch.randn(1, n),
        next_obs=torch.from_numpy(np.stack(buf["next"])[None]),
        terminated=torch.from_numpy(np.array(buf["term"])[None]),
        truncated=torch.from_numpy(np.array(buf["trunc"])[None]),
        behavior_log_prob=torch.from_numpy(np.array(buf["logp"], np.float32)[None]),
    )
    upd_s = timed(lambda: learner.update(seg))
    envs.close()
    # SB3 pieces on the same shapes: policy forward per step, train() on one rollout.
    model = sb3_model(env_id, 0)
    model.learn(n)  # fills the rollout buffer once
    from stable_baselines3.common.utils import obs_as_tensor

    def sb3_forward():
        with torch.no_grad():
            for i in range(n):
                model.policy(obs_as_tensor(ob[i], "cpu"))

    vn = model.get_env()
    sb3_env_s = timed(lambda: [vn.step(rand[i]) for i in range(n)])
    sb3_fwd_s, sb3_train_s = timed(sb3_forward), timed(model.train)
    _, nh, th = run_hybrid(env_id, 4 * n, 0)
    _, ns, ts = run_sb3(env_id, 4 * n, 0)
    out = {
        "env_id": env_id,
        "rollout_steps": n,
        "repeats": reps,
        "hybridrl": {
            "policy_act_s": act_s,
            "env_step_s": env_s,
            "update_s": upd_s,
            "whole_rollout_plus_update_s": th / (nh / n),
        },
        "sb3": {
            "policy_forward_s": sb3_fwd_s,
            "env_step_s": sb3_env_s,
            "train_s": sb3_train_s,
            "whole_rollout_plus_update_s": ts / (ns / n),
        },
    }
    for d in out.values():
        if isinstance(d, dict):  # by difference: loop bookkeeping, buffers, GAE, normalisers, noise
            d["other_s"] = 2 * d["whole_rollout_plus_update_s"] - sum(d.values())
    return out


def report(results: dict) -> None:
    m = results["machine"]
    print(
        f"\n{m['date']} | {m['cpu']}, {m['cores']} cores, {m['threads']} thread(s) | torch {m['torch']}, "
        f"gymnasium {m['gymnasium']}, mujoco {m['mujoco']}, SB3 {m['stable_baselines3']}\n`{m['command']}`\n"
    )
    for s in results.get("speed", []):
        c = "cleanrl_sps" in s["median"]
        extra = (" CleanRL steps/s | ratio hybridrl/CleanRL |", " --- | --- |") if c else ("", "")
        print(
            f"| {s['env_id']} pair | hybridrl steps/s | SB3 steps/s | ratio hybridrl/SB3 |{extra[0]}\n"
            f"| --- | --- | --- | --- |{extra[1]}"
        )
        for q in s["pairs"] + [dict(s["median"], pair="**median**")]:
            row = f"| {q['pair']} | {q['hybridrl_sps']:,.0f} | {q['sb3_sps']:,.0f} | {q['ratio']:.3f} |"
            print(row + (f" {q['cleanrl_sps']:,.0f} | {q['ratio_cleanrl']:.3f} |" if c else ""))
        env_only = ", ".join(f"{k} {v:,.0f}" for k, v in s.get("env_only_sps", {}).items())
        print(
            f"\nEnv alone (random actions, gym.make, steps/s): {env_only}."
            + ("" if c else " CleanRL: not in this run (pass --cleanrl-python/--cleanrl-script).")
            + "\n"
        )
    if results.get("returns"):
        print(
            "| lib | env | seeds | steps | final deterministic eval (mean ± s.e.) | last training return | wall min |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        groups: dict = {}
        for r in results["returns"]:
            groups.setdefault((r["lib"], r["env_id"], r["steps"]), []).append(r)
        for (lib, env_id, steps), rs in groups.items():
            last = [r["train_return_last"] for r in rs if r["train_return_last"] is not None]
            print(
                f"| {lib} | {env_id} | {len(rs)} | {steps:,} | {mean_se([r['final_eval_mean'] for r in rs])} | "
                f"{mean_se(last) if last else '-'} | {np.mean([r['wall_s'] for r in rs]) / 60:.1f} |"
            )
    for pr in results.get("profile", []):
        print(f"\nProfile {pr['env_id']}, per {pr['rollout_steps']}-step rollout (median of {pr['repeats']}):")
        print("| piece | hybridrl s | SB3 s |\n| --- | --- | --- |")
        h, s = pr["hybridrl"], pr["sb3"]
        rows = [
            ("policy forward x2048 (sampler / policy())", h["policy_act_s"], s["policy_forward_s"]),
            (
                "env.step x2048, random actions (SyncVectorEnv / VecNormalize(DummyVecEnv))",
                h["env_step_s"],
                s["env_step_s"],
            ),
            ("update: 10 epochs x 32 minibatches (update / train())", h["update_s"], s["train_s"]),
            ("other (bookkeeping, GAE, normalisers; by difference)", h["other_s"], s["other_s"]),
            (
                "whole rollout + update in a real run",
                h["whole_rollout_plus_update_s"],
                s["whole_rollout_plus_update_s"],
            ),
        ]
        for name, a, b in rows:
            print(f"| {name} | {a:.3f} | {b:.3f} |")


def main() -> None:
    mode = "profile" if args.profile else args.mode
    out = args.out or f"benchmarks/results/ppo_{mode}.json"
    results: dict = {
        "machine": machine(args.threads),
        "mode": mode,
        "args": vars(args),
        "speed": [],
        "returns": [],
        "profile": [],
    }
    if args.profile:
        results["profile"] = [profile(e) for e in args.envs]
    else:
        if args.mode in ("speed", "both"):
            results["speed"] = [speed(e) for e in args.envs]
            save_json(results, out)
        if args.mode in ("returns", "both"):
            returns(results, out)
    save_json(results, out)
    report(results)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
