"""On-policy training: collect a rollout from vector envs, update, log, checkpoint, repeat.

Any learner registered with regime ``on_policy`` runs here. Its config provides ``num_envs``, ``n_steps``,
``gamma`` and ``normalize_reward``; the learner provides ``policy``, ``update(Segments, offline=None)`` and
``set_progress(fraction)``.
"""

from __future__ import annotations

import torch

from hybridrl.algos import get_algo
from hybridrl.data.batches import Segments, Transitions
from hybridrl.envs import RewardScaler, make_vec_env
from hybridrl.errors import PolicyError
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


def train_on_policy(
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
    algo: str = "ppo",
):
    """Train an on-policy learner (``algo``, default PPO) on ``env_id`` for ``total_steps`` environment steps.

    Args:
        env_id: Gymnasium id.
        config: the learner's config (rollout = ``num_envs * n_steps`` steps).
        total_steps: environment steps in total (rounded up to whole rollouts).
        run: run directory for config, metrics, checkpoints (None: nothing is written).
        policy: start from this policy (fine-tuning); a fresh one otherwise.
        offline: offline transitions for the optional BC term (``config.bc_coef``).
        freeze_obs_norm: keep the policy's observation statistics fixed (e.g. from a dataset).
        resume: continue from the run's latest checkpoint.
        checkpoint_every: environment steps between checkpoints (None: only at the end).
        eval_every: environment steps between online evaluations (None: none).
    Returns:
        the trained learner. Raises DivergenceError on NaN/inf, PolicyError on a mismatched policy.

    Observation statistics are updated *after* each update with the rollout just used, so the update
    sees exactly the normalisation the rollout was collected with (ratio 1 at the first minibatch).
    """
    envs = make_vec_env(env_id, config.num_envs, seed=seed)
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    if policy is not None and (reason := policy_matches_spaces(policy, obs_space, act_space)):
        raise PolicyError(f"initial policy cannot act in {env_id}: {reason}")
    learner = get_algo(algo).learner_cls(config, obs_space, act_space, seed=seed, policy=policy)
    run, logger = open_run(run, record or run_record(algo=algo, env_id=env_id, steps=total_steps, seed=seed, config=config), resume)
    modules = [m for m in vars(learner).values() if isinstance(m, torch.nn.Module)]
    scaler = RewardScaler(config.gamma) if config.normalize_reward else None
    step, loop_state = restore(run, learner) if (resume and run is not None) else (0, {})
    if scaler is not None and "reward_scaler" in loop_state:
        scaler.load_state_dict(loop_state["reward_scaler"])
    if logger is not None and resume:
        logger.truncate(step)
    norm = learner.policy.obs_norm
    update_norm = norm.enabled and not freeze_obs_norm
    obs, _ = envs.reset(seed=seed + step)
    if update_norm and step == 0:
        norm.update(obs)
    n, t_len = config.num_envs, config.n_steps
    episodes = EpisodeStats(n)
    next_ckpt = step + (checkpoint_every or total_steps)
    next_eval = step + (eval_every or total_steps + 1)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"{algo} {env_id}", total=total_steps, completed=step, info="")
        while step < total_steps:
            learner.set_progress(step / total_steps)
            obs, block = collect_block(envs, learner.policy, obs, t_len, episodes, scaler)
            seg = Segments(**{k: torch.from_numpy(v.swapaxes(0, 1)) for k, v in block.items()})
            metrics = learner.update(seg, offline)
            step += n * t_len
            check_finite(metrics, modules, step, run)
            if update_norm:
                norm.update(block["obs"].reshape(-1, *obs_space.shape))
            metrics.update(episodes.summary())
            if step >= next_eval:
                ev = evaluate_policy(learner.policy, env_id, eval_episodes, seed=10_000 + step)
                metrics["eval_return"] = ev["mean"]
                next_eval += eval_every or total_steps + 1
            if logger is not None:
                logger.log(step, metrics)
            if step >= next_ckpt or step >= total_steps:
                checkpoint(run, step, learner, {"reward_scaler": scaler.state_dict() if scaler else None})
                next_ckpt += checkpoint_every or total_steps
            bar.update(task, completed=min(step, total_steps),
                       info=f"return {metrics.get('episode_return', float('nan')):.1f}")
    envs.close()
    if logger is not None:
        logger.close()
    if run is not None:
        console.print(f"[green]{algo}[/] finished {step} steps in {run.path}")
    return learner
