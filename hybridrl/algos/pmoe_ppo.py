"""PMOE-PPO: PPO with a probabilistic mixture-of-experts policy (Ren et al. 2021, arXiv:2104.09122).

The actor is a :class:`GaussianMixturePolicy` of ``n_experts`` unsquashed Gaussians (free log-stds) with a softmax
router; PPO's clipped surrogate uses the mixture's exact log-density. As in the author-affiliated ``pmoe_ppo.py``
(github.com/quantumiracle/Popular-RL-Algorithms @3b814ea), an auxiliary ``Q(s, a)`` trained by the same Adam gives
the router its "which expert is best" target. Per minibatch, added to PPO's loss (coefficients 1):

    L_Q      = mean (Q(s, a) - R)^2                                    R: the GAE returns of the visited pairs
    L_router = mean_{B,K} (w(s) - onehot(argmax_k Q(s, a_k)))^2        a_k: one fresh sample of each expert

See docs/algorithms/pmoe.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import torch

from hybridrl.algos.actor_critic import Minibatch
from hybridrl.algos.ppo import AuxLoss, PPOConfig, PPOLearner
from hybridrl.data.batches import Segments
from hybridrl.losses.sac import pmoe_router_loss
from hybridrl.nn import Policy, QNet
from hybridrl.nn.mixture import make_mixture_policy


@dataclass(frozen=True)
class PMOEPPOConfig(PPOConfig):
    """PMOE-PPO hyperparameters: PPO's (:class:`PPOConfig`) plus

    Attributes:
        n_experts: K, experts of the mixture policy (>= 1).
    """

    n_experts: int = 4

    def __post_init__(self) -> None:
        from hybridrl.algos import check_config

        super().__post_init__()
        check_config(self, n_experts=(1, None))


class PMOEPPOLearner(PPOLearner):
    """PMOE-PPO: :class:`PPOLearner` with a mixture actor and the auxiliary ``q_net`` (Box actions only).

    ``update(Segments, aux_losses=()) -> metrics``: PPO's metrics plus ``q_loss``, ``router_loss``,
    ``router_entropy`` and ``best_weight`` (minibatch means). Raises ShapeError for non-Box action spaces.
    """

    def _default_policy(self, observation_space: gym.Space, action_space: gym.Space) -> Policy:
        cfg = self.config
        return make_mixture_policy(observation_space, action_space, cfg.n_experts, cfg.hidden, cfg.activation,
                                   cfg.normalize_obs, squash=False, state_dependent_std=False,
                                   log_std_init=cfg.log_std_init)

    def _extra_parameters(self, observation_space: gym.Space, action_space: gym.Space):
        self.q_net = QNet(observation_space.shape[0], action_space.shape[0], False, self.config.hidden, "relu",
                          obs_norm=self.policy.obs_norm)
        return self.q_net.parameters()

    def update(self, batch: Segments, aux_losses: Sequence[AuxLoss] = ()) -> dict[str, float]:
        """PPO's update (``batch``: ``Segments [B, T]``) with :meth:`router_q_loss` as the first auxiliary loss."""
        return super().update(batch, aux_losses=(self.router_q_loss, *aux_losses))

    def router_q_loss(self, mb: Minibatch) -> tuple[torch.Tensor, dict[str, float]]:
        """``L_Q + L_router`` of one minibatch (``obs [M, obs_dim]``, ``action [M, A]``, ``ret [M]``)."""
        obs = mb["obs"]
        q_loss = (self.q_net(obs, mb["action"]) - mb["ret"]).square().mean()
        with torch.no_grad():
            expert_actions, _, _ = self.policy.expert_sample(obs)  # [M, K, A]
            expert_q = self.q_net(obs.unsqueeze(1).expand(-1, expert_actions.shape[1], -1), expert_actions)  # [M, K]
        router_loss, metrics = pmoe_router_loss(self.policy.weights(obs), expert_q)
        metrics["q_loss"] = float(q_loss.detach())
        return q_loss + router_loss, metrics

    def state_dict(self) -> dict:
        return {**super().state_dict(), "q_net": self.q_net.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.q_net.load_state_dict(state["q_net"])


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("pmoe_ppo", PMOEPPOConfig, PMOEPPOLearner, loop="on_policy", inputs="env", action_spaces=("continuous",),
         summary="PMOE-PPO, PPO with a Gaussian-mixture policy (Ren et al. 2021)",
         tiny=dict(n_steps=16, num_envs=2, minibatch_size=16, n_epochs=2, n_experts=3))
