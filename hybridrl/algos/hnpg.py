"""HNPG: Hybrid Natural Policy Gradient (Zhou et al. 2024, "Offline Data Enhanced On-Policy Policy Gradient with
Provable Guarantees", ICLR 2024, arXiv:2311.08384; official code github.com/YifeiZhou02/HNPG).

Per rollout of ``B`` envs x ``T`` steps (a :class:`Segments` batch) plus an offline :class:`Transitions` set D:

    critic   Q_phi fit by ``critic_iters`` full-batch Adam steps on
             mean_on (Q(s, a) - G)^2 + mean_off (Q(s, a) - y)^2                              (official trpo.py update_q)
             G = discounted on-policy return-to-go (bootstrapped with V at truncations and at the rollout's end)
             y = r + gamma (1 - terminated) V(s'),  V(s) = E_{a ~ pi} Q_phi_old(s, a)        (fitted-Q evaluation)
    advantage on-policy: GAE(gamma, lambda) with V(s) = E_{a ~ pi} Q_phi(s, a) of the fitted critic
             offline: a ~ pi(.|s_off) (dataset actions replaced), A_off = Q_phi(s_off, a) - V(s_off)
    policy   one NPG/TRPO step on the union of on-policy (s, a, A) and offline (s_off, a, A_off) rows,
             mean KL over both sets of states                                                 (paper Alg. 1)

The offline batch holds ``offline_ratio`` x (rollout size) transitions drawn uniformly with replacement (the
official code uses equal on/offline counts per horizon step). V is exact for discrete actions and a
``value_samples``-sample Monte-Carlo mean for Gaussian policies (the official ``QValue.get_value``).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import torch

from hybridrl.algos.npg import check_npg_config, npg_policy_step
from hybridrl.data.batches import Segments, Transitions
from hybridrl.errors import ConfigError, ShapeError
from hybridrl.losses import td_loss
from hybridrl.nn import Policy, QNet, make_policy
from hybridrl.ops import discounted_returns, explained_variance, gae, normalize


@dataclass(frozen=True)
class HNPGConfig:
    """HNPG hyperparameters; defaults from the official code (arXiv:2311.08384;
    github.com/YifeiZhou02/HNPG) unless noted.

    Attributes:
        max_kl, damping, cg_iters, cg_residual_tol, line_search, max_backtracks, accept_ratio, kl_factor: the
            trust-region step, as in :class:`hybridrl.algos.npg.NPGConfig` (official: TRPO step, line search on).
        num_envs: parallel environments (rollout width ``B``).
        n_steps: steps per env per rollout (official ``batch_size`` 1000 env steps per iteration).
        gamma: discount in [0, 1) (the official finite-horizon code forces gamma = 1).
        gae_lambda: GAE lambda in [0, 1] (official ``tau`` 0.97).
        offline_ratio: offline transitions per on-policy transition in each update (> 0; official 1).
        critic_lr: Adam learning rate of the Q-network (official 3e-4).
        critic_iters: full-batch Adam steps on the critic loss per update (official 30).
        critic_hidden: Q-network hidden widths (official 64-64 tanh).
        value_samples: actions sampled per state for V(s) = E_pi Q(s, a) with continuous actions (official 10).
        reward_scale: multiplies on-policy AND offline rewards before the critic sees them (> 0).
        normalize_advantage: normalise the joint (on + offline) advantages (official: off).
        hidden: policy hidden widths (official 16-16; 64-64 here for MuJoCo-sized tasks).
        activation: "tanh" or "relu" (policy and critic).
        log_std_init: initial log standard deviation of Gaussian policies (official 0).
        normalize_obs: running observation normalisation from on-policy rollouts, shared by the critic.
        normalize_reward: must stay False: the loop would scale on-policy rewards only, while offline rewards
            are raw, so one critic would see two reward scales (use ``reward_scale``).
    """

    max_kl: float = 0.01
    damping: float = 0.1
    cg_iters: int = 10
    cg_residual_tol: float = 1e-10
    line_search: bool = True
    max_backtracks: int = 10
    accept_ratio: float = 0.1
    kl_factor: float | None = 1.5
    num_envs: int = 1
    n_steps: int = 1000
    gamma: float = 0.995
    gae_lambda: float = 0.97
    offline_ratio: float = 1.0
    critic_lr: float = 3e-4
    critic_iters: int = 30
    critic_hidden: tuple[int, ...] = (64, 64)
    value_samples: int = 10
    reward_scale: float = 1.0
    normalize_advantage: bool = False
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    log_std_init: float = 0.0
    normalize_obs: bool = True
    normalize_reward: bool = False

    def __post_init__(self) -> None:
        from hybridrl.algos import check_config

        check_npg_config(self)
        check_config(self, num_envs=(1, None), n_steps=(1, None), offline_ratio=(1e-12, None), critic_lr=(1e-12, None),
                     critic_iters=(1, None), value_samples=(1, None), reward_scale=(1e-12, None))
        if not self.critic_hidden or any(int(h) <= 0 for h in self.critic_hidden):
            raise ConfigError(f"HNPGConfig.critic_hidden={self.critic_hidden!r}; "
                              "expected positive widths such as 64,64")
        if not 0.0 <= self.gamma < 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise ConfigError(f"HNPGConfig needs 0 <= gamma < 1 and 0 <= gae_lambda <= 1, "
                              f"got {self.gamma}, {self.gae_lambda}")
        if self.normalize_reward:
            raise ConfigError("HNPGConfig.normalize_reward=True would scale on-policy rewards but not the offline "
                              "ones that train the same critic; keep it False and use reward_scale")

    @property
    def rollout_size(self) -> int:
        return self.num_envs * self.n_steps


class HNPGLearner:
    """HNPG learner: ``update(Segments, offline=Transitions) -> metrics``; ``set_progress`` is a no-op."""

    uses_offline_data = True  # the on-policy loop passes the dataset's transitions to every update

    def __init__(self, config: HNPGConfig, observation_space: gym.Space, action_space: gym.Space, seed: int = 0,
                 policy: Policy | None = None):
        torch.manual_seed(seed)
        self.config = config
        discrete = isinstance(action_space, gym.spaces.Discrete)
        self.policy = policy or make_policy(
            observation_space, action_space, config.hidden, config.activation, config.normalize_obs,
            **({} if discrete else {"log_std_init": config.log_std_init}),
        )
        act_dim = int(action_space.n) if discrete else int(action_space.shape[0])
        self.q = QNet(observation_space.shape[0], act_dim, discrete, config.critic_hidden, config.activation,
                      obs_norm=self.policy.obs_norm)
        self.q_optimizer = torch.optim.Adam(self.q.parameters(), lr=config.critic_lr)
        self.generator = torch.Generator().manual_seed(seed)

    def set_progress(self, fraction: float) -> None:
        """No schedule: the trust region sets the policy step size."""

    @torch.no_grad()
    def _sample_action(self, obs: torch.Tensor) -> torch.Tensor:
        """a ~ pi(.|s) for ``obs [N, D]`` drawn with the learner's generator (reproducible across resumes)."""
        dist = self.policy.distribution(obs)
        if self.policy.discrete:
            return torch.multinomial(dist.probs, 1, generator=self.generator).squeeze(-1)
        base = dist.base_dist
        return base.loc + base.scale * torch.randn(base.loc.shape, generator=self.generator)

    @torch.no_grad()
    def state_value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(s) = E_{a ~ pi} Q(s, a) for raw ``obs [..., D]`` -> ``[...]``: exact (discrete) or a sample mean
        (Gaussian)."""
        if self.policy.discrete:
            return (self.policy.probs(obs) * self.q.all_actions(obs)).sum(-1)
        return torch.stack([self.q(obs, self._sample_action(obs)) for _ in range(self.config.value_samples)]).mean(0)

    def update(self, batch: Segments, offline: Transitions | None = None) -> dict[str, float]:
        """Critic fit on on-policy returns + offline fitted-Q targets, then one NPG/TRPO step on both.

        ``batch``: the rollout, ``Segments [B, T]``; ``offline``: flat ``Transitions [N]`` (``offline_ratio * B * T``
        of them are drawn with replacement per update). Returns the policy step's metrics (see
        :func:`~hybridrl.algos.npg.npg_policy_step`), ``q_loss, q_loss_on, q_loss_off, q_mean`` (last critic
        iteration), ``explained_variance`` (of Q on the on-policy returns), ``advantage_on_mean``,
        ``advantage_off_mean``, ``value_mean``, ``offline_batch``.

        Raises:
            ConfigError: without offline data (pass ``--dataset`` / ``offline=``).
            ShapeError: offline observations or actions that do not match the rollout's.
        """
        cfg = self.config
        if offline is None or len(offline) == 0:
            raise ConfigError("hnpg needs offline data: pass --dataset DATASET (or offline= to train_on_policy)")
        if offline.obs.shape[1:] != batch.obs.shape[2:] or offline.action.shape[1:] != batch.action.shape[2:]:
            raise ShapeError(f"hnpg: offline obs/action shapes {tuple(offline.obs.shape[1:])}/"
                             f"{tuple(offline.action.shape[1:])} do not match the env's {tuple(batch.obs.shape[2:])}/"
                             f"{tuple(batch.action.shape[2:])}")
        b, t = batch.reward.shape
        flat = batch.flatten()
        m = batch.mask.reshape(-1)
        n_on = len(flat)
        idx = torch.randint(len(offline), (max(1, round(cfg.offline_ratio * n_on)),), generator=self.generator)
        off = offline.index(idx)
        reward = batch.reward * cfg.reward_scale
        with torch.no_grad():  # regression targets from the critic before this update (fitted-Q iteration)
            boot = self.state_value(batch.next_obs)  # [B, T]: the networks broadcast over B, T
            g_on = discounted_returns(reward, batch.terminated, batch.truncated, cfg.gamma, boot).reshape(-1)[m]
            not_term = (~off.terminated).to(off.reward.dtype)
            y_off = off.reward * cfg.reward_scale + cfg.gamma * not_term * self.state_value(off.next_obs)
            q_before = self.q(flat.obs, flat.action)
        metrics = self._fit_critic(flat, g_on, off, y_off)
        with torch.no_grad():
            values, next_values = self.state_value(batch.obs), self.state_value(batch.next_obs)
            adv_on, _ = gae(reward, values, next_values, batch.terminated, batch.truncated, cfg.gamma, cfg.gae_lambda)
            adv_on = adv_on.reshape(-1)[m]
            off_action = self._sample_action(off.obs)  # offline actions are replaced by policy samples
            adv_off = self.q(off.obs, off_action) - self.state_value(off.obs)
        obs = torch.cat([flat.obs, off.obs])
        action = torch.cat([flat.action, off_action.to(flat.action.dtype)])
        adv = torch.cat([adv_on, adv_off])
        adv = normalize(adv) if cfg.normalize_advantage else adv
        metrics.update(npg_policy_step(self.policy, obs, action, adv, cfg))
        metrics.update(explained_variance=float(explained_variance(q_before, g_on)),
                       advantage_on_mean=float(adv_on.mean()), advantage_off_mean=float(adv_off.mean()),
                       value_mean=float(values.reshape(-1)[m].mean()), offline_batch=float(len(off)))
        return metrics

    def _fit_critic(self, flat: Transitions, g_on: torch.Tensor, off: Transitions, y_off: torch.Tensor
                    ) -> dict[str, float]:
        for _ in range(self.config.critic_iters):
            on_loss, om = td_loss(self.q(flat.obs, flat.action), g_on)
            off_loss, fm = td_loss(self.q(off.obs, off.action), y_off)
            self.q_optimizer.zero_grad(set_to_none=True)
            (on_loss + off_loss).backward()
            self.q_optimizer.step()
        return {"q_loss": om["q_loss"] + fm["q_loss"], "q_loss_on": om["q_loss"], "q_loss_off": fm["q_loss"],
                "q_mean": om["q_mean"]}

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "q": self.q.state_dict(),
                "q_optimizer": self.q_optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.q.load_state_dict(state["q"])
        self.q_optimizer.load_state_dict(state["q_optimizer"])
        self.generator.set_state(state["generator"])


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("hnpg", HNPGConfig, HNPGLearner, loop="on_policy", inputs="env+dataset",
         summary="hybrid NPG: on-policy rollouts plus offline data (Zhou et al. 2024)",
         tiny=dict(n_steps=16, num_envs=2, critic_iters=2, hidden=(16, 16), critic_hidden=(16, 16)))
