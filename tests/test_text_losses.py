"""Sequence losses of hybridrl.text.losses against hand-written formulas on small tensors, and the 3-armed bandit of
Yao et al. / Arnal et al. (off-policy REINFORCE with a baseline converges to pi ∝ mu (r − V))."""

from __future__ import annotations

import math

import pytest
import torch

from hybridrl.errors import ShapeError
from hybridrl.text import losses as L

torch.manual_seed(0)
B, C = 4, 3
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
LOGP = -torch.rand(B, C) - 0.1
MU = LOGP + 0.3 * torch.randn(B, C)
REF = LOGP + 0.2 * torch.randn(B, C)
R = torch.tensor([1.0, -1.0, 0.5, 2.0])
G = torch.tensor([0, 0, 1, 1])


def _agg(x, how):
    """Plain-python aggregation over the valid tokens of MASK."""
    rows = [[float(x[i, j]) for j in range(C) if MASK[i, j]] for i in range(B)]
    if how == "token-mean":
        flat = [v for r in rows for v in r]
        return sum(flat) / len(flat)
    if how == "seq-mean-token-mean":
        return sum(sum(r) / len(r) for r in rows) / B
    return sum(sum(r) for r in rows) / B


@pytest.mark.parametrize("how", L.AGGREGATIONS)
def test_aggregations(how):
    x = torch.randn(B, C)
    assert float(L.aggregate(x, MASK, how)) == pytest.approx(_agg(x, how), rel=1e-6)
    with pytest.raises(ValueError, match="aggregation"):
        L.aggregate(x, MASK, "mean")


def test_group_advantages_by_hand():
    r, g = torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0]), torch.tensor([7, 7, 9, 9, 4])
    # mean baseline, group std (population) scaling
    a = L.group_advantages(r, g, "mean", "group", eps=0.0 + 1e-12)
    assert a[:2].tolist() == pytest.approx([-1.0, 1.0])
    assert a[2:4].tolist() == pytest.approx([0.0, 0.0], abs=1e-6) and float(a[4]) == pytest.approx(0.0)
    # leave-one-out: R_i − mean of the others; a singleton gets baseline 0
    a = L.group_advantages(r, g, "loo", "none")
    assert a.tolist() == pytest.approx([1 - 3, 3 - 1, 0.0, 0.0, 5.0])
    # shifted baseline (AsymRE): R − (mean + δ)
    a = L.group_advantages(r, g, "mean", "none", shift=-0.1)
    assert a.tolist() == pytest.approx([-0.9, 1.1, 0.1, 0.1, 0.1])
    # batch scaling: divide by the std of all R − b
    raw = torch.tensor([-1.0, 1.0, 0.0, 0.0, 0.0])
    a = L.group_advantages(r, g, "mean", "batch", eps=0.0)
    assert a.tolist() == pytest.approx((raw / raw.std(unbiased=False)).tolist())


def test_clipped_pg_loss_matches_the_ppo_formula_and_counts_clipping():
    adv = torch.tensor([1.0, -1.0, 0.5, -2.0])
    loss, m = L.clipped_pg_loss(LOGP, MU, adv, MASK, aggregation="token-mean", clip_low=0.2, clip_high=0.28)
    per = torch.zeros(B, C)
    clipped = 0
    for i in range(B):
        for j in range(C):
            r = math.exp(float(LOGP[i, j] - MU[i, j]))
            rc = min(max(r, 0.8), 1.28)
            per[i, j] = max(-adv[i] * r, -adv[i] * rc)
            clipped += int(MASK[i, j] and -adv[i] * rc > -adv[i] * r)
    assert float(loss) == pytest.approx(_agg(per, "token-mean"), rel=1e-5)
    assert m["clip_fraction"] == pytest.approx(clipped / int(MASK.sum()))
    # sequence-level ratio (GSPO / TRL importance_sampling_level="sequence"): exp(mean log-ratio) on every token
    lr = L.log_ratio(LOGP, MU, MASK, "sequence")
    i = 1
    assert float(lr[i, 0]) == pytest.approx(float((LOGP[i, :2] - MU[i, :2]).mean()), rel=1e-5)


