"""PRDC: Policy Regularization with Dataset Constraint (Ran, Li, Zhang, Chen & Yu 2023, ICML, arXiv:2306.06569).

TD3's critic (as in TD3+BC); the actor is pulled towards the action of the *nearest dataset point* in the joint
space ``(beta * norm(s), a)`` instead of the dataset action at its own state:

    (s^, a^) = argmin_{(s_i, a_i) in D} || (beta norm(s), mu(s)) - (beta norm(s_i), a_i) ||_2        (eq. 6)
    L_pi = -lambda mean Q_1(s, mu(s)) + mean (mu(s) - a^)^2,   lambda = alpha / sg(mean |Q_1(s, mu(s))|)    (eq. 7)

The search key is detached; the neighbour's action is a constant. Exact search with ``scipy.spatial.cKDTree``
(built once over the dataset by :meth:`PRDCLearner.attach_dataset`, queried with one thread per actor step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np
import torch

from hybridrl.algos import check_config
from hybridrl.algos._td3 import (
    actor_step,
    continuous_dims,
    critic_step,
    learner_state,
    load_learner_state,
    make_actor,
    make_twin_q,
    smoothed_target_action,
)
from hybridrl.data.batches import Transitions
from hybridrl.data.weighting import check_sampler
from hybridrl.errors import ConfigError
from hybridrl.nn.deterministic import DeterministicPolicy

if TYPE_CHECKING:
    from hybridrl.data.dataset import Dataset

NEIGHBOUR_SETS = ("dataset", "batch")


@dataclass(frozen=True)
class PRDCConfig:
    """PRDC hyperparameters (defaults: LAMDA-RL/PRDC README commands for hopper/walker2d).

    Attributes:
        actor_lr, critic_lr, batch_size, hidden, gamma, tau, policy_noise, noise_clip, policy_freq, exploration_std,
            max_grad_norm: as :class:`~hybridrl.algos.td3_bc.TD3BCConfig`.
        alpha: Q-versus-constraint trade-off (> 0; hopper/walker2d 2.5, halfcheetah 40).
        beta: state scale of the search space (>= 0; hopper/walker2d/halfcheetah 2.0; the code's default 1.0 is
            not a paper setting). beta = 0 searches actions only; beta -> inf approaches TD3+BC's own-state target.
        neighbour_set: "dataset" (the paper: every dataset point, needs the offline loop's
            :meth:`PRDCLearner.attach_dataset`) or "batch" (the current minibatch only: cheap, for unit tests).
        sampler, sampler_alpha: minibatch sampling (uniform / rw / aw, :mod:`hybridrl.data.weighting`).
    """

    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    batch_size: int = 256
    hidden: tuple[int, ...] = (256, 256)
    gamma: float = 0.99
    tau: float = 0.005
    alpha: float = 2.5
    beta: float = 2.0
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_freq: int = 2
    exploration_std: float = 0.1
    neighbour_set: str = "dataset"
    max_grad_norm: float | None = None
    sampler: str = "uniform"
    sampler_alpha: float = 0.1

    def __post_init__(self) -> None:
        check_config(self, actor_lr=(1e-12, None), critic_lr=(1e-12, None), batch_size=(1, None),
                     gamma=(0.0, 0.9999), tau=(1e-6, 1.0), alpha=(1e-12, None), beta=(0.0, None),
                     policy_noise=(0.0, None), noise_clip=(0.0, None), policy_freq=(1, None),
                     exploration_std=(1e-6, None), max_grad_norm=(1e-12, None))
        if self.neighbour_set not in NEIGHBOUR_SETS:
            raise ConfigError(f"PRDCConfig.neighbour_set={self.neighbour_set!r}; expected one of {NEIGHBOUR_SETS}")
        check_sampler(self)


def nearest_actions(tree, actions: np.ndarray, obs_norm: np.ndarray, pi_action: np.ndarray,
                    beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Actions ``[B, A]`` of the nearest points of ``tree`` (built over ``[beta * norm(s_i), a_i]``) to the keys
    ``[beta * obs_norm, pi_action]``, and the distances ``[B]`` (Euclidean). Source: PRDC eq. 6, ``prdc.py``."""
    key = np.concatenate([beta * obs_norm, pi_action], axis=1)
    dist, idx = tree.query(key, k=1, workers=1)
    return actions[idx], dist


