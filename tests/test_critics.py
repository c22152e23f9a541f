"""TwinQ and TargetNetwork (hybridrl.nn.critics): Polyak arithmetic by hand, frozen targets, twin independence."""

from __future__ import annotations

import pytest
import torch

from hybridrl.errors import ShapeError
from hybridrl.nn import ObsNormalizer, QNet
from hybridrl.nn.critics import TargetNetwork, TwinQ


def _linear(weight: float, bias: float) -> torch.nn.Linear:
    lin = torch.nn.Linear(1, 1)
    with torch.no_grad():
        lin.weight.fill_(weight)
        lin.bias.fill_(bias)
    return lin


def test_target_starts_as_a_copy_and_polyak_matches_hand_values():
    online = _linear(2.0, -1.0)
    target = TargetNetwork(_linear(0.0, 0.0), online)
    assert float(target.net.weight) == 2.0 and float(target.net.bias) == -1.0  # hard copy at construction
    with torch.no_grad():
        online.weight.fill_(4.0)
        online.bias.fill_(1.0)
    target.update(0.25)  # 0.75 * 2 + 0.25 * 4 = 2.5;  0.75 * -1 + 0.25 * 1 = -0.5
    assert float(target.net.weight) == pytest.approx(2.5) and float(target.net.bias) == pytest.approx(-0.5)
    target.update(0.25)  # 0.75 * 2.5 + 0.25 * 4 = 2.875
    assert float(target.net.weight) == pytest.approx(2.875)
    target.update(1.0)  # tau = 1: hard copy
    assert float(target.net.weight) == 4.0 and float(target.net.bias) == 1.0
    assert float(target(torch.tensor([[2.0]]))) == pytest.approx(9.0)
    with pytest.raises(ValueError):
        target.update(1.5)


def test_target_never_gets_gradients_and_stays_frozen_through_load():
    torch.manual_seed(0)
    online = QNet(3, 2, False, (8,))
    target = TargetNetwork(QNet(3, 2, False, (8,)), online)
    assert not any(p.requires_grad for p in target.parameters())
    obs, act = torch.randn(5, 3, requires_grad=True), torch.randn(5, 2)
    out = target(obs, act)
    assert not out.requires_grad  # computed under no_grad even for inputs that carry a gradient
    (online(obs, act).sum() + (obs * 0).sum()).backward()
    assert all(p.grad is None for p in target.parameters())
    target.update(0.5)
    target.load_state_dict(online.state_dict())
    assert not any(p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())  # the online module is untouched


def test_target_state_dict_round_trip_uses_the_wrapped_keys():
    torch.manual_seed(0)
    online = TwinQ(3, 2, False, (8,))
    target = TargetNetwork(TwinQ(3, 2, False, (8,)), online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    target.update(0.1)
    state = target.state_dict()
    assert set(state) == set(online.state_dict())  # keys of the wrapped TwinQ (q1.net.0.weight, ...)
    other = TargetNetwork(TwinQ(3, 2, False, (8,)), TwinQ(3, 2, False, (8,)))
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(other.parameters(), target.parameters()))
    assert not any(p.requires_grad for p in other.parameters())
    assert list(target.parameters()) == list(target.net.parameters())  # the online critic is not registered
    with pytest.raises(RuntimeError):
        TargetNetwork(TwinQ(3, 2, False, (4,)), online)
    mismatched = TargetNetwork(TwinQ(3, 2, False, (8,)), online)
    mismatched._online[0] = TwinQ(3, 2, False, (4,))
    with pytest.raises(ShapeError):
        mismatched.update(0.5)


def test_twin_critics_are_independent():
    torch.manual_seed(0)
    twin = TwinQ(3, 2, False, (8, 8))
    assert not any(a.data_ptr() == b.data_ptr() for a, b in zip(twin.q1.parameters(), twin.q2.parameters()))
    obs, act = torch.randn(16, 3), torch.randn(16, 2)
    q1, q2 = twin(obs, act)
    assert q1.shape == q2.shape == (16,) and not torch.allclose(q1, q2)  # different initialisations
    assert torch.equal(twin.min(obs, act), torch.minimum(q1, q2))
    q1.sum().backward()  # a loss on Q_1 alone reaches only Q_1
    assert all(p.grad is not None for p in twin.q1.parameters())
    assert all(p.grad is None for p in twin.q2.parameters())
    assert [id(p) for p in twin.parameters()] == [id(p) for p in (*twin.q1.parameters(), *twin.q2.parameters())]


def test_twin_initialisation_order_and_broadcast_over_leading_dims():
    """q1 then q2 from the global RNG, as the learners built them by hand; [B, K, .] inputs give [B, K]."""
    torch.manual_seed(3)
    twin = TwinQ(3, 2, False, (8,))
    torch.manual_seed(3)
    q1, q2 = QNet(3, 2, False, (8,)), QNet(3, 2, False, (8,))
    assert all(torch.equal(a, b) for a, b in zip(twin.parameters(), (*q1.parameters(), *q2.parameters())))
    obs, act = torch.randn(4, 5, 3), torch.randn(4, 5, 2)
    flat = twin.min(obs.reshape(20, 3), act.reshape(20, 2)).reshape(4, 5)
    torch.testing.assert_close(twin.min(obs, act), flat)


def test_discrete_twin_all_actions_and_shared_normaliser():
    torch.manual_seed(0)
    norm = ObsNormalizer(3)
    norm.set_stats([1.0, 2.0, 3.0], [4.0, 4.0, 4.0], 10)
    twin = TwinQ(3, 4, True, (8,), obs_norm=norm)
    target = TargetNetwork(TwinQ(3, 4, True, (8,), obs_norm=norm), twin)
    obs, act = torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 1])
    all1, all2 = twin.all_actions(obs)
    assert all1.shape == all2.shape == (6, 4)
    q1, q2 = twin(obs, act)
    torch.testing.assert_close(q1, all1.gather(1, act[:, None]).squeeze(1))
    torch.testing.assert_close(q2, all2.gather(1, act[:, None]).squeeze(1))
    assert twin.q1._obs_norm[0] is norm and target.net.q2._obs_norm[0] is norm  # shared, not copied
    torch.testing.assert_close(torch.min(*target(obs, act)), twin.min(obs, act))
