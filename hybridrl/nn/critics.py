"""Shared critic pieces of the off-policy and offline learners: twin Q-networks and Polyak target networks.

    twin critics:   Q_1, Q_2 trained on the same target; min(Q_1, Q_2) curbs overestimation (Fujimoto et al. 2018,
                    "Addressing Function Approximation Error in Actor-Critic Methods", sec. 4.2, eq. 10)
    target network: Qbar <- (1 - tau) Qbar + tau Q after every gradient step (Lillicrap et al. 2016, DDPG, Alg. 1)

``layer_norm=True`` puts a LayerNorm after every hidden linear layer of both critics (Ball et al. 2023, RLPD,
arXiv:2302.02948, sec. 3.2: it bounds Q-values extrapolated to unseen actions); off by default.

Used by SAC, PMOE-SAC, off-policy MDPO, IQL (:class:`TwinQ` + :class:`TargetNetwork`) and FQE (one
:class:`~hybridrl.nn.QNet` + :class:`TargetNetwork`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hybridrl.nn import ObsNormalizer, QNet
from hybridrl.ops import polyak_update

__all__ = ["TwinQ", "TargetNetwork", "layer_norm_q"]


def layer_norm_q(q: QNet) -> QNet:
    """Insert ``nn.LayerNorm(width)`` after every hidden ``Linear`` of ``q.net`` (in place; returns ``q``).

    The linear layers keep their initialisation; LayerNorm starts as the identity affine map (weight 1, bias 0).
    """
    layers: list[nn.Module] = []
    linears = [m for m in q.net if isinstance(m, nn.Linear)]
    for m in q.net:
        layers.append(m)
        if isinstance(m, nn.Linear) and m is not linears[-1]:
            layers.append(nn.LayerNorm(m.out_features))
    q.net = nn.Sequential(*layers)
    return q


class TwinQ(nn.Module):
    """Two independent :class:`~hybridrl.nn.QNet` critics ``q1``, ``q2`` of the same architecture.

    ``q1`` is built (and initialised from torch's global RNG) before ``q2``; both read observations through the
    shared ``obs_norm`` (not a submodule, never updated here). ``parameters()`` lists ``q1``'s then ``q2``'s.

    Args:
        obs_dim: observation size. action_dim: ``|A|`` (continuous) or the number of actions (discrete).
        discrete: Discrete action space (``Q(s, .)`` heads) instead of ``Q(s, a)`` on ``[s, a]``.
        hidden, activation: MLP widths and nonlinearity ("relu" or "tanh").
        obs_norm: the policy's observation normaliser, shared by both critics (None: raw observations).
        layer_norm: LayerNorm after every hidden linear layer (RLPD); :func:`layer_norm_q`.
    """

    def __init__(self, obs_dim: int, action_dim: int, discrete: bool, hidden: Sequence[int] = (256, 256),
                 activation: str = "relu", obs_norm: ObsNormalizer | None = None, layer_norm: bool = False):
        super().__init__()
        self.q1 = QNet(obs_dim, action_dim, discrete, hidden, activation, obs_norm=obs_norm)
        self.q2 = QNet(obs_dim, action_dim, discrete, hidden, activation, obs_norm=obs_norm)
        if layer_norm:
            layer_norm_q(self.q1)
            layer_norm_q(self.q2)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Q_1(s, a), Q_2(s, a))``, each ``[*lead]``, for ``obs [*lead, obs_dim]`` and ``action [*lead, act_dim]``
        (continuous; any leading dims broadcast) or int64 ``action [B]`` (discrete)."""
        return self.q1(obs, action), self.q2(obs, action)

    def min(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``min(Q_1(s, a), Q_2(s, a))``, elementwise, shape ``[*lead]`` (Fujimoto et al. 2018, eq. 10)."""
        return torch.min(*self(obs, action))

    def all_actions(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Discrete only: ``(Q_1(s, .), Q_2(s, .))``, each ``[B, n_actions]``."""
        return self.q1.all_actions(obs), self.q2.all_actions(obs)


class TargetNetwork(nn.Module):
    """A frozen copy ``net`` of an online module, moved towards it by Polyak averaging (DDPG, Alg. 1).

    The caller builds ``net`` with the online module's architecture (so that it shares the online module's
    observation normaliser, which a ``copy.deepcopy`` would duplicate, and initialises from the RNG in the order
    the learner always used); the constructor copies the online weights into it and turns off ``requires_grad``
    for good: :meth:`update` and :meth:`load_state_dict` write in place and never switch it back on.
    ``forward`` runs ``net`` under ``torch.no_grad`` (target values never carry a gradient). The online module is
    referenced, not registered: it is neither in :meth:`parameters` nor in the state dict.
    :meth:`state_dict` / :meth:`load_state_dict` use the keys of ``net`` itself (a target's state dict loads into a
    plain module of the same architecture and back).

    Raises:
        RuntimeError: in the constructor, when ``net`` and ``online`` have different state-dict keys or shapes.
    """

    def __init__(self, net: nn.Module, online: nn.Module):
        super().__init__()
        self.net = net
        self._online = [online]  # a reference, not a submodule
        self.net.load_state_dict(online.state_dict())
        self.net.requires_grad_(False)

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.net(*args, **kwargs)

    @torch.no_grad()
    def update(self, tau: float) -> None:
        """``theta_bar <- (1 - tau) theta_bar + tau theta`` for every parameter pair (buffers are not touched).

        ``tau`` in [0, 1] (1 = hard copy); ValueError otherwise (:func:`hybridrl.ops.polyak_update`).
        """
        polyak_update(self.net, self._online[0], tau)

    def state_dict(self, *args, **kwargs):
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)
