"""Offline training: sample dataset batches, update, log, checkpoint; no environment interaction."""

from __future__ import annotations

import numpy as np
import torch

from hybridrl.algos import get_algo
from hybridrl.data.dataset import Dataset
from hybridrl.data.weighting import TransitionSampler
from hybridrl.errors import ConfigError
from hybridrl.loops.common import (
    CheckpointTrigger,
    Every,
    MetricMeans,
    StopSignals,
    checkpoint,
    console,
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


def train_offline(
    algo: str = "bc",
    dataset: Dataset | None = None,
    config=None,
    steps: int | None = None,
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
    env_id: str | None = None,
):
    """Train an offline learner (``bc``, ``iql``) for ``steps`` gradient steps on ``dataset``.

    On a fresh run the policy's observation normaliser is set to the dataset's mean/variance (and frozen), and
    ``learner.prepare(dataset)`` fits any other dataset-dependent state once (e.g. IQL's reward scale), when the
    learner defines it. A learner with a ``mc_gamma`` attribute that is not None (Cal-QL) gets batches carrying
    ``mc_return``, the dataset's return-to-go with that discount.

    Args:
        algo: registered offline algorithm name.
        dataset: the logged data.
        config: the algorithm's config dataclass.
        steps: gradient steps.
        run: run directory (None: nothing written). resume: continue from its latest checkpoint.
        checkpoint_every: gradient steps between checkpoints (None: every 10 minutes of wall time); always one at
            the end and one on SIGINT/SIGTERM.
        log_every: gradient steps between metric rows (means over the interval).
        eval_env / eval_every: optional online evaluation during training (Gymnasium id, steps); ``eval_env``
            defaults to ``env_id``.
        env_id: the env the dataset belongs to (recorded; the default evaluation env).
    Returns:
        the trained learner.
    Raises:
        ConfigError (unknown/non-offline algo, no dataset/config/steps), DivergenceError (NaN/inf), Interrupted
        (SIGINT/SIGTERM, after a checkpoint).
    """
    spec = get_algo(algo)
    if spec.regime != "offline":
        raise ConfigError(f"algorithm {algo!r} is {spec.regime.replace('_', '-')}; train it with --env, not --dataset")
    if dataset is None or config is None or steps is None:
        raise ConfigError(f"{algo} is offline: it needs a dataset, config and steps")
    learner = spec.learner_cls(config, dataset.observation_space, dataset.action_space, seed=seed)
    norm = learner.policy.obs_norm
    if norm.enabled:
        mean, var = dataset.obs_stats()
        norm.set_stats(mean, var, len(dataset))
    if hasattr(learner, "prepare") and not resume:  # on resume the checkpoint restores what prepare() fitted
        learner.prepare(dataset)
    if hasattr(learner, "attach_dataset"):  # dataset structures that are not saved (PRDC's KD-tree), also on resume
        learner.attach_dataset(dataset)
    # config.sampler: "uniform" (default), "rw"/"aw" trajectory weighting (Hong et al. 2023; data/weighting.py)
    sampler = TransitionSampler(dataset, getattr(config, "sampler", "uniform"), getattr(config, "sampler_alpha", 0.1))
    env_id = env_id or dataset.env_id
    eval_env = eval_env or env_id
    record = record or run_record(algo=algo, dataset=str(dataset.path), env_id=env_id, steps=steps, seed=seed,
                                  config=config)
    logger, step, loop_state = start_run(run, learner, record, resume)
    if sampler.note is not None:
        console.print(f"[yellow]note:[/] {sampler.note}")
    rng = np.random.default_rng(seed)
    if "numpy_rng" in loop_state:
        rng.bit_generator.state = loop_state["numpy_rng"]

    def save() -> object:
        return checkpoint(run, step, learner, {"numpy_rng": rng.bit_generator.state})

    data = dataset.transitions(mc_gamma=getattr(learner, "mc_gamma", None))  # Monte-Carlo returns when asked (Cal-QL)
    modules = learner_modules(learner)
    means = MetricMeans()
    log_due, eval_due = Every(log_every, step), Every(eval_every, step)
    checkpoint_due = CheckpointTrigger(checkpoint_every, step, steps)
    with progress_bar(progress) as bar, StopSignals() as stop:
        task = bar.add_task(f"{algo} offline", total=steps, completed=step, info="")
        while step < steps:
            if stop.signal_number is not None:
                raise_if_nonfinite(means.means(), modules, step, run)  # the partial interval, before saving it
                raise interrupted(stop, run, step, save)
            idx = torch.from_numpy(sampler.indices(rng, config.batch_size))
            means.add(learner.update(data.index(idx)))
            step += 1
            if log_due(step) or step == steps:
                metrics = means.pop()
                raise_if_nonfinite(metrics, modules, step, run)
                if eval_env is not None and eval_due(step) | (eval_every is not None and step == steps):
                    metrics["eval_return"] = evaluate_policy(learner.policy, eval_env, eval_episodes,
                                                             seed=10_000 + step)["mean"]
                if logger is not None:
                    logger.log(step, metrics)
                bar.update(task, completed=step, info=" ".join(f"{k} {v:.3g}" for k, v in list(metrics.items())[:2]))
            if checkpoint_due(step):
                raise_if_nonfinite(means.means(), modules, step, run)  # the partial interval, before saving it
                save()
    end_run(logger, run, algo, step, unit="gradient steps")
    return learner
