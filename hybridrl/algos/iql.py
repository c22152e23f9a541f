"""Implicit Q-Learning (Kostrikov, Nair & Levine 2021, arXiv:2110.06169).

Three losses per step on a dataset batch (s, a, r, s', terminated):

    L_V  = E[ L_2^tau( min_i Qbar_i(s,a) - V(s) ) ],   L_2^tau(u) = |tau - 1(u<0)| u^2       (eq. 5)
    L_Q  = E[ sum_i (Q_i(s,a) - r - gamma (1 - terminated) V(s'))^2 ]                        (eq. 6)
    L_pi = -E[ min(exp(beta (min_i Qbar_i(s,a) - V(s))), 100) log pi(a|s) ]                  (eq. 7, AWR)
    Qbar <- (1 - tau_p) Qbar + tau_p Q

Truncated transitions bootstrap from V(s'); only termination stops the bootstrap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import gymnasium as gym
import torch

from hybridrl.algos import check_config, gradient_step
from hybridrl.data.batches import Transitions
from hybridrl.data.weighting import check_sampler
from hybridrl.errors import ConfigError
from hybridrl.losses import awr_policy_loss, expectile_loss, td_loss
from hybridrl.nn import Policy, ValueNet, make_policy
from hybridrl.nn.critics import TargetNetwork, TwinQ

if TYPE_CHECKING:
    from hybridrl.data.dataset import Dataset


@dataclass(frozen=True)
class IQLConfig:
    """IQL hyperparameters (defaults: the authors' locomotion config).

    Attributes:
        actor_lr, critic_lr, value_lr: Adam learning rates (> 0) of the actor, the twin Q critics and V.
        batch_size: transitions per gradient step (used by the loop).
        hidden: hidden widths of actor, critics and value net.
        gamma: discount in [0, 1).
        tau: Polyak rate of the target critics in (0, 1].
        expectile: tau of the expectile value loss in (0, 1); 0.5 is SARSA-like, -> 1 approaches max Q.
        beta: inverse temperature of the advantage weights exp(beta A) (>= 0; 0 is behaviour cloning; eq. 7).
        max_weight: clip of exp(beta * A) (paper: 100).
        reward_scale: rewards are multiplied by this before the TD target (> 0). None (default): the authors'
            locomotion rule 1000 / (max - min episode return of the dataset), computed by
            :meth:`IQLLearner.prepare` (1.0 when all episodes have the same return); 1.0: unscaled rewards.
        max_grad_norm: global gradient-norm clip per optimiser (the two critics share one); None disables.
        sampler, sampler_alpha: minibatch sampling of the offline loop: "uniform", or trajectory weighting "rw"/"aw"
            with temperature sampler_alpha (Hong et al. 2023; :mod:`hybridrl.data.weighting`).

    ``temperature`` and ``normalize_reward`` were renamed to ``beta`` and ``reward_scale`` (``RENAMED_KEYS``: a
    config file or ``--set`` using an old key gets a ConfigError saying so).
    """

    RENAMED_KEYS: ClassVar[dict[str, str]] = {"temperature": "beta", "normalize_reward": "reward_scale"}

    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    batch_size: int = 256
    hidden: tuple[int, ...] = (256, 256)
    gamma: float = 0.99
    tau: float = 0.005
    expectile: float = 0.7
    beta: float = 3.0
    max_weight: float = 100.0
    reward_scale: float | None = None
    max_grad_norm: float | None = None
    sampler: str = "uniform"
    sampler_alpha: float = 0.1

    def __post_init__(self) -> None:
        check_config(self, actor_lr=(1e-12, None), critic_lr=(1e-12, None), value_lr=(1e-12, None),
                     batch_size=(1, None), gamma=(0.0, 0.9999), tau=(1e-6, 1.0), expectile=(1e-3, 0.999),
                     beta=(0.0, None), max_weight=(1e-6, None), reward_scale=(1e-12, None),
                     max_grad_norm=(1e-12, None))
        check_sampler(self)


class IQLLearner:
    """IQL learner (Discrete or Box actions). Call :meth:`prepare` with the training dataset once on a fresh run
    (it fixes the reward scale), then :meth:`update` per batch.

    ``reward_scale`` is the scale in use (None until :meth:`prepare` when ``config.reward_scale`` is None); it is
    saved in :meth:`state_dict`, so a resumed run keeps the scale of its first start.
    """

    def __init__(self, config: IQLConfig, observation_space: gym.Space, action_space: gym.Space, seed: int = 0,
                 policy: Policy | None = None):
        torch.manual_seed(seed)
        self.config = config
        discrete = isinstance(action_space, gym.spaces.Discrete)
        self.policy = policy or make_policy(
            observation_space, action_space, config.hidden, "relu",
            **({} if discrete else {"tanh_mean": True, "log_std_init": 0.0}),
        )
        obs_dim = observation_space.shape[0]
        act_dim = int(action_space.n) if discrete else action_space.shape[0]
        critic = (obs_dim, act_dim, discrete, config.hidden, "relu")
        self.critic = TwinQ(*critic, obs_norm=self.policy.obs_norm)
        self.critic_target = TargetNetwork(TwinQ(*critic, obs_norm=self.policy.obs_norm), self.critic)
        self.value = ValueNet(obs_dim, config.hidden, "relu", obs_norm=self.policy.obs_norm)
        self.reward_scale: float | None = config.reward_scale
        self.actor_opt = torch.optim.Adam(self.policy.parameters(), lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=config.value_lr)

    def prepare(self, dataset: Dataset) -> None:
        """Fix the reward scale from the training data (the offline loop calls this once on a fresh run).

        ``config.reward_scale`` None: ``1000 / (max_e R_e - min_e R_e)`` over the undiscounted episode returns
        ``R_e`` of ``dataset`` (1.0 when they are all equal), the authors' locomotion rule (Kostrikov et al. 2021,
        official ``train_offline.py``). A number: that number.
        """
        if self.config.reward_scale is not None:
            self.reward_scale = float(self.config.reward_scale)
            return
        returns = dataset.episode_returns()
        spread = float(returns.max() - returns.min())
        self.reward_scale = 1000.0 / spread if spread > 0 else 1.0

    def update(self, batch: Transitions) -> dict[str, float]:
        """One gradient step of V (eq. 5), then of the twin critics (eq. 6), then of the actor (eq. 7, advantages
        from the pre-update V); then the Polyak target critics.

        Args:
            batch: ``B`` dataset transitions: ``obs``/``next_obs [B, obs_dim]``, ``action [B, |A|]`` float32 (Box)
                or int64 ``[B]`` (Discrete), ``reward [B]`` (raw; multiplied by ``reward_scale`` here),
                ``terminated [B]`` bool (truncated steps bootstrap from V(s')).
        Returns:
            ``value_loss``, ``expectile_weight_mean`` (mean |tau - 1(u < 0)|), ``q_loss`` (sum of both critics'
            mean squared TD errors), ``q_mean`` (mean Q_1(s, a)), ``v_mean``, ``actor_loss``, ``weight_mean`` and
            ``weight_max`` (the clipped AWR weights).
        Raises:
            ConfigError: ``reward_scale`` is still None (:meth:`prepare` was not called).
        Source: Kostrikov, Nair & Levine (2021) arXiv:2110.06169, eqs. 5-7 and Algorithm 1.
        """
        cfg = self.config
        if self.reward_scale is None:
            raise ConfigError("IQLConfig.reward_scale=None is computed from the dataset: call "
                              "IQLLearner.prepare(dataset) before update, or set reward_scale (1.0: unscaled)")
        q_target = torch.min(*self.critic_target(batch.obs, batch.action))
        # Value: expectile regression towards the target critics (eq. 5).
        v = self.value(batch.obs)
        v_loss, metrics = expectile_loss(q_target - v, cfg.expectile)
        gradient_step(self.value_opt, v_loss, cfg.max_grad_norm)
        # Critics: TD towards r + gamma V(s'), bootstrapping through truncation (eq. 6).
        with torch.no_grad():
            not_done = (~batch.terminated).float()
            target = batch.reward * self.reward_scale + cfg.gamma * not_done * self.value(batch.next_obs)
        q1, q2 = self.critic(batch.obs, batch.action)
        q1_loss, m1 = td_loss(q1, target)
        q2_loss, _ = td_loss(q2, target)
        gradient_step(self.critic_opt, q1_loss + q2_loss, cfg.max_grad_norm)
        # Actor: advantage-weighted regression (eq. 7), advantages from the pre-update V.
        advantage = q_target - v.detach()
        logp = self.policy.log_prob(batch.obs, batch.action)
        a_loss, ma = awr_policy_loss(logp, advantage, cfg.beta, cfg.max_weight)
        gradient_step(self.actor_opt, a_loss, cfg.max_grad_norm)
        self.critic_target.update(cfg.tau)
        metrics.update(q_loss=float(q1_loss.detach() + q2_loss.detach()), q_mean=m1["q_mean"],
                       v_mean=float(v.detach().mean()), **ma)
        return metrics

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy, "critic": self.critic, "critic_target": self.critic_target,
                "value": self.value}

    def state_dict(self) -> dict:
        state = {k: m.state_dict() for k, m in self._modules().items()}
        state.update(actor_opt=self.actor_opt.state_dict(), critic_opt=self.critic_opt.state_dict(),
                     value_opt=self.value_opt.state_dict(), reward_scale=self.reward_scale)
        return state

    def load_state_dict(self, state: dict) -> None:
        for k, m in self._modules().items():
            m.load_state_dict(state[k])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.value_opt.load_state_dict(state["value_opt"])
        scale = state["reward_scale"]
        self.reward_scale = None if scale is None else float(scale)



def iql_critic_step(learner: IQLLearner, batch: Transitions) -> dict[str, float]:
    """IQL's value (eq. 5) and critic (eq. 6) gradient steps and the Polyak targets, without the actor (eq. 7).

    For learners that keep IQL's critics and replace its actor (FamO2O, Uni-O4, online IQL fine-tuning):
    ``learner`` needs IQL's ``config`` fields (expectile, gamma, tau, max_grad_norm), ``critic``,
    ``critic_target``, ``value``, their optimisers and a fixed ``reward_scale``. Returns ``value_loss``,
    ``expectile_weight_mean``, ``q_loss``, ``q_mean``.
    """
    cfg = learner.config
    q_target = torch.min(*learner.critic_target(batch.obs, batch.action))
    v_loss, metrics = expectile_loss(q_target - learner.value(batch.obs), cfg.expectile)
    gradient_step(learner.value_opt, v_loss, cfg.max_grad_norm)
    with torch.no_grad():
        target = (batch.reward * learner.reward_scale
                  + cfg.gamma * (~batch.terminated).float() * learner.value(batch.next_obs))
    q1, q2 = learner.critic(batch.obs, batch.action)
    q1_loss, m1 = td_loss(q1, target)
    q2_loss, _ = td_loss(q2, target)
    gradient_step(learner.critic_opt, q1_loss + q2_loss, cfg.max_grad_norm)
    learner.critic_target.update(cfg.tau)
    metrics.update(q_loss=float(q1_loss.detach() + q2_loss.detach()), q_mean=m1["q_mean"])
    return metrics


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("iql", IQLConfig, IQLLearner, loop="offline", inputs="dataset",
         summary="implicit Q-learning (Kostrikov et al. 2022)", tiny=dict(hidden=(32, 32), reward_scale=1.0))
