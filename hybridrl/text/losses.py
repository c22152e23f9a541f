"""Sequence-level policy-gradient losses for causal LMs: pure functions over per-token log-probs and masks.

Shapes: ``logp``, ``behavior_logp``, ``ref_logp``, ``mask`` are ``[B, C]`` (completion tokens; ``mask`` bool, True on
valid tokens); ``reward``, ``group``, ``advantage`` are ``[B]``. Every loss returns ``(loss, metrics)`` with ``loss`` a
0-d tensor to minimise and ``metrics`` a ``dict[str, float]``, and takes an explicit ``aggregation``:

- ``"token-mean"``: sum over all valid tokens of the batch / number of valid tokens (DAPO; TRL ``loss_type="dapo"``);
- ``"seq-mean-token-mean"``: mean over each sequence's tokens, then mean over sequences (GRPO paper);
- ``"seq-sum"``: sum over each sequence's tokens, then mean over sequences (REINFORCE on log pi(y|x)).

Sources (paper and equation) are named per function; docs/algorithms/text.md lists the defaults.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hybridrl.errors import ShapeError
from hybridrl.ops import check_same_shape, kl_k1, kl_k2, kl_k3

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-sum")
CORRECTIONS = ("none", "is", "truncate", "clip", "mask")
_KL = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def _check(where: str, mask: Tensor, **tensors: Tensor | None) -> None:
    check_same_shape(where, mask=mask, **tensors)
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ShapeError(f"{where}: mask must be a 2-D bool tensor [B, C], got {mask.dtype} {tuple(mask.shape)}")


def _rows(where: str, mask: Tensor, **vectors: Tensor | None) -> None:
    for name, v in vectors.items():
        if v is not None and tuple(v.shape) != (mask.shape[0],):
            raise ShapeError(f"{where}: {name} has shape {tuple(v.shape)}; expected [B] = ({mask.shape[0]},)")


def aggregate(x: Tensor, mask: Tensor, aggregation: str) -> Tensor:
    """Reduce per-token ``x [B, C]`` over valid tokens by ``aggregation`` (see the module docstring).

    Empty rows count as 0 in the sequence aggregations. Raises ValueError for an unknown aggregation.
    """
    m = mask.to(x.dtype)
    if aggregation == "token-mean":
        return (x * m).sum() / m.sum().clamp(min=1.0)
    if aggregation == "seq-mean-token-mean":
        return ((x * m).sum(1) / m.sum(1).clamp(min=1.0)).mean()
    if aggregation == "seq-sum":
        return (x * m).sum(1).mean()
    raise ValueError(f"aggregation={aggregation!r}; expected one of {AGGREGATIONS}")


def sequence_logp(logp: Tensor, mask: Tensor) -> Tensor:
    """log pi(y|x) = sum of valid token log-probs, ``[B, C] -> [B]``."""
    return (logp * mask.to(logp.dtype)).sum(1)


def group_advantages(reward: Tensor, group: Tensor, baseline: str = "mean", scale: str = "group",
                     shift: float = 0.0, eps: float = 1e-6) -> Tensor:
    """Group-relative advantages A_i = (R_i − b_i) / s_i, ``[B] -> [B]`` float.

    Args:
        reward: ``[B]`` rewards. group: ``[B]`` int group ids (completions of one prompt).
        baseline: ``"mean"`` (b = group mean, GRPO), ``"loo"`` (b = mean of the *other* members, RLOO; a singleton
            gets b = 0), ``"none"`` (b = 0).
        scale: ``"group"`` (s = group std, unbiased=False, + eps; GRPO), ``"batch"`` (s = std of all rows' R − b, + eps;
            REINFORCE++ / Dr.GRPO-style), ``"none"`` (s = 1).
        shift: δ added to the baseline (AsymRE: b = mean + δ, δ < 0 favours positive updates).
    Source: GRPO, Shao et al. (2024) eq. 3 (arXiv 2402.03300); RLOO, Ahmadian et al. (2024) eq. 7 (2402.14740);
    AsymRE, Arnal et al. (2025) (arXiv 2506.20520).
    """
    if reward.shape != group.shape or reward.dim() != 1:
        raise ShapeError(f"group_advantages: reward {tuple(reward.shape)} and group {tuple(group.shape)} must be [B]")
    r = reward.to(torch.float32)
    _, inv = torch.unique(group, return_inverse=True)
    n_groups = int(inv.max()) + 1
    count = torch.zeros(n_groups).index_add_(0, inv, torch.ones_like(r))
    total = torch.zeros(n_groups).index_add_(0, inv, r)
    mean = total / count
    if baseline == "mean":
        b = mean[inv]
    elif baseline == "loo":
        others = count[inv] - 1
        b = torch.where(others > 0, (total[inv] - r) / others.clamp(min=1), torch.zeros_like(r))
    elif baseline == "none":
        b = torch.zeros_like(r)
    else:
        raise ValueError(f"group_advantages: baseline={baseline!r}; expected 'mean', 'loo' or 'none'")
    a = r - (b + shift)
    if scale == "group":
        var = torch.zeros(n_groups).index_add_(0, inv, (r - mean[inv]) ** 2) / count
        a = a / (var.sqrt()[inv] + eps)
    elif scale == "batch":
        a = a / (a.std(unbiased=False) + eps)
    elif scale != "none":
        raise ValueError(f"group_advantages: scale={scale!r}; expected 'group', 'batch' or 'none'")
    return a


def log_ratio(logp: Tensor, behavior_logp: Tensor, mask: Tensor, level: str = "token") -> Tensor:
    """log(pi/mu) per token ``[B, C]``: ``"token"`` = logp − behavior_logp; ``"sequence"`` = the mean over the
    sequence's valid tokens broadcast to every token (GSPO, Zheng et al. 2025 eq. 7; TRL
    ``importance_sampling_level="sequence"``); ``"sequence-sum"`` = the full sequence log-ratio
    log pi(y|x) − log mu(y|x) broadcast (TOPR, A-LoL). Padding positions are 0."""
    d = (logp - behavior_logp) * mask.to(logp.dtype)
    if level == "token":
        return d
    if level in ("sequence", "sequence-sum"):
        s = d.sum(1, keepdim=True)
        if level == "sequence":
            s = s / mask.sum(1, keepdim=True).clamp(min=1)
        return s.expand_as(d) * mask.to(logp.dtype)
    raise ValueError(f"log_ratio: level={level!r}; expected 'token', 'sequence' or 'sequence-sum'")


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) on tokens sampled from pi: k1 = log pi − log pi_ref,
    k2 = ½(log pi − log pi_ref)², k3 = r − 1 − log r with r = pi_ref/pi (Schulman 2020, "Approximating KL")."""
    if estimator not in _KL:
        raise ValueError(f"kl_penalty: estimator={estimator!r}; expected one of {sorted(_KL)}")
    return _KL[estimator](ref_logp - logp)


