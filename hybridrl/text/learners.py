"""Sequence-level learners for causal LMs, registered like every other learner (``hybridrl train <name>``).

- :class:`TextPGLearner` (``text_pg``; presets ``grpo``, ``rloo``, ``topr``): one policy-gradient learner with the
  loss as a setting: ``grpo``, ``rloo``, ``reinforce_pp``, ``reinforce`` (with ``correction``), ``topr``, ``asymre``,
  ``opmd``, ``bapo``, ``alol``, ``sft``, ``sft_positive``;
- :class:`PairLearner` (``text_pair``; preset ``dpo``): DPO / IPO / CoPG on (chosen, rejected) pairs formed inside each
  group of a :class:`SequenceBatch` (highest vs lowest reward; ties skipped).

Both expose ``policy`` (a :class:`CausalLMPolicy`), ``update(SequenceBatch) -> dict[str, float]``, ``state_dict()``
and ``load_state_dict()``, and are built with ``build(config, seed=..., policy=None)`` (no gym spaces).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hybridrl.algos import check_config, gradient_step, register
from hybridrl.errors import ConfigError
from hybridrl.text import losses as L
from hybridrl.text import losses_extra as X
from hybridrl.text.batch import SequenceBatch

PG_LOSSES = ("grpo", "rloo", "reinforce_pp", "reinforce", "topr", "asymre", "opmd", "bapo", "alol", "sft",
             "sft_positive")
PAIR_LOSSES = ("dpo", "ipo", "copg")
_LOOP = "hybridrl.text.loops:train_text"


@dataclass(frozen=True)
class TextLoopConfig:
    """Settings of the text loops shared by every text learner.

    model: local model directory (safetensors + tokenizer). device: torch device. lora_rank: 0 = full fine-tuning.
    task: online task name (``--env`` overrides it). batch_prompts: prompts (groups) per update. group_size:
    completions per prompt (online). replay: online updates use the last ``replay`` generations (1 = on-policy).
    temperature: sampling and log-prob temperature. eval_every / eval_problems: greedy evaluation on the task.
    """

    model: str = ""
    device: str = "cpu"
    lora_rank: int = 0
    lr: float = 1e-3
    max_grad_norm: float = 1.0
    task: str = "addition"
    batch_prompts: int = 16
    group_size: int = 4
    replay: int = 1
    temperature: float = 1.0
    eval_every: int = 10
    eval_problems: int = 200


@dataclass(frozen=True)
class TextPGConfig(TextLoopConfig):
    """Policy-gradient learner settings (defaults: GRPO as in TRL 1.16: ε = 0.2, β = 0, group-std scaling).

    loss: one of :data:`PG_LOSSES`. aggregation: "" = the loss's own default (see :mod:`hybridrl.text.losses`).
    clip: PPO ε. correction / max_ratio / ratio_level: off-policy correction of ``reinforce``. baseline / scale:
    group advantages of ``reinforce``. delta: AsymRE baseline shift; reward_baseline: TOPR's c. kl_coef: β to the
    reference (needs one: a frozen copy, or the base under LoRA). chord_mu > 0: CHORD — every update that gets an
    ``expert`` batch adds μ(step)·SFT on it, μ from :func:`~hybridrl.text.losses_extra.chord_weight` (peak
    ``chord_mu``, valley ``chord_mu_valley``, −1 = the peak; ``chord_warmup``/``chord_decay`` updates), weighted by
    p(1 − p) per token when ``chord_phi`` (Trinity-RFT defaults: μ = 0.1 constant, φ on).
    """

    loss: str = "grpo"
    aggregation: str = ""
    clip: float = 0.2
    correction: str = "none"
    max_ratio: float = 1.0
    ratio_level: str = "token"
    baseline: str = "mean"
    scale: str = "group"
    delta: float = -0.1
    reward_baseline: float = 0.0
    kl_coef: float = 0.0
    chord_mu: float = 0.0
    chord_mu_valley: float = -1.0
    chord_warmup: int = 0
    chord_decay: int = 0
    chord_phi: bool = True

    def __post_init__(self) -> None:
        if self.loss not in PG_LOSSES:
            raise ConfigError(f"TextPGConfig.loss={self.loss!r}; expected one of {PG_LOSSES}")
        if self.correction not in L.CORRECTIONS:
            raise ConfigError(f"TextPGConfig.correction={self.correction!r}; expected one of {L.CORRECTIONS}")
        if self.aggregation and self.aggregation not in L.AGGREGATIONS:
            raise ConfigError(f"TextPGConfig.aggregation={self.aggregation!r}; expected '' or one of {L.AGGREGATIONS}")
        _check_loop(self)
        check_config(self, clip=(0.0, None), max_ratio=(1e-6, None), kl_coef=(0.0, None), chord_mu=(0.0, 1.0),
                     chord_warmup=(0, None), chord_decay=(0, None))


@dataclass(frozen=True)
class PairConfig(TextLoopConfig):
    """DPO / IPO / CoPG settings: loss "dpo" (β = ``beta``, sequence log-prob sums), "ipo" (τ = ``beta``, per-token
    mean log-probs as in TRL) or "copg" (β = ``beta``, rewards of the pair). Defaults: β = 0.1 (DPO paper, TRL)."""

    loss: str = "dpo"
    beta: float = 0.1
    lr: float = 1e-4

    def __post_init__(self) -> None:
        if self.loss not in PAIR_LOSSES:
            raise ConfigError(f"PairConfig.loss={self.loss!r}; expected one of {PAIR_LOSSES}")
        _check_loop(self)
        check_config(self, beta=(1e-9, None))


def _check_loop(c: TextLoopConfig) -> None:
    check_config(c, lr=(1e-12, None), max_grad_norm=(1e-9, None), temperature=(1e-6, None), lora_rank=(0, None),
                 batch_prompts=(1, None), group_size=(1, None), replay=(1, None), eval_every=(1, None),
                 eval_problems=(0, None))


def _load_policy(config: TextLoopConfig, reference: bool):
    from hybridrl.text.policy import CausalLMPolicy

    if not config.model:
        raise ConfigError("a text learner needs a model directory: --set model=PATH (a transformers checkpoint "
                          "saved with safetensors; `hybridrl text demo` builds a tiny one)")
    return CausalLMPolicy.load(config.model, device=config.device, lora_rank=config.lora_rank, reference=reference)


class _TextLearner:
    config: TextLoopConfig

    def __init__(self, config: TextLoopConfig, seed: int = 0, policy=None):
        torch.manual_seed(seed)
        self.config = config
        self.policy = policy if policy is not None else _load_policy(config, self._needs_reference())
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=config.lr, weight_decay=0.0)
        self.updates = 0

    def _needs_reference(self) -> bool:
        return False

    def _logp(self, batch: SequenceBatch) -> torch.Tensor:
        return self.policy.logprobs(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask,
                                    self.config.temperature)

    def _ref_logp(self, batch: SequenceBatch) -> torch.Tensor:
        if batch.ref_logp is not None:
            return batch.ref_logp.to(self.policy.device)
        return self.policy.ref_logprobs(batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                        batch.completion_mask, self.config.temperature)

    def _step(self, loss: torch.Tensor, metrics: dict[str, float]) -> dict[str, float]:
        self.policy.model.train()
        metrics["grad_norm"] = gradient_step(self.optimizer, loss, self.config.max_grad_norm)
        metrics["loss"] = float(loss.detach())
        return metrics

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])


class TextPGLearner(_TextLearner):
    """Policy gradient on a :class:`SequenceBatch` with the loss chosen by ``config.loss`` (see the module doc).

    Uses ``batch.behavior_logp`` as mu (the current policy's detached log-probs when absent: on-policy), and
    ``batch.ref_logp`` or the policy's reference model for KL terms. Metrics: loss, policy_loss, grad_norm, and per
    loss ratio_mean / ratio_max / ess / clip_fraction / kl_ref / advantage_abs.
    """

    config: TextPGConfig

    def _needs_reference(self) -> bool:
        return self.config.kl_coef > 0 or self.config.loss == "alol"

    def update(self, batch: SequenceBatch, expert: SequenceBatch | None = None) -> dict[str, float]:
        """One gradient step on ``batch``; ``expert`` (demonstrations) adds CHORD's SFT term when chord_mu > 0."""
        c = self.config
        batch = batch.to(self.policy.device)
        loss, m = self._pg_loss(batch)
        self.updates += 1
        if expert is not None and c.chord_mu > 0:
            expert = expert.to(self.policy.device)
            valley = c.chord_mu if c.chord_mu_valley < 0 else c.chord_mu_valley
            mu_s = X.chord_weight(self.updates - 1, c.chord_mu, valley, c.chord_warmup, c.chord_decay)
            loss, extra = X.chord_loss(loss, self._logp(expert), expert.completion_mask, mu_s, phi=c.chord_phi)
            m.update(extra)
        return self._step(loss, m)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.updates = int(state.get("updates", 0))

    def _pg_loss(self, batch: SequenceBatch):
        c = self.config
        logp = self._logp(batch)
        mask = batch.completion_mask
        mu = batch.behavior_logp if batch.behavior_logp is not None else logp.detach()
        ref = self._ref_logp(batch) if c.kl_coef > 0 else None
        agg = {"aggregation": c.aggregation} if c.aggregation else {}
        r, g = batch.reward, batch.group
        if c.loss == "grpo":
            loss, m = L.grpo_loss(logp, mu, r, g, mask, clip=c.clip, scale=c.scale, ref_logp=ref, kl_coef=c.kl_coef,
                                  level=c.ratio_level if c.ratio_level != "sequence-sum" else "sequence", **agg)
        elif c.loss == "rloo":
            loss, m = L.rloo_loss(logp, mu, r, g, mask, clip=c.clip, ref_logp=ref, kl_coef=c.kl_coef, **agg)
        elif c.loss == "reinforce_pp":
            loss, m = L.reinforce_pp_loss(logp, mu, r, mask, clip=c.clip, ref_logp=ref, kl_coef=c.kl_coef, **agg)
        elif c.loss == "reinforce":
            adv = L.group_advantages(r, g, c.baseline, c.scale)
            loss, m = L.reinforce_loss(logp, adv, mask, aggregation=c.aggregation or "seq-mean-token-mean",
                                       behavior_logp=mu, correction=c.correction, level=c.ratio_level,
                                       clip_low=c.clip, clip_high=c.clip, max_ratio=c.max_ratio)
        elif c.loss == "topr":
            loss, m = L.topr_loss(logp, mu, r, mask, baseline=c.reward_baseline, **agg)
        elif c.loss == "asymre":
            loss, m = L.asymre_loss(logp, r, g, mask, delta=c.delta, **agg)
        elif c.loss == "bapo":
            adv = L.group_advantages(r, g, "mean", c.scale)
            loss, m = X.bapo_loss(logp, mu, adv, mask, **agg)
        elif c.loss == "alol":  # A = R − group mean of the logged rewards (a Monte-Carlo V(x), no value head)
            adv = L.group_advantages(r, g, "mean", "none")
            loss, m = X.alol_loss(logp, self._ref_logp(batch), adv, mask)
        elif c.loss == "opmd":
            loss, m = L.opmd_loss(logp, r, g, mask, ref_logp=ref, kl_coef=c.kl_coef, **agg)
        else:  # sft / sft_positive
            weight = (r > 0).float() if c.loss == "sft_positive" else None
            loss, m = L.sft_loss(logp, mask, weight=weight, **agg)
        return loss, m


class PairLearner(_TextLearner):
    """DPO / IPO / CoPG on pairs built inside each group of a :class:`SequenceBatch`: chosen = the highest-reward row,
    rejected = the lowest; groups whose rewards are all equal give no pair. Reference log-probs come from
    ``batch.ref_logp`` or the policy's reference model (base under the disabled LoRA adapter, or a frozen copy)."""

    config: PairConfig

    def _needs_reference(self) -> bool:
        return True

    @staticmethod
    def pairs(batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Row indices ``(chosen [N], rejected [N])`` of the within-group pairs."""
        chosen, rejected = [], []
        for gid in torch.unique(batch.group):
            rows = torch.nonzero(batch.group == gid).flatten()
            r = batch.reward[rows]
            if float(r.max()) > float(r.min()):
                chosen.append(int(rows[r.argmax()]))
                rejected.append(int(rows[r.argmin()]))
        return torch.tensor(chosen, dtype=torch.long), torch.tensor(rejected, dtype=torch.long)

    def update(self, batch: SequenceBatch) -> dict[str, float]:
        c = self.config
        cw, cl = self.pairs(batch)
        if len(cw) == 0:
            return {"loss": 0.0, "pairs": 0.0}
        batch = batch.select(torch.cat([cw, cl])).to(self.policy.device)
        n = len(cw)
        mask = batch.completion_mask
        logp, ref = self._logp(batch), self._ref_logp(batch)
        seq, seq_ref = L.sequence_logp(logp, mask), L.sequence_logp(ref, mask)
        if c.loss == "copg":  # rows interleaved (chosen_k, rejected_k)
            order = torch.stack([torch.arange(n), torch.arange(n) + n], 1).flatten()
            loss, m = X.copg_loss(logp[order], ref[order], batch.reward[order].to(logp.device), mask[order],
                                  beta=c.beta)
        elif c.loss == "ipo":  # TRL: length-normalised log-probs
            length = mask.sum(1).clamp(min=1)
            seq, seq_ref = seq / length, seq_ref / length
            loss, m = L.ipo_loss(seq[:n], seq[n:], seq_ref[:n], seq_ref[n:], tau=c.beta)
        else:
            loss, m = L.dpo_loss(seq[:n], seq[n:], seq_ref[:n], seq_ref[n:], beta=c.beta)
        m["pairs"] = float(n)
        return self._step(loss, m)


def _preset(name: str, base: type, **defaults):
    """A config class of ``base`` whose defaults are ``defaults`` (``grpo`` = ``text_pg`` with loss=grpo, ...)."""
    from dataclasses import field, make_dataclass

    return make_dataclass(name, [(k, type(v), field(default=v)) for k, v in defaults.items()], bases=(base,),
                          frozen=True, namespace={"__module__": __name__,
                                                    "__doc__": f"{base.__name__} with {defaults}"})


GRPOConfig = _preset("GRPOConfig", TextPGConfig, loss="grpo")
RLOOConfig = _preset("RLOOConfig", TextPGConfig, loss="rloo", kl_coef=0.0)
TOPRConfig = _preset("TOPRConfig", TextPGConfig, loss="topr")
DPOConfig = _preset("DPOConfig", PairConfig, loss="dpo")

_pg = lambda config, seed=0, policy=None, **_: TextPGLearner(config, seed, policy)  # noqa: E731
_pair = lambda config, seed=0, policy=None, **_: PairLearner(config, seed, policy)  # noqa: E731
for _name, _cfg, _build, _summary in [
    ("text_pg", TextPGConfig, _pg, "causal-LM policy gradient, loss=grpo|rloo|reinforce_pp|reinforce|topr|asymre|..."),
    ("grpo", GRPOConfig, _pg, "GRPO on a causal LM (group advantages, PPO-clip)"),
    ("rloo", RLOOConfig, _pg, "RLOO on a causal LM (leave-one-out baseline)"),
    ("topr", TOPRConfig, _pg, "TOPR on a causal LM (tapered off-policy REINFORCE)"),
    ("text_pair", PairConfig, _pair, "DPO / IPO / CoPG on within-group pairs of a causal LM"),
    ("dpo", DPOConfig, _pair, "DPO on a causal LM"),
]:
    register(_name, _cfg, build=_build, loop=_LOOP, inputs="text", action_spaces=(), summary=_summary)
