"""Off-policy training: step vector envs, store transitions in a replay buffer, update from uniform batches.

Any learner registered with regime ``off_policy`` runs here. Its config provides ``num_envs``, ``buffer_size``,
``batch_size``, ``learning_starts`` and ``updates_per_step``; the learner provides ``policy`` and
``update(Transitions)``. The first ``learning_starts`` env steps act uniformly at random; after that each
vector-env step (``num_envs`` transitions) is followed by ``updates_per_step`` gradient steps.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from hybridrl.algos import get_algo
from hybridrl.data.dataset import Dataset
from hybridrl.data.replay import ReplayBuffer
from hybridrl.envs import make_vec_env, true_next_obs
from hybridrl.errors import ConfigError
from hybridrl.loops.common import (
    CheckpointTrigger,
    EpisodeStats,
    Every,
    MetricMeans,
    StopSignals,
    checkpoint,
    end_run,
    interrupted,
    learner_modules,
    progress_bar,
    raise_if_nonfinite,
    run_record,
    start_run,
)
from hybridrl.loops.evaluate import evaluate_policy
from hybridrl.runs import RunDir


def train_off_policy(
    env_id: str | None = None,
    config=None,
    steps: int | None = None,
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
    dataset: Dataset | None = None,
):
    """Train an off-policy learner (``algo``, default SAC) on ``env_id`` for ``steps`` environment steps.

    Args:
        env_id: Gymnasium id (continuous actions for SAC).
        config: the learner's config (see module doc for the fields the loop reads).
        steps: environment steps in total (rounded up to whole vector steps).
        run: run directory for config, metrics, checkpoints (None: nothing is written).
        seed: seeds the envs (sub-env i: ``seed + i``), the learner, and the NumPy RNG of warm-up actions and
            replay sampling.
        algo: a registered off-policy algorithm.
        resume: continue from the run's latest checkpoint (learner, optimisers, replay buffer, NumPy and torch
            RNG are restored; the envs are reset with ``seed + step``, episodes in flight are lost).
        checkpoint_every: environment steps between checkpoints (None: every 10 minutes of wall time); always one
            at the end and one on SIGINT/SIGTERM.
        eval_every: environment steps between deterministic evaluations (None: none).
        log_every: environment steps between metric rows (means of the updates in the interval).
        dataset: must be None (accepted for the uniform loop signature).
    Returns:
        the trained learner.
    Raises:
        ConfigError (``algo`` is not off-policy, missing env/config/steps, a dataset), EnvError, DivergenceError
        (NaN/inf; nothing is saved), Interrupted (SIGINT/SIGTERM, after a checkpoint).
    """
    spec = get_algo(algo)
    if spec.regime != "off_policy":
        raise ConfigError(f"algorithm {algo!r} is {spec.regime.replace('_', '-')}, not off-policy")
    if env_id is None or config is None or steps is None:
        raise ConfigError(f"{algo} is off-policy: it needs env_id, config and steps")
    if dataset is not None:
        raise ConfigError(f"{algo} learns from its own replay buffer; train it without --dataset")
    envs = make_vec_env(env_id, config.num_envs, seed=seed)
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    learner = spec.learner_cls(config, obs_space, act_space, seed=seed)
    buffer = ReplayBuffer(config.buffer_size, obs_space, act_space)
    record = record or run_record(algo=algo, env_id=env_id, steps=steps, seed=seed, config=config)
    logger, step, loop_state = start_run(run, learner, record, resume)
    rng = np.random.default_rng(seed)
    if "numpy_rng" in loop_state:
        rng.bit_generator.state = loop_state["numpy_rng"]
    if "replay" in loop_state:
        buffer.load_state_dict(loop_state["replay"])

    def save() -> object:
        return checkpoint(run, step, learner, {"numpy_rng": rng.bit_generator.state, "replay": buffer.state_dict()})

    modules = learner_modules(learner)
    n = config.num_envs
    discrete = isinstance(act_space, gym.spaces.Discrete)
    obs, _ = envs.reset(seed=seed + step)
    episodes, means = EpisodeStats(n), MetricMeans()
    log_due, eval_due = Every(log_every, step), Every(eval_every, step)
    checkpoint_due = CheckpointTrigger(checkpoint_every, step, steps)
    with progress_bar(progress) as bar, StopSignals() as stop:
        task = bar.add_task(f"{algo} {env_id}", total=steps, completed=step, info="")
        while step < steps:
            if stop.signal_number is not None:
                raise_if_nonfinite(means.means(), modules, step, run)  # the partial interval, before saving it
                raise interrupted(stop, run, step, save)
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
                    means.add(learner.update(buffer.sample(config.batch_size, rng)))
            if log_due(step) or step >= steps:
                metrics = means.pop()
                raise_if_nonfinite(metrics, modules, step, run)
                metrics.update(episodes.summary())
                if eval_due(step):
                    metrics["eval_return"] = evaluate_policy(learner.policy, env_id, eval_episodes,
                                                             seed=10_000 + step)["mean"]
                if logger is not None and metrics:
                    logger.log(step, metrics)
                bar.update(task, completed=min(step, steps),
                           info=f"return {metrics.get('episode_return', float('nan')):.1f}")
            if checkpoint_due(step):
                raise_if_nonfinite(means.means(), modules, step, run)  # the partial interval, before saving it
                save()
    envs.close()
    end_run(logger, run, algo, step)
    return learner