def _ratio_metrics(lr: Tensor, mask: Tensor, clipped: Tensor | None = None) -> dict[str, float]:
    with torch.no_grad():
        m = mask.to(lr.dtype)
        n = m.sum().clamp(min=1)
        r = torch.exp(lr.detach()) * m
        out = {"ratio_mean": float(r.sum() / n), "ratio_max": float(r.max()),
               "ess": float(r.sum() ** 2 / (r.square().sum() * n).clamp(min=1e-12))}
        if clipped is not None:
            out["clip_fraction"] = float((clipped.to(lr.dtype) * m).sum() / n)
    return out


def _kl_term(logp, ref_logp, mask, kl_coef, kl_estimator, aggregation, metrics):
    if ref_logp is None or kl_coef == 0.0:
        return 0.0
    kl = kl_penalty(logp, ref_logp.detach(), kl_estimator)
    term = aggregate(kl, mask, aggregation)
    metrics["kl_ref"] = float(term.detach())
    return kl_coef * term


# ------------------------------------------------------------------------------------------ PPO / GRPO family
def clipped_pg_loss(logp: Tensor, behavior_logp: Tensor, advantage: Tensor, mask: Tensor, *, aggregation: str,
                    clip_low: float = 0.2, clip_high: float = 0.2, level: str = "token", dual_clip: float | None = None,
                    ref_logp: Tensor | None = None, kl_coef: float = 0.0, kl_estimator: str = "k3"
                    ) -> tuple[Tensor, dict[str, float]]:
    """GRPO / PPO-clip on sequences: per token ℓ_t = max(−A r_t, −A clip(r_t, 1 − ε_low, 1 + ε_high)), aggregated,
    plus ``kl_coef`` × aggregated KL(pi || pi_ref) (estimator ``kl_estimator``) when ``ref_logp`` is given.

    ``advantage`` is ``[B]`` (broadcast to tokens) or ``[B, C]``; r_t = exp(log_ratio(level)); ``dual_clip`` c > 1
    caps the loss of negative-advantage tokens at −A·c (Ye et al. 2020). Metrics: policy_loss, clip_fraction,
    ratio_mean, ratio_max, ess, kl_ref.
    Source: Shao et al. (2024) GRPO eq. 3 (arXiv 2402.03300); Schulman et al. (2017) PPO eq. 7; DAPO's clip-higher
    (ε_high ≠ ε_low, Yu et al. 2025).
    """
    _check("clipped_pg_loss", mask, logp=logp, behavior_logp=behavior_logp, ref_logp=ref_logp)
    adv = advantage.detach()
    if adv.dim() == 1:
        _rows("clipped_pg_loss", mask, advantage=adv)
        adv = adv[:, None].expand_as(logp)
    lr = log_ratio(logp, behavior_logp.detach(), mask, level)
    ratio = torch.exp(lr)
    clipped_r = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.max(-adv * ratio, -adv * clipped_r)
    if dual_clip is not None:
        per_token = torch.where(adv < 0, torch.min(per_token, -adv * dual_clip), per_token)
    pg = aggregate(per_token, mask, aggregation)
    metrics = {"policy_loss": float(pg.detach())}
    metrics.update(_ratio_metrics(lr, mask, (-adv * clipped_r > -adv * ratio).detach()))
    loss = pg + _kl_term(logp, ref_logp, mask, kl_coef, kl_estimator, aggregation, metrics)
    return loss, metrics


