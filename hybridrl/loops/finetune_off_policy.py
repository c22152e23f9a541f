"""Off-policy offline-to-online fine-tuning: IQL, Cal-QL, RLPD and FamO2O through one loop.

Every method runs the same two phases (:func:`finetune_loop`):

1. **offline** (gradient steps on the dataset only; skipped when 0): ``critic_pretrain_steps`` critic-only steps
   under the frozen starting policy (a saved policy has no critics: they are fitted first), then
   ``offline_steps`` steps of the full learner;
2. **online** (``steps`` environment steps, one env): act with the stochastic policy (``random_steps`` uniform
   actions first), push each transition into a replay buffer, then ``updates_per_step`` gradient steps on batches
   from :class:`~hybridrl.data.mixed.MixedSampler`: ``offline_fraction`` of each batch from the dataset (RLPD /
   Cal-QL symmetric sampling, 0.5), or None = uniform over the buffer seeded with the dataset (IQL, AWAC).

``callback(env_step, policy)`` is called every ``callback_every`` (<= 1000) env steps and at the end, and once at
step 0 after an offline phase that changed the actor (``offline_steps > 0``). Checkpoints (learner, replay buffer,
NumPy RNG, torch RNG) go to ``run``: one after the offline phase (as step 0), every ``checkpoint_every`` env steps
(None: 10 minutes of wall time), at the end and on SIGINT/SIGTERM; ``resume=True`` continues from the latest one
(an offline phase interrupted before its checkpoint is redone; episodes in flight are lost, the env is reset).

Public API: ``finetune_<name>(policy, *, env_id, dataset, steps, run, seed, overrides, callback, progress)`` for
``name`` in iql, calql, rlpd, famo2o, each returning the fine-tuned :class:`~hybridrl.nn.Policy`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from hybridrl.algos import check_config
from hybridrl.algos.cql import CQLConfig, CQLLearner
from hybridrl.algos.famo2o import FamO2OConfig, FamO2OLearner
from hybridrl.algos.iql import IQLConfig, IQLLearner, iql_critic_step
from hybridrl.data.batches import Transitions
from hybridrl.data.dataset import Dataset
from hybridrl.data.mixed import MixedSampler
from hybridrl.data.replay import ReplayBuffer
from hybridrl.envs import make_vec_env, true_next_obs
from hybridrl.errors import ConfigError, ShapeError
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
from hybridrl.nn import Policy, policy_matches_spaces
from hybridrl.runs import RunDir, apply_overrides

Callback = Callable[[int, Policy], None]


@dataclass(frozen=True)
class OnlineSettings:
    """Settings of the fine-tuning loop, shared by every method's config (``--set key=value`` reaches them).

    Attributes:
        critic_pretrain_steps: critic-only gradient steps on the dataset under the frozen starting policy (>= 0).
        offline_steps: gradient steps of the full learner on the dataset before going online (>= 0).
        offline_fraction: share of every online batch drawn from the dataset, in [0, 1]; None: uniform over the
            replay buffer seeded with the dataset.
        buffer_size: online replay capacity in transitions (the dataset is kept apart, never overwritten).
        updates_per_step: gradient steps per environment step (the update-to-data ratio, UTD).
        random_steps: first online steps with uniform random actions (from-scratch RLPD).
        callback_every: env steps between ``callback`` calls (1 to 1000).
        log_every: env steps between metric rows. checkpoint_every: env steps between checkpoints (None: 10 min).
    """

    critic_pretrain_steps: int = 0
    offline_steps: int = 0
    offline_fraction: float | None = 0.5
    buffer_size: int = 1_000_000
    updates_per_step: int = 1
    random_steps: int = 0
    callback_every: int = 1000
    log_every: int = 1000
    checkpoint_every: int | None = None

    def check_online(self) -> None:
        check_config(self, critic_pretrain_steps=(0, None), offline_steps=(0, None), offline_fraction=(0.0, 1.0),
                     buffer_size=(1, None), updates_per_step=(1, None), random_steps=(0, None),
                     callback_every=(1, 1000), log_every=(1, None), checkpoint_every=(1, None))


@dataclass(frozen=True)
class IQLFinetuneConfig(IQLConfig, OnlineSettings):
    """IQL's fields plus :class:`OnlineSettings`; defaults: critics fitted for 5,000 steps under the starting
    policy, then online with the dataset-seeded buffer (Kostrikov et al. 2022, sec. 5.3)."""

    critic_pretrain_steps: int = 5000
    offline_fraction: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_online()


@dataclass(frozen=True)
class CalQLFinetuneConfig(CQLConfig, OnlineSettings):
    """CQL's fields (``calibrated`` on) plus :class:`OnlineSettings`; 50/50 batches (Nakamoto et al. 2023)."""

    calibrated: bool = True
    critic_pretrain_steps: int = 5000
    offline_steps: int = 5000

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_online()


