"""The PROPS loop: act with the behaviour policy, keep the last ``b`` rollouts, update target and behaviour.

Every ``props_n_steps`` (m) steps per env: collect m steps with pi_phi (pi_theta if ``config.props`` is False),
append them to the buffer; every ``n_steps`` (n) steps run the PPO update of pi_theta on the whole buffer; then
reset pi_phi to pi_theta and adapt it on the buffered steps that survive the next eviction (all of them while
the buffer has room for m more steps, else all but the oldest m; PPOROS ppo_props_continuous.py:292-300).
The buffer keeps raw rewards; they are divided by the reward scaler's *current* std (clip +-10) before each
update, as PPOROS re-normalises its buffer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from hybridrl.algos import get_algo
from hybridrl.data.batches import Segments, Transitions
from hybridrl.envs import RewardScaler, make_vec_env
from hybridrl.errors import ConfigError, PolicyError, ShapeError
from hybridrl.loops.common import (
    EpisodeStats,
    check_finite,
    checkpoint,
    collect_block,
    console,
    open_run,
    progress_bar,
    restore,
    run_record,
)
from hybridrl.loops.evaluate import evaluate_policy
from hybridrl.nn import Policy, policy_matches_spaces
from hybridrl.runs import RunDir

FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated", "behavior_log_prob")


class SegmentBuffer:
    """The newest ``capacity`` steps of each of ``num_envs`` envs, stored in time order (oldest first).

    Arrays are ``[num_envs, capacity, ...]``; the first ``size`` steps are valid. ``add`` appends a block of
    ``m`` steps per env and drops the oldest steps that no longer fit, so index 0 is always the oldest step and
    consecutive indices are consecutive env steps (what GAE over the buffer needs).

    Args:
        num_envs: ``B``. capacity: steps per env kept (``buffer_batches * n_steps``).
        obs_shape, act_shape: per-step shapes. discrete: int64 actions (else float32).
    Raises: ShapeError (``add``) for a block of the wrong shape or longer than ``capacity``.
    """

    def __init__(self, num_envs: int, capacity: int, obs_shape: tuple, act_shape: tuple, discrete: bool):
        self.num_envs, self.capacity, self.size = num_envs, capacity, 0
        b, c = num_envs, capacity
        self.data = {
            "obs": np.zeros((b, c, *obs_shape), np.float32), "next_obs": np.zeros((b, c, *obs_shape), np.float32),
            "action": np.zeros((b, c, *act_shape), np.int64 if discrete else np.float32),
            "reward": np.zeros((b, c), np.float32), "behavior_log_prob": np.zeros((b, c), np.float32),
            "terminated": np.zeros((b, c), bool), "truncated": np.zeros((b, c), bool),
        }

    def add(self, **block: np.ndarray) -> None:
        """Append ``[num_envs, m, ...]`` arrays for every field in :data:`FIELDS` (raw rewards)."""
        m = block["reward"].shape[1] if block["reward"].ndim == 2 else -1
        if m < 1 or m > self.capacity or set(block) != set(FIELDS):
            raise ShapeError(f"SegmentBuffer.add needs fields {FIELDS} shaped "
                             f"[{self.num_envs}, m <= {self.capacity}, ...]")
        drop = max(0, self.size + m - self.capacity)
        for name, arr in self.data.items():
            if block[name].shape != (self.num_envs, m, *arr.shape[2:]):
                raise ShapeError(f"SegmentBuffer.add: {name} has shape {block[name].shape}; expected "
                                 f"{(self.num_envs, m, *arr.shape[2:])}")
            if drop:
                arr[:, : self.size - drop] = arr[:, drop : self.size].copy()
            arr[:, self.size - drop : self.size - drop + m] = block[name]
        self.size = self.size - drop + m

    def segments(self, last: int | None = None, reward_scale: float = 1.0,
                 reward_clip: float | None = None) -> Segments:
        """The newest ``last`` steps per env (all when None) as ``Segments [num_envs, last]``, time-ordered.

        Rewards are ``clip(raw * reward_scale, +-reward_clip)``.
        """
        last = self.size if last is None else min(int(last), self.size)
        sl = slice(self.size - last, self.size)
        reward = self.data["reward"][:, sl] * np.float32(reward_scale)
        if reward_clip is not None:
            reward = np.clip(reward, -reward_clip, reward_clip)
        out = {k: torch.from_numpy(np.ascontiguousarray(v[:, sl])) for k, v in self.data.items() if k != "reward"}
        return Segments(reward=torch.from_numpy(np.ascontiguousarray(reward)), **out)

    def state_dict(self) -> dict:
        return {"size": self.size, **{k: v[:, : self.size].copy() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.size = int(state["size"])
        for k, v in self.data.items():
            v[:, : self.size] = state[k]


def train_props(
    env_id: str,
    config,
    total_steps: int,
    run: RunDir | None = None,
    seed: int = 0,
    policy: Policy | None = None,
    offline: Transitions | None = None,
    freeze_obs_norm: bool = False,
    resume: bool = False,
    checkpoint_every: int | None = None,
    eval_every: int | None = None,
    eval_episodes: int = 5,
    progress: bool = True,
    record: dict | None = None,
    algo: str = "props",
    freeze_target: bool = False,
    callback: Callable[[int, object, SegmentBuffer], dict | None] | None = None,
):
    """Train PROPS (a :class:`~hybridrl.algos.props.PROPSConfig`) on ``env_id`` for ``total_steps`` env steps.

    Arguments as :func:`hybridrl.loops.on_policy.train_on_policy`, plus:
        freeze_target: never update pi_theta (nor its observation statistics): the sampling-error experiments
            with a fixed target (PPOROS ``--update-epochs 0``); pi_phi is still adapted.
        callback: ``callback(step, learner, buffer)`` after the updates of every behaviour batch; a returned
            dict of floats is merged into the logged metrics.
    ``total_steps`` is rounded up to whole target rollouts (``num_envs * n_steps``).
    Returns: the learner. Raises: ConfigError (offline data), PolicyError (mismatched ``policy``), DivergenceError.
    """
    if offline is not None:
        raise ConfigError("PROPS does not use offline data; train it without --dataset")
    envs = make_vec_env(env_id, config.num_envs, seed=seed)
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    if policy is not None and (reason := policy_matches_spaces(policy, obs_space, act_space)):
        raise PolicyError(f"initial policy cannot act in {env_id}: {reason}")
    learner = get_algo(algo).learner_cls(config, obs_space, act_space, seed=seed, policy=policy)
    record = record or run_record(algo=algo, env_id=env_id, steps=total_steps, seed=seed, config=config)
    run, logger = open_run(run, record, resume)
    modules = [m for m in vars(learner).values() if isinstance(m, torch.nn.Module)]
    scaler = RewardScaler(config.gamma) if config.normalize_reward else None
    n, m_len, t_len = config.num_envs, config.props_n_steps, config.n_steps
    buffer = SegmentBuffer(n, config.buffer_steps, obs_space.shape, act_space.shape, learner.policy.discrete)
    rollout = n * t_len
    total_steps = -(-total_steps // rollout) * rollout
    step, loop_state = restore(run, learner) if (resume and run is not None) else (0, {})
    if scaler is not None and "reward_scaler" in loop_state:
        scaler.load_state_dict(loop_state["reward_scaler"])
    if loop_state.get("buffer"):
        buffer.load_state_dict(loop_state["buffer"])
        # the envs restart below, so the last buffered step of an unfinished episode becomes a truncation
        buffer.data["truncated"][:, buffer.size - 1] |= ~buffer.data["terminated"][:, buffer.size - 1]
    if logger is not None and resume:
        logger.truncate(step)
    norm = learner.policy.obs_norm
    update_norm = norm.enabled and not freeze_obs_norm and not freeze_target
    obs, _ = envs.reset(seed=seed + step)
    if update_norm and step == 0:
        norm.update(obs)
        learner.reset_behavior()
    episodes = EpisodeStats(n)
    next_ckpt = step + (checkpoint_every or total_steps)
    next_eval = step + (eval_every or total_steps + 1)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"{algo} {env_id}", total=total_steps, completed=step, info="")
        while step < total_steps:
            learner.set_progress(step / total_steps)
            actor = learner.behavior_policy if config.props else learner.policy
            # the scaler only updates its statistics here: the buffer keeps raw rewards
            obs, block = collect_block(envs, actor, obs, m_len, episodes, scaler, store_scaled_reward=False)
            buffer.add(**{k: v.swapaxes(0, 1) for k, v in block.items()})
            step += n * m_len
            scale, clip = (1.0 / scaler.std, scaler.clip) if scaler is not None else (1.0, None)
            metrics: dict[str, float] = {}
            if step % rollout == 0 and not freeze_target:
                metrics.update(learner.update(buffer.segments(reward_scale=scale, reward_clip=clip)))
            if update_norm:  # after the target update; pi_phi is reset below, so it acts with the same statistics
                norm.update(block["obs"].reshape(-1, *obs_space.shape))
            if config.props:
                keep = min(buffer.size, buffer.capacity - m_len)
                if keep > 0:
                    metrics.update(learner.update_behavior(buffer.segments(keep, scale, clip)))
                else:  # b = 1 and m = n: nothing survives the next eviction, so pi_phi = pi_theta
                    learner.reset_behavior()
            check_finite(metrics, modules, step, run)
            if callback is not None:
                metrics.update(callback(step, learner, buffer) or {})
            metrics.update(episodes.summary())
            if step >= next_eval:
                ev = evaluate_policy(learner.policy, env_id, eval_episodes, seed=10_000 + step)
                metrics["eval_return"] = ev["mean"]
                next_eval += eval_every or total_steps + 1
            if logger is not None and metrics:
                logger.log(step, metrics)
            if step >= next_ckpt or step >= total_steps:
                checkpoint(run, step, learner, {"reward_scaler": scaler.state_dict() if scaler else None,
                                                "buffer": buffer.state_dict()})
                next_ckpt += checkpoint_every or total_steps
            bar.update(task, completed=min(step, total_steps),
                       info=f"return {metrics.get('episode_return', float('nan')):.1f}")
    envs.close()
    if logger is not None:
        logger.close()
    if run is not None:
        console.print(f"[green]{algo}[/] finished {step} steps in {run.path}")
    return learner