def grpo_loss(logp: Tensor, behavior_logp: Tensor, reward: Tensor, group: Tensor, mask: Tensor, *,
              aggregation: str = "seq-mean-token-mean", clip: float = 0.2, scale: str = "group",
              ref_logp: Tensor | None = None, kl_coef: float = 0.0, level: str = "token"
              ) -> tuple[Tensor, dict[str, float]]:
    """GRPO: group-normalised advantages (:func:`group_advantages` mean / ``scale``) in :func:`clipped_pg_loss` with
    k3 KL to the reference. Defaults: ε = 0.2, β = 0 (TRL 1.16; the paper uses β = 0.04). Source: arXiv 2402.03300."""
    _rows("grpo_loss", mask, reward=reward, group=group)
    adv = group_advantages(reward, group, "mean", scale)
    loss, m = clipped_pg_loss(logp, behavior_logp, adv, mask, aggregation=aggregation, clip_low=clip, clip_high=clip,
                              level=level, ref_logp=ref_logp, kl_coef=kl_coef)
    m["advantage_abs"] = float(adv.abs().mean())
    return loss, m


def rloo_loss(logp: Tensor, behavior_logp: Tensor, reward: Tensor, group: Tensor, mask: Tensor, *,
              aggregation: str = "seq-mean-token-mean", clip: float = 0.2, ref_logp: Tensor | None = None,
              kl_coef: float = 0.05
              ) -> tuple[Tensor, dict[str, float]]:
    """RLOO: sequence reward R − β Σ_t (log mu − log pi_ref) (β = ``kl_coef``; when ``ref_logp`` is given),
    leave-one-out baseline, sequence-level PPO-clip (TRL ``RLOOTrainer``: ratio exp(Σ_t log pi − log mu), clip 0.2).
    The sequence ratio sits on every token, so the default ``"seq-mean-token-mean"`` counts each sequence once
    (``"seq-sum"`` would weight a sequence by its length).
    Source: Ahmadian et al. (2024) eq. 7 (arXiv 2402.14740); Kool et al. (2019)."""
    _rows("rloo_loss", mask, reward=reward, group=group)
    r = reward
    if ref_logp is not None and kl_coef:
        r = reward - kl_coef * sequence_logp(behavior_logp - ref_logp, mask).detach()
    adv = group_advantages(r, group, "loo", "none")
    loss, m = clipped_pg_loss(logp, behavior_logp, adv, mask, aggregation=aggregation, clip_low=clip, clip_high=clip,
                              level="sequence-sum")
    m["advantage_abs"] = float(adv.abs().mean())
    return loss, m


