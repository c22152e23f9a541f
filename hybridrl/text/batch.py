"""``SequenceBatch``: prompts and completions of a causal LM in TRL's layout, with rewards and log-probs.

Layout (TRL ``GRPOTrainer``/``RLOOTrainer``): prompts are *left*-padded, completions *right*-padded, so that
``cat([prompt_ids, completion_ids], 1)`` puts every prompt's last token next to its first completion token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hybridrl.errors import ShapeError


def _monotone(mask: torch.Tensor, increasing: bool) -> bool:
    """True when every row of a bool ``[B, L]`` mask is 0…0 1…1 (``increasing``) or 1…1 0…0."""
    m = mask.to(torch.int8)
    d = m[:, 1:] - m[:, :-1]
    return bool((d >= 0).all()) if increasing else bool((d <= 0).all())


@dataclass(frozen=True)
class SequenceBatch:
    """A batch of ``B`` (prompt, completion) pairs of token ids.

    Fields:
        prompt_ids: ``[B, P]`` int64, prompt token ids, left-padded.
        prompt_mask: ``[B, P]`` bool, True on real prompt tokens (every row has at least one).
        completion_ids: ``[B, C]`` int64, completion token ids, right-padded; a finished completion ends with EOS.
        completion_mask: ``[B, C]`` bool, True on real completion tokens (EOS included; at least one per row).
        reward: ``[B]`` float32, sequence reward R(x, y) (finite).
        group: ``[B]`` int64, prompt group id (completions of one prompt share it; group baselines use it).
        behavior_logp: optional ``[B, C]`` float32, log mu(y_t | x, y_<t) of the sampling policy at its sampling
            temperature (nats; finite on valid tokens, anything on padding).
        ref_logp: optional ``[B, C]`` float32, log pi_ref(y_t | x, y_<t) of the reference model.
        policy_version: optional ``[B]`` int64, the learner step whose weights generated the row.

    Raises:
        ShapeError: a field with the wrong shape or dtype kind, masks that are not left-/right-padded, an empty
            prompt or completion, non-finite rewards or log-probs on valid tokens.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    reward: torch.Tensor
    group: torch.Tensor
    behavior_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    policy_version: torch.Tensor | None = None

    _DTYPES = {"prompt_ids": torch.long, "prompt_mask": torch.bool, "completion_ids": torch.long,
               "completion_mask": torch.bool, "reward": torch.float32, "group": torch.long,
               "behavior_logp": torch.float32, "ref_logp": torch.float32, "policy_version": torch.long}

    def __post_init__(self) -> None:
        for name, dtype in self._DTYPES.items():
            value = getattr(self, name)
            if value is None:
                continue
            t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
            if dtype is not torch.float32 and t.is_floating_point() and dtype is not torch.bool:
                raise ShapeError(f"SequenceBatch.{name} must hold integers, got {t.dtype}")
            object.__setattr__(self, name, t.to(dtype))
        if self.prompt_ids.dim() != 2 or self.completion_ids.dim() != 2:
            raise ShapeError(f"SequenceBatch: prompt_ids {tuple(self.prompt_ids.shape)} and completion_ids "
                             f"{tuple(self.completion_ids.shape)} must be 2-D [B, P] and [B, C]")
        b, p = self.prompt_ids.shape
        c = self.completion_ids.shape[1]
        expected = {"prompt_mask": (b, p), "completion_mask": (b, c), "reward": (b,), "group": (b,),
                    "behavior_logp": (b, c), "ref_logp": (b, c), "policy_version": (b,)}
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ShapeError(f"SequenceBatch.{name} has shape {tuple(value.shape)}; expected {shape}")
        if b == 0 or p == 0 or c == 0:
            raise ShapeError(f"SequenceBatch: empty batch (B={b}, P={p}, C={c})")
        if not _monotone(self.prompt_mask, increasing=True) or not bool(self.prompt_mask[:, -1].all()):
            raise ShapeError("SequenceBatch.prompt_mask: prompts must be left-padded (each row 0…0 1…1, last True)")
        if not _monotone(self.completion_mask, increasing=False) or not bool(self.completion_mask[:, 0].all()):
            raise ShapeError("SequenceBatch.completion_mask: completions must be right-padded and non-empty "
                             "(each row 1…1 0…0, first True)")
        if not bool(torch.isfinite(self.reward).all()):
            bad = torch.nonzero(~torch.isfinite(self.reward)).flatten()[:5].tolist()
            raise ShapeError(f"SequenceBatch.reward is not finite at rows {bad}")
        for name in ("behavior_logp", "ref_logp"):
            value = getattr(self, name)
            if value is not None:
                ok = torch.isfinite(value) | ~self.completion_mask
                if not bool(ok.all()):
                    rows = torch.nonzero(~ok.all(1)).flatten()[:5].tolist()
                    raise ShapeError(f"SequenceBatch.{name} is not finite on valid completion tokens of rows {rows}")

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def completion_lengths(self) -> torch.Tensor:
        """``[B]`` int64, number of valid completion tokens per row."""
        return self.completion_mask.sum(1)

    def replace(self, **changes) -> SequenceBatch:
        """A copy with some fields replaced (validated again)."""
        return dataclasses.replace(self, **changes)

    def select(self, index: torch.Tensor | Sequence[int]) -> SequenceBatch:
        """Rows ``index`` (a bool mask or int indices), with all-padding columns trimmed."""
        idx = torch.as_tensor(index)
        fields = {f.name: (None if (v := getattr(self, f.name)) is None else v[idx])
                  for f in dataclasses.fields(self)}
        return trim(SequenceBatch(**fields))

    def to(self, device: str | torch.device) -> SequenceBatch:
        """The batch on ``device``."""
        fields = {f.name: (None if (v := getattr(self, f.name)) is None else v.to(device))
                  for f in dataclasses.fields(self)}
        return SequenceBatch(**fields)


