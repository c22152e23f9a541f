"""Natural Policy Gradient and TRPO (Kakade 2001; Schulman et al. 2015, arXiv:1502.05477) with GAE.

Per rollout of ``B`` envs x ``T`` steps (a :class:`Segments` batch):

    A_t   = GAE(gamma, lambda) from V_old, V(true next obs) at truncations, 0 at terminations    (GAE paper eq. 16)
    policy: one step of  max mean[A pi/pi_old]  s.t.  mean KL(pi_old || pi) <= delta              (TRPO eq. 14)
            x = CG(F + damping I, grad), step = sqrt(2 delta / x^T F x) x                         (TRPO appendix C)
            NPG takes the step; TRPO backtracks (<= 10 tries) until the improvement ratio > 0.1 and KL <= 1.5 delta
    critic: ValueNet regressed on R_t = A_t + V_old(s_t) by minibatch Adam                        (GAE paper sec. 5)

``"npg"`` and ``"trpo"`` share :class:`NPGLearner`; they differ only in the default of ``line_search``
(:class:`NPGConfig` off, :class:`TRPOConfig` on). The math lives in :mod:`hybridrl.losses.npg`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import gymnasium as gym
import torch

from hybridrl.algos.actor_critic import Minibatch, build_actor_critic, minibatch_epochs, rollout_advantages
from hybridrl.data.batches import Segments
from hybridrl.errors import ConfigError
from hybridrl.losses import value_loss
from hybridrl.losses.npg import mean_policy_kl, natural_gradient_step, npg_surrogate_loss
from hybridrl.nn import Policy
from hybridrl.ops import explained_variance, normalize


@dataclass(frozen=True)
class NPGConfig:
    """NPG/TRPO hyperparameters; defaults from the pytorch-trpo lineage used by HNPG
    (TRPO: Schulman et al. 2015, arXiv:1502.05477).

    Attributes:
        max_kl: trust-region size delta (nats, > 0): the step satisfies 0.5 s^T F s = delta.
        damping: Tikhonov damping added to the Fisher matrix in CG and in the step size (>= 0).
        cg_iters: conjugate-gradient iterations (>= 1).
        cg_residual_tol: CG stops once the squared residual norm is below this (>= 0).
        line_search: TRPO's backtracking line search (True) or the plain natural-gradient step (False).
        max_backtracks: step fractions tried by the line search: 1, 1/2, ..., 0.5^(max_backtracks-1).
        accept_ratio: the line search accepts when actual/expected surrogate improvement exceeds this.
        kl_factor: the line search also needs mean KL <= kl_factor * max_kl (OpenAI Baselines: 1.5); None: no check.
        num_envs: parallel environments (rollout width ``B``).
        n_steps: steps per env per rollout (``T``).
        gamma: discount in [0, 1).
        gae_lambda: GAE lambda in [0, 1].
        normalize_advantage: normalise advantages over the rollout (mean 0, std 1).
        critic_lr: Adam learning rate of the value network (> 0).
        critic_epochs: passes over the rollout for the value regression (>= 1).
        critic_minibatch_size: transitions per value-network Adam step (>= 1; the last minibatch may be smaller).
        hidden: hidden widths of policy and value network.
        activation: "tanh" or "relu".
        log_std_init: initial log standard deviation of Gaussian policies.
        normalize_obs: running observation normalisation (statistics saved with the policy).
        normalize_reward: scale rewards by the running std of the discounted return (clip +-10).
    """

    max_kl: float = 0.01
    damping: float = 0.1
    cg_iters: int = 10
    cg_residual_tol: float = 1e-10
    line_search: bool = False
    max_backtracks: int = 10
    accept_ratio: float = 0.1
    kl_factor: float | None = 1.5
    num_envs: int = 1
    n_steps: int = 2048
    gamma: float = 0.995
    gae_lambda: float = 0.97
    normalize_advantage: bool = True
    critic_lr: float = 1e-3
    critic_epochs: int = 5
    critic_minibatch_size: int = 64
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    log_std_init: float = 0.0
    normalize_obs: bool = True
    normalize_reward: bool = True

    def __post_init__(self) -> None:
        check_npg_config(self)
        from hybridrl.algos import check_config

        check_config(self, num_envs=(1, None), n_steps=(1, None), critic_lr=(1e-12, None), critic_epochs=(1, None),
                     critic_minibatch_size=(1, None))
        if not 0.0 <= self.gamma < 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise ConfigError(f"{type(self).__name__} needs 0 <= gamma < 1 and 0 <= gae_lambda <= 1, "
                              f"got {self.gamma}, {self.gae_lambda}")

    @property
    def rollout_size(self) -> int:
        return self.num_envs * self.n_steps


def check_npg_config(config) -> None:
    """Range checks of the trust-region fields shared by NPG, TRPO and HNPG configs; raises :class:`ConfigError`."""
    from hybridrl.algos import check_config

    check_config(config, max_kl=(1e-12, None), damping=(0.0, None), cg_iters=(1, None), cg_residual_tol=(0.0, None),
                 max_backtracks=(1, None), accept_ratio=(0.0, None), kl_factor=(1.0, None))


# TRPO = NPG with the line search on by default. A separate frozen dataclass (not a subclass), built from
# NPGConfig's fields so the two cannot drift apart; only the default of ``line_search`` differs.
TRPOConfig = dataclasses.make_dataclass(
    "TRPOConfig",
    [(f.name, f.type, dataclasses.field(default=True if f.name == "line_search" else f.default))
     for f in dataclasses.fields(NPGConfig)],
    frozen=True,
    namespace={"__post_init__": NPGConfig.__post_init__, "rollout_size": NPGConfig.rollout_size,
               "__doc__": "TRPO hyperparameters: the fields of :class:`NPGConfig`, with ``line_search=True``."},
)
TRPOConfig.__module__ = __name__  # typing.get_type_hints resolves the string annotations in this module


def npg_policy_step(policy: Policy, obs: torch.Tensor, action: torch.Tensor, advantage: torch.Tensor,
                    config) -> dict[str, float]:
    """One trust-region step of ``policy`` on ``(obs [N, D], action [N, ...], advantage [N])``, in place.

    pi_old is the policy at the call: its log-probabilities and distributions are frozen first; the surrogate
    and the mean KL both average over the ``N`` rows. ``config`` supplies ``max_kl, damping, cg_iters,
    cg_residual_tol, line_search, max_backtracks, accept_ratio, kl_factor``. Returns the metrics of
    :func:`~hybridrl.losses.npg.natural_gradient_step` plus ``approx_kl`` (k3, after the step) and ``entropy``.
    """
    with torch.no_grad():
        old_dist = policy.distribution(obs)
        old_logp = old_dist.log_prob(action)

    def loss_fn() -> torch.Tensor:
        return npg_surrogate_loss(policy.log_prob(obs, action), old_logp, advantage)[0]

    def kl_fn() -> torch.Tensor:
        return mean_policy_kl(old_dist, policy.distribution(obs))[0]

    metrics = natural_gradient_step(
        list(policy.parameters()), loss_fn, kl_fn, config.max_kl, config.damping, config.cg_iters,
        config.cg_residual_tol, config.line_search, config.max_backtracks, config.accept_ratio, config.kl_factor)
    with torch.no_grad():
        logp, entropy = policy.log_prob_entropy(obs, action)
        _, sm = npg_surrogate_loss(logp, old_logp, advantage)
    metrics.update(approx_kl=sm["approx_kl"], entropy=float(entropy.mean()))
    if not policy.discrete:
        metrics["std_mean"] = float(policy.log_std.detach().exp().mean())
    return metrics


class NPGLearner:
    """NPG / TRPO learner: ``update(Segments) -> metrics``; ``set_progress`` is a no-op (no schedule)."""

    def __init__(self, config: NPGConfig, observation_space: gym.Space, action_space: gym.Space, seed: int = 0,
                 policy: Policy | None = None):
        torch.manual_seed(seed)
        self.config = config
        self.policy, self.critic = build_actor_critic(config, observation_space, action_space, policy)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.generator = torch.Generator().manual_seed(seed)

    def set_progress(self, fraction: float) -> None:
        """No learning-rate schedule: the trust region sets the policy step size."""

    def update(self, batch: Segments) -> dict[str, float]:
        """One policy step and the value regression on one rollout ``batch`` (``Segments [B, T]``).

        Returns the policy step's metrics (see :func:`~hybridrl.algos.npg.npg_policy_step`: ``policy_loss``,
        ``kl``, ``step_size`` ...), ``value_loss`` (mean over the critic's minibatch steps), ``explained_variance``
        and ``value_mean``.
        """
        cfg = self.config
        adv, ret, old_v = rollout_advantages(self.critic, batch, cfg.gamma, cfg.gae_lambda)
        flat = batch.flatten()
        adv = normalize(adv) if cfg.normalize_advantage else adv
        metrics = npg_policy_step(self.policy, flat.obs, flat.action, adv, cfg)
        metrics.update(self._fit_critic(flat.obs, ret))
        metrics.update(explained_variance=float(explained_variance(old_v, ret)), value_mean=float(old_v.mean()))
        return metrics

    def _fit_critic(self, obs: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        """``critic_epochs`` shuffled passes of unclipped value regression towards ``returns``."""
        cfg = self.config

        def loss_fn(mb: Minibatch) -> tuple[torch.Tensor, dict[str, float]]:
            return value_loss(self.critic(mb["obs"]), mb["ret"])

        means, _ = minibatch_epochs({"obs": obs, "ret": returns}, cfg.critic_epochs, cfg.critic_minibatch_size,
                                    self.generator, loss_fn, self.critic_optimizer)
        return {"value_loss": means["value_loss"]}

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "critic": self.critic.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.generator.set_state(state["generator"])


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("npg", NPGConfig, NPGLearner, loop="on_policy", inputs="env", summary="natural policy gradient (Kakade 2002)",
         tiny=dict(n_steps=16, num_envs=2, critic_minibatch_size=16, critic_epochs=2, hidden=(16, 16)))
register("trpo", TRPOConfig, NPGLearner, loop="on_policy", inputs="env", summary="TRPO (Schulman et al. 2015)",
         tiny=dict(n_steps=16, num_envs=2, critic_minibatch_size=16, critic_epochs=2, hidden=(16, 16)))