class PRDCLearner:
    """PRDC on Box actions (deterministic actor, twin critics). Call :meth:`attach_dataset` before :meth:`update`
    when ``neighbour_set="dataset"`` (the offline loop does, also on resume: the tree is not saved)."""

    def __init__(self, config: PRDCConfig, observation_space: gym.Space, action_space: gym.Space, seed: int = 0,
                 policy: DeterministicPolicy | None = None):
        torch.manual_seed(seed)
        continuous_dims(observation_space, action_space, "prdc")
        self.config = config
        self.policy, self.policy_target = make_actor(observation_space, action_space, config.hidden,
                                                     config.exploration_std)
        if policy is not None:
            self.policy.load_state_dict(policy.state_dict())
            self.policy_target.update(1.0)
        self.critic, self.critic_target = make_twin_q(self.policy, config.hidden)
        self.actor_opt = torch.optim.Adam(self.policy.parameters(), lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.n_updates = 0
        self._tree = None
        self._tree_actions: np.ndarray | None = None
        self._actor_metrics = {"actor_loss": 0.0, "bc_loss": 0.0, "lambda": 0.0, "q_pi_mean": 0.0,
                               "neighbour_distance": 0.0}

    def attach_dataset(self, dataset: Dataset) -> None:
        """Build the KD-tree over ``[beta * norm(s_i), a_i]`` of every dataset step, with the policy's current
        observation normaliser (set it from the dataset first, as the offline loop does). O(N log N)."""
        from scipy.spatial import cKDTree

        norm = self.policy.obs_norm.numpy()
        points = np.concatenate([self.config.beta * norm(dataset.observations), dataset.actions], axis=1)
        self._tree = cKDTree(points)
        self._tree_actions = dataset.actions.astype(np.float32)

    def _targets(self, batch: Transitions, pi: torch.Tensor) -> tuple[torch.Tensor, float]:
        from scipy.spatial import cKDTree

        beta = self.config.beta
        with torch.no_grad():
            obs_n = self.policy.obs_norm(batch.obs).numpy()
        if self.config.neighbour_set == "batch":
            tree = cKDTree(np.concatenate([beta * obs_n, batch.action.numpy()], axis=1))
            actions = batch.action.numpy()
        elif self._tree is None:
            raise ConfigError("PRDC with neighbour_set='dataset' needs PRDCLearner.attach_dataset(dataset) before "
                              "update (the offline loop calls it); or set neighbour_set='batch'")
        else:
            tree, actions = self._tree, self._tree_actions
        target, dist = nearest_actions(tree, actions, obs_n, pi.detach().numpy(), beta)
        return torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)), float(dist.mean())

    def update(self, batch: Transitions) -> dict[str, float]:
        """One critic step; every ``policy_freq``-th call one actor step (eq. 7) and the Polyak targets.

        Returns ``q_loss``, ``q_mean`` and the latest actor step's ``actor_loss``, ``bc_loss`` (mean squared distance
        to the neighbour's action), ``lambda``, ``q_pi_mean``, ``neighbour_distance`` (mean joint-space distance).
        Raises ConfigError when ``neighbour_set="dataset"`` and no dataset is attached.
        Source: Ran et al. (2023) arXiv:2306.06569, eqs. 6-7; LAMDA-RL/PRDC ``prdc.py``.
        """
        cfg = self.config
        next_action = smoothed_target_action(self.policy_target, batch.next_obs, cfg.policy_noise, cfg.noise_clip)
        _, metrics = critic_step(self.critic, self.critic_target, self.critic_opt, batch, next_action, cfg.gamma,
                                 cfg.max_grad_norm)
        self.n_updates += 1
        if self.n_updates % cfg.policy_freq == 0:
            pi = self.policy.mode(batch.obs)
            target, dist = self._targets(batch, pi)
            self._actor_metrics = {**actor_step(self, batch.obs, pi, target), "neighbour_distance": dist}
        metrics.update(self._actor_metrics)
        return metrics

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy, "policy_target": self.policy_target, "critic": self.critic,
                "critic_target": self.critic_target}

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt}

    def state_dict(self) -> dict:
        return learner_state(self)

    def load_state_dict(self, state: dict) -> None:
        load_learner_state(self, state)


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("prdc", PRDCConfig, PRDCLearner, loop="offline", inputs="dataset", action_spaces=("continuous",),
         summary="policy regularisation with a dataset constraint, KD-tree nearest neighbour (Ran et al. 2023)",
         tiny=dict(hidden=(32, 32), policy_freq=1, neighbour_set="batch"))