def trim(batch: SequenceBatch) -> SequenceBatch:
    """Drop prompt columns that are padding in every row (left) and completion columns that are (right)."""
    p0 = int(batch.prompt_mask.any(0).to(torch.int8).argmax())
    c1 = int(batch.completion_mask.any(0).sum())
    if p0 == 0 and c1 == batch.completion_ids.shape[1]:
        return batch
    changes = {"prompt_ids": batch.prompt_ids[:, p0:], "prompt_mask": batch.prompt_mask[:, p0:],
               "completion_ids": batch.completion_ids[:, :c1], "completion_mask": batch.completion_mask[:, :c1]}
    for name in ("behavior_logp", "ref_logp"):
        if (v := getattr(batch, name)) is not None:
            changes[name] = v[:, :c1]
    return batch.replace(**changes)


def pad_sequences(rows: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad lists of token ids to ``[B, L]`` on the ``"left"`` or ``"right"``; returns ``(ids, mask)``."""
    n = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.bool)
    for i, r in enumerate(rows):
        if not len(r):
            continue
        sl = slice(n - len(r), n) if side == "left" else slice(0, len(r))
        ids[i, sl] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, sl] = True
    return ids, mask


def pad_values(rows: Sequence[Sequence[float]], width: int) -> torch.Tensor:
    """Right-pad lists of floats to ``[B, width]`` with zeros (for per-token log-probs)."""
    out = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.float32)
    return out


def concat(batches: Sequence[SequenceBatch], pad_id: int) -> SequenceBatch:
    """Stack batches row-wise, re-padding prompts (left) and completions (right); an optional field is kept only
    when every batch has it."""
    prompts = [r[m].tolist() for b in batches for r, m in zip(b.prompt_ids, b.prompt_mask)]
    comps = [r[m].tolist() for b in batches for r, m in zip(b.completion_ids, b.completion_mask)]
    p_ids, p_mask = pad_sequences(prompts, pad_id, "left")
    c_ids, c_mask = pad_sequences(comps, pad_id, "right")
    fields = {"prompt_ids": p_ids, "prompt_mask": p_mask, "completion_ids": c_ids, "completion_mask": c_mask,
              "reward": torch.cat([b.reward for b in batches]), "group": torch.cat([b.group for b in batches])}
    for name in ("behavior_logp", "ref_logp"):
        if all(getattr(b, name) is not None for b in batches):
            vals = [r[m].tolist() for b in batches for r, m in zip(getattr(b, name), b.completion_mask)]
            fields[name] = pad_values(vals, c_ids.shape[1])
    if all(b.policy_version is not None for b in batches):
        fields["policy_version"] = torch.cat([b.policy_version for b in batches])
    return SequenceBatch(**fields)
