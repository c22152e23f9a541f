"""On-policy training: collect a block of steps from vector envs, update, log, checkpoint, repeat.

Any learner registered with regime ``on_policy`` runs here. Its config provides ``num_envs``, ``n_steps``,
``gamma`` and ``normalize_reward``; the learner provides ``policy``, ``update(Segments)`` and
``set_progress(fraction)``. Optional learner hooks (all absent in PPO):

- ``uses_offline_data = True`` (HNPG): every update gets ``offline=Transitions`` from the dataset;
- ``acting_policy``: the policy that collects (PROPS: its behaviour policy), default ``policy``;
- ``block_steps``: steps per env collected between updates (PROPS: m), default ``config.n_steps``;
- ``raw_rewards = True``: blocks hold raw rewards and ``update`` gets ``reward_scale``/``reward_clip`` from the
  running return statistics (PROPS re-normalises its whole buffer);
- ``adapt_behavior() -> metrics``: called after each update and observation-statistics update;
- ``freeze_obs_stats = True``: the loop never updates the observation statistics.

Training runs to whole rollouts (``num_envs * n_steps``). ``aux_losses`` reach learners whose ``update`` takes
``aux_losses`` (PPO).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from hybridrl.algos import get_algo
from hybridrl.data.batches import Segments, Transitions
from hybridrl.data.dataset import Dataset
from hybridrl.envs import RewardScaler, make_env, make_vec_env
from hybridrl.errors import ConfigError, PolicyError
from hybridrl.loops.common import (
    CheckpointTrigger,
    EpisodeStats,
    Every,
    StopSignals,
    checkpoint,
    collect_block,
    end_run,
    interrupted,
    learner_modules,
    progress_bar,
    raise_if_nonfinite,
    run_record,
    start_run,
)
from hybridrl.loops.evaluate import evaluate_policy
from hybridrl.nn import Policy, policy_matches_spaces
from hybridrl.runs import RunDir


def train_on_policy(
    env_id: str | None = None,
    config=None,
    steps: int | None = None,
    run: RunDir | None = None,
    seed: int = 0,
    policy: Policy | None = None,
    dataset: Dataset | None = None,
    offline: Transitions | None = None,
    aux_losses: Sequence = (),
    callback: Callable[[int, Any], dict | None] | None = None,
    freeze_obs_norm: bool = False,
    resume: bool = False,
    checkpoint_every: int | None = None,
    eval_every: int | None = None,
    eval_episodes: int = 5,
    progress: bool = True,
    record: dict | None = None,
    algo: str = "ppo",
    learner=None,
    reward_scale: float | None = None,
    vector: str = "sync",
    workers: int | None = None,
    envs_per_worker: int = 1,
    address: str | None = None,
):
    """Train an on-policy learner (``algo``, default PPO) on ``env_id`` for ``steps`` environment steps.

    Args:
        env_id: Gymnasium id.
        config: the learner's config (rollout = ``num_envs * n_steps`` steps).
        steps: environment steps in total (rounded up to whole rollouts; the learning-rate schedule uses ``steps``).
        run: run directory for config, metrics, checkpoints (None: nothing is written).
        policy: start from this policy (fine-tuning); a fresh one otherwise.
        dataset / offline: offline data for hybrid learners (``uses_offline_data``, e.g. HNPG): a dataset, or its
            flat transitions.
        aux_losses: objects ``aux(learner, minibatch) -> (loss, metrics)`` added to every minibatch loss (e.g.
            :class:`~hybridrl.loops.finetune.OfflineBC`); optional ``end_update()`` after each update and
            ``state_dict()/load_state_dict()`` (saved with the loop state).
        freeze_obs_norm: keep the policy's observation statistics fixed (e.g. from a dataset).
        resume: continue from the run's latest checkpoint.
        checkpoint_every: environment steps between checkpoints (None: every 10 minutes of wall time); always one
            at the end and one on SIGINT/SIGTERM.
        eval_every: environment steps between online evaluations (None: none).
        callback: ``callback(step, learner)`` after every update; a returned dict of floats is logged too.
        record: the run record written to ``config.yaml`` (default: built from the arguments).
        learner: a learner built by the caller for these spaces (fine-tuning: a critic fitted before the first
            update); None = ``algo``'s registered learner built from ``config`` and ``policy``.
        reward_scale: multiply every reward by this fixed number (fine-tuning: the scale the critic was pre-trained
            with) instead of a running scaler; exclusive with ``config.normalize_reward``.
        vector: ``"sync"`` (one process) or ``"async"`` (Gymnasium's ``AsyncVectorEnv``, a process per env).
        workers / envs_per_worker / address: collect with ``workers`` Ray rollout workers of ``envs_per_worker`` envs
            each (:class:`hybridrl.scale.workers.RayVecEnv`; ``workers * envs_per_worker`` must equal
            ``config.num_envs``), on a local runtime (``address`` None) or a cluster. None: no Ray.
    Returns:
        the trained learner.
    Raises:
        ConfigError (missing env/config/steps, offline data for a learner that does not use it), PolicyError (a
        mismatched ``policy``), DivergenceError (NaN/inf), Interrupted (SIGINT/SIGTERM, after a checkpoint).

    Observation statistics are updated *after* each update with the rollout just used, so the update
    sees exactly the normalisation the rollout was collected with (ratio 1 at the first minibatch).
    """
    if env_id is None or config is None or steps is None:
        raise ConfigError(f"{algo} is on-policy: it needs env_id, config and steps")
    if dataset is not None and offline is None:
        offline = dataset.transitions()
    if workers is not None and vector != "sync":
        raise ConfigError("--vector async applies to one process; Ray rollout workers (--workers) step their envs "
                          "synchronously: drop one of them")
    if workers is not None and workers * envs_per_worker != config.num_envs:
        raise ConfigError(f"--workers {workers} x --envs-per-worker {envs_per_worker} = {workers * envs_per_worker} "
                          f"envs, but config num_envs = {config.num_envs}; make them equal")
    if workers is None:
        envs = make_vec_env(env_id, config.num_envs, seed=seed, vector=vector)
        obs_space, act_space = envs.single_observation_space, envs.single_action_space
    else:  # the spaces now; the workers once the learner (its acting policy) exists
        envs = make_env(env_id)
        obs_space, act_space = envs.observation_space, envs.action_space
        envs.close()
    if policy is not None and (reason := policy_matches_spaces(policy, obs_space, act_space)):
        raise PolicyError(f"initial policy cannot act in {env_id}: {reason}")
    if reward_scale is not None and config.normalize_reward:
        raise ConfigError("a fixed reward_scale and normalize_reward=true are exclusive; set normalize_reward=false")
    if learner is None:
        learner = get_algo(algo).learner_cls(config, obs_space, act_space, seed=seed, policy=policy)
    update = learner.update
    if getattr(learner, "uses_offline_data", False):
        update = functools.partial(update, offline=offline)
    elif offline is not None:
        raise ConfigError(f"{algo} does not use offline data; train it without --dataset "
                          "(offline BC while fine-tuning: hybridrl.loops.finetune)")
    if aux_losses:
        update = functools.partial(update, aux_losses=[functools.partial(a, learner) for a in aux_losses])
    record = record or run_record(algo=algo, env_id=env_id, steps=steps, seed=seed, config=config)
    logger, step, loop_state = start_run(run, learner, record, resume)
    scaler = RewardScaler(config.gamma) if config.normalize_reward else None
    if reward_scale is not None:
        scaler = FixedRewardScale(reward_scale)
    if scaler is not None and loop_state.get("reward_scaler"):
        scaler.load_state_dict(loop_state["reward_scaler"])
    for aux, state in zip(aux_losses, loop_state.get("aux_losses", [])):
        if state is not None:
            aux.load_state_dict(state)

    def save() -> object:
        return checkpoint(run, step, learner, {"reward_scaler": scaler.state_dict() if scaler else None,
                                               "aux_losses": [a.state_dict() if hasattr(a, "state_dict") else None
                                                              for a in aux_losses]})

    collect = functools.partial(collect_block, envs)
    if workers is not None:
        from hybridrl.scale.workers import RayVecEnv

        envs = RayVecEnv(env_id, workers, envs_per_worker, seed,
                         getattr(learner, "acting_policy", learner.policy), address=address)
        collect = envs.collect_block
    modules = learner_modules(learner)
    norm = learner.policy.obs_norm
    update_norm = norm.enabled and not freeze_obs_norm and not getattr(learner, "freeze_obs_stats", False)
    obs, _ = envs.reset(seed=seed + step)
    if update_norm and step == 0:
        norm.update(obs)
    n, block_steps = config.num_envs, getattr(learner, "block_steps", config.n_steps)
    raw_rewards = getattr(learner, "raw_rewards", False)
    end = -(-steps // (n * config.n_steps)) * n * config.n_steps
    episodes = EpisodeStats(n)
    checkpoint_due, eval_due = CheckpointTrigger(checkpoint_every, step, end), Every(eval_every, step)
    with progress_bar(progress) as bar, StopSignals() as stop:
        task = bar.add_task(f"{algo} {env_id}", total=end, completed=step, info="")
        while step < end:
            if stop.signal_number is not None:
                raise interrupted(stop, run, step, save)
            learner.set_progress(step / steps)
            actor = getattr(learner, "acting_policy", learner.policy)
            obs, block = collect(actor, obs, block_steps, episodes, scaler, not raw_rewards)
            seg = Segments(**{k: torch.from_numpy(v.swapaxes(0, 1)) for k, v in block.items()})
            if raw_rewards and scaler is not None:
                metrics = update(seg, reward_scale=1.0 / scaler.std, reward_clip=scaler.clip)
            else:
                metrics = update(seg)
            for aux in aux_losses:
                if hasattr(aux, "end_update"):
                    aux.end_update()
            step += n * block_steps
            if update_norm:  # after the update, which saw the statistics the block was collected with
                norm.update(block["obs"].reshape(-1, *obs_space.shape))
            if hasattr(learner, "adapt_behavior"):
                metrics.update(learner.adapt_behavior())
            raise_if_nonfinite(metrics, modules, step, run)
            if callback is not None:
                metrics.update(callback(step, learner) or {})
            metrics.update(episodes.summary())
            if eval_due(step):
                ev = evaluate_policy(learner.policy, env_id, eval_episodes, seed=10_000 + step)
                metrics["eval_return"] = ev["mean"]
            if logger is not None and metrics:
                logger.log(step, metrics)
            if checkpoint_due(step):
                save()
            bar.update(task, completed=min(step, end),
                       info=f"return {metrics.get('episode_return', float('nan')):.1f}")
    envs.close()
    end_run(logger, run, algo, step)
    return learner


class FixedRewardScale:
    """``reward * scale`` with the :class:`~hybridrl.envs.RewardScaler` call and state interface (no statistics)."""

    clip = None

    def __init__(self, scale: float):
        self.scale = float(scale)

    def __call__(self, reward, done):
        return np.asarray(reward, dtype=np.float64) * self.scale

    @property
    def std(self) -> float:
        return 1.0 / self.scale

    def state_dict(self) -> dict:
        return {"scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state.get("scale", self.scale))