def test_grpo_kl_term_is_k3_to_the_reference():
    loss0, _ = L.grpo_loss(LOGP, MU, R, G, MASK, aggregation="token-mean")
    loss1, m = L.grpo_loss(LOGP, MU, R, G, MASK, aggregation="token-mean", ref_logp=REF, kl_coef=0.04)
    k3 = torch.exp(REF - LOGP) - 1 - (REF - LOGP)
    assert float(loss1 - loss0) == pytest.approx(0.04 * _agg(k3, "token-mean"), rel=1e-4)
    assert m["kl_ref"] >= 0


def test_grpo_gradient_on_policy_is_the_normalised_reinforce_gradient():
    logp = LOGP.clone().requires_grad_(True)
    loss, _ = L.grpo_loss(logp, logp.detach(), R, G, MASK, aggregation="seq-mean-token-mean")
    loss.backward()
    adv = L.group_advantages(R, G, "mean", "group")
    expected = -adv[:, None] * MASK / MASK.sum(1, keepdim=True) / B
    assert torch.allclose(logp.grad, expected, atol=1e-6)


def test_rloo_uses_the_leave_one_out_baseline_and_kl_in_the_reward():
    logp = LOGP.clone().requires_grad_(True)
    loss, _ = L.rloo_loss(logp, logp.detach(), R, G, MASK, ref_logp=REF, kl_coef=0.1)
    loss.backward()
    kl = ((LOGP - REF) * MASK).sum(1)
    r = R - 0.1 * kl
    adv = torch.tensor([r[0] - r[1], r[1] - r[0], r[2] - r[3], r[3] - r[2]])
    assert torch.allclose(logp.grad, -adv[:, None] * MASK / B, atol=1e-5)


def test_reinforce_pp_token_returns_and_whitening():
    logp = LOGP.clone().requires_grad_(True)
    loss, _ = L.reinforce_pp_loss(logp, logp.detach(), R, MASK, ref_logp=REF, kl_coef=0.5)
    loss.backward()
    # hand: token reward −0.5 (log mu − log ref), + R at the last token; return-to-go; whiten over valid tokens
    ret = torch.zeros(B, C)
    for i in range(B):
        n = int(MASK[i].sum())
        tok = [-0.5 * float(LOGP[i, j] - REF[i, j]) for j in range(n)]
        tok[-1] += float(R[i])
        for j in range(n):
            ret[i, j] = sum(tok[j:])
    vals = ret[MASK]
    adv = (ret - vals.mean()) / (vals.std(unbiased=False) + 1e-8)
    assert torch.allclose(logp.grad, -adv * MASK / MASK.sum(), atol=1e-5)


@pytest.mark.parametrize("correction", ["none", "is", "truncate", "mask", "clip"])
def test_reinforce_corrections(correction):
    adv = torch.tensor([1.0, -1.0, 0.5, -2.0])
    logp = LOGP.clone().requires_grad_(True)
    loss, _ = L.reinforce_loss(logp, adv, MASK, aggregation="seq-sum", behavior_logp=MU, correction=correction,
                               clip_low=0.2, clip_high=0.2, max_ratio=1.0)
    loss.backward()
    r = torch.exp(LOGP - MU)
    a = adv[:, None].expand(B, C)
    keep = (((a >= 0) & (r <= 1.2)) | ((a <= 0) & (r >= 0.8))).float()
    w = {"none": torch.ones(B, C), "is": r, "truncate": r.clamp(max=1.0), "mask": keep, "clip": r * keep}[correction]
    assert torch.allclose(logp.grad, -w * a * MASK / B, atol=1e-6)
    if correction == "clip":  # same gradient as PPO-clip
        lp2 = LOGP.clone().requires_grad_(True)
        L.clipped_pg_loss(lp2, MU, adv, MASK, aggregation="seq-sum").__getitem__(0).backward()
        assert torch.allclose(lp2.grad, logp.grad, atol=1e-6)


def test_topr_tapers_only_negative_rewards_with_the_sequence_ratio():
    logp = LOGP.clone().requires_grad_(True)
    loss, _ = L.topr_loss(logp, MU, R, MASK)
    loss.backward()
    seq_ratio = torch.exp(((LOGP - MU) * MASK).sum(1))
    alpha = torch.where(R >= 0, torch.ones(B), seq_ratio.clamp(max=1.0))
    assert torch.allclose(logp.grad, -(alpha * R)[:, None] * MASK / B, atol=1e-6)
    # with mu = pi it is plain REINFORCE on log pi(y|x)
    lp2 = LOGP.clone().requires_grad_(True)
    L.topr_loss(lp2, LOGP, R, MASK)[0].backward()
    assert torch.allclose(lp2.grad, -R[:, None] * MASK / B, atol=1e-6)


