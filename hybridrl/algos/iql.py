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

import gymnasium as gym
import torch

from hybridrl.algos import check_config, gradient_step
from hybridrl.data.batches import Transitions
from hybridrl.losses import awr_policy_loss, expectile_loss, td_loss
from hybridrl.nn import Policy, QNet, ValueNet, make_policy
from hybridrl.ops import polyak_update


@dataclass(frozen=True)
class IQLConfig:
    """IQL hyperparameters (defaults: the authors' locomotion config).

    Attributes:
        actor_lr, critic_lr, value_lr: Adam learning rates (> 0).
        batch_size: transitions per gradient step (used by the loop).
        hidden: hidden widths of actor, critics and value net.
        gamma: discount in [0, 1).
        tau: Polyak rate of the target critics in (0, 1].
        expectile: tau of the expectile value loss in (0, 1); 0.5 is SARSA-like, -> 1 approaches max Q.
        temperature: beta, inverse temperature of the advantage weights (>= 0; 0 is behaviour cloning).
        max_weight: clip of exp(beta * A) (paper: 100).
        normalize_reward: scale rewards by 1000 / (max - min episode return) of the dataset (set by
            the loop through ``reward_scale``), as the authors do for locomotion.
        max_grad_norm: global gradient-norm clip per optimiser (the two critics share one); None disables.
    """

    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    batch_size: int = 256
    hidden: tuple[int, ...] = (256, 256)
    gamma: float = 0.99
    tau: float = 0.005
    expectile: float = 0.7
    temperature: float = 3.0
    max_weight: float = 100.0
    normalize_reward: bool = True
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        check_config(self, actor_lr=(1e-12, None), critic_lr=(1e-12, None), value_lr=(1e-12, None), batch_size=(1, None),
                     gamma=(0.0, 0.9999), tau=(1e-6, 1.0), expectile=(1e-3, 0.999), temperature=(0.0, None),
                     max_weight=(1e-6, None), max_grad_norm=(1e-12, None))


class IQLLearner:
    """IQL learner. ``update(Transitions)`` returns value_loss, expectile_weight_mean, q_loss, q_mean, v_mean, actor_loss,
    weight_mean and weight_max."""

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
        norm = self.policy.obs_norm
        self.q1 = QNet(obs_dim, act_dim, discrete, config.hidden, "relu", obs_norm=norm)
        self.q2 = QNet(obs_dim, act_dim, discrete, config.hidden, "relu", obs_norm=norm)
        # Targets share the policy's normaliser (a deepcopy would freeze a private copy of its statistics).
        self.q1_target = QNet(obs_dim, act_dim, discrete, config.hidden, "relu", obs_norm=norm)
        self.q2_target = QNet(obs_dim, act_dim, discrete, config.hidden, "relu", obs_norm=norm)
        self.q1_target.load_state_dict(self.q1.state_dict())
        self.q2_target.load_state_dict(self.q2.state_dict())
        for p in (*self.q1_target.parameters(), *self.q2_target.parameters()):
            p.requires_grad_(False)
        self.value = ValueNet(obs_dim, config.hidden, "relu", obs_norm=norm)
        self.reward_scale = 1.0
        self.actor_opt = torch.optim.Adam(self.policy.parameters(), lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=config.critic_lr)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=config.value_lr)

    def _step(self, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        gradient_step(opt, loss, self.config.max_grad_norm)

    def update(self, batch: Transitions) -> dict[str, float]:
        cfg = self.config
        with torch.no_grad():
            q_target = torch.min(self.q1_target(batch.obs, batch.action), self.q2_target(batch.obs, batch.action))
        # Value: expectile regression towards the target critics (eq. 5).
        v = self.value(batch.obs)
        v_loss, metrics = expectile_loss(q_target - v, cfg.expectile)
        self._step(self.value_opt, v_loss)
        # Critics: TD towards r + gamma V(s'), bootstrapping through truncation (eq. 6).
        with torch.no_grad():
            not_done = (~batch.terminated).float()
            target = batch.reward * self.reward_scale + cfg.gamma * not_done * self.value(batch.next_obs)
        q1_loss, m1 = td_loss(self.q1(batch.obs, batch.action), target)
        q2_loss, _ = td_loss(self.q2(batch.obs, batch.action), target)
        self._step(self.critic_opt, q1_loss + q2_loss)
        # Actor: advantage-weighted regression (eq. 7), advantages from the pre-update V.
        advantage = (q_target - v.detach())
        logp = self.policy.log_prob(batch.obs, batch.action)
        a_loss, ma = awr_policy_loss(logp, advantage, cfg.temperature, cfg.max_weight)
        self._step(self.actor_opt, a_loss)
        polyak_update(self.q1_target.parameters(), self.q1.parameters(), cfg.tau)
        polyak_update(self.q2_target.parameters(), self.q2.parameters(), cfg.tau)
        metrics.update(q_loss=float(q1_loss.detach() + q2_loss.detach()), q_mean=m1.get("q_mean", float(q_target.mean())),
                       v_mean=float(v.detach().mean()), **ma)
        return metrics

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy, "q1": self.q1, "q2": self.q2, "q1_target": self.q1_target,
                "q2_target": self.q2_target, "value": self.value}

    def state_dict(self) -> dict:
        state = {k: m.state_dict() for k, m in self._modules().items()}
        state.update(actor_opt=self.actor_opt.state_dict(), critic_opt=self.critic_opt.state_dict(),
                     value_opt=self.value_opt.state_dict(), reward_scale=float(self.reward_scale))
        return state

    def load_state_dict(self, state: dict) -> None:
        for k, m in self._modules().items():
            m.load_state_dict(state[k])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.value_opt.load_state_dict(state["value_opt"])
        self.reward_scale = float(state["reward_scale"])


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("iql", IQLConfig, IQLLearner, loop="offline", inputs="dataset",
         summary="implicit Q-learning (Kostrikov et al. 2022)", tiny=dict(hidden=(32, 32)))