def reinforce_pp_loss(logp: Tensor, behavior_logp: Tensor, reward: Tensor, mask: Tensor, *,
                      aggregation: str = "token-mean", clip: float = 0.2, ref_logp: Tensor | None = None,
                      kl_coef: float = 0.01, eps: float = 1e-8) -> tuple[Tensor, dict[str, float]]:
    """REINFORCE++: per-token reward −β·k1_t (k1_t = log mu − log pi_ref) plus R at the last valid token, return to go
    with γ = 1, advantages normalised over all valid tokens of the batch (mean and std), PPO-clip (token level).
    Source: Hu (2025) eqs. 5–8 (arXiv 2501.03262); OpenRLHF ``reinforce_plus_plus``."""
    _check("reinforce_pp_loss", mask, logp=logp, behavior_logp=behavior_logp, ref_logp=ref_logp)
    _rows("reinforce_pp_loss", mask, reward=reward)
    m = mask.to(logp.dtype)
    tok = torch.zeros_like(logp)
    if ref_logp is not None and kl_coef:
        tok = -kl_coef * (behavior_logp - ref_logp).detach() * m
    last = (mask.sum(1) - 1).clamp(min=0)
    tok = tok.scatter_add(1, last[:, None], reward.to(logp.dtype)[:, None])
    ret = torch.flip(torch.cumsum(torch.flip(tok, [1]), 1), [1])
    n = m.sum().clamp(min=1)
    mean = (ret * m).sum() / n
    std = (((ret - mean) ** 2 * m).sum() / n).sqrt()
    adv = (ret - mean) / (std + eps) * m
    return clipped_pg_loss(logp, behavior_logp, adv, mask, aggregation=aggregation, clip_low=clip, clip_high=clip)


