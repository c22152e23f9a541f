"""Training loops for text learners: online generation (on-policy, or replay of the last k generations) and a fixed
logged corpus. :func:`train_text` is the registered loop (uniform keywords of ``hybridrl.loops.train``); :func:`fit`
is the same loop without a run directory (the demo and tests use it).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from hybridrl.errors import ConfigError, DivergenceError
from hybridrl.runs import MetricsLogger, RunDir, latest_checkpoint, load_checkpoint, save_checkpoint, save_config
from hybridrl.runs.metrics import nonfinite_keys
from hybridrl.text.batch import SequenceBatch, concat


def sample_groups(corpus: SequenceBatch, n_groups: int, rng: np.random.Generator) -> SequenceBatch:
    """All rows of ``n_groups`` groups of ``corpus`` drawn uniformly without replacement (fewer if it has fewer)."""
    groups = np.unique(corpus.group.numpy())
    chosen = rng.choice(groups, size=min(n_groups, len(groups)), replace=False)
    return corpus.select(torch.from_numpy(np.isin(corpus.group.numpy(), chosen)))


def fit(learner: Any, steps: int, *, task=None, corpus: SequenceBatch | None = None, seed: int = 0, start: int = 0,
        log: Callable[[int, dict[str, float]], None] | None = None, eval_problems=None,
        save: Callable[[int, dict], None] | None = None, checkpoint_every: int | None = None,
        loop_state: dict | None = None) -> list[dict[str, float]]:
    """Train ``learner`` for ``steps`` updates from ``start``: on ``corpus`` (``batch_prompts`` groups per update) or,
    without one, on completions of ``task`` sampled now (``group_size`` per prompt; each update uses the last
    ``replay`` generations, so ``replay=1`` is on-policy); with both and ``chord_mu > 0`` (CHORD) it generates online
    and passes ``batch_prompts`` groups of the corpus as the expert batch. Evaluates greedily on ``eval_problems`` every
    ``eval_every`` updates (``eval/accuracy``, ``eval/well_formed``) and at the end.

    Returns the logged rows. Raises DivergenceError on a non-finite metric (after the last ``save``).
    """
    from hybridrl.text.tasks import evaluate, rollout

    c = learner.config
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    if loop_state:
        rng.bit_generator.state = loop_state["rng"]
        gen.set_state(loop_state["gen"])
    if corpus is None and task is None:
        raise ConfigError("fit: give a corpus (fixed-data training) or a task (online generation)")
    chord = getattr(c, "chord_mu", 0.0) > 0 and corpus is not None  # online RL + SFT on the corpus (CHORD)
    if chord and task is None:
        raise ConfigError("CHORD (chord_mu > 0) generates online: give a task (--env/--task) as well as the corpus")
    replay: deque[SequenceBatch] = deque(maxlen=c.replay)
    rows: list[dict[str, float]] = []

    def emit(step: int, metrics: dict[str, float]) -> None:
        rows.append({"step": step, **metrics})
        if log is not None:
            log(step, metrics)

    if start == 0 and task is not None and eval_problems:
        emit(0, {f"eval/{k}": v for k, v in evaluate(learner.policy, task, eval_problems).items()})
    t0, tokens = time.perf_counter(), 0
    for step in range(start + 1, steps + 1):
        expert = None
        if corpus is not None and not chord:
            batch = sample_groups(corpus, c.batch_prompts, rng)
            extra: dict[str, float] = {}
        else:
            if chord:
                expert = sample_groups(corpus, c.batch_prompts, rng)
            problems = task.problems(c.batch_prompts, rng)
            fresh = rollout(learner.policy, task, problems, c.group_size, c.temperature, gen, version=step,
                            group_offset=step * c.batch_prompts)
            replay.append(fresh)
            batch = fresh if len(replay) == 1 else concat(list(replay), learner.policy.pad_id)
            extra = {"train/reward": float(fresh.reward.mean()),
                     "train/staleness": float(step - batch.policy_version.float().mean())}
        metrics = learner.update(batch) if expert is None else learner.update(batch, expert=expert)
        tokens += int(batch.completion_mask.sum() + batch.prompt_mask.sum())
        if bad := nonfinite_keys(metrics):
            raise DivergenceError(f"text training diverged at step {step}: non-finite {bad[:5]}; the last good "
                                  "checkpoint (if any) is kept")
        metrics = {**metrics, **extra, "tokens_per_s": tokens / max(time.perf_counter() - t0, 1e-9)}
        if task is not None and eval_problems and (step % c.eval_every == 0 or step == steps):
            metrics.update({f"eval/{k}": v for k, v in evaluate(learner.policy, task, eval_problems).items()})
        emit(step, metrics)
        if save is not None and ((checkpoint_every and step % checkpoint_every == 0) or step == steps):
            save(step, {"rng": rng.bit_generator.state, "gen": gen.get_state()})
    return rows


def train_text(*, config, steps, env_id, dataset, algo, run: RunDir | None, seed, resume, checkpoint_every, progress,
               record):
    """The registered loop of the text learners (``hybridrl train grpo --set model=DIR --env addition ...`` or
    ``--dataset corpus.parquet``). ``env_id`` names the task (default ``config.task``); ``dataset`` a logged corpus
    (fixed-corpus training, evaluated on the corpus's task when known). Writes ``metrics.csv``, checkpoints and
    the final model to ``<run>/model`` (safetensors)."""
    from hybridrl.algos import get_algo
    from hybridrl.text.corpus import read_corpus
    from hybridrl.text.policy import tokenizer_hash
    from hybridrl.text.tasks import make_task

    learner = get_algo(algo).make(config, seed=seed)
    corpus, meta = None, {}
    if dataset is not None:
        corpus, meta = read_corpus(dataset, tokenizer_hash(config.model), learner.policy.pad_id)
    task_name = env_id or meta.get("task") or config.task
    task = make_task(task_name) if task_name else None
    rng = np.random.default_rng(10_000 + seed)
    eval_problems = task.problems(config.eval_problems, rng) if task is not None else None
    logger, start, loop_state = None, 0, None
    if run is not None:
        if not resume or not run.config_path.exists():
            save_config(run.config_path, record)
        logger = MetricsLogger(run)
        if resume and (path := latest_checkpoint(run)) is not None:
            start, state = load_checkpoint(path)
            learner.load_state_dict(state["learner"])
            loop_state = state["loop"]
            logger.truncate(start)

    def save(step: int, loop: dict) -> None:
        if run is not None:
            save_checkpoint(run, step, {"learner": learner.state_dict(), "loop": loop})

    try:
        fit(learner, steps, task=task, corpus=corpus, seed=seed, start=start, eval_problems=eval_problems,
            log=(lambda s, m: logger.log(s, m)) if logger else None, save=save, checkpoint_every=checkpoint_every,
            loop_state=loop_state)
    finally:
        if logger is not None:
            logger.close()
    if run is not None:
        learner.policy.save(run.path / "model")
    return learner
