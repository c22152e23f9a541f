"""Off-policy training: step vector envs, store transitions in a replay buffer, update from uniform batches.

Any learner registered with regime ``off_policy`` runs here. Its config provides ``num_envs``, ``buffer_size``,
``batch_size``, ``learning_starts`` and ``updates_per_step``; the learner provides ``policy`` and
``update(Transitions)``. The first ``learning_starts`` env steps act uniformly at random; after that each
vector-env step (``num_envs`` transitions) is followed by ``updates_per_step`` gradient steps.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from hybridrl.algos import get_algo
from hybridrl.data.replay import ReplayBuffer
from hybridrl.envs import make_vec_env, true_next_obs
from hybridrl.errors import ConfigError
from hybridrl.loops.common import (
    EpisodeStats,
    check_finite,
    checkpoint,
    console,
    open_run,
    progress_bar,
    restore,
    run_record,
)
from hybridrl.loops.evaluate import evaluate_policy
from hybridrl.runs import RunDir


def train_off_policy(
    env_id: str,
    config,
    total_steps: int,
    run: RunDir | None = None,
    seed: int = 0,
    algo: str = "sac",
    resume: bool = False,
    checkpoint_every: int | None = None,
    eval_every: int | None = None,
    progress: bool = True,
    record: dict | None = None,
    eval_episodes: int = 5,
    log_every: int = 1000,
):
    """Train an off-policy learner (``algo``, default SAC) on ``env_id`` for ``total_steps`` environment steps.

    Args:
        env_id: Gymnasium id (continuous actions for SAC).
        config: the learner's config (see module doc for the fields the loop reads).
        total_steps: environment steps in total (rounded up to whole vector steps).
        run: run directory for config, metrics, checkpoints (None: nothing is written).
        seed: seeds the envs (sub-env i: ``seed + i``), the learner, and the NumPy RNG of warm-up actions and
            replay sampling.
        algo: a registered off-policy algorithm.
        resume: continue from the run's latest checkpoint (learner, optimisers, replay buffer, NumPy and torch
            RNG are restored; the envs are reset with ``seed + step``, episodes in flight are lost).
        checkpoint_every: environment steps between checkpoints (None: only at the end).
        eval_every: environment steps between deterministic evaluations (None: none).
        log_every: environment steps between metric rows (means of the updates in the interval).
    Returns:
        the trained learner.
    Raises:
        ConfigError (``algo`` is not off-policy), EnvError, DivergenceError (NaN/inf; nothing is saved).
    """
    spec = get_algo(algo)
    if spec.regime != "off_policy":
        raise ConfigError(f"algorithm {algo!r} is {spec.regime.replace('_', '-')}, not off-policy")
    envs = make_vec_env(env_id, config.num_envs, seed=seed)
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    learner = spec.learner_cls(config, obs_space, act_space, seed=seed)
    buffer = ReplayBuffer(config.buffer_size, obs_space, act_space)
    record = record or run_record(algo=algo, env_id=env_id, steps=total_steps, seed=seed, config=config)
    run, logger = open_run(run, record, resume)
    modules = [m for m in vars(learner).values() if isinstance(m, torch.nn.Module)]
    step, loop_state = restore(run, learner) if (resume and run is not None) else (0, {})
    rng = np.random.default_rng(seed)
    if "numpy_rng" in loop_state:
        rng.bit_generator.state = loop_state["numpy_rng"]
    if "replay" in loop_state:
        buffer.load_state_dict(loop_state["replay"])
    if logger is not None and resume:
        logger.truncate(step)
    n = config.num_envs
    discrete = isinstance(act_space, gym.spaces.Discrete)
    obs, _ = envs.reset(seed=seed + step)
    episodes = EpisodeStats(n)
    sums: dict[str, float] = {}
    count = 0
    next_log = step + log_every
    next_ckpt = step + (checkpoint_every or total_steps)
    next_eval = step + (eval_every or total_steps + 1)

    def means() -> dict[str, float]:
        return {k: v / count for k, v in sums.items()} if count else {}

    with progress_bar(progress) as bar:
        task = bar.add_task(f"{algo} {env_id}", total=total_steps, completed=step, info="")
        while step < total_steps:
            if step < config.learning_starts:
                action = (rng.integers(0, act_space.n, size=n) if discrete else
                          rng.uniform(act_space.low, act_space.high, size=(n, *act_space.shape)).astype(np.float32))
            else:
                action, _ = learner.policy.act(obs)
            next_obs, reward, term, trunc, infos = envs.step(action)
            done = term | trunc
            buffer.add(obs, action, reward, true_next_obs(next_obs, infos, done), term, trunc)
            episodes.add(reward, done)
            obs = next_obs
            step += n
            if step >= config.learning_starts:
                for _ in range(config.updates_per_step):
                    for k, v in learner.update(buffer.sample(config.batch_size, rng)).items():
                        sums[k] = sums.get(k, 0.0) + v
                    count += 1
            if step >= next_log or step >= total_steps:
                metrics = means()
                check_finite(metrics, modules, step, run)
                metrics.update(episodes.summary())
                if step >= next_eval:
                    ev = evaluate_policy(learner.policy, env_id, eval_episodes, seed=10_000 + step)
                    metrics["eval_return"] = ev["mean"]
                    next_eval += eval_every or total_steps + 1
                if logger is not None and metrics:
                    logger.log(step, metrics)
                sums, count = {}, 0
                next_log += log_every
                bar.update(task, completed=min(step, total_steps),
                           info=f"return {metrics.get('episode_return', float('nan')):.1f}")
            if step >= next_ckpt or step >= total_steps:
                check_finite(means(), modules, step, run)  # the partial interval, before it is saved as "good"
                checkpoint(run, step, learner, {"numpy_rng": rng.bit_generator.state, "replay": buffer.state_dict()})
                next_ckpt += checkpoint_every or total_steps
    envs.close()
    if logger is not None:
        logger.close()
    if run is not None:
        console.print(f"[green]{algo}[/] finished {step} steps in {run.path}")
    return learner
