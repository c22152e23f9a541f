"""CoPG, A-LoL, BAPO and CHORD against hand-written formulas (hybridrl.text.losses_extra)."""

from __future__ import annotations

import math

import pytest
import torch

from hybridrl.text import losses_extra as X

torch.manual_seed(1)
B, C = 4, 3
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
LOGP = -torch.rand(B, C) - 0.1
REF = LOGP + 0.3 * torch.randn(B, C)
R = torch.tensor([1.0, 0.2, -0.5, 0.5])


def test_copg_gradient_is_the_contrastive_policy_gradient():
    beta = 0.3
    logp = LOGP.clone().requires_grad_(True)
    X.copg_loss(logp, REF, R, MASK, beta=beta)[0].backward()
    seq, ref = (LOGP * MASK).sum(1), (REF * MASK).sum(1)
    r_beta = R - beta * (seq - ref)
    expected = torch.zeros(B, C)
    for k in range(B // 2):
        coef = float(r_beta[2 * k] - r_beta[2 * k + 1]) / 2 / (B // 2)
        expected[2 * k] = -coef * MASK[2 * k]
        expected[2 * k + 1] = coef * MASK[2 * k + 1]
    assert torch.allclose(logp.grad, expected, atol=1e-6)
    with pytest.raises(ValueError, match="pairs"):
        X.copg_loss(LOGP[:3], REF[:3], R[:3], MASK[:3])


def test_copg_with_reward_gap_one_half_is_ipo_up_to_a_constant():
    beta = 0.5  # IPO: (h − 1/(2τ))² with τ = β gives (β/4)(h − 1/(2β))² + const as the CoPG loss
    logp = LOGP[:2].clone().requires_grad_(True)
    X.copg_loss(logp, REF[:2], torch.tensor([0.5, 0.0]), MASK[:2], beta=beta)[0].backward()
    lp2 = LOGP[:2].clone().requires_grad_(True)
    seq, ref = (lp2 * MASK[:2]).sum(1), (REF[:2] * MASK[:2]).sum(1)
    h = (seq[0] - ref[0]) - (seq[1] - ref[1])
    ((beta / 4) * (h - 1 / (2 * beta)) ** 2).backward()
    assert torch.allclose(logp.grad, lp2.grad, atol=1e-6)


@pytest.mark.parametrize("variant", ["alol", "alol_seq", "ref_free"])
def test_alol_variants(variant):
    adv = torch.tensor([0.5, -0.2, 1.0, 0.3])
    logp = LOGP.clone().requires_grad_(True)
    X.alol_loss(logp, REF, adv, MASK, clip=0.2, variant=variant)[0].backward()
    if variant == "ref_free":
        w = adv[:, None].expand(B, C)
    elif variant == "alol":
        rho = torch.exp(((LOGP - REF) * MASK).sum(1)).clamp(0.8, 1.2)
        w = (adv.clamp(min=0) * rho)[:, None].expand(B, C)
    else:
        w = adv.clamp(min=0)[:, None] * torch.exp(LOGP - REF).clamp(0.8, 1.2)
    assert torch.allclose(logp.grad, -w * MASK / B, atol=1e-6)


def test_bapo_bounds_code_count_versus_gradient_carrying_count():
    mask = torch.ones(1, 4, dtype=torch.bool)
    ratio = torch.tensor([[1.1, 1.1, 0.7, 1.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -2.0]])
    # code count: P = 2·min(1.1, c_high) = 2.2 never changes; N = max(0.7, c_low) + 2·max(1.0, c_low) only grows, so
    # c_low runs to its maximum 0.9 and c_high to its maximum 3.0 without reaching P/N = 1 (the pitfall of §11e)
    lo, hi = X.bapo_bounds(ratio, adv, mask, low=(0.6, 0.9), high=(1.2, 3.0), step=0.05)
    assert lo == pytest.approx(0.9) and hi == pytest.approx(3.0)
    # gradient-carrying count: at c_low = 0.75 the 0.7 token loses its gradient → N = 2, P/N = 1.1 ≥ 1
    lo, hi = X.bapo_bounds(ratio, adv, mask, contribution="gradient")
    assert lo == pytest.approx(0.75) and hi == pytest.approx(1.2)
    loss, m = X.bapo_loss(torch.log(ratio), torch.zeros(1, 4), adv, mask)
    per = [-1.1, -1.1, min(max(0.7, 0.9), 3.0), min(max(2.0, 2.0), 6.0)]
    assert float(loss) == pytest.approx(sum(per) / 4, rel=1e-5) and m["clip_low"] == pytest.approx(0.9)


def test_chord_schedule_and_phi_weight():
    assert X.chord_weight(0, 0.5, 0.02, 200, 400) == 0.0
    assert X.chord_weight(100, 0.5, 0.02, 200, 400) == pytest.approx(0.25)
    assert X.chord_weight(400, 0.5, 0.02, 200, 400) == pytest.approx(0.02 + 0.48 * 0.5)
    assert X.chord_weight(10_000, 0.5, 0.02, 200, 400) == pytest.approx(0.02)
    logp = LOGP.clone().requires_grad_(True)
    rl = torch.tensor(2.0)
    loss, _ = X.chord_loss(rl, logp, MASK, 0.25)
    p = LOGP.exp()
    sft = float((-(p * (1 - p)) * LOGP * MASK).sum() / MASK.sum())
    assert float(loss.detach()) == pytest.approx(0.75 * 2.0 + 0.25 * sft, rel=1e-5)
    loss.backward()
    assert torch.allclose(logp.grad, -0.25 * p * (1 - p) * MASK / MASK.sum(), atol=1e-6)
    assert math.isfinite(float(X.chord_loss(rl, LOGP, MASK, 0.1, phi=False)[0]))
