"""Conservative Q-Learning on SAC (Kumar et al. 2020, arXiv:2006.04779) and its calibrated variant Cal-QL
(Nakamoto et al. 2023, arXiv:2303.05479), continuous actions.

Critic, per twin ``Q_j`` (CQL(H), eq. 4, with the SAC backup of sec. 3.2 / Appendix F):

    L_Q_j = mean((Q_j(s,a) - y)^2) + alpha_cql * R_j
    y     = c r + gamma (1 - term) (min_i Qbar_i(s',a') [- alpha log pi(a'|s')]),   a' ~ pi(.|s')
    R_j   = mean_s[ log (1/M) sum_k exp(Q_j(s, a_k) - log mu_k(a_k)) ] - mean_(s,a)~D Q_j(s, a)          (eq. 4, App. F)

with ``M = 3N`` importance samples per state: ``N`` uniform on the action box (``log mu = -log vol``), ``N`` from
``pi(.|s)`` and ``N`` from ``pi(.|s')`` (both evaluated at ``s``, each minus its own log-density) — the
importance-sampled log-sum-exp of Kumar et al. (2020), Appendix F ("CQL(H)" with importance sampling). The
``log(1/M)`` constant does not change a gradient; it makes ``R_j`` an estimate of ``log int exp Q - E_D Q``.

Cal-QL (Nakamoto et al. 2023, eq. 5 / Algorithm 1): the policy-action terms are bounded below by the reference
value, ``Q_j(s, a_k) <- max(Q_j(s, a_k), V^mu(s))`` before the importance correction, with ``V^mu(s)`` the
Monte-Carlo discounted return-to-go of the trajectory through ``s`` (``batch.mc_return`` times the reward scale
``c``). The uniform samples are not bounded (official code ``nakamotoo/Cal-QL``, ``conservative_sac.py``).

Actor and temperature: SAC (Haarnoja et al. 2018), ``L_pi = mean(alpha log pi(a~|s) - min_i Q_i(s, a~))``,
``L_alpha = -mean(log alpha (log pi(a~|s) + H_target))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from hybridrl.algos import check_config, gradient_step
from hybridrl.data.batches import Transitions
from hybridrl.errors import ConfigError, ShapeError
from hybridrl.losses.sac import sac_actor_loss, sac_temperature_loss
from hybridrl.nn import Policy
from hybridrl.nn.critics import TargetNetwork, TwinQ
from hybridrl.nn.tanh_gaussian import TanhGaussianPolicy


def cql_regularizer(q_samples: Tensor, log_density: Tensor, q_data: Tensor) -> tuple[Tensor, dict[str, float]]:
    """The CQL(H) regulariser with importance sampling (Kumar et al. 2020, eq. 4 and Appendix F).

    ``R = mean_s[ logsumexp_k (q_samples[s, k] - log_density[s, k]) - log M ] - mean_s q_data[s]``.

    Args:
        q_samples: ``[B, M]`` Q-values of the ``M`` sampled actions per state (already calibrated for Cal-QL).
        log_density: ``[B, M]`` natural log-density of each sampled action under the distribution it came from.
        q_data: ``[B]`` Q-values of the dataset actions.
    Returns:
        ``(R, {"cql_logsumexp": mean log-sum-exp term, "cql_q_data": mean q_data})``.
    Raises:
        ShapeError: ``q_samples`` and ``log_density`` differ in shape, or ``q_data`` is not ``[B]``.
    """
    if q_samples.shape != log_density.shape or q_samples.dim() != 2 or q_data.shape != q_samples.shape[:1]:
        raise ShapeError(f"cql_regularizer: q_samples {tuple(q_samples.shape)}, log_density "
                         f"{tuple(log_density.shape)}, q_data {tuple(q_data.shape)}; expected [B, M], [B, M], [B]")
    lse = torch.logsumexp(q_samples - log_density, dim=1) - math.log(q_samples.shape[1])
    reg = lse.mean() - q_data.mean()
    return reg, {"cql_logsumexp": float(lse.detach().mean()), "cql_q_data": float(q_data.detach().mean())}


def calibrate(q_policy: Tensor, lower_bound: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Cal-QL's bound ``max(Q(s, a), V^mu(s))`` (Nakamoto et al. 2023, eq. 5).

    Args:
        q_policy: ``[B, K]`` Q-values of policy actions. lower_bound: ``[B]`` reference values (``-inf``: none).
    Returns:
        ``(bounded [B, K], {"calibrated_fraction": share of entries raised to the bound})``.
    """
    bound = lower_bound.reshape(-1, 1).to(q_policy.dtype)
    return torch.maximum(q_policy, bound), {"calibrated_fraction": float((q_policy.detach() < bound).float().mean())}