@dataclass(frozen=True)
class FamO2OFinetuneConfig(FamO2OConfig, OnlineSettings):
    """FamO2O's fields plus :class:`OnlineSettings`: critics fitted under the starting policy, then ``offline_steps``
    of family training with uniform coefficients, then online with the dataset-seeded buffer."""

    critic_pretrain_steps: int = 5000
    offline_steps: int = 5000
    offline_fraction: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_online()


@dataclass(frozen=True)
class RLPDConfig(CQLConfig, OnlineSettings):
    """RLPD (Ball et al. 2023): SAC (CQL fields with ``cql_alpha=0``), LayerNorm critics, entropy backup, 50/50
    symmetric sampling, 256-256 networks, actor lr 3e-4. The paper's UTD is 20 and its critics an ensemble of 10;
    here UTD is ``updates_per_step`` (default 1, CPU budget) and the critics a twin pair."""

    cql_alpha: float = 0.0
    layer_norm: bool = True
    backup_entropy: bool = True
    hidden: tuple[int, ...] = (256, 256)
    actor_lr: float = 3e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_online()


def _as_box_action(action: np.ndarray, space: gym.Space) -> np.ndarray:
    if isinstance(space, gym.spaces.Box):
        return np.clip(action, space.low, space.high).astype(np.float32)
    return action


def _seeded_policy(policy: Policy | None, dataset: Dataset, env_id: str) -> Policy | None:
    """A copy of ``policy`` (the caller's object is not changed), checked against the dataset's spaces."""
    if policy is None:
        return None
    why = policy_matches_spaces(policy, dataset.observation_space, dataset.action_space, where="dataset")
    if why:
        raise ShapeError(f"fine-tuning on {env_id}: {why}")
    return copy.deepcopy(policy)


def _set_obs_stats(learner, dataset: Dataset, given: bool) -> None:
    """A fresh policy reads observations normalised by the dataset's statistics (frozen); a given one keeps its."""
    norm = learner.policy.obs_norm
    if not given and norm.enabled:
        mean, var = dataset.obs_stats()
        norm.set_stats(mean, var, len(dataset))


