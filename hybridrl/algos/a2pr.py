"""A2PR: Adaptive Advantage-guided Policy Regularization (Liu, Zhang, Wang & Xu 2024, ICML, arXiv:2405.19909).

TD3's critic plus a state-value net and a conditional VAE trained only on high-advantage dataset actions; the actor
is regularised towards the VAE's refinement of its own action or towards the dataset action, whichever has the
higher advantage, and only where that advantage is non-negative:

    y     = r + gamma (1 - d) min_i Qbar_i(s', a'),   a' the smoothed target action (TD3)
    L_V   = mean (V(s) - min(y, r + gamma (1 - d) min_i Q_i(s', a')))^2
    L_VAE = mean w (D(s, z) - a)^2 + 0.5 mean KL(N(m, s) || N(0, I)),  z ~ E(s, a),  w = vae_weight 1[Q_1(s,a) > V(s)]
    a~    = D(s, z), z ~ E(s, mu(s))      (encode-decode of the policy action)
    A_pi  = Q_1(s, a~) - V(s),  A_D = Q_1(s, a) - V(s)
    target = a~ if A_pi >= A_D else a;   m = mask (1[A_pi >= 0] + 1[A_D > 0])
    L_pi  = -lambda mean Q_1(s, mu(s)) + mean m (mu(s) - sg(target))^2,  lambda = alpha / sg(mean |Q_1(s, mu(s))|)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import torch
from torch import nn

from hybridrl.algos import check_config, gradient_step
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
from hybridrl.losses.offline_reg import a2pr_bc_target, td3_critic_target, vae_loss
from hybridrl.nn import ObsNormalizer, ValueNet, mlp
from hybridrl.nn.deterministic import DeterministicPolicy


class ConditionalVAE(nn.Module):
    """BCQ-style conditional VAE over actions: encoder ``[norm(s), a] -> (mean, log_std) [B, Z]``, decoder
    ``[norm(s), z] -> bias + scale tanh(.) [B, A]``; ``log_std`` clamped to [-4, 15] (BCQ/A2PR code).

    ``forward(obs, action) -> (recon, mean, std)`` with ``z = mean + std * N(0, I)`` (reparameterised).
    Source: Fujimoto, Meger & Precup (2019) BCQ, sec. 4 and App. D; A2PR ``core/network``.
    """

    def __init__(self, obs_dim: int, act_dim: int, latent_dim: int, hidden: Sequence[int], obs_norm: ObsNormalizer,
                 action_scale: torch.Tensor, action_bias: torch.Tensor):
        super().__init__()
        self.encoder = mlp(obs_dim + act_dim, 2 * latent_dim, hidden, "relu", out_gain=1.0)
        self.decoder = mlp(obs_dim + latent_dim, act_dim, hidden, "relu", out_gain=1.0)
        self._obs_norm = [obs_norm]  # shared with the actor, not a submodule
        self.register_buffer("action_scale", action_scale.clone(), persistent=False)
        self.register_buffer("action_bias", action_bias.clone(), persistent=False)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self._obs_norm[0](obs)
        mean, log_std = self.encoder(torch.cat([s, action], -1)).chunk(2, -1)
        std = log_std.clamp(-4.0, 15.0).exp()
        z = mean + std * torch.randn_like(std)
        recon = torch.tanh(self.decoder(torch.cat([s, z], -1))) * self.action_scale + self.action_bias
        return recon, mean, std


@dataclass(frozen=True)
class A2PRConfig:
    """A2PR hyperparameters (ltlhuuu/A2PR ``utils/config.py``, ``A2PR.py`` and README; hopper: gamma 0.995, mask 0.4).

    Attributes:
        actor_lr, critic_lr, value_lr, vae_lr: Adam learning rates (3e-4, 3e-4, 3e-4, 1e-3).
        batch_size: transitions per gradient step.
        actor_hidden, critic_hidden, vae_hidden: MLP widths (256 x 3, 256 x 4 for critics and V, 750 x 2).
        latent_dim: VAE latent size; None = 2 |A|.
        gamma, tau, policy_noise, noise_clip, policy_freq, exploration_std, max_grad_norm: as in TD3+BC.
        alpha: Q-versus-regularisation trade-off (hopper/walker2d 2.5, halfcheetah 40).
        vae_weight: weight of the VAE reconstruction on high-advantage samples (walker2d 1.5, else 1.0).
        mask: scale of the regularisation weight m (hopper 0.4, walker2d/halfcheetah 1.0; code default 0.5).
        sampler, sampler_alpha: minibatch sampling (uniform / rw / aw, :mod:`hybridrl.data.weighting`).
    """

    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    vae_lr: float = 1e-3
    batch_size: int = 256
    actor_hidden: tuple[int, ...] = (256, 256, 256)
    critic_hidden: tuple[int, ...] = (256, 256, 256, 256)
    vae_hidden: tuple[int, ...] = (750, 750)
    latent_dim: int | None = None
    gamma: float = 0.99
    tau: float = 0.005
    alpha: float = 2.5
    vae_weight: float = 1.0
    mask: float = 1.0
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_freq: int = 2
    exploration_std: float = 0.1
    max_grad_norm: float | None = None
    sampler: str = "uniform"
    sampler_alpha: float = 0.1

    def __post_init__(self) -> None:
        check_config(self, actor_lr=(1e-12, None), critic_lr=(1e-12, None), value_lr=(1e-12, None),
                     vae_lr=(1e-12, None), batch_size=(1, None), latent_dim=(1, None), gamma=(0.0, 0.9999),
                     tau=(1e-6, 1.0), alpha=(1e-12, None), vae_weight=(0.0, None), mask=(0.0, None),
                     policy_noise=(0.0, None), noise_clip=(0.0, None), policy_freq=(1, None),
                     exploration_std=(1e-6, None), max_grad_norm=(1e-12, None))
        for field in ("actor_hidden", "critic_hidden", "vae_hidden"):
            check_config(type("A2PRConfig", (), {"hidden": getattr(self, field)})())
        check_sampler(self)


class A2PRLearner:
    """A2PR on Box actions: deterministic actor, twin critics, value net, conditional VAE."""

    def __init__(self, config: A2PRConfig, observation_space: gym.Space, action_space: gym.Space, seed: int = 0,
                 policy: DeterministicPolicy | None = None):
        torch.manual_seed(seed)
        obs_dim, act_dim = continuous_dims(observation_space, action_space, "a2pr")
        self.config = config
        self.policy, self.policy_target = make_actor(observation_space, action_space, config.actor_hidden,
                                                     config.exploration_std)
        if policy is not None:
            self.policy.load_state_dict(policy.state_dict())
            self.policy_target.update(1.0)
        self.critic, self.critic_target = make_twin_q(self.policy, config.critic_hidden)
        self.value = ValueNet(obs_dim, config.critic_hidden, "relu", obs_norm=self.policy.obs_norm)
        self.vae = ConditionalVAE(obs_dim, act_dim, config.latent_dim or 2 * act_dim, config.vae_hidden,
                                  self.policy.obs_norm, self.policy.action_scale, self.policy.action_bias)
        self.actor_opt = torch.optim.Adam(self.policy.parameters(), lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=config.value_lr)
        self.vae_opt = torch.optim.Adam(self.vae.parameters(), lr=config.vae_lr)
        self.n_updates = 0
        self._actor_metrics = {"actor_loss": 0.0, "bc_loss": 0.0, "lambda": 0.0, "q_pi_mean": 0.0,
                               "refined_fraction": 0.0, "reg_weight_mean": 0.0}

    def update(self, batch: Transitions) -> dict[str, float]:
        """Critic, value and VAE steps; every ``policy_freq``-th call the actor step and the Polyak targets.

        Returns ``q_loss``, ``q_mean``, ``value_loss``, ``v_mean``, ``vae_loss``, ``recon_loss``, ``kl``,
        ``vae_sample_fraction`` (share of the batch with Q_1(s, a) > V(s)), and the latest actor step's
        ``actor_loss``, ``bc_loss``, ``lambda``, ``q_pi_mean``, ``refined_fraction`` (share regularised towards the
        VAE action), ``reg_weight_mean`` (mean m).
        Source: Liu et al. (2024) arXiv:2405.19909, eqs. 3-9 and Algorithm 1; ltlhuuu/A2PR ``A2PR.py``.
        """
        cfg = self.config
        next_action = smoothed_target_action(self.policy_target, batch.next_obs, cfg.policy_noise, cfg.noise_clip)
        with torch.no_grad():
            y_online = td3_critic_target(batch.reward, batch.terminated, *self.critic(batch.next_obs, next_action),
                                         cfg.gamma)
        y, metrics = critic_step(self.critic, self.critic_target, self.critic_opt, batch, next_action, cfg.gamma,
                                 cfg.max_grad_norm)
        v = self.value(batch.obs)
        v_loss = (v - torch.min(y, y_online)).square().mean()
        gradient_step(self.value_opt, v_loss, cfg.max_grad_norm)
        v_old = v.detach()  # the actor block uses V from before the value step (A2PR.py)
        with torch.no_grad():
            good = (self.critic.q1(batch.obs, batch.action) > v_old).to(batch.reward.dtype)
        recon, mean, std = self.vae(batch.obs, batch.action)
        l_vae, mv = vae_loss(recon, batch.action, mean, std, weight=cfg.vae_weight * good)
        gradient_step(self.vae_opt, l_vae, cfg.max_grad_norm)
        metrics.update(value_loss=float(v_loss.detach()), v_mean=float(v_old.mean()), **mv,
                       vae_sample_fraction=float(good.mean()))
        self.n_updates += 1
        if self.n_updates % cfg.policy_freq == 0:
            pi = self.policy.mode(batch.obs)
            with torch.no_grad():
                refined = self.vae(batch.obs, pi.detach())[0]
                adv_refined = self.critic.q1(batch.obs, refined) - v_old
                adv_data = self.critic.q1(batch.obs, batch.action) - v_old
            target, m = a2pr_bc_target(refined, batch.action, adv_refined, adv_data, cfg.mask)
            self._actor_metrics = {**actor_step(self, batch.obs, pi, target, weight=m),
                                   "refined_fraction": float((adv_refined >= adv_data).float().mean()),
                                   "reg_weight_mean": float(m.mean())}
        metrics.update(self._actor_metrics)
        return metrics

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy, "policy_target": self.policy_target, "critic": self.critic,
                "critic_target": self.critic_target, "value": self.value, "vae": self.vae}

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt, "value_opt": self.value_opt,
                "vae_opt": self.vae_opt}

    def state_dict(self) -> dict:
        return learner_state(self)

    def load_state_dict(self, state: dict) -> None:
        load_learner_state(self, state)


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("a2pr", A2PRConfig, A2PRLearner, loop="offline", inputs="dataset", action_spaces=("continuous",),
         summary="advantage-guided policy regularisation with a VAE (Liu et al. 2024)",
         tiny=dict(actor_hidden=(32, 32), critic_hidden=(32, 32), vae_hidden=(32, 32), policy_freq=1))