@dataclass(frozen=True)
class CQLConfig:
    """CQL / Cal-QL hyperparameters (defaults: Kumar et al. 2020 gym locomotion, CORL ``cal_ql.py`` networks).

    Attributes:
        actor_lr, critic_lr, alpha_lr: Adam learning rates (> 0); CQL uses a smaller actor rate (1e-4).
        batch_size: transitions per gradient step (read by the loops).
        hidden, activation: widths and nonlinearity of the actor and both critics (CORL: 3 x 256).
        gamma: discount in [0, 1). tau: Polyak rate of the target critics in (0, 1].
        alpha: initial SAC temperature (> 0). autotune: learn it towards ``target_entropy`` (None: -|A|).
        cql_alpha: weight of the CQL regulariser (>= 0; 5 on gym locomotion; 0 gives plain SAC critics).
        n_actions: N, importance samples per source (uniform, pi(.|s), pi(.|s')) per state (>= 1; paper 10).
        calibrated: Cal-QL: bound the policy-action Q-values below by the Monte-Carlo return ``batch.mc_return``.
        backup_entropy: subtract ``alpha log pi(a'|s')`` in the TD target (CQL code default: off).
        reward_scale: rewards (and Monte-Carlo returns) are multiplied by this (> 0).
        layer_norm: LayerNorm in the critics (RLPD).
        max_grad_norm: global gradient-norm clip per optimiser (None: off).
    """

    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    batch_size: int = 256
    hidden: tuple[int, ...] = (256, 256, 256)
    activation: str = "relu"
    gamma: float = 0.99
    tau: float = 0.005
    alpha: float = 1.0
    autotune: bool = True
    target_entropy: float | None = None
    cql_alpha: float = 5.0
    n_actions: int = 10
    calibrated: bool = False
    backup_entropy: bool = False
    reward_scale: float = 1.0
    layer_norm: bool = False
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        check_config(self, actor_lr=(1e-12, None), critic_lr=(1e-12, None), alpha_lr=(1e-12, None),
                     batch_size=(1, None), gamma=(0.0, 0.9999), tau=(1e-6, 1.0), alpha=(1e-12, None),
                     cql_alpha=(0.0, None), n_actions=(1, None), reward_scale=(1e-12, None),
                     max_grad_norm=(1e-12, None))


