"""Fitted Q Evaluation (Le, Voloshin & Yue 2019, "Batch Policy Learning under Constraints", Alg. 3).

Estimates the action-value function of a fixed target policy pi from off-policy transitions by
repeated regression onto a bootstrapped target computed with a slowly moving (Polyak) target network:

    y = r + gamma * (1 - terminated) * E_{a' ~ pi(.|s')} Qbar(s', a')
    L(theta) = E_{(s,a,r,s') ~ D} [ (Q_theta(s, a) - y)^2 ]            Qbar <- (1 - tau) Qbar + tau Q_theta

Discrete actions: the expectation is the exact sum ``sum_a' pi(a'|s') Qbar(s', a')``. Continuous actions:
the mean over ``n_action_samples`` samples ``a' ~ pi(.|s')``, clipped to the action bounds (what the
environment would execute). Truncated transitions bootstrap (only termination stops the bootstrap), so
FQE estimates the infinite-horizon value of pi, not the value of an episode cut at a time limit.

Implementation details:
    1. The Q-network reads observations through the target policy's ``obs_norm`` (shared, never updated).
    2. The target policy is only read (under ``torch.no_grad``); its parameters are not in the optimiser.
    3. The target network shares the normaliser and is built with the same architecture, then hard-copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import torch

from hybridrl.algos import gradient_step
from hybridrl.data.batches import Transitions
from hybridrl.errors import ConfigError
from hybridrl.losses import td_loss
from hybridrl.nn import Policy, QNet, policy_matches_spaces
from hybridrl.nn.critics import TargetNetwork


@dataclass(frozen=True)
class FQEConfig:
    """FQE hyperparameters.

    Attributes:
        lr: Adam learning rate of the Q-network (> 0).
        batch_size: transitions per gradient step (used by the loop / :func:`hybridrl.ope.fit_fqe`).
        hidden: hidden layer widths of the Q-network MLP.
        activation: "relu" or "tanh".
        gamma: discount in [0, 1].
        tau: Polyak rate of the target network in (0, 1] (1 = hard copy every step).
        n_action_samples: samples a' ~ pi(.|s') averaged for E_pi Q(s', .) with continuous actions (>= 1).
        max_grad_norm: global gradient-norm clip; None disables.
    """

    lr: float = 3e-4
    batch_size: int = 256
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    gamma: float = 0.99
    tau: float = 0.005
    n_action_samples: int = 10
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        checks = [
            ("lr", self.lr > 0, "> 0"), ("batch_size", self.batch_size >= 1, ">= 1"),
            ("gamma", 0.0 <= self.gamma <= 1.0, "in [0, 1]"), ("tau", 0.0 < self.tau <= 1.0, "in (0, 1]"),
            ("n_action_samples", self.n_action_samples >= 1, ">= 1"),
            ("activation", self.activation in ("relu", "tanh"), "'relu' or 'tanh'"),
            ("max_grad_norm", self.max_grad_norm is None or self.max_grad_norm > 0, "> 0 or None"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"FQEConfig.{name} = {getattr(self, name)!r}; expected {expected}")


class FQELearner:
    """FQE learner for a fixed target policy ``policy`` (required).

    ``update(Transitions) -> {"q_loss", "q_mean", "target_mean"}``; :meth:`q` and :meth:`value` query the
    fitted critic. ``self.policy`` is the evaluated policy (never modified).

    Raises:
        ConfigError: if ``policy`` is None or does not fit the spaces.
    """

    def __init__(self, config: FQEConfig, observation_space: gym.Space, action_space: gym.Space, seed: int = 0,
                 policy: Policy | None = None):
        if policy is None:
            raise ConfigError("FQELearner needs the target policy to evaluate: pass policy=<Policy>")
        reason = policy_matches_spaces(policy, observation_space, action_space)
        if reason is not None:
            raise ConfigError(f"FQELearner: the target policy does not fit the data spaces: {reason}")
        torch.manual_seed(seed)
        self.config, self.policy = config, policy
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        obs_dim = observation_space.shape[0]
        act_dim = int(action_space.n) if self.discrete else action_space.shape[0]
        args = (obs_dim, act_dim, self.discrete, config.hidden, config.activation)
        self.q_net = QNet(*args, obs_norm=policy.obs_norm)
        self.q_target = TargetNetwork(QNet(*args, obs_norm=policy.obs_norm), self.q_net)
        if not self.discrete:
            self._low = torch.as_tensor(action_space.low, dtype=torch.float32)
            self._high = torch.as_tensor(action_space.high, dtype=torch.float32)
        self.optimizer = torch.optim.Adam(self.q_net.parameters(), lr=config.lr)

    @torch.no_grad()
    def _expected_q(self, net: QNet, obs: torch.Tensor) -> torch.Tensor:
        """``E_{a ~ pi(.|s)} net(s, a)`` for ``obs [B, obs_dim]`` -> ``[B]`` float32."""
        if self.discrete:
            q_all = net.all_actions(obs)
            return (self.policy.distribution(obs).probs.to(q_all.dtype) * q_all).sum(-1)
        n = self.config.n_action_samples
        actions = self.policy.distribution(obs).sample((n,))  # [n, B, act_dim]
        actions = torch.maximum(torch.minimum(actions.float(), self._high), self._low)
        return net(obs.expand(n, *obs.shape), actions).mean(0)  # Q: [n, B] -> [B]

    def update(self, batch: Transitions) -> dict[str, float]:
        """One regression step of Q(s, a) towards y = r + gamma (1 - terminated) E_pi Qbar(s', .), then
        ``Qbar <- (1 - tau) Qbar + tau Q``.

        Args:
            batch: ``B`` logged transitions: ``obs``/``next_obs [B, obs_dim]``, ``action [B, |A|]`` float32
                (continuous) or int64 ``[B]`` (discrete), ``reward [B]``, ``terminated [B]`` bool (truncated steps
                bootstrap).
        Returns:
            ``q_loss`` (mean squared TD error), ``q_mean`` (mean Q(s, a)) and ``target_mean`` (mean y).
        Source: Le, Voloshin & Yue (2019) arXiv:1903.08738, Algorithm 3 (FQE).
        """
        cfg = self.config
        with torch.no_grad():
            v_next = self._expected_q(self.q_target.net, batch.next_obs)
            target = batch.reward + cfg.gamma * (~batch.terminated).float() * v_next
        loss, metrics = td_loss(self.q_net(batch.obs, batch.action), target)
        gradient_step(self.optimizer, loss, cfg.max_grad_norm)
        self.q_target.update(cfg.tau)
        metrics["target_mean"] = float(target.mean())
        return metrics

    @torch.no_grad()
    def q(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Fitted ``Q(s, a)`` for raw ``obs [B, obs_dim]`` and ``action [B, *act_shape]`` -> ``[B]`` float32."""
        return self.q_net(torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(action))

    @torch.no_grad()
    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """``V(s) = E_{a ~ pi(.|s)} Q(s, a)`` for raw ``obs [B, obs_dim]`` -> ``[B]`` (continuous: sample mean)."""
        return self._expected_q(self.q_net, torch.as_tensor(obs, dtype=torch.float32))

    def state_dict(self) -> dict:
        return {"q": self.q_net.state_dict(), "q_target": self.q_target.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.q_net.load_state_dict(state["q"])
        self.q_target.load_state_dict(state["q_target"])
        self.optimizer.load_state_dict(state["optimizer"])


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("fqe", FQEConfig, FQELearner, loop="ope", inputs="dataset+policy",
         summary="fitted Q evaluation of a fixed policy (Le et al. 2019), used by `hybridrl ope`",
         tiny=dict(hidden=(32, 32)))
