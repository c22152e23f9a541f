"""Offline-to-online fine-tuning: offline pre-training (or a given offline policy), then online PPO."""

from __future__ import annotations

import copy

import torch

from hybridrl.algos.ppo import PPOConfig, PPOLearner
from hybridrl.data.dataset import Dataset
from hybridrl.errors import ConfigError
from hybridrl.loops.on_policy import train_on_policy
from hybridrl.nn import GaussianPolicy, Policy
from hybridrl.runs import RunDir


def finetune(
    env_id: str,
    dataset: Dataset | None,
    policy: Policy,
    total_steps: int,
    config: PPOConfig | None = None,
    run: RunDir | None = None,
    seed: int = 0,
    mix_offline: bool = False,
    resume: bool = False,
    checkpoint_every: int | None = None,
    eval_every: int | None = None,
    progress: bool = True,
    record: dict | None = None,
) -> PPOLearner:
    """Fine-tune an offline policy online with PPO, starting from its weights.

    The policy keeps the observation statistics it was trained with (frozen), PPO's critic starts
    fresh, and with ``mix_offline`` the offline dataset enters as a behaviour-cloning term of weight
    ``config.bc_coef`` (decayed by ``config.bc_decay`` per update) so that early online updates do not
    forget the offline behaviour. A Gaussian policy's log-std is raised to at least ``config.log_std_init``
    when it collapsed offline (IQL/BC often end with tiny std, which stalls on-policy exploration).

    Raises:
        ConfigError: ``mix_offline`` without a dataset or with ``bc_coef == 0``.
    """
    config = config or PPOConfig(lr=1e-4, normalize_reward=True)
    if mix_offline and (dataset is None or config.bc_coef <= 0):
        raise ConfigError("finetune with mix_offline needs a dataset and PPO bc_coef > 0 (e.g. --set bc_coef=0.1)")
    policy = copy.deepcopy(policy)  # the caller's policy is left as it was
    if isinstance(policy, GaussianPolicy):
        with torch.no_grad():
            policy.log_std.clamp_(min=config.log_std_init)
    offline = dataset.transitions() if mix_offline and dataset is not None else None
    return train_on_policy(
        env_id, config, total_steps, run=run, seed=seed, policy=policy, offline=offline, freeze_obs_norm=True,
        resume=resume, checkpoint_every=checkpoint_every, eval_every=eval_every, progress=progress, record=record,
    )
