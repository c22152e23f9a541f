"""Offline-to-online fine-tuning: offline pre-training (or a given offline policy), then online PPO.

The fine-tuning loop owns its auxiliary losses (:class:`OfflineBC`, :class:`ReferenceKL`); PPO only adds them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from hybridrl.algos.actor_critic import Minibatch
from hybridrl.algos.ppo import PPOConfig, PPOLearner
from hybridrl.data.batches import Transitions
from hybridrl.data.dataset import Dataset
from hybridrl.errors import ConfigError
from hybridrl.loops.on_policy import train_on_policy
from hybridrl.losses import bc_loss, kl_to_reference_loss
from hybridrl.nn import GaussianPolicy, Policy
from hybridrl.runs import RunDir


@dataclass(frozen=True)
class FinetuneConfig(PPOConfig):
    """PPO's fields plus the fine-tuning loop's auxiliary-loss settings.

    Attributes:
        bc_coef: weight of the behaviour-cloning term on offline batches (>= 0; used with ``mix_offline``).
        bc_decay: multiply ``bc_coef`` by this factor after every update (in (0, 1]).
        kl_coef: weight of mean_s KL(pi || pi_start), a penalty towards the starting policy (>= 0; 0 = off;
            categorical and diagonal-Gaussian policies).
    """

    bc_coef: float = 0.0
    bc_decay: float = 1.0
    kl_coef: float = 0.0

    def __post_init__(self) -> None:
        from hybridrl.algos import check_config

        super().__post_init__()
        check_config(self, bc_coef=(0.0, None), bc_decay=(1e-6, 1.0), kl_coef=(0.0, None))


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
    """Auxiliary ``coef * mean_s KL(pi(.|s) || pi_ref(.|s))`` on the minibatch states (pi_ref frozen)."""

    def __init__(self, reference: Policy, coef: float):
        self.reference, self.coef = copy.deepcopy(reference).requires_grad_(False), float(coef)

    def __call__(self, learner: PPOLearner, mb: Minibatch) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            ref = self.reference.distribution(mb["obs"])
        loss, metrics = kl_to_reference_loss(learner.policy.distribution(mb["obs"]), ref)
        return self.coef * loss, metrics


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
    ``config.bc_coef`` (decayed by ``config.bc_decay`` per update, :class:`OfflineBC`) so that early online updates
    do not forget the offline behaviour; ``config.kl_coef > 0`` adds a KL penalty towards the starting policy
    (:class:`ReferenceKL`). A Gaussian policy's log-std is raised to at least ``config.log_std_init``
    when it collapsed offline (IQL/BC often end with tiny std, which stalls on-policy exploration).
    ``config``: a :class:`FinetuneConfig` (a plain :class:`PPOConfig` means no auxiliary terms).

    Raises:
        ConfigError: ``mix_offline`` without a dataset or with ``bc_coef == 0``.
    """
    config = config or FinetuneConfig(lr=1e-4, normalize_reward=True)
    bc_coef, kl_coef = getattr(config, "bc_coef", 0.0), getattr(config, "kl_coef", 0.0)
    if mix_offline and (dataset is None or bc_coef <= 0):
        raise ConfigError("finetune with mix_offline needs a dataset and bc_coef > 0 (e.g. --set bc_coef=0.1)")
    policy = copy.deepcopy(policy)  # the caller's policy is left as it was
    if isinstance(policy, GaussianPolicy):
        with torch.no_grad():
            policy.log_std.clamp_(min=config.log_std_init)
    aux = []
    if mix_offline and dataset is not None:
        aux.append(OfflineBC(dataset.transitions(), bc_coef, config.bc_decay))
    if kl_coef > 0:
        aux.append(ReferenceKL(policy, kl_coef))
    return train_on_policy(
        env_id, config, total_steps, run=run, seed=seed, policy=policy, aux_losses=aux, freeze_obs_norm=True,
        resume=resume, checkpoint_every=checkpoint_every, eval_every=eval_every, progress=progress, record=record,
    )
