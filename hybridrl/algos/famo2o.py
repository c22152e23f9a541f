"""FamO2O on IQL (Wang et al. 2023, "Train Once, Get a Family: State-Adaptive Balances for Offline-to-Online
Reinforcement Learning", arXiv:2310.17966; official code LeapLabTHU/FamO2O, ``jax_iql/family_*.py``).

A *universal* policy ``pi(a | s, emb(beta))`` learns a family of AWR policies indexed by the inverse temperature
beta (the improvement/constraint balance), and a *balance model* ``p(beta | s)`` picks beta per state:

    critics, value: IQL unchanged (expectile V on target min-Q, TD Q towards r + gamma (1 - d) V(s'), Polyak)
    universal policy:  L_pi  = -mean[ min(exp(beta(s) (min Qbar(s,a) - V(s))), 100) log pi(a | s, emb(beta(s))) ]
        beta(s) ~ Uniform[beta_min, beta_max] offline;   beta(s) = sg(sample of the balance model) online
    balance model:     L_bal = mean[ alpha log p(beta|s) - min Qbar(s, a) ],  beta ~ p(.|s), a ~ pi(.|s, emb(beta))
                       (both reparameterised: the gradient reaches the balance model through beta -> emb -> a -> Q)
    temperature:       L_alpha = alpha (H - H_target),  H = -mean log p(beta|s),  H_target = -0.5

``beta = (u + 1)/2 (beta_max - beta_min) + beta_min`` with ``u = tanh(mu(s) + sigma(s) eps)`` (the IQL variant's
map, family_actor.py); ``emb(beta) = [sin(beta / n^(2i/d)), cos(beta / n^(2i/d))]_{i<d/2}``, n = 10000, d = 6
(family_utils.py; here the sines come first, then the cosines). Paper: Algorithm 1 and eqs. 4-7 (sec. 4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import torch
from torch import Tensor

from hybridrl.algos import check_config, gradient_step
from hybridrl.algos.iql import IQLConfig, IQLLearner, iql_critic_step
from hybridrl.data.batches import Transitions
from hybridrl.errors import ConfigError
from hybridrl.losses import awr_policy_loss
from hybridrl.nn import GaussianPolicy, Policy, mlp

EMB_DIM = 6


def coefficient_embedding(beta: Tensor, dim: int = EMB_DIM, base: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[B, dim]`` of ``beta [B]``: sines then cosines of ``beta / base^(2i/dim)``, i < dim/2."""
    freq = base ** (-2.0 * torch.arange(dim // 2, dtype=beta.dtype) / dim)
    x = beta.unsqueeze(-1) * freq
    return torch.cat([torch.sin(x), torch.cos(x)], -1)


class FamilyPolicy(GaussianPolicy):
    """FamO2O's universal Gaussian policy (tanh mean, state-independent log-std) with its balance model.

    ``mean_net`` reads ``[norm(s), emb(beta)]``; ``balance_net`` maps ``norm(s)`` to the pre-tanh mean and log-std
    of ``u``. As a :class:`~hybridrl.nn.Policy` it acts with the balance model's deterministic coefficient
    (``beta`` from ``u = tanh(mu(s))``, as FamO2O acts online and at evaluation); ``log_prob_at`` / ``mean_at``
    take an explicit ``beta [B]``. Constructor arguments: those of :class:`GaussianPolicy` plus the beta range.
    Listed in :data:`hybridrl.nn.POLICY_CLASSES`, so ``load_policy`` rebuilds it in a fresh process.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256), activation: str = "relu",
                 normalize_obs: bool = True, tanh_mean: bool = True, log_std_init: float = 0.0,
                 action_low: Sequence[float] | None = None, action_high: Sequence[float] | None = None,
                 log_std_min: float = -5.0, log_std_max: float = 2.0, beta_min: float = 1.0, beta_max: float = 10.0):
        if not tanh_mean or not beta_max > beta_min:
            raise ConfigError(f"FamilyPolicy needs tanh_mean=True and beta_max > beta_min, got {tanh_mean}, "
                              f"[{beta_min}, {beta_max}]")
        super().__init__(obs_dim, act_dim, hidden, activation, normalize_obs, True, log_std_init, action_low,
                         action_high, log_std_min, log_std_max)
        self.kwargs.update(beta_min=float(beta_min), beta_max=float(beta_max))
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.mean_net = mlp(obs_dim + EMB_DIM, act_dim, hidden, activation, out_gain=0.01)
        self.balance_net = mlp(obs_dim, 2, hidden, activation, out_gain=0.01)

    @classmethod
    def from_gaussian(cls, policy: GaussianPolicy, beta_min: float, beta_max: float) -> FamilyPolicy:
        """A family policy that acts exactly like ``policy`` (an IQL actor) for every beta: the same weights, the
        first layer widened with zero columns for the embedding, the same log-std and observation statistics."""
        k = dict(policy.kwargs)
        if not k.get("tanh_mean", False):
            raise ConfigError("FamO2O starts from a GaussianPolicy with tanh_mean=True (an IQL actor)")
        fam = cls(**k, beta_min=beta_min, beta_max=beta_max)
        with torch.no_grad():
            for new, old in zip(fam.mean_net, policy.mean_net):
                if isinstance(old, torch.nn.Linear):
                    new.weight.zero_()
                    new.weight[:, : old.weight.shape[1]].copy_(old.weight)
                    new.bias.copy_(old.bias)
            fam.log_std.copy_(policy.log_std)
        fam.obs_norm.load_state_dict(policy.obs_norm.state_dict())
        return fam

    def _balance(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        out = self.balance_net(self.obs_norm(obs))
        return out[..., 0], out[..., 1].clamp(self.log_std_min, self.log_std_max)

    def _beta(self, u: Tensor) -> Tensor:
        return (u + 1) / 2 * (self.beta_max - self.beta_min) + self.beta_min

    def coefficient(self, obs: Tensor) -> Tensor:
        """The balance model's deterministic coefficient ``beta(s) [B]`` (from ``tanh`` of its mean)."""
        return self._beta(torch.tanh(self._balance(obs)[0]))

    def sample_coefficient(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterised ``beta ~ p(.|s)`` and ``log p(beta|s)`` (change of variables through tanh and the
        affine map), each ``[B]``."""
        mu, log_std = self._balance(obs)
        z = mu + torch.randn_like(mu) * log_std.exp()
        u = torch.tanh(z)
        logp = (-0.5 * ((z - mu) / log_std.exp()).pow(2) - log_std - 0.5 * math.log(2 * math.pi)
                - (2 * (math.log(2) - z - torch.nn.functional.softplus(-2 * z)))  # log(1 - tanh(z)^2)
                - math.log((self.beta_max - self.beta_min) / 2))
        return self._beta(u), logp

    def mean_at(self, obs: Tensor, beta: Tensor) -> Tensor:
        mu = self.mean_net(torch.cat([self.obs_norm(obs), coefficient_embedding(beta)], -1))
        return torch.tanh(mu) * self.action_scale + self.action_bias

    def mean(self, obs: Tensor) -> Tensor:
        return self.mean_at(obs, self.coefficient(obs))

    def log_prob_at(self, obs: Tensor, action: Tensor, beta: Tensor) -> Tensor:
        """``log pi(a | s, emb(beta))`` ``[B]``."""
        log_std = self._log_std()
        z = (action - self.mean_at(obs, beta)) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def sampler(self, rng=None, deterministic: bool = False):
        return Policy.sampler(self, rng, deterministic)



@dataclass(frozen=True)
class FamO2OConfig(IQLConfig):
    """IQL's fields (``beta`` unused: the balance model picks it) plus FamO2O's.

    Attributes:
        beta_min, beta_max: range of the AWR inverse temperature (official AntMaze config: 8-14 with expectile 0.9;
            the default 1-10 brackets IQL's locomotion beta = 3).
        balance_lr, temperature_lr: Adam rates of the balance model and its entropy temperature (3e-4).
        init_temperature: initial alpha (> 0). target_entropy: H_target of the balance model (nats; -0.5).
    """

    beta_min: float = 1.0
    beta_max: float = 10.0
    balance_lr: float = 3e-4
    temperature_lr: float = 3e-4
    init_temperature: float = 1.0
    target_entropy: float = -0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_config(self, beta_min=(0.0, None), beta_max=(0.0, None), balance_lr=(1e-12, None),
                     temperature_lr=(1e-12, None), init_temperature=(1e-12, None))
        if not self.beta_max > self.beta_min:
            raise ConfigError(f"FamO2OConfig: beta_max={self.beta_max} must exceed beta_min={self.beta_min}")


class FamO2OLearner(IQLLearner):
    """FamO2O on IQL. ``policy``: a :class:`FamilyPolicy`, an IQL :class:`GaussianPolicy` (widened with
    :meth:`FamilyPolicy.from_gaussian`) or None. Coefficients are uniform until :meth:`start_online`.

    Raises:
        ConfigError: a Discrete action space.
    """

    def __init__(self, config: FamO2OConfig, observation_space: gym.Space, action_space: gym.Space, seed: int = 0,
                 policy: Policy | None = None):
        if not isinstance(action_space, gym.spaces.Box):
            raise ConfigError(f"FamO2O here needs a continuous (Box) action space, got {action_space}")
        torch.manual_seed(seed)
        if policy is None:
            policy = FamilyPolicy(observation_space.shape[0], action_space.shape[0], config.hidden, "relu",
                                  action_low=action_space.low.tolist(), action_high=action_space.high.tolist(),
                                  beta_min=config.beta_min, beta_max=config.beta_max)
        elif not isinstance(policy, FamilyPolicy):
            policy = FamilyPolicy.from_gaussian(policy, config.beta_min, config.beta_max)
        super().__init__(config, observation_space, action_space, seed=seed, policy=policy)
        universal = [p for n, p in policy.named_parameters() if not n.startswith("balance_net.")]
        self.actor_opt = torch.optim.Adam(universal, lr=config.actor_lr)
        self.balance_opt = torch.optim.Adam(policy.balance_net.parameters(), lr=config.balance_lr)
        self.log_temperature = torch.tensor([math.log(config.init_temperature)], requires_grad=True)
        self.temperature_opt = torch.optim.Adam([self.log_temperature], lr=config.temperature_lr)
        self.online = False

    def start_online(self) -> None:
        """From now on the universal policy is trained with the balance model's coefficients (FamO2O online)."""
        self.online = True

    def update(self, batch: Transitions) -> dict[str, float]:
        """IQL value and critic steps, then the universal policy (AWR at per-state beta), the balance model and its
        temperature (module docstring). Returns IQL's metrics plus ``beta_mean``, ``beta_std``, ``balance_loss``,
        ``balance_entropy``, ``temperature``. Raises ConfigError before :meth:`prepare` (as IQL)."""
        cfg, policy = self.config, self.policy
        if self.reward_scale is None:
            raise ConfigError("FamO2O: call prepare(dataset) before update, or set reward_scale (1.0: unscaled)")
        with torch.no_grad():
            advantage = torch.min(*self.critic_target(batch.obs, batch.action)) - self.value(batch.obs)
            if self.online:
                beta, _ = policy.sample_coefficient(batch.obs)
            else:
                beta = cfg.beta_min + (cfg.beta_max - cfg.beta_min) * torch.rand(len(batch))
        metrics = iql_critic_step(self, batch)
        a_loss, am = awr_policy_loss(policy.log_prob_at(batch.obs, batch.action, beta), beta * advantage, 1.0,
                                     cfg.max_weight)
        gradient_step(self.actor_opt, a_loss, cfg.max_grad_norm)
        # Balance model: maximise min Qbar(s, a ~ pi(.|s, beta)) + alpha H(p(.|s)), reparameterised.
        temperature = self.log_temperature.detach().exp().squeeze(0)
        b, logp_b = policy.sample_coefficient(batch.obs)
        std = policy._log_std().exp()
        action = policy.mean_at(batch.obs, b) + std.detach() * torch.randn_like(batch.action)
        action = torch.maximum(torch.minimum(action, policy.action_scale + policy.action_bias),
                               policy.action_bias - policy.action_scale)
        bal_loss = (temperature * logp_b - torch.min(*self.critic_target.net(batch.obs, action))).mean()
        gradient_step(self.balance_opt, bal_loss, cfg.max_grad_norm)
        entropy = -logp_b.detach().mean()
        t_loss = (self.log_temperature.exp() * (entropy - cfg.target_entropy)).mean()
        gradient_step(self.temperature_opt, t_loss)
        metrics.update(am, advantage_mean=float(advantage.mean()), beta_mean=float(b.detach().mean()),
                       beta_std=float(b.detach().std()) if len(b) > 1 else 0.0, balance_loss=float(bal_loss.detach()),
                       balance_entropy=float(entropy), temperature=float(temperature))
        return metrics

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(balance_opt=self.balance_opt.state_dict(), temperature_opt=self.temperature_opt.state_dict(),
                     log_temperature=self.log_temperature.detach().clone(), online=self.online)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.balance_opt.load_state_dict(state["balance_opt"])
        self.temperature_opt.load_state_dict(state["temperature_opt"])
        with torch.no_grad():
            self.log_temperature.copy_(torch.as_tensor(state["log_temperature"]).reshape(1))
        self.online = bool(state["online"])


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("famo2o", FamO2OConfig, FamO2OLearner, loop="offline", inputs="dataset", action_spaces=("continuous",),
         summary="FamO2O on IQL: universal policy + state-adaptive balance model (Wang et al. 2023)",
         tiny=dict(hidden=(32, 32), reward_scale=1.0))