def test_asymre_and_opmd():
    loss, _ = L.asymre_loss(LOGP, R, G, MASK, delta=-0.1, aggregation="token-mean")
    adv = torch.tensor([1.0 - 0.0 + 0.1, -1.0 - 0.0 + 0.1, 0.5 - 1.25 + 0.1, 2.0 - 1.25 + 0.1])
    assert float(loss) == pytest.approx(_agg(-adv[:, None] * LOGP, "token-mean"), rel=1e-5)
    loss, _ = L.opmd_loss(LOGP, R, G, MASK, tau=1.0)
    adv = adv - 0.1
    assert float(loss) == pytest.approx(_agg(-adv[:, None] * LOGP, "token-mean") / 2, rel=1e-5)


def test_dpo_and_ipo_by_hand():
    cw, cl = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.5])
    rw, rl = torch.tensor([-1.5, -2.0]), torch.tensor([-2.5, -1.0])
    h = [(-1.0 + 1.5) - (-3.0 + 2.5), (-2.0 + 2.0) - (-1.5 + 1.0)]
    loss, m = L.dpo_loss(cw, cl, rw, rl, beta=0.5)
    assert float(loss) == pytest.approx(sum(-math.log(1 / (1 + math.exp(-0.5 * x))) for x in h) / 2, rel=1e-6)
    assert m["pair_accuracy"] == 1.0
    loss, _ = L.ipo_loss(cw, cl, rw, rl, tau=0.25)
    assert float(loss) == pytest.approx(sum((x - 2.0) ** 2 for x in h) / 2, rel=1e-6)


def test_sft_loss_and_shape_errors():
    loss, _ = L.sft_loss(LOGP, MASK, weight=(R > 0).float(), aggregation="seq-sum")
    assert float(loss) == pytest.approx(_agg(-(R > 0).float()[:, None] * LOGP, "seq-sum"), rel=1e-6)
    with pytest.raises(ShapeError):
        L.grpo_loss(LOGP, MU[:, :2], R, G, MASK)
    with pytest.raises(ShapeError):
        L.topr_loss(LOGP, MU, R[:3], MASK)
    with pytest.raises(ValueError, match="behavior_logp"):
        L.reinforce_loss(LOGP, R, MASK, aggregation="seq-sum", correction="is")


# --------------------------------------------------------------------------------------- 3-armed bandit
MU_B = torch.tensor([0.3, 0.6, 0.1])
REWARD = torch.tensor([0.0, 0.8, 1.0])


def _bandit(baseline: float, on_policy: bool, steps: int, n: int = 512, lr: float = 0.1, seed: int = 0):
    """Softmax policy over 3 arms trained with reinforce_loss (one-token completions, no correction)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([theta], lr=lr)
    mask = torch.ones(n, 1, dtype=torch.bool)
    for _ in range(steps):
        probs = torch.softmax(theta, 0).detach() if on_policy else MU_B
        arms = torch.multinomial(probs, n, replacement=True, generator=g)
        logp = torch.log_softmax(theta, 0)[arms][:, None]
        reward = REWARD[arms]
        b = reward.mean() if baseline is None else baseline
        loss, _ = L.reinforce_loss(logp, reward - b, mask, aggregation="seq-sum")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.softmax(theta, 0).detach()


@pytest.mark.slow
def test_bandit_off_policy_reinforce_converges_to_mu_times_r_minus_v():
    expected = MU_B * (REWARD + 0.1)
    expected = expected / expected.sum()
    assert expected.tolist() == pytest.approx([0.044, 0.794, 0.162], abs=1e-3)
    pi = _bandit(-0.1, on_policy=False, steps=600, n=1024, lr=1.0)
    assert pi.tolist() == pytest.approx(expected.tolist(), abs=0.02)


def test_bandit_off_policy_with_baseline_above_v_mu_diverges_and_on_policy_finds_the_best_arm():
    # V^mu = 0.58: with a baseline of 0.7 the expected gradient pushes every logit apart without a fixed point
    pi = _bandit(0.7, on_policy=False, steps=300, n=1024, lr=1.0)
    assert float(pi.max()) > 0.99  # collapsed onto one arm (the low-mu arm 2: all mass, no interior solution)
    pi = _bandit(None, on_policy=True, steps=300, n=256, lr=1.0)
    assert float(pi[2]) > 0.95