# ------------------------------------------------------------------------------------------ REINFORCE family
def reinforce_loss(logp: Tensor, advantage: Tensor, mask: Tensor, *, aggregation: str,
                   behavior_logp: Tensor | None = None, correction: str = "none", level: str = "token",
                   clip_low: float = 0.2, clip_high: float = 0.2, max_ratio: float = 1.0
                   ) -> tuple[Tensor, dict[str, float]]:
    """Off-policy REINFORCE with a chosen correction: per token ℓ_t = −w_t · M_t · A · log pi(y_t|·), w and M detached.

    ``correction``: ``"none"`` (w = 1: the naive estimator; on-policy REINFORCE), ``"is"`` (w = r_t),
    ``"truncate"`` (w = min(r_t, ``max_ratio``): truncated IS, TRL/verl rollout correction), ``"mask"`` (w = 1,
    REC-OneSide mask M_t = (A ≥ 0 ∧ r_t ≤ 1 + ε_high) ∨ (A ≤ 0 ∧ r_t ≥ 1 − ε_low): Yao et al. 2025),
    ``"clip"`` (same gradient as PPO-clip: w = r_t with the one-side mask; use :func:`clipped_pg_loss` for its value).
    r_t = exp(log_ratio(level)); ``behavior_logp`` is required unless ``correction="none"``.
    Source: Williams (1992); Yao et al. (2025) "Group-relative REINFORCE is secretly an off-policy algorithm"
    (arXiv 2509.24203) §4 (REC); Ionides (2008) truncated IS.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"reinforce_loss: correction={correction!r}; expected one of {CORRECTIONS}")
    _check("reinforce_loss", mask, logp=logp, behavior_logp=behavior_logp)
    adv = advantage.detach()
    if adv.dim() == 1:
        _rows("reinforce_loss", mask, advantage=adv)
        adv = adv[:, None].expand_as(logp)
    metrics: dict[str, float] = {}
    w = torch.ones_like(logp)
    if correction != "none":
        if behavior_logp is None:
            raise ValueError(f"reinforce_loss: correction={correction!r} needs behavior_logp")
        lr = log_ratio(logp.detach(), behavior_logp.detach(), mask, level)
        r = torch.exp(lr)
        keep = ((adv >= 0) & (r <= 1 + clip_high)) | ((adv <= 0) & (r >= 1 - clip_low))
        if correction == "is":
            w = r
        elif correction == "truncate":
            w = r.clamp(max=max_ratio)
        elif correction == "mask":
            w = keep.to(logp.dtype)
        else:
            w = r * keep.to(logp.dtype)
        metrics.update(_ratio_metrics(lr, mask, ~keep if correction in ("mask", "clip") else r > max_ratio))
    loss = aggregate(-w * adv * logp, mask, aggregation)
    metrics["policy_loss"] = float(loss.detach())
    return loss, metrics


def topr_loss(logp: Tensor, behavior_logp: Tensor, reward: Tensor, mask: Tensor, *, aggregation: str = "seq-sum",
              baseline: float = 0.0, level: str = "sequence-sum") -> tuple[Tensor, dict[str, float]]:
    """TOPR (tapered off-policy REINFORCE): ℓ = −sg(α)·(R − c)·log pi(y|x) with α = 1 if R − c ≥ 0 (an SFT-like update
    on positives) else clip(pi(y|x)/mu(y|x), 0, 1) (truncated IS on negatives); ``level="sequence-sum"`` uses the
    sequence ratio (the paper), ``"token"`` the per-token ratio (Trinity-RFT). Reduces to REINFORCE when mu = pi.
    Source: Le Roux et al. (2025) eq. 8 (arXiv 2503.14286)."""
    _rows("topr_loss", mask, reward=reward)
    a = (reward - baseline).to(logp.dtype)
    lr = log_ratio(logp.detach(), behavior_logp.detach(), mask, level)
    alpha = torch.where(a[:, None] >= 0, torch.ones_like(lr), torch.exp(lr).clamp(max=1.0))
    loss = aggregate(-alpha * a[:, None] * logp, mask, aggregation)
    m = {"policy_loss": float(loss.detach()), "positive_fraction": float((a >= 0).float().mean())}
    m.update(_ratio_metrics(lr, mask))
    return loss, m


def asymre_loss(logp: Tensor, reward: Tensor, group: Tensor, mask: Tensor, *, aggregation: str = "token-mean",
                delta: float = -0.1, tau: float = 0.0) -> tuple[Tensor, dict[str, float]]:
    """AsymRE: REINFORCE with the group-mean baseline shifted by δ: A = R − (mean_group R + δ); ℓ = −A·log pi / (1 + τ).
    δ < 0 (baseline below the value) keeps off-policy training stable; δ > 0 collapses it (Arnal et al. 2025,
    arXiv 2506.20520, Thm. 1). ``tau`` > 0 is Trinity-RFT's OPMD scaling (its ``asymre`` type uses τ = 1)."""
    _rows("asymre_loss", mask, reward=reward, group=group)
    adv = group_advantages(reward, group, "mean", "none", shift=delta)
    loss, m = reinforce_loss(logp, adv, mask, aggregation=aggregation)
    loss = loss / (1.0 + tau)
    m["policy_loss"] = float(loss.detach())
    return loss, m


