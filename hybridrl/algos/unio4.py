"""Uni-O4's offline stage (Lei, Lin, Qiu, Zhang & Xu 2024, "Uni-O4: Unifying Online and Offline Deep Reinforcement
Learning with Multi-Step On-Policy Optimization", arXiv:2311.03351; official code Lei-Kun/Uni-O4).

The offline stage uses the same clipped on-policy objective as the online stage (PPO), so the policy it hands to
``hybridrl finetune --algo ppo`` was trained by the objective that fine-tunes it. One learner, two phases over the
offline loop's gradient steps:

1. ``step < bc_steps``: IQL critics on the dataset (expectile V, TD Q towards r + gamma V(s'), Polyak; Uni-O4's
   ``--is_iql True`` path) and an ensemble of K Gaussian policies cloned with the disagreement term
   (:func:`hybridrl.losses.offline_reg.ensemble_bc_loss`).
2. Then, critics frozen, multi-step offline improvement of every member i against its own *behaviour* copy
   ``pi_i^old`` (BPPO, abppo.py):

       s ~ D,  a ~ pi_i^old(.|s),  A = normalize_B(min_j Qbar_j(s, a) - V(s))
       L_i = -mean min(rho A, clip(rho, 1 - eps, 1 + eps) A) - c_H H(pi_i),   rho = pi_i(a|s) / pi_i^old(a|s)

   Every ``check_every`` steps an off-policy check scores each member, and ``pi_i^old <- pi_i`` only when the score
   beats member i's best so far (the "safe" part: a policy update is accepted only if OPE says it improves).

The deployed policy (:attr:`UniO4Learner.policy`) is the accepted ``pi_i^old`` with the best score. The check here is
the direct method with the learned critic, ``mean_{s in S} min_j Q_j(s, mu_i(s))`` over a fixed sample S of dataset
states: the paper's score (mean Q along dynamics-model rollouts from dataset states) with rollout length 0 — no
dynamics model is learned (docs/algorithms/unio4.md, deviations).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np
import torch

from hybridrl.algos import check_config
from hybridrl.algos._td3 import continuous_dims
from hybridrl.algos.iql import iql_critic_step
from hybridrl.data.batches import Transitions
from hybridrl.errors import ConfigError
from hybridrl.losses import ppo_clip_loss
from hybridrl.losses.offline_reg import ensemble_bc_loss
from hybridrl.nn import GaussianPolicy, Policy, ValueNet, make_policy
from hybridrl.nn.critics import TargetNetwork, TwinQ

if TYPE_CHECKING:
    from hybridrl.data.dataset import Dataset


@dataclass(frozen=True)
class UniO4Config:
    """Uni-O4 offline-stage hyperparameters (official ``main.py`` defaults where they fit this machine).

    Attributes:
        n_policies: ensemble size K (>= 1; official 4).
        bc_steps: gradient steps of phase 1 (critics + ensemble BC); the rest of the loop's steps are BPPO.
        bc_lr, bc_alpha: Adam rate of the ensemble BC (official 1e-4) and weight of the disagreement term (0.1).
        bppo_lr, clip_ratio, entropy_coef: Adam rate (1e-4), clip epsilon (0.25) and entropy weight (0) of BPPO.
        check_every: BPPO steps between off-policy checks (official ``eval_step`` 100).
        check_states: dataset states scored by the check (fixed at :meth:`UniO4Learner.prepare`).
        batch_size: transitions per gradient step (official 512).
        hidden: widths of the policies, critics and value net. log_std_init: initial log-std of the members.
        critic_lr, value_lr, gamma, tau, expectile, reward_scale: the IQL critics (as :class:`IQLConfig`;
            official expectile ``omega`` 0.7). reward_scale None: IQL's rule 1000 / (max - min episode return).
        max_grad_norm: gradient-norm clip of every update (official 0.5 for BPPO); per member for the ensemble.
    """

    n_policies: int = 4
    bc_steps: int = 100_000
    bc_lr: float = 1e-4
    bc_alpha: float = 0.1
    bppo_lr: float = 1e-4
    clip_ratio: float = 0.25
    entropy_coef: float = 0.0
    check_every: int = 100
    check_states: int = 2048
    batch_size: int = 512
    hidden: tuple[int, ...] = (256, 256)
    log_std_init: float = 0.0
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    expectile: float = 0.7
    reward_scale: float | None = None
    max_grad_norm: float | None = 0.5

    def __post_init__(self) -> None:
        check_config(self, n_policies=(1, 64), bc_steps=(0, None), bc_lr=(1e-12, None), bc_alpha=(0.0, None),
                     bppo_lr=(1e-12, None), clip_ratio=(0.0, 1.0), entropy_coef=(0.0, None), check_every=(1, None),
                     check_states=(1, None), batch_size=(1, None), critic_lr=(1e-12, None), value_lr=(1e-12, None),
                     gamma=(0.0, 0.9999), tau=(1e-6, 1.0), expectile=(1e-3, 0.999), reward_scale=(1e-12, None),
                     max_grad_norm=(1e-12, None))


class UniO4Learner:
    """Uni-O4's offline stage on Box actions (module docstring). Call :meth:`prepare` once on a fresh run.

    ``members``/``behaviors``: the K trained policies and their accepted copies ``pi_i^old``; ``best_score [K]``:
    each member's best check score (-inf before the first check); ``policy``: the deployed policy (the accepted copy
    with the best score). ``check_obs``: the check's states, fixed by :meth:`prepare` (or the first batch's).
    """

    def __init__(self, config: UniO4Config, observation_space: gym.Space, action_space: gym.Space, seed: int = 0,
                 policy: Policy | None = None):
        if policy is not None:
            raise ConfigError("unio4 trains its own ensemble; it does not start from a given policy")
        obs_dim, act_dim = continuous_dims(observation_space, action_space, "unio4")
        torch.manual_seed(seed)
        self.config = cfg = config
        members = [make_policy(observation_space, action_space, cfg.hidden, "relu", tanh_mean=True,
                               log_std_init=cfg.log_std_init) for _ in range(cfg.n_policies)]
        self.obs_norm = members[0].obs_norm
        for m in members[1:]:
            m.obs_norm = self.obs_norm  # one set of dataset statistics for every network
        self.members = torch.nn.ModuleList(members)
        self.behaviors = copy.deepcopy(self.members)
        for b in self.behaviors:
            b.obs_norm = self.obs_norm
            b.requires_grad_(False)
        critic = (obs_dim, act_dim, False, cfg.hidden, "relu")
        self.critic = TwinQ(*critic, obs_norm=self.obs_norm)
        self.critic_target = TargetNetwork(TwinQ(*critic, obs_norm=self.obs_norm), self.critic)
        self.value = ValueNet(obs_dim, cfg.hidden, "relu", obs_norm=self.obs_norm)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=cfg.value_lr)
        self.bc_opt = torch.optim.Adam(self.members.parameters(), lr=cfg.bc_lr)
        self.bppo_opt = torch.optim.Adam(self.members.parameters(), lr=cfg.bppo_lr)
        self.reward_scale: float | None = cfg.reward_scale
        self.check_obs = torch.zeros(0, obs_dim)
        self.best_score = torch.full((cfg.n_policies,), -torch.inf)
        self.steps = 0
        self.policy: GaussianPolicy = self.behaviors[0]
        """The deployed policy: the accepted ``pi_i^old`` with the best check score (member 0 before any check)."""

    def _deploy(self) -> None:
        finite = torch.isfinite(self.best_score)
        self.policy = self.behaviors[int(torch.argmax(self.best_score)) if finite.any() else 0]

    def prepare(self, dataset: Dataset) -> None:
        """Fix the reward scale (IQL's rule when ``config.reward_scale`` is None) and the check's dataset states
        (``check_states`` drawn without replacement with a generator seeded from torch's RNG)."""
        if self.reward_scale is None:
            returns = dataset.episode_returns()
            spread = float(returns.max() - returns.min())
            self.reward_scale = 1000.0 / spread if spread > 0 else 1.0
        obs = dataset.transitions().obs
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))
        idx = rng.choice(len(obs), size=min(self.config.check_states, len(obs)), replace=False)
        self.check_obs = obs[torch.from_numpy(np.sort(idx))].clone()

    @torch.no_grad()
    def check_scores(self) -> torch.Tensor:
        """Off-policy check of every member: ``mean_{s in S} min_j Q_j(s, mu_i(s))`` ``[K]`` (critic's reward units,
        scaled by ``reward_scale``)."""
        return torch.stack([self.critic.min(self.check_obs, m.mode(self.check_obs)).mean() for m in self.members])

    def _accept(self) -> dict[str, float]:
        scores = self.check_scores()
        better = scores > self.best_score
        for i in torch.nonzero(better).flatten().tolist():
            self.behaviors[i].load_state_dict(self.members[i].state_dict())
        self.best_score = torch.where(better, scores, self.best_score)
        self._deploy()
        return {"check_score_mean": float(scores.mean()), "accepted": float(better.float().mean()),
                "best_score": float(self.best_score.max())}

    def _clip_members(self) -> None:
        if self.config.max_grad_norm is not None:
            for m in self.members:
                torch.nn.utils.clip_grad_norm_(list(m.parameters()), self.config.max_grad_norm)

    def update(self, batch: Transitions) -> dict[str, float]:
        """Phase 1 (critics + ensemble BC) or phase 2 (BPPO on every member), by the step count (module docstring).

        Args:
            batch: ``B`` dataset transitions (``action [B, A]`` float32).
        Returns:
            phase 1: IQL's critic metrics, ``bc_loss``, ``disagreement``; phase 2: ``policy_loss``, ``approx_kl``,
            ``clip_fraction``, ``entropy``, and at checks ``check_score_mean``, ``accepted`` (fraction of members
            whose update was accepted), ``best_score``; both: ``phase`` (1 or 2).
        Raises:
            ConfigError: before :meth:`prepare` when ``config.reward_scale`` is None.
        Source: Lei et al. (2024) arXiv:2311.03351, Algorithm 1 and eqs. 4-6 (offline multi-step optimisation).
        """
        cfg = self.config
        if self.reward_scale is None:
            raise ConfigError("unio4: call prepare(dataset) before update, or set reward_scale (1.0: unscaled)")
        if len(self.check_obs) == 0:  # used without prepare(): the check scores the first batch's states
            self.check_obs = batch.obs[: cfg.check_states].clone()
        self.steps += 1
        if self.steps <= cfg.bc_steps:
            metrics = iql_critic_step(self, batch)
            logp = torch.stack([m.log_prob(batch.obs, batch.action) for m in self.members])
            loss, bm = ensemble_bc_loss(logp, cfg.bc_alpha)
            self.bc_opt.zero_grad(set_to_none=True)
            loss.backward()
            self._clip_members()
            self.bc_opt.step()
            metrics.update(bm, phase=1.0)
            if self.steps == cfg.bc_steps:  # the cloned members become the first accepted behaviours
                metrics.update(self._accept())
            return metrics
        total, sums = 0.0, {"policy_loss": 0.0, "approx_kl": 0.0, "clip_fraction": 0.0, "entropy": 0.0}
        for member, behavior in zip(self.members, self.behaviors):
            with torch.no_grad():
                action, old_logp = behavior.sample(batch.obs)
                adv = self.critic.min(batch.obs, action) - self.value(batch.obs)
                adv = (adv - adv.mean()) / (adv.std() + 1e-8) if len(adv) > 1 else adv
            logp, entropy = member.log_prob_entropy(batch.obs, action)
            loss, pm = ppo_clip_loss(logp, old_logp, adv, cfg.clip_ratio)
            total = total + loss - cfg.entropy_coef * entropy.mean()
            for k in ("policy_loss", "approx_kl", "clip_fraction"):
                sums[k] += pm[k] / cfg.n_policies
            sums["entropy"] += float(entropy.detach().mean()) / cfg.n_policies
        self.bppo_opt.zero_grad(set_to_none=True)
        total.backward()
        self._clip_members()
        self.bppo_opt.step()
        sums["phase"] = 2.0
        if (self.steps - cfg.bc_steps) % cfg.check_every == 0:
            sums.update(self._accept())
        return sums

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"members": self.members, "behaviors": self.behaviors, "critic": self.critic,
                "critic_target": self.critic_target, "value": self.value}

    def state_dict(self) -> dict:
        state = {k: m.state_dict() for k, m in self._modules().items()}
        state.update(critic_opt=self.critic_opt.state_dict(), value_opt=self.value_opt.state_dict(),
                     bc_opt=self.bc_opt.state_dict(), bppo_opt=self.bppo_opt.state_dict(),
                     reward_scale=self.reward_scale, check_obs=self.check_obs.clone(),
                     best_score=self.best_score.clone(), steps=self.steps)
        return state

    def load_state_dict(self, state: dict) -> None:
        for k, m in self._modules().items():
            m.load_state_dict(state[k])
        for k in ("critic_opt", "value_opt", "bc_opt", "bppo_opt"):
            getattr(self, k).load_state_dict(state[k])
        self.reward_scale = None if state["reward_scale"] is None else float(state["reward_scale"])
        self.check_obs = torch.as_tensor(state["check_obs"]).clone()
        self.best_score = torch.as_tensor(state["best_score"]).clone()
        self.steps = int(state["steps"])
        self._deploy()


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("unio4", UniO4Config, UniO4Learner, loop="offline", inputs="dataset", action_spaces=("continuous",),
         summary="Uni-O4 offline stage: ensemble BC + OPE-gated clipped policy improvement (Lei et al. 2024)",
         tiny=dict(hidden=(32, 32), n_policies=2, bc_steps=1, check_every=2, check_states=16, batch_size=16,
                   reward_scale=1.0))