def finetune_loop(learner, *, algo: str, env_id: str, dataset: Dataset, steps: int, run: RunDir | None, seed: int,
                  config: OnlineSettings, callback: Callback | None = None, progress: bool = True,
                  resume: bool = False, critic_update: Callable[[Transitions], dict] | None = None,
                  record: dict | None = None):
    """Run the offline phase, then ``steps`` online env steps, on ``learner`` (see the module docstring).

    Args:
        learner: has ``policy``, ``update(Transitions)``, ``state_dict``/``load_state_dict``, ``config.batch_size``;
            optional ``mc_gamma`` (not None: batches carry Monte-Carlo returns with that discount, Cal-QL).
        critic_update: one critic-only step on a batch (the ``critic_pretrain_steps`` phase); None skips it.
        config: the method's config (an :class:`OnlineSettings`).
    Returns:
        the learner.
    Raises:
        ConfigError (steps < 1), EnvError, ShapeError (policy/env/dataset spaces differ), DivergenceError,
        Interrupted (after a checkpoint).
    """
    if steps is None or steps < 1:
        raise ConfigError(f"fine-tuning needs steps >= 1 online environment steps, got {steps}")
    envs = make_vec_env(env_id, 1, seed=seed)
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    if why := policy_matches_spaces(learner.policy, obs_space, act_space):
        raise ShapeError(f"fine-tuning on {env_id}: {why}")
    mc_gamma = getattr(learner, "mc_gamma", None)
    buffer = ReplayBuffer(config.buffer_size, obs_space, act_space, mc_gamma=mc_gamma)
    sampler = MixedSampler(dataset.transitions(mc_gamma=mc_gamma), buffer, config.offline_fraction)
    record = record or run_record(algo=f"finetune-{algo}", env_id=env_id, dataset=str(dataset.path), steps=steps,
                                  seed=seed, config=config)
    logger, step, loop_state = start_run(run, learner, record, resume)
    rng = np.random.default_rng(seed)
    if "numpy_rng" in loop_state:
        rng.bit_generator.state = loop_state["numpy_rng"]
    if "replay" in loop_state:
        buffer.load_state_dict(loop_state["replay"])
    offline_done = bool(loop_state.get("offline_done", False))

    def save() -> object:
        return checkpoint(run, step, learner, {"numpy_rng": rng.bit_generator.state, "replay": buffer.state_dict(),
                                               "offline_done": offline_done})

    modules, means, batch = learner_modules(learner), MetricMeans(), learner.config.batch_size
    with progress_bar(progress) as bar, StopSignals() as stop:
        if not offline_done:
            phases = [(config.critic_pretrain_steps if critic_update else 0, critic_update or learner.update),
                      (config.offline_steps, learner.update)]
            task = bar.add_task(f"{algo} offline", total=sum(n for n, _ in phases), info="")
            for n, update in phases:
                for _ in range(n):
                    if stop.signal_number is not None:
                        raise interrupted(stop, None, step, save)  # no checkpoint: the offline phase is redone
                    means.add(update(sampler.sample(batch, rng)))
                    bar.advance(task)
            metrics = means.pop()
            raise_if_nonfinite(metrics, modules, step, run)
            if logger is not None and metrics:
                logger.log(step, {f"offline_{k}": v for k, v in metrics.items()})
            offline_done = True
            save()
            if callback is not None and config.offline_steps > 0:
                callback(0, learner.policy)
        if hasattr(learner, "start_online"):  # FamO2O: coefficients from the balance model from now on
            learner.start_online()
        obs, _ = envs.reset(seed=seed + step)
        episodes = EpisodeStats(1)
        log_due, callback_due = Every(config.log_every, step), Every(config.callback_every, step)
        checkpoint_due = CheckpointTrigger(config.checkpoint_every, step, steps)
        task = bar.add_task(f"{algo} {env_id}", total=steps, completed=step, info="")
        while step < steps:
            if stop.signal_number is not None:
                raise_if_nonfinite(means.means(), modules, step, run)
                raise interrupted(stop, run, step, save)
            if step < config.random_steps:
                action = (rng.uniform(act_space.low, act_space.high, size=(1, *act_space.shape)).astype(np.float32)
                          if isinstance(act_space, gym.spaces.Box) else rng.integers(0, act_space.n, size=1))
            else:
                action = _as_box_action(learner.policy.act(obs)[0], act_space)
            next_obs, reward, term, trunc, infos = envs.step(action)
            done = term | trunc
            buffer.add(obs, action, reward, true_next_obs(next_obs, infos, done), term, trunc)
            episodes.add(reward, done)
            obs = next_obs
            step += 1
            for _ in range(config.updates_per_step):
                means.add(learner.update(sampler.sample(batch, rng)))
            if log_due(step) or step >= steps:
                metrics = means.pop()
                raise_if_nonfinite(metrics, modules, step, run)
                metrics.update(episodes.summary())
                if logger is not None and metrics:
                    logger.log(step, metrics)
                bar.update(task, completed=step, info=f"return {metrics.get('episode_return', float('nan')):.1f}")
            if callback is not None and (callback_due(step) or step >= steps):
                callback(step, learner.policy)
            if checkpoint_due(step):
                raise_if_nonfinite(means.means(), modules, step, run)
                save()
    envs.close()
    end_run(logger, run, f"finetune-{algo}", step, unit="env steps")
    return learner


def _config(cls, overrides: list[str] | None):
    return apply_overrides(cls(), list(overrides or []))


def finetune_iql(policy: Policy | None, *, env_id: str, dataset: Dataset, steps: int, run: RunDir | None = None,
                 seed: int = 0, overrides: list[str] | None = None, callback: Callback | None = None,
                 progress: bool = True, resume: bool = False) -> Policy:
    """IQL continued online (Kostrikov et al. 2022, sec. 5.3): the starting (IQL) policy's critics are fitted on
    the dataset first (``critic_pretrain_steps``; a saved policy has none), optionally ``offline_steps`` of full
    IQL, then online with the replay buffer seeded with the dataset. ``policy`` None: IQL from scratch (offline
    pre-training is then ``offline_steps``). Config: :class:`IQLFinetuneConfig` plus ``overrides``.
    Returns the fine-tuned policy (a new object)."""
    config = _config(IQLFinetuneConfig, overrides)
    given = _seeded_policy(policy, dataset, env_id)
    learner = IQLLearner(config, dataset.observation_space, dataset.action_space, seed=seed, policy=given)
    _set_obs_stats(learner, dataset, given is not None)
    if not resume:
        learner.prepare(dataset)
    finetune_loop(learner, algo="iql", env_id=env_id, dataset=dataset, steps=steps, run=run, seed=seed,
                  config=config, callback=callback, progress=progress, resume=resume,
                  critic_update=lambda b: iql_critic_step(learner, b))
    return learner.policy