def opmd_loss(logp: Tensor, reward: Tensor, group: Tensor, mask: Tensor, *, aggregation: str = "token-mean",
              tau: float = 1.0, ref_logp: Tensor | None = None, kl_coef: float = 0.0
              ) -> tuple[Tensor, dict[str, float]]:
    """OPMD (Kimi k1.5 online policy mirror descent as in Trinity-RFT): A = R − mean_group R,
    ℓ = −A·log pi / (1 + τ), plus ``kl_coef`` × k2 KL to the reference. Source: Kimi Team (2025) §2.3
    (arXiv 2501.12599); Trinity-RFT ``opmd_policy_loss``."""
    _rows("opmd_loss", mask, reward=reward, group=group)
    adv = group_advantages(reward, group, "mean", "none")
    loss, m = reinforce_loss(logp, adv, mask, aggregation=aggregation)
    loss = loss / (1.0 + tau) + _kl_term(logp, ref_logp, mask, kl_coef, "k2", aggregation, m)
    m["policy_loss"] = float(loss.detach())
    return loss, m


# ------------------------------------------------------------------------------------------ preference pairs
def dpo_loss(chosen_logp: Tensor, rejected_logp: Tensor, ref_chosen_logp: Tensor, ref_rejected_logp: Tensor, *,
             beta: float = 0.1, aggregation: str = "mean") -> tuple[Tensor, dict[str, float]]:
    """DPO: ℓ = −log σ(β·h), h = (log pi(y_w) − log pi_ref(y_w)) − (log pi(y_l) − log pi_ref(y_l)); sequence log-probs
    ``[N]``; ``aggregation="mean"`` over pairs. Source: Rafailov et al. (2023) eq. 7 (arXiv 2305.18290)."""
    h = _margin("dpo_loss", chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, aggregation)
    loss = -torch.nn.functional.logsigmoid(beta * h).mean()
    return loss, _pair_metrics(loss, h, beta)


def ipo_loss(chosen_logp: Tensor, rejected_logp: Tensor, ref_chosen_logp: Tensor, ref_rejected_logp: Tensor, *,
             tau: float = 0.1, aggregation: str = "mean") -> tuple[Tensor, dict[str, float]]:
    """IPO: ℓ = (h − 1/(2τ))² with the DPO margin h (pass length-normalised log-probs for TRL's variant).
    Source: Azar et al. (2023) eq. 17 (arXiv 2310.12036)."""
    h = _margin("ipo_loss", chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, aggregation)
    loss = ((h - 1.0 / (2.0 * tau)) ** 2).mean()
    return loss, _pair_metrics(loss, h, tau)


def _margin(where, cw, cl, rw, rl, aggregation) -> Tensor:
    check_same_shape(where, chosen_logp=cw, rejected_logp=cl, ref_chosen_logp=rw, ref_rejected_logp=rl)
    if cw.dim() != 1:
        raise ShapeError(f"{where}: sequence log-probs must be [N], got {tuple(cw.shape)}")
    if aggregation != "mean":
        raise ValueError(f"{where}: aggregation={aggregation!r}; expected 'mean' (over pairs)")
    return (cw - rw.detach()) - (cl - rl.detach())


def _pair_metrics(loss: Tensor, h: Tensor, coef: float) -> dict[str, float]:
    with torch.no_grad():
        return {"policy_loss": float(loss), "margin": float(h.mean()), "pair_accuracy": float((h > 0).float().mean()),
                "reward_margin": float(coef * h.mean())}


def sft_loss(logp: Tensor, mask: Tensor, *, aggregation: str = "token-mean", weight: Tensor | None = None
             ) -> tuple[Tensor, dict[str, float]]:
    """Supervised fine-tuning (negative log-likelihood of the completions): ℓ = −w · log pi(y_t|·), aggregated.
    ``weight [B]`` (e.g. 1[R > 0] for positive-only training, i.e. filtered behaviour cloning / RAFT) defaults to 1."""
    _check("sft_loss", mask, logp=logp)
    w = torch.ones(mask.shape[0], dtype=logp.dtype) if weight is None else weight.to(logp.dtype).detach()
    _rows("sft_loss", mask, weight=w)
    loss = aggregate(-w[:, None] * logp, mask, aggregation)
    return loss, {"policy_loss": float(loss.detach()), "nll": float(aggregate(-logp.detach(), mask, "token-mean"))}
