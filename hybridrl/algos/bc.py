"""Behaviour cloning: maximum-likelihood fit of pi(a|s) to dataset actions.

    L(theta) = -E_{(s,a)~D}[ log pi_theta(a|s) ]

Used as an offline baseline and to estimate an unknown behaviour policy for importance sampling
(Pomerleau 1991; as the BC baseline in Fujimoto & Gu 2021, with a stochastic policy so that
log-probabilities exist).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import torch

from hybridrl.algos import check_config, gradient_step
from hybridrl.data.batches import Transitions
from hybridrl.data.weighting import check_sampler
from hybridrl.losses import bc_loss
from hybridrl.nn import Policy, make_policy


@dataclass(frozen=True)
class BCConfig:
    """Behaviour-cloning hyperparameters.

    Attributes:
        lr: Adam learning rate (> 0).
        batch_size: transitions per gradient step (used by the loop).
        hidden: hidden layer widths of the policy MLP.
        activation: "relu" or "tanh".
        weight_decay: Adam L2 penalty (>= 0).
        max_grad_norm: global gradient-norm clip; None disables.
        sampler, sampler_alpha: minibatch sampling of the offline loop: "uniform", or trajectory weighting "rw"/"aw"
            with temperature sampler_alpha (Hong et al. 2023; :mod:`hybridrl.data.weighting`).
        log_std_init: initial state-independent log standard deviation (continuous actions).
    """

    lr: float = 1e-3
    batch_size: int = 256
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    log_std_init: float = -0.5
    sampler: str = "uniform"
    sampler_alpha: float = 0.1

    def __post_init__(self) -> None:
        check_config(self, lr=(1e-12, None), batch_size=(1, None), weight_decay=(0.0, None),
                     max_grad_norm=(1e-12, None))
        check_sampler(self)


class BCLearner:
    """Behaviour cloning learner (Discrete or Box actions; continuous: a Gaussian with a tanh-bounded mean)."""

    def __init__(self, config: BCConfig, observation_space: gym.Space, action_space: gym.Space, seed: int = 0,
                 policy: Policy | None = None):
        torch.manual_seed(seed)
        self.config = config
        gaussian = {} if isinstance(action_space, gym.spaces.Discrete) else {"tanh_mean": True,
                                                                            "log_std_init": config.log_std_init}
        self.policy = policy or make_policy(observation_space, action_space, config.hidden, config.activation,
                                            **gaussian)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def update(self, batch: Transitions) -> dict[str, float]:
        """One gradient step of ``-mean log pi(a|s)`` over the batch.

        Args:
            batch: ``B`` dataset transitions; only ``obs [B, obs_dim]`` and ``action`` (``[B, |A|]`` float32 for Box,
                int64 ``[B]`` for Discrete) are read.
        Returns:
            ``bc_loss`` (the negative log-likelihood, nats per sample) and ``logp_mean`` (``mean log pi(a|s)``).
        Source: Pomerleau (1991); the BC baseline of Fujimoto & Gu (2021) arXiv:2106.06860 with a stochastic policy.
        """
        logp = self.policy.log_prob(batch.obs, batch.action)
        loss, metrics = bc_loss(logp)
        gradient_step(self.optimizer, loss, self.config.max_grad_norm)
        metrics["logp_mean"] = float(logp.detach().mean())
        return metrics

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("bc", BCConfig, BCLearner, loop="offline", inputs="dataset", summary="behaviour cloning (maximum likelihood)")
