"""Offline training: sample dataset batches, update, log, checkpoint; no environment interaction."""

from __future__ import annotations

import numpy as np
import torch

from hybridrl.algos import get_algo
from hybridrl.data.dataset import Dataset
from hybridrl.loops.common import check_finite, checkpoint, console, open_run, progress_bar, restore, run_record
from hybridrl.loops.evaluate import evaluate_policy
from hybridrl.runs import RunDir


def train_offline(
    algo: str,
    dataset: Dataset,
    config,
    steps: int,
    run: RunDir | None = None,
    seed: int = 0,
    resume: bool = False,
    checkpoint_every: int | None = None,
    log_every: int = 1000,
    eval_env: str | None = None,
    eval_every: int | None = None,
    eval_episodes: int = 5,
    progress: bool = True,
    record: dict | None = None,
):
    """Train an offline learner (``bc``, ``iql``) for ``steps`` gradient steps on ``dataset``.

    The policy's observation normaliser is set to the dataset's mean/variance (and frozen); IQL's
    rewards are scaled by ``1000 / (max - min episode return)`` when ``config.normalize_reward``.

    Args:
        algo: registered offline algorithm name.
        dataset: the logged data.
        config: the algorithm's config dataclass.
        steps: gradient steps.
        run: run directory (None: nothing written). resume: continue from its latest checkpoint.
        checkpoint_every: gradient steps between checkpoints (None: only at the end).
        log_every: gradient steps between metric rows (means over the interval).
        eval_env / eval_every: optional online evaluation during training (Gymnasium id, steps).
    Returns:
        the trained learner. Raises ConfigError (unknown/non-offline algo), DivergenceError (NaN/inf).
    """
    from hybridrl.errors import ConfigError

    spec = get_algo(algo)
    if spec.regime != "offline":
        raise ConfigError(f"algorithm {algo!r} is {spec.regime.replace('_', '-')}; train it with --env, not --dataset")
    learner = spec.learner_cls(config, dataset.observation_space, dataset.action_space, seed=seed)
    norm = learner.policy.obs_norm
    if norm.enabled:
        mean, var = dataset.obs_stats()
        norm.set_stats(mean, var, len(dataset))
    if getattr(config, "normalize_reward", False):
        returns = dataset.episode_returns()
        spread = float(returns.max() - returns.min())
        learner.reward_scale = 1000.0 / spread if spread > 0 else 1.0
    rec = record or run_record(algo=algo, dataset=str(dataset.path), env_id=dataset.env_id, steps=steps, seed=seed, config=config)
    run, logger = open_run(run, rec, resume)
    step, loop_state = restore(run, learner) if (resume and run is not None) else (0, {})
    rng = np.random.default_rng(seed)
    if "numpy_rng" in loop_state:
        rng.bit_generator.state = loop_state["numpy_rng"]
    if logger is not None and resume:
        logger.truncate(step)
    data = dataset.transitions()
    modules = [m for m in vars(learner).values() if isinstance(m, torch.nn.Module)]
    every = checkpoint_every or steps
    sums: dict[str, float] = {}
    count = 0
    with progress_bar(progress) as bar:
        task = bar.add_task(f"{algo} offline", total=steps, completed=step, info="")
        while step < steps:
            idx = torch.from_numpy(rng.integers(0, len(data), size=config.batch_size))
            metrics = learner.update(data.index(idx))
            step += 1
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            if step % log_every == 0 or step == steps:
                means = {k: v / count for k, v in sums.items()}
                check_finite(means, modules, step, run)
                if eval_env is not None and eval_every and (step % eval_every == 0 or step == steps):
                    means["eval_return"] = evaluate_policy(learner.policy, eval_env, eval_episodes, seed=10_000 + step)["mean"]
                if logger is not None:
                    logger.log(step, means)
                sums, count = {}, 0
                bar.update(task, completed=step, info=" ".join(f"{k} {v:.3g}" for k, v in list(means.items())[:2]))
            if step % every == 0 or step == steps:
                if count:  # check the partial interval before it is saved as "good"
                    check_finite({k: v / count for k, v in sums.items()}, modules, step, run)
                checkpoint(run, step, learner, {"numpy_rng": rng.bit_generator.state})
    if logger is not None:
        logger.close()
    if run is not None:
        console.print(f"[green]{algo}[/] finished {step} gradient steps in {run.path}")
    return learner