class CQLLearner:
    """CQL / Cal-QL learner: ``policy``, twin critics ``critic`` and ``critic_target``, temperature ``log_alpha``.

    ``policy`` may be given: a :class:`TanhGaussianPolicy` (default, built when None) or any continuous
    :class:`~hybridrl.nn.Policy` with a reparameterised ``sample`` (e.g. IQL's Gaussian policy, to fine-tune it);
    actions outside the box are clipped to it before they reach a critic, their log-density is that of the
    unclipped sample. ``mc_gamma`` is the discount the loops must attach ``mc_return`` with (None unless
    ``calibrated``).

    Raises:
        ConfigError: a Discrete action space, or a discrete ``policy``.
    """

    def __init__(self, config: CQLConfig, observation_space: gym.Space, action_space: gym.Space, seed: int = 0,
                 policy: Policy | None = None):
        if not isinstance(action_space, gym.spaces.Box) or (policy is not None and policy.discrete):
            raise ConfigError(f"CQL needs a continuous (Box) action space and policy, got {action_space}")
        torch.manual_seed(seed)
        self.config = config
        obs_dim, act_dim = observation_space.shape[0], action_space.shape[0]
        self.policy = policy or TanhGaussianPolicy(obs_dim, act_dim, config.hidden, config.activation,
                                                   normalize_obs=True, action_low=action_space.low.tolist(),
                                                   action_high=action_space.high.tolist())
        critic = (obs_dim, act_dim, False, config.hidden, config.activation)
        norm, ln = self.policy.obs_norm, config.layer_norm
        self.critic = TwinQ(*critic, obs_norm=norm, layer_norm=ln)
        self.critic_target = TargetNetwork(TwinQ(*critic, obs_norm=norm, layer_norm=ln), self.critic)
        self.low = torch.as_tensor(action_space.low, dtype=torch.float32)
        self.high = torch.as_tensor(action_space.high, dtype=torch.float32)
        if not (torch.isfinite(self.low).all() and torch.isfinite(self.high).all()):
            raise ConfigError(f"CQL samples uniform actions: the action box must be bounded, got {action_space}")
        self.log_volume = float(torch.log(self.high - self.low).sum())
        self.target_entropy = float(-act_dim if config.target_entropy is None else config.target_entropy)
        self.log_alpha = torch.tensor([float(np.log(config.alpha))], requires_grad=True)
        self.actor_opt = torch.optim.Adam(self.policy.parameters(), lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr)

    @property
    def mc_gamma(self) -> float | None:
        """Discount of the Monte-Carlo returns Cal-QL needs in its batches (None when not calibrated)."""
        return self.config.gamma if self.config.calibrated else None

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    def _clip(self, action: Tensor) -> Tensor:
        return torch.maximum(torch.minimum(action, self.high), self.low)

    def _policy_samples(self, obs: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """``n`` actions per state from pi(.|obs), no gradient: ``([B, n, |A|], log-density [B, n])``; one policy
        forward pass on ``B`` rows when the policy has ``sample_n`` (TanhGaussianPolicy), else on ``B n`` rows."""
        with torch.no_grad():
            if hasattr(self.policy, "sample_n"):
                return self.policy.sample_n(obs, n)
            a, logp = self.policy.sample(obs.repeat_interleave(n, 0))
        return a.reshape(len(obs), n, -1), logp.reshape(len(obs), n)

    def update(self, batch: Transitions, actor: bool = True) -> dict[str, float]:
        """One gradient step of the twin critics (Bellman + CQL), the actor, alpha; then the Polyak targets.

        ``actor=False`` steps only the critics (and their targets): critic pre-training under a fixed policy.

        Args:
            batch: ``B`` transitions: ``obs``/``next_obs [B, obs_dim]``, ``action [B, |A|]`` in the box, ``reward``
                ``[B]`` (raw), ``terminated [B]``; Cal-QL also ``mc_return [B]`` (raw rewards, discount ``gamma``;
                ``-inf``: no bound).
        Returns:
            ``bellman_loss`` (sum over both critics), ``cql_reg`` (mean over both critics, unweighted),
            ``cql_logsumexp``, ``cql_q_data``, ``q_mean``, ``target_mean``, ``actor_loss``, ``entropy``, ``alpha``
            (+ ``alpha_loss`` when autotuned, ``calibrated_fraction`` for Cal-QL).
        Raises:
            ShapeError: ``calibrated`` and the batch has no ``mc_return``.
        Source: Kumar et al. (2020) eq. 4 and Appendix F; Nakamoto et al. (2023) eq. 5; Haarnoja et al. (2018).
        """
        cfg = self.config
        if cfg.calibrated and batch.mc_return is None:
            raise ShapeError("Cal-QL (calibrated=True) needs batches with mc_return (Dataset.transitions(mc_gamma=...),"
                             " ReplayBuffer(mc_gamma=...))")
        alpha = self.log_alpha.detach().exp().squeeze(0)
        b, n = len(batch), cfg.n_actions
        with torch.no_grad():
            next_a, next_logp = self.policy.sample(batch.next_obs)
            next_q = torch.min(*self.critic_target(batch.next_obs, self._clip(next_a)))
            if cfg.backup_entropy:
                next_q = next_q - alpha * next_logp
            target = batch.reward * cfg.reward_scale + cfg.gamma * (~batch.terminated).float() * next_q
        q1, q2 = self.critic(batch.obs, batch.action)
        bellman = (q1 - target).square().mean() + (q2 - target).square().mean()
        metrics = {"bellman_loss": float(bellman.detach()), "q_mean": float(0.5 * (q1 + q2).detach().mean()),
                   "target_mean": float(target.mean())}
        loss = bellman
        if cfg.cql_alpha > 0:
            uniform = self.low + (self.high - self.low) * torch.rand(b, n, self.low.shape[0])
            a_cur, logp_cur = self._policy_samples(batch.obs, n)
            a_next, logp_next = self._policy_samples(batch.next_obs, n)
            obs_rep = batch.obs.unsqueeze(1).expand(-1, 3 * n, -1)
            actions = torch.cat([uniform, self._clip(a_cur), self._clip(a_next)], 1)  # [B, 3N, |A|], one pass
            log_mu = torch.cat([torch.full((b, n), -self.log_volume), logp_cur, logp_next], 1)
            regs = []
            for j, q_all in enumerate(self.critic(obs_rep, actions)):  # [B, 3N] per critic
                q_rand, q_pi = q_all[:, :n], q_all[:, n:]
                if cfg.calibrated:
                    q_pi, cm = calibrate(q_pi, batch.mc_return * cfg.reward_scale)
                    if j == 0:
                        metrics.update(cm)
                reg, rm = cql_regularizer(torch.cat([q_rand, q_pi], 1), log_mu, (q1, q2)[j])
                regs.append(reg)
                if j == 0:
                    metrics.update(rm)
            loss = loss + cfg.cql_alpha * (regs[0] + regs[1])
            metrics["cql_reg"] = float(0.5 * (regs[0] + regs[1]).detach())
        gradient_step(self.critic_opt, loss, cfg.max_grad_norm)
        if not actor:
            self.critic_target.update(cfg.tau)
            return metrics

        self.critic.requires_grad_(False)
        try:
            action, logp = self.policy.sample(batch.obs)
            actor_loss, am = sac_actor_loss(logp, self.critic.min(batch.obs, self._clip(action)), alpha)
        finally:
            self.critic.requires_grad_(True)
        gradient_step(self.actor_opt, actor_loss, cfg.max_grad_norm)
        metrics.update(am, alpha=float(alpha))
        if cfg.autotune:
            t_loss, tm = sac_temperature_loss(self.log_alpha, logp.detach(), self.target_entropy)
            gradient_step(self.alpha_opt, t_loss)
            metrics["alpha_loss"] = tm["alpha_loss"]
        self.critic_target.update(cfg.tau)
        return metrics

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy, "critic": self.critic, "critic_target": self.critic_target}

    def state_dict(self) -> dict:
        state = {k: m.state_dict() for k, m in self._modules().items()}
        state.update(actor_opt=self.actor_opt.state_dict(), critic_opt=self.critic_opt.state_dict(),
                     alpha_opt=self.alpha_opt.state_dict(), log_alpha=self.log_alpha.detach().clone())
        return state

    def load_state_dict(self, state: dict) -> None:
        for k, m in self._modules().items():
            m.load_state_dict(state[k])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
        with torch.no_grad():
            self.log_alpha.copy_(torch.as_tensor(state["log_alpha"]).reshape(1))


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("cql", CQLConfig, CQLLearner, loop="offline", inputs="dataset", action_spaces=("continuous",),
         summary="conservative Q-learning on SAC, calibrated=true for Cal-QL (Kumar et al. 2020; Nakamoto et al. 2023)",
         tiny=dict(hidden=(32, 32), n_actions=2))
