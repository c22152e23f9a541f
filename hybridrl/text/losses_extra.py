"""More sequence losses: CoPG, A-LoL, BAPO (adaptive clipping) and CHORD (GRPO + weighted SFT on expert data).

Same conventions as :mod:`hybridrl.text.losses` (``[B, C]`` per-token tensors, bool ``mask``, ``(loss, metrics)``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hybridrl.text.losses import _check, _ratio_metrics, _rows, aggregate, log_ratio, sequence_logp


def copg_loss(logp: Tensor, ref_logp: Tensor, reward: Tensor, mask: Tensor, *, beta: float = 0.1
              ) -> tuple[Tensor, dict[str, float]]:
    """CoPG (contrastive policy gradient) on pairs: rows ``2k`` and ``2k+1`` of the batch are two completions y, y' of
    one prompt. With ℓ = log pi(y|x), ℓ_ref = log pi_ref(y|x) (sequence sums):

        L = −mean_k [ (R(y) − R(y'))·(ℓ(y) − ℓ(y')) − (β/2)·((ℓ(y) − ℓ_ref(y)) − (ℓ(y') − ℓ_ref(y')))² ] / 2

    whose gradient is −E[(R_β(y) − R_β(y'))·∇(ℓ(y) − ℓ(y'))]/2 with R_β = R − β(ℓ − ℓ_ref): a policy gradient from
    off-policy pairs without importance weights (the other completion is the baseline); with R(y_w) − R(y_l) = ½ it
    is IPO up to a constant. Source: Flet-Berliac et al. (2024) §3 (arXiv 2406.19185); sign conventions
    checked by the gradient test against the contrastive policy gradient.
    """
    _check("copg_loss", mask, logp=logp, ref_logp=ref_logp)
    _rows("copg_loss", mask, reward=reward)
    if mask.shape[0] % 2:
        raise ValueError(f"copg_loss: rows come in pairs (2k, 2k+1); got an odd batch of {mask.shape[0]}")
    seq, ref = sequence_logp(logp, mask), sequence_logp(ref_logp.detach(), mask)
    d_l = seq[0::2] - seq[1::2]
    d_r = (reward[0::2] - reward[1::2]).to(logp.dtype)
    d_kl = (seq[0::2] - ref[0::2]) - (seq[1::2] - ref[1::2])
    loss = -(d_r * d_l - 0.5 * beta * d_kl.square()).mean() / 2
    return loss, {"policy_loss": float(loss.detach()), "kl_gap": float(d_kl.detach().abs().mean())}


def alol_loss(logp: Tensor, ref_logp: Tensor, advantage: Tensor, mask: Tensor, *, clip: float = 0.9,
              variant: str = "alol") -> tuple[Tensor, dict[str, float]]:
    """A-LoL (advantage-leftover-lunch) offline policy gradient with the reference model's ratio:

    - ``"alol"``:     L = mean[ A⁺ · clip(ρ, 1 − ε, 1 + ε)_sg · NLL(y) ],  ρ = pi(y|x)/pi_ref(y|x) (sequence);
    - ``"alol_seq"``: L = mean[ A⁺ · Σ_t clip(ρ_t, 1 − ε, 1 + ε)_sg · (−log pi(y_t|·)) ] (per-token ratio);
    - ``"ref_free"``: L = mean[ A · NLL(y) ] (no ratio);

    A⁺ = max(A, 0); NLL(y) = −Σ_t log pi(y_t|·); ε = 0.9 (ratio in [0.1, 1.9]). Source: Baheti et al. (2024) eqs. 3–5
    (ICLR 2024, arXiv 2305.14718); LoL-RL ``lolrl_qlora_llama_hh.py`` lines 870–951.
    """
    _check("alol_loss", mask, logp=logp, ref_logp=ref_logp)
    _rows("alol_loss", mask, advantage=advantage)
    adv = advantage.detach().to(logp.dtype)
    if variant == "ref_free":
        w = adv[:, None].expand_as(logp)
    else:
        pos = adv.clamp(min=0.0)[:, None]
        level = "sequence-sum" if variant == "alol" else "token"
        if variant not in ("alol", "alol_seq"):
            raise ValueError(f"alol_loss: variant={variant!r}; expected 'alol', 'alol_seq' or 'ref_free'")
        rho = torch.exp(log_ratio(logp.detach(), ref_logp.detach(), mask, level)).clamp(1 - clip, 1 + clip)
        w = pos * rho
    loss = aggregate(-w * logp, mask, "seq-sum")
    return loss, {"policy_loss": float(loss.detach()), "positive_fraction": float((adv > 0).float().mean())}


def bapo_bounds(ratio: Tensor, advantage: Tensor, mask: Tensor, *, target: float = 1.0, low: tuple = (0.6, 0.9),
                high: tuple = (1.2, 3.0), step: float = 0.05, contribution: str = "code") -> tuple[float, float]:
    """BAPO's adaptive clip bounds (c_low, c_high): start at (low[0], high[0]); while P/N < ``target`` raise c_low by
    ``step`` up to low[1], then c_high up to high[1]. P = Σ max(r̃A, 0), N = Σ max(−r̃A, 0) over valid tokens with
    r̃ = min(r, c_high) for A ≥ 0, max(r, c_low) for A < 0 (``contribution="code"``, the repository's count), or only
    the tokens that keep a gradient inside the bounds (``"gradient"``, the paper's intent). Source: Xi et al. (2025)
    Alg. 1 (arXiv 2510.18927); WooooDyy/BAPO ``recipe/bapo/policy_loss.py``. Defaults: the paper's [0.6, 0.9] and
    [1.2, 3.0] (the repository's yaml uses 0.8 and 2.0 as maxima)."""
    r, a = ratio.detach(), advantage.detach()
    m = mask.to(r.dtype)

    def share(c_low: float, c_high: float) -> float:
        rt = torch.where(a >= 0, r.clamp(max=c_high), r.clamp(min=c_low))
        keep = m
        if contribution == "gradient":
            keep = m * (((a >= 0) & (r <= c_high)) | ((a < 0) & (r >= c_low))).to(r.dtype)
        p = ((rt * a).clamp(min=0) * keep).sum()
        n = ((-rt * a).clamp(min=0) * keep).sum()
        return math.inf if float(n) == 0 else float(p / n)

    c_low, c_high = low[0], high[0]
    while share(c_low, c_high) < target and c_low + step <= low[1] + 1e-9:
        c_low += step
    while share(c_low, c_high) < target and c_high + step <= high[1] + 1e-9:
        c_high += step
    return c_low, c_high


def bapo_loss(logp: Tensor, behavior_logp: Tensor, advantage: Tensor, mask: Tensor, *,
              aggregation: str = "token-mean", target: float = 1.0, low: tuple = (0.6, 0.9),
              high: tuple = (1.2, 3.0), step: float = 0.05, dual_clip: float = 3.0, contribution: str = "code"
              ) -> tuple[Tensor, dict[str, float]]:
    """BAPO: PPO-clip with per-batch bounds from :func:`bapo_bounds` (explicit ratio values, not ε) and a dual clip
    of negative-advantage tokens at −A·c_dual (c_dual = 3): ℓ_t = max(−A r_t, −A clip(r_t, c_low, c_high)), for A < 0
    also min(·, −A·c_dual). ``advantage`` is ``[B]`` or ``[B, C]``. Metrics add ``clip_low``, ``clip_high``."""
    _check("bapo_loss", mask, logp=logp, behavior_logp=behavior_logp)
    adv = advantage.detach()
    if adv.dim() == 1:
        _rows("bapo_loss", mask, advantage=adv)
        adv = adv[:, None].expand_as(logp)
    lr = log_ratio(logp, behavior_logp.detach(), mask, "token")
    ratio = torch.exp(lr)
    c_low, c_high = bapo_bounds(ratio, adv, mask, target=target, low=low, high=high, step=step,
                                contribution=contribution)
    clipped = ratio.clamp(c_low, c_high)
    per = torch.max(-adv * ratio, -adv * clipped)
    per = torch.where(adv < 0, torch.min(per, -adv * dual_clip), per)
    loss = aggregate(per, mask, aggregation)
    m = {"policy_loss": float(loss.detach()), "clip_low": c_low, "clip_high": c_high}
    m.update(_ratio_metrics(lr, mask, (-adv * clipped > -adv * ratio).detach()))
    return loss, m


def chord_weight(step: int, peak: float = 0.1, valley: float = 0.1, warmup: int = 0, decay: int = 0) -> float:
    """CHORD's global weight μ(step): linear 0 → ``peak`` over ``warmup`` steps, cosine ``peak`` → ``valley`` over
    ``decay`` steps, then ``valley``. Defaults = Trinity-RFT's (constant 0.1). Source: Zhang et al. (2025)
    (arXiv 2508.11408); Trinity-RFT ``mix_chord``."""
    if step < warmup:
        return peak * step / warmup
    if step < warmup + decay:
        t = (step - warmup) / decay
        return valley + (peak - valley) * 0.5 * (1 + math.cos(math.pi * t))
    return valley


def chord_loss(rl_loss: Tensor, expert_logp: Tensor, expert_mask: Tensor, mu: float, *, phi: bool = True
               ) -> tuple[Tensor, dict[str, float]]:
    """CHORD: L = (1 − μ)·L_RL + μ·L_SFT, L_SFT = token-mean(−φ(p_t)_sg · log p_t) on expert completions with
    φ(p) = p(1 − p) (CHORD-φ) or φ = 1 (CHORD-µ, ``phi=False``); p_t = pi(y_t|·). ``rl_loss`` is e.g. a GRPO loss on
    the policy's own rollouts."""
    _check("chord_loss", expert_mask, expert_logp=expert_logp)
    weight = torch.ones_like(expert_logp)
    if phi:
        p = expert_logp.detach().exp()
        weight = p * (1 - p)
    sft = aggregate(-weight * expert_logp, expert_mask, "token-mean")
    loss = (1 - mu) * rl_loss + mu * sft
    return loss, {"policy_loss": float(loss.detach()), "sft_loss": float(sft.detach()), "chord_mu": float(mu)}
