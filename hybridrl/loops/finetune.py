"""PPO fine-tuning of an offline policy (Uni-O4's online stage, arXiv 2311.03351; DPPO, arXiv 2409.00588).

What makes fine-tuning keep the offline policy's return instead of losing it (measured on the demo, see
``docs/algorithms/finetune.md``):

1. the critic is fitted before the actor moves: regression on the dataset's Monte-Carlo returns-to-go
   (:func:`pretrain_critic`), then critic-only PPO updates (:class:`FinetunePPOLearner`) until the critic explains
   at least ``critic_warmup_ev`` of the variance of a fresh rollout's returns (at most ``critic_warmup_max`` rollouts);
2. one fixed reward scale (``1 / std`` of the dataset's returns-to-go) for critic pre-training and fine-tuning, no
   running scaler; the policy's observation statistics (the dataset's, set by the offline loop) stay frozen;
3. a small trust region and separate learning rates (actor 2e-5, critic 2e-4, clip 0.05, ``target_kl``);
4. the offline policy's std is kept (raised only where it is below ``min_std``); optionally a decaying KL to the
   offline policy (:class:`ReferenceKL`) or BC on the dataset (:class:`OfflineBC`), both auxiliary losses supplied
   here, never branches of :class:`PPOLearner`.

:func:`finetune_ppo` is the ``ppo`` entry of :data:`hybridrl.loops.finetune_run.FINETUNE_METHODS`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from hybridrl.algos import gradient_step
from hybridrl.algos.actor_critic import Minibatch, rollout_advantages
from hybridrl.algos.ppo import PPOConfig, PPOLearner
from hybridrl.data.batches import Segments, Transitions
from hybridrl.data.dataset import Dataset
from hybridrl.errors import ConfigError
from hybridrl.loops.common import console, run_record
from hybridrl.loops.on_policy import train_on_policy
from hybridrl.losses import bc_loss, kl_to_reference_loss, value_loss
from hybridrl.nn import GaussianPolicy, Policy, ValueNet
from hybridrl.ops import explained_variance
from hybridrl.runs import RunDir, apply_overrides


@dataclass(frozen=True)
class FinetuneConfig(PPOConfig):
    """PPO's fields with fine-tuning defaults, plus the fine-tuning loop's own settings.

    Changed PPO defaults (Uni-O4 ``ppo_finetune/main.py``; DPPO): ``lr`` 2e-5 (actor), ``critic_lr`` 2e-4,
    ``clip_ratio`` 0.05, ``value_clip`` None (the critic must move to the new policy's values), ``target_kl`` 0.02,
    ``minibatch_size`` 128, ``normalize_reward`` False (a fixed scale instead), critic 256x256.

    Attributes:
        bc_coef: weight of the behaviour-cloning term on dataset batches (>= 0; 0 = off).
        bc_decay: multiply ``bc_coef`` by this factor after every update (in (0, 1]).
        kl_coef: weight of mean_s KL(pi || pi_start), a penalty towards the starting policy (>= 0; 0 = off).
        kl_decay: multiply ``kl_coef`` by this factor after every update (in (0, 1]).
        reward_scale: fixed reward multiplier (> 0); None = 1 / std of the dataset's discounted returns-to-go
            (1.0 without a dataset).
        critic_pretrain_steps: gradient steps of Monte-Carlo return regression before any rollout (>= 0).
        critic_pretrain_batch: transitions per pre-training step.
        critic_warmup_ev: explained variance of a rollout's returns at which the actor starts to move.
        critic_warmup_max: at most this many critic-only rollouts (>= 0; 0 = none).
        min_std: floor on a Gaussian policy's std at the start (the offline std is kept where it is larger;
            0 = keep it everywhere).
    """

    lr: float = 2e-5
    critic_lr: float | None = 2e-4
    clip_ratio: float = 0.05
    value_clip: float | None = None
    target_kl: float | None = 0.02
    minibatch_size: int = 128
    hidden: tuple[int, ...] = (256, 256)
    normalize_reward: bool = False
    bc_coef: float = 0.0
    bc_decay: float = 1.0
    kl_coef: float = 0.0
    kl_decay: float = 1.0
    reward_scale: float | None = None
    critic_pretrain_steps: int = 1000
    critic_pretrain_batch: int = 256
    critic_warmup_ev: float = 0.5
    critic_warmup_max: int = 5
    min_std: float = 0.1

    def __post_init__(self) -> None:
        from hybridrl.algos import check_config

        super().__post_init__()
        check_config(self, bc_coef=(0.0, None), bc_decay=(1e-6, 1.0), kl_coef=(0.0, None), kl_decay=(1e-6, 1.0),
                     reward_scale=(1e-12, None), critic_pretrain_steps=(0, None), critic_pretrain_batch=(1, None),
                     critic_warmup_ev=(None, 1.0), critic_warmup_max=(0, None), min_std=(0.0, None))
        if self.normalize_reward:
            raise ConfigError("FinetuneConfig.normalize_reward=True; expected False: fine-tuning keeps one fixed "
                              "reward scale (reward_scale) for critic pre-training and fine-tuning")


class OfflineBC:
    """Auxiliary BC term ``coef * -mean log pi(a|s)`` on offline transitions, ``coef`` decayed after every update.

    Per PPO minibatch of ``M`` steps it draws ``M`` offline transitions uniformly with replacement from the
    learner's generator. ``coef`` is loop state (``state_dict``), so a resumed run continues the schedule.
    Metrics: ``bc_loss`` (unweighted).
    """

    def __init__(self, offline: Transitions, coef: float, decay: float = 1.0):
        self.offline, self.coef, self.decay = offline, float(coef), float(decay)

    def __call__(self, learner: PPOLearner, mb: Minibatch) -> tuple[torch.Tensor, dict[str, float]]:
        if self.coef <= 0:
            return torch.zeros(()), {}
        idx = torch.randint(len(self.offline), (len(mb["obs"]),), generator=learner.generator)
        loss, metrics = bc_loss(learner.policy.log_prob(self.offline.obs[idx], self.offline.action[idx]))
        return self.coef * loss, metrics

    def end_update(self) -> None:
        self.coef *= self.decay

    def state_dict(self) -> dict:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict) -> None:
        self.coef = float(state["coef"])


class ReferenceKL:
    """Auxiliary ``coef * mean_s KL(pi(.|s) || pi_ref(.|s))`` on the minibatch states (pi_ref frozen), ``coef``
    multiplied by ``decay`` after every update (loop state, saved in checkpoints). Metrics: ``kl_ref``."""

    def __init__(self, reference: Policy, coef: float, decay: float = 1.0):
        self.reference, self.coef = copy.deepcopy(reference).requires_grad_(False), float(coef)
        self.decay = float(decay)

    def __call__(self, learner: PPOLearner, mb: Minibatch) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            ref = self.reference.distribution(mb["obs"])
        loss, metrics = kl_to_reference_loss(learner.policy.distribution(mb["obs"]), ref)
        return self.coef * loss, metrics

    def end_update(self) -> None:
        self.coef *= self.decay

    def state_dict(self) -> dict:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict) -> None:
        self.coef = float(state["coef"])




def dataset_reward_scale(dataset: Dataset, gamma: float) -> float:
    """``1 / std`` of the dataset's discounted returns-to-go ``G_t`` (:meth:`Dataset.mc_returns`), so that scaled
    value targets have unit spread; 1.0 when the returns have no spread. The fixed counterpart of PPO's running
    reward scaler (CleanRL ``NormalizeReward``), computed once from the offline data."""
    std = float(np.std(dataset.mc_returns(gamma)))
    return 1.0 / std if std > 1e-8 else 1.0


def critic_pretrain_targets(dataset: Dataset, gamma: float, reward_scale: float) -> torch.Tensor:
    """``[N]`` float32 regression targets ``reward_scale * G_t``, ``G_t = sum_k gamma^k r_{t+k}`` to the end of
    each episode (not bootstrapped at truncations): the Monte-Carlo value of the behaviour policy
    (Uni-O4 ``critic.py``'s value pre-training on dataset returns)."""
    return torch.as_tensor(dataset.mc_returns(gamma) * reward_scale, dtype=torch.float32)


def pretrain_critic(critic: ValueNet, obs: torch.Tensor, targets: torch.Tensor, steps: int, batch_size: int,
                    lr: float, generator: torch.Generator, max_grad_norm: float | None = 0.5) -> dict[str, float]:
    """``steps`` Adam steps of ``0.5 * mean((V(s) - y)^2)`` on minibatches of ``(obs [N, D], targets [N])`` drawn
    uniformly with replacement from ``generator``. Returns ``pretrain_value_loss`` (last 10% of the steps) and
    ``pretrain_explained_variance`` (on all ``N`` rows after training)."""
    opt = torch.optim.Adam(critic.parameters(), lr=lr, eps=1e-5)
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(obs), (min(batch_size, len(obs)),), generator=generator)
        loss, m = value_loss(critic(obs[idx]), targets[idx])
        gradient_step(opt, loss, max_grad_norm)
        losses.append(m["value_loss"])
    with torch.no_grad():
        ev = float(explained_variance(critic(obs), targets))
    tail = losses[-max(1, len(losses) // 10):] if losses else [float("nan")]
    return {"pretrain_value_loss": float(np.mean(tail)), "pretrain_explained_variance": ev}


class FinetunePPOLearner(PPOLearner):
    """PPO whose actor stays fixed until the critic explains the returns: critic-only updates first.

    At each update, while in warm-up, the explained variance of the fresh rollout's GAE returns by the current
    critic is measured *before* fitting; at ``>= critic_warmup_ev`` (or after ``critic_warmup_max`` critic-only
    updates) the actor starts to move in that same update. During warm-up the policy's parameters get no gradient
    (no Adam state) and the auxiliary losses are not applied. Metrics add ``critic_warmup`` (1 while the actor was
    fixed) and ``warmup_explained_variance``. Not registered: :func:`finetune` builds it.
    """

    def __init__(self, config: FinetuneConfig, observation_space, action_space, seed: int = 0,
                 policy: Policy | None = None):
        super().__init__(config, observation_space, action_space, seed=seed, policy=policy)
        self.warmup_updates, self.actor_frozen = 0, config.critic_warmup_max > 0

    def update(self, batch: Segments, aux_losses=()) -> dict[str, float]:
        cfg, extra = self.config, {}
        if self.actor_frozen:
            _, ret, v = rollout_advantages(self.critic, batch, cfg.gamma, cfg.gae_lambda)
            ev = float(explained_variance(v, ret))
            extra["warmup_explained_variance"] = ev
            self.actor_frozen = ev < cfg.critic_warmup_ev and self.warmup_updates < cfg.critic_warmup_max
        if not self.actor_frozen:
            return {**super().update(batch, aux_losses), **extra, "critic_warmup": 0.0}
        self.warmup_updates += 1
        self.policy.requires_grad_(False)
        try:
            out = super().update(batch, ())
        finally:
            self.policy.requires_grad_(True)
        return {**out, **extra, "critic_warmup": 1.0}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "warmup": {"updates": self.warmup_updates, "frozen": self.actor_frozen}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        w = state.get("warmup", {})
        self.warmup_updates, self.actor_frozen = int(w.get("updates", 0)), bool(w.get("frozen", False))


def finetune(
    env_id: str,
    dataset: Dataset | None,
    policy: Policy,
    total_steps: int,
    config: FinetuneConfig | None = None,
    run: RunDir | None = None,
    seed: int = 0,
    mix_offline: bool | None = None,
    resume: bool = False,
    checkpoint_every: int | None = None,
    eval_every: int | None = None,
    progress: bool = True,
    record: dict | None = None,
    callback: Callable | None = None,
) -> FinetunePPOLearner:
    """Fine-tune an offline policy online with PPO, starting from its weights (the procedure of the module doc).

    Args:
        env_id, total_steps, run, seed, resume, checkpoint_every, eval_every, progress, record, callback: as
            :func:`~hybridrl.loops.on_policy.train_on_policy` (``callback(step, learner)`` after every update).
        dataset: the offline data: critic pre-training targets, the reward scale and the BC term (None: no
            pre-training, ``reward_scale`` or 1.0).
        policy: the starting policy (copied; the caller's is left as it was). Its observation statistics are
            used frozen (the offline loop sets them from the dataset).
        config: a :class:`FinetuneConfig` (default: its defaults).
        mix_offline: kept for old callers: True requires ``bc_coef > 0``; the BC term is on whenever
            ``bc_coef > 0`` and a dataset is given.
    Returns:
        the learner (``learner.policy`` is the fine-tuned policy).
    Raises:
        ConfigError: BC without a dataset or with ``bc_coef == 0`` while ``mix_offline``; a config that is not a
        :class:`FinetuneConfig`; and the errors of ``train_on_policy``.
    """
    config = config or FinetuneConfig()
    if not isinstance(config, FinetuneConfig):
        raise ConfigError(f"finetune needs a FinetuneConfig, got {type(config).__name__}")
    if mix_offline and (dataset is None or config.bc_coef <= 0):
        raise ConfigError("finetune with mix_offline needs a dataset and bc_coef > 0 (e.g. --set bc_coef=0.1)")
    if config.bc_coef > 0 and dataset is None:
        raise ConfigError(f"bc_coef={config.bc_coef} adds BC on the dataset; pass a dataset or set bc_coef=0")
    policy = copy.deepcopy(policy)
    if isinstance(policy, GaussianPolicy) and config.min_std > 0:
        with torch.no_grad():
            policy.log_std.clamp_(min=math.log(config.min_std))
    scale = config.reward_scale or (dataset_reward_scale(dataset, config.gamma) if dataset is not None else 1.0)
    from hybridrl.envs import make_env

    env = make_env(env_id)
    learner = FinetunePPOLearner(config, env.observation_space, env.action_space, seed=seed, policy=policy)
    env.close()
    pre = {}
    if dataset is not None and config.critic_pretrain_steps > 0 and not resume:
        obs = torch.as_tensor(dataset.observations, dtype=torch.float32)
        pre = pretrain_critic(learner.critic, obs, critic_pretrain_targets(dataset, config.gamma, scale),
                              config.critic_pretrain_steps, config.critic_pretrain_batch,
                              config.critic_lr or config.lr, torch.Generator().manual_seed(seed),
                              config.max_grad_norm)
        console.print(f"critic pre-trained on the dataset's Monte-Carlo returns (reward scale {scale:.4g}): "
                      f"explained variance {pre['pretrain_explained_variance']:.2f}")
    aux = []
    if config.bc_coef > 0 and dataset is not None:
        aux.append(OfflineBC(dataset.transitions(), config.bc_coef, config.bc_decay))
    if config.kl_coef > 0:
        aux.append(ReferenceKL(policy, config.kl_coef, config.kl_decay))
    record = record or run_record(algo="ppo-finetune", env_id=env_id, steps=total_steps, seed=seed, config=config)
    record = {**record, "reward_scale": scale, **pre}
    return train_on_policy(
        env_id, config, total_steps, run=run, seed=seed, policy=learner.policy, aux_losses=aux, freeze_obs_norm=True,
        resume=resume, checkpoint_every=checkpoint_every, eval_every=eval_every, progress=progress, record=record,
        learner=learner, reward_scale=scale, callback=callback,
    )


def finetune_ppo(policy: Policy, *, env_id: str, dataset: Dataset | None, steps: int, run: RunDir | None, seed: int,
                 overrides: list[str], callback: Callable[[int, Policy], None] | None, progress: bool,
                 resume: bool = False) -> Policy:
    """The ``ppo`` fine-tuning method (signature of :data:`~hybridrl.loops.finetune_run.FINETUNE_METHODS`).

    ``overrides`` are ``key=value`` fields of :class:`FinetuneConfig`; ``callback(env_step, policy)`` is called
    after every PPO update (every ``num_envs * n_steps`` environment steps; the policy does not change between
    updates). Returns the fine-tuned policy. Raises ConfigError for a bad override.
    """
    config = apply_overrides(FinetuneConfig(), overrides or [])
    cb = None if callback is None else (lambda step, lrn: callback(step, lrn.policy))
    learner = finetune(env_id, dataset, policy, steps, config=config, run=run, seed=seed, resume=resume,
                       progress=progress, callback=cb,
                       record=run_record(algo="ppo-finetune", env_id=env_id, steps=steps, seed=seed, config=config))
    return learner.policy

