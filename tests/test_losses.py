"""Unit tests of hybridrl.losses: hand-computed cases, naive formulas on random inputs, gradients, bad shapes."""

from __future__ import annotations

import math

import pytest
import torch

from hybridrl.errors import ShapeError
from hybridrl.losses import (
    awr_policy_loss,
    bc_loss,
    bc_mse_loss,
    entropy_bonus,
    expectile_loss,
    ppo_clip_loss,
    td_loss,
    value_loss,
)


def t(x, grad=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def approx(x, tol=1e-9):
    return pytest.approx(x, abs=tol, rel=tol)


def assert_float_metrics(metrics, names):
    assert set(metrics) == set(names)
    assert all(type(v) is float for v in metrics.values())


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------ PPO
def test_ppo_clip_loss_hand_and_gradient():
    logp = t([math.log(1.5), math.log(0.5), math.log(1.1)], grad=True)
    blp, adv = t([0.0, 0.0, 0.0]), t([1.0, 1.0, -1.0])
    loss, m = ppo_clip_loss(logp, blp, adv, 0.2)
    # per sample: max(-1.5, -1.2) = -1.2; max(-0.5, -0.8) = -0.5; max(1.1, 1.1) = 1.1
    assert loss.item() == approx(-0.2)
    assert_float_metrics(m, ["policy_loss", "approx_kl", "clip_fraction", "ratio_mean", "ratio_max"])
    assert m["policy_loss"] == approx(-0.2)
    assert m["clip_fraction"] == approx(2 / 3)
    assert m["ratio_mean"] == approx(3.1 / 3)
    assert m["ratio_max"] == approx(1.5)
    kl = sum((r - 1) - math.log(r) for r in (1.5, 0.5, 1.1)) / 3
    assert m["approx_kl"] == approx(kl)
    loss.backward()
    # clipped sample (r > 1 + eps, A > 0) has zero gradient; others d(-A r)/dlogp = -A r
    torch.testing.assert_close(logp.grad, t([0.0, -0.5 / 3, 1.1 / 3]))


def test_ppo_clip_loss_random_vs_loop_and_mask():
    logp, blp, adv = randn(200, seed=1) * 0.3, randn(200, seed=2) * 0.3, randn(200, seed=3)
    eps = 0.2
    loss, m = ppo_clip_loss(logp, blp, adv, eps)
    terms, clipped = [], 0
    for lp, b, a in zip(logp.tolist(), blp.tolist(), adv.tolist()):
        r = math.exp(lp - b)
        terms.append(-min(r * a, min(max(r, 1 - eps), 1 + eps) * a))
        clipped += abs(r - 1) > eps
    assert loss.item() == approx(sum(terms) / 200)
    assert m["clip_fraction"] == approx(clipped / 200)
    mask = torch.arange(200) % 4 != 0
    loss_m, m_m = ppo_clip_loss(logp, blp, adv, eps, mask=mask)
    loss_s, m_s = ppo_clip_loss(logp[mask], blp[mask], adv[mask], eps)
    assert loss_m.item() == approx(loss_s.item())
    assert m_m == pytest.approx(m_s)
    loss_e, m_e = ppo_clip_loss(logp, blp, adv, eps, mask=torch.zeros(200, dtype=torch.bool))
    assert loss_e.item() == 0.0 and all(v == 0.0 for v in m_e.values())


def test_ppo_clip_loss_no_gradient_to_behavior_or_advantage():
    logp, blp, adv = t([0.1, -0.2], grad=True), t([0.0, 0.0], grad=True), t([1.0, -1.0], grad=True)
    ppo_clip_loss(logp, blp, adv, 0.2)[0].backward()
    assert logp.grad is not None and blp.grad is None and adv.grad is None


def test_ppo_clip_loss_bad_shapes():
    x = torch.zeros(8)
    with pytest.raises(ShapeError):
        ppo_clip_loss(x, x, torch.zeros(8, 1), 0.2)  # the classic [B, 1] vs [B] broadcast bug
    with pytest.raises(ShapeError):
        ppo_clip_loss(x, x[:7], x, 0.2)
    with pytest.raises(ShapeError):
        ppo_clip_loss(x, x, x, 0.2, mask=torch.ones(8))  # float mask


# ---------------------------------------------------------------------------------------- value
def test_value_loss_hand():
    loss, m = value_loss(t([1.0, 2.0]), t([0.0, 4.0]))
    assert loss.item() == approx(1.25) and m == {"value_loss": approx(1.25)}
    # clipped: V_clip = [0.5, 2.0] -> max(0.04, 0.49) = 0.49, max(0, 0) = 0 -> 0.5 * 0.245
    loss, m = value_loss(t([1.0, 2.0]), t([1.2, 2.0]), old_value=t([0.0, 2.5]), clip_range=0.5)
    assert loss.item() == approx(0.1225)
    assert_float_metrics(m, ["value_loss"])


def test_value_loss_random_vs_cleanrl_formula_and_mask():
    v, ret, old = randn(100, seed=4), randn(100, seed=5), randn(100, seed=6)
    c = 0.2
    loss, _ = value_loss(v, ret, old_value=old, clip_range=c)
    exp = 0.0
    for a, r, o in zip(v.tolist(), ret.tolist(), old.tolist()):
        exp += max((a - r) ** 2, (o + min(max(a - o, -c), c) - r) ** 2)
    assert loss.item() == approx(0.5 * exp / 100)
    mask = torch.arange(100) < 30
    assert float(value_loss(v, ret, mask=mask)[0]) == approx(0.5 * float(((v[:30] - ret[:30]) ** 2).mean()))


def test_value_loss_gradient_and_errors():
    v, ret = t([1.0, 3.0], grad=True), t([0.0, 0.0], grad=True)
    value_loss(v, ret)[0].backward()
    torch.testing.assert_close(v.grad, t([0.5, 1.5]))
    assert ret.grad is None
    with pytest.raises(ShapeError):
        value_loss(torch.zeros(4, 1), torch.zeros(4))
    with pytest.raises(ShapeError):
        value_loss(torch.zeros(4), torch.zeros(4), old_value=torch.zeros(3), clip_range=0.2)
    with pytest.raises(ValueError):
        value_loss(torch.zeros(4), torch.zeros(4), clip_range=0.2)
    with pytest.raises(ValueError):
        value_loss(torch.zeros(4), torch.zeros(4), old_value=torch.zeros(4), clip_range=0.0)


# -------------------------------------------------------------------------------------- entropy
def test_entropy_bonus():
    loss, m = entropy_bonus(t([1.0, 2.0, 3.0]))
    assert loss.item() == approx(-2.0) and m == {"entropy": approx(2.0)}
    loss, m = entropy_bonus(t([1.0, 2.0, 3.0]), mask=torch.tensor([True, False, False]))
    assert loss.item() == approx(-1.0)
    with pytest.raises(ShapeError):
        entropy_bonus(torch.zeros(3), mask=torch.ones(2, dtype=torch.bool))


# ------------------------------------------------------------------------------------ expectile
def test_expectile_loss_hand():
    loss, m = expectile_loss(t([1.0, -2.0]), 0.7)
    assert loss.item() == approx((0.7 * 1 + 0.3 * 4) / 2)
    assert m == {"value_loss": approx(0.95), "expectile_weight_mean": approx(0.5)}
    loss, _ = expectile_loss(t([1.0, -2.0]), 0.5)
    assert loss.item() == approx(0.5 * 2.5)


def test_expectile_loss_random_and_minimiser():
    d = randn(300, seed=7)
    loss, _ = expectile_loss(d, 0.8)
    exp = sum((0.8 if x >= 0 else 0.2) * x * x for x in d.tolist()) / 300
    assert loss.item() == approx(exp)
    # minimising over a constant V: tau = 0.5 gives the mean, tau > 0.5 lies above it
    q = randn(500, seed=8)
    grid = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    best = {tau: float(grid[torch.stack([expectile_loss(q - v, tau)[0] for v in grid]).argmin()]) for tau in (0.5, 0.9)}
    assert abs(best[0.5] - float(q.mean())) < 2e-3
    assert best[0.9] > float(q.mean()) + 0.3


def test_expectile_loss_errors():
    with pytest.raises(ValueError):
        expectile_loss(torch.zeros(3), 1.0)
    with pytest.raises(ShapeError):
        expectile_loss(torch.zeros(3, dtype=torch.long), 0.7)


# -------------------------------------------------------------------------------------- AWR/IQL
def test_awr_policy_loss_hand():
    loss, m = awr_policy_loss(t([-1.0, -2.0], grad=True), t([0.0, math.log(2.0)]), temperature=1.0)
    assert loss.item() == approx(2.5)
    assert_float_metrics(m, ["actor_loss", "weight_mean", "weight_max"])
    assert m["weight_mean"] == approx(1.5) and m["weight_max"] == approx(2.0)
    loss, m = awr_policy_loss(t([-1.0]), t([100.0]), temperature=3.0)  # exp(300) clipped to 100, no inf
    assert loss.item() == approx(100.0) and m["weight_max"] == approx(100.0)


def test_awr_policy_loss_random_and_gradient():
    logp, adv = randn(64, seed=9).requires_grad_(), randn(64, seed=10).requires_grad_()
    loss, _ = awr_policy_loss(logp, adv, temperature=3.0, max_weight=20.0)
    exp = -sum(min(math.exp(3.0 * a), 20.0) * lp for lp, a in zip(logp.tolist(), adv.tolist())) / 64
    assert loss.item() == approx(exp)
    loss.backward()
    assert adv.grad is None
    w = torch.exp(3.0 * adv.detach()).clamp(max=20.0)
    torch.testing.assert_close(logp.grad, -w / 64)
    with pytest.raises(ShapeError):
        awr_policy_loss(torch.zeros(4), torch.zeros(4, 1), 3.0)
    with pytest.raises(ValueError):
        awr_policy_loss(torch.zeros(4), torch.zeros(4), -1.0)


# ------------------------------------------------------------------------------------------- BC
def test_bc_losses():
    loss, m = bc_loss(t([-1.0, -3.0]))
    assert loss.item() == approx(2.0) and m == {"bc_loss": approx(2.0)}
    pred, act = t([[1.0, 2.0], [3.0, 4.0]], grad=True), t([[1.0, 1.0], [1.0, 1.0]], grad=True)
    loss, m = bc_mse_loss(pred, act)
    assert loss.item() == approx(3.5) and m == {"bc_loss": approx(3.5)}
    loss.backward()
    assert act.grad is None
    torch.testing.assert_close(pred.grad, t([[0.0, 0.5], [1.0, 1.5]]))
    x, y = randn(16, 3, seed=11), randn(16, 3, seed=12)
    exp = sum((a - b) ** 2 for ra, rb in zip(x.tolist(), y.tolist()) for a, b in zip(ra, rb)) / 48
    assert float(bc_mse_loss(x, y)[0]) == approx(exp)
    with pytest.raises(ShapeError):
        bc_mse_loss(torch.zeros(4, 1), torch.zeros(4))
    with pytest.raises(ShapeError):
        bc_loss(torch.zeros(3, dtype=torch.int64))


# ------------------------------------------------------------------------------------------- TD
def test_td_loss():
    q, target = t([1.0, 2.0], grad=True), t([0.0, 4.0], grad=True)
    loss, m = td_loss(q, target)
    assert loss.item() == approx(2.5)
    assert m == {"q_loss": approx(2.5), "q_mean": approx(1.5)}
    loss.backward()
    assert target.grad is None
    torch.testing.assert_close(q.grad, t([1.0, -2.0]))
    a, b = randn(32, seed=13), randn(32, seed=14)
    assert float(td_loss(a, b)[0]) == approx(sum((x - y) ** 2 for x, y in zip(a.tolist(), b.tolist())) / 32)
    with pytest.raises(ShapeError):
        td_loss(torch.zeros(4, 1), torch.zeros(4))