def _finetune_cql(name: str, cls, policy, *, env_id, dataset, steps, run, seed, overrides, callback, progress,
                  resume) -> Policy:
    config = _config(cls, overrides)
    given = _seeded_policy(policy, dataset, env_id)
    learner = CQLLearner(config, dataset.observation_space, dataset.action_space, seed=seed, policy=given)
    _set_obs_stats(learner, dataset, given is not None)
    critic_update = (lambda b: learner.update(b, actor=False)) if given is not None else None
    finetune_loop(learner, algo=name, env_id=env_id, dataset=dataset, steps=steps, run=run, seed=seed,
                  config=config, callback=callback, progress=progress, resume=resume, critic_update=critic_update)
    return learner.policy


def finetune_calql(policy: Policy | None, *, env_id: str, dataset: Dataset, steps: int, run: RunDir | None = None,
                   seed: int = 0, overrides: list[str] | None = None, callback: Callback | None = None,
                   progress: bool = True, resume: bool = False) -> Policy:
    """Cal-QL (Nakamoto et al. 2023): calibrated CQL pre-trained offline (``critic_pretrain_steps`` critic-only
    steps under a given starting policy, then ``offline_steps`` of Cal-QL), then online with 50/50 batches whose
    online half carries the Monte-Carlo returns of finished online episodes. ``policy`` None: a fresh SAC actor.
    Config: :class:`CalQLFinetuneConfig` plus ``overrides``. Returns the fine-tuned policy."""
    return _finetune_cql("calql", CalQLFinetuneConfig, policy, env_id=env_id, dataset=dataset, steps=steps, run=run,
                         seed=seed, overrides=overrides, callback=callback, progress=progress, resume=resume)


def finetune_rlpd(policy: Policy | None, *, env_id: str, dataset: Dataset, steps: int, run: RunDir | None = None,
                  seed: int = 0, overrides: list[str] | None = None, callback: Callback | None = None,
                  progress: bool = True, resume: bool = False) -> Policy:
    """RLPD (Ball et al. 2023): SAC with LayerNorm critics and symmetric 50/50 sampling, no offline pre-training.
    ``policy`` None: from scratch (as in the paper); given: its actor starts from it (critics fitted first when
    ``critic_pretrain_steps`` > 0). Config: :class:`RLPDConfig` plus ``overrides``. Returns the policy."""
    return _finetune_cql("rlpd", RLPDConfig, policy, env_id=env_id, dataset=dataset, steps=steps, run=run,
                         seed=seed, overrides=overrides, callback=callback, progress=progress, resume=resume)


def finetune_famo2o(policy: Policy | None, *, env_id: str, dataset: Dataset, steps: int,
                    run: RunDir | None = None, seed: int = 0, overrides: list[str] | None = None,
                    callback: Callback | None = None, progress: bool = True, resume: bool = False) -> Policy:
    """FamO2O on IQL (Wang et al. 2023): the starting IQL policy becomes a universal policy (its first layer widened
    with zero weights for the coefficient embedding, so it starts acting exactly as before), IQL critics are fitted
    under it (``critic_pretrain_steps``), the family is trained offline with uniform coefficients
    (``offline_steps``), then online the balance model picks the coefficient per state. Config:
    :class:`FamO2OFinetuneConfig` plus ``overrides``. Returns a :class:`~hybridrl.algos.famo2o.FamilyPolicy`."""
    config = _config(FamO2OFinetuneConfig, overrides)
    given = _seeded_policy(policy, dataset, env_id)
    learner = FamO2OLearner(config, dataset.observation_space, dataset.action_space, seed=seed, policy=given)
    _set_obs_stats(learner, dataset, given is not None)
    if not resume:
        learner.prepare(dataset)
    finetune_loop(learner, algo="famo2o", env_id=env_id, dataset=dataset, steps=steps, run=run, seed=seed,
                  config=config, callback=callback, progress=progress, resume=resume,
                  critic_update=lambda b: iql_critic_step(learner, b))
    return learner.policy
