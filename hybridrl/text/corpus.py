"""Logged corpora of (prompt, completion, reward) with token ids and behaviour log-probs, as JSONL or Parquet through
the ``datasets`` library, plus a JSON sidecar ``<file>.meta.json``.

Columns (one row per completion): ``prompt`` and ``completion`` (text, for reading only), ``prompt_ids`` and
``completion_ids`` (token ids: training uses these, never re-tokenised text, which would invalidate the log-probs),
``reward`` (float), ``group`` (int, completions of one prompt share it), ``behavior_logp`` (one float per completion
token, natural log, at the sampling temperature; may be absent), ``policy_version`` (int).

Sidecar: ``format``, ``version``, ``rows``, ``tokenizer_hash`` (sha256 of the tokenizer files), ``model_hash`` (of the
sampling weights), ``temperature``, ``top_p``, ``task``, free ``notes``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from hybridrl.errors import DatasetError, RunExistsError
from hybridrl.runs.io import atomic_write_text
from hybridrl.text.batch import SequenceBatch, pad_sequences, pad_values

FORMAT, VERSION = "hybridrl-text-corpus", 1
REQUIRED = ("prompt_ids", "completion_ids", "reward", "group")


def sidecar_path(path: str | os.PathLike) -> Path:
    """``<path>.meta.json``."""
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "json"
    if suffix == ".parquet":
        return "parquet"
    raise DatasetError(f"corpus file {path}: unknown extension {suffix!r}; expected .jsonl or .parquet")


def write_corpus(path: str | os.PathLike, batch: SequenceBatch, *, tokenizer=None, tokenizer_hash: str,
                 model_hash: str | None = None, temperature: float = 1.0, top_p: float = 1.0, task: str | None = None,
                 notes: str = "", overwrite: bool = False) -> Path:
    """Write ``batch`` to ``path`` (``.jsonl`` or ``.parquet``) and its sidecar, both atomically.

    ``tokenizer`` (optional) decodes the ``prompt``/``completion`` text columns. Raises RunExistsError if ``path``
    exists and not ``overwrite``; DatasetError for an unknown extension.
    """
    import datasets

    datasets.disable_progress_bars()
    path = Path(path)
    kind = _kind(path)
    if path.exists() and not overwrite:
        raise RunExistsError(f"corpus {path} exists; pass overwrite=True (--overwrite) to replace it")
    prompts = [r[m].tolist() for r, m in zip(batch.prompt_ids, batch.prompt_mask)]
    comps = [r[m].tolist() for r, m in zip(batch.completion_ids, batch.completion_mask)]
    cols: dict[str, Any] = {
        "prompt": [tokenizer.decode(p) if tokenizer else "" for p in prompts],
        "completion": [tokenizer.decode(c) if tokenizer else "" for c in comps],
        "prompt_ids": prompts, "completion_ids": comps,
        "reward": batch.reward.double().tolist(), "group": batch.group.tolist(),
        "policy_version": (batch.policy_version if batch.policy_version is not None
                           else torch.zeros(len(batch), dtype=torch.long)).tolist(),
    }
    if batch.behavior_logp is not None:
        cols["behavior_logp"] = [r[m].double().tolist() for r, m in zip(batch.behavior_logp, batch.completion_mask)]
    ds = datasets.Dataset.from_dict(cols)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if kind == "json":
            ds.to_json(str(tmp), lines=True)
        else:
            ds.to_parquet(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    meta = {"format": FORMAT, "version": VERSION, "rows": len(batch), "tokenizer_hash": tokenizer_hash,
            "model_hash": model_hash, "temperature": float(temperature), "top_p": float(top_p), "task": task,
            "notes": notes}
    atomic_write_text(sidecar_path(path), json.dumps(meta, indent=2))
    return path


def read_corpus(path: str | os.PathLike, tokenizer_hash: str | None = None, pad_id: int = 0
                ) -> tuple[SequenceBatch, dict]:
    """Read a corpus written by :func:`write_corpus` (or by any tool that writes the same columns and sidecar).

    Args:
        path: ``.jsonl`` or ``.parquet`` file. tokenizer_hash: the model's tokenizer hash; refused if it differs
            from the sidecar's. pad_id: the padding id of the returned batch.
    Returns: ``(batch, meta)``.
    Raises:
        DatasetError: missing file or sidecar, wrong format, missing columns, non-finite rewards or log-probs,
            log-probs whose length differs from the completion's, empty rows, or a different tokenizer (names the
            file, the column and the first bad row).
    """
    import datasets

    datasets.disable_progress_bars()
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"corpus file {path} does not exist")
    kind = _kind(path)
    side = sidecar_path(path)
    if not side.is_file():
        raise DatasetError(f"corpus {path} has no sidecar {side.name} (tokenizer and sampling settings); write the "
                           "corpus with hybridrl.text.corpus.write_corpus or `hybridrl text collect`")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"corpus sidecar {side} is not valid JSON: {e}") from None
    if meta.get("format") != FORMAT or "tokenizer_hash" not in meta:
        raise DatasetError(f"{side}: format={meta.get('format')!r}; expected {FORMAT!r} with a tokenizer_hash")
    if tokenizer_hash is not None and meta["tokenizer_hash"] != tokenizer_hash:
        raise DatasetError(f"corpus {path} was tokenised by an unknown tokenizer (sidecar tokenizer_hash "
                           f"{meta['tokenizer_hash'][:12]}…, the model's is {tokenizer_hash[:12]}…); its token ids "
                           "mean nothing to this model: use the model that logged it")
    try:
        loader = datasets.Dataset.from_json if kind == "json" else datasets.Dataset.from_parquet
        ds = loader(str(path), keep_in_memory=True)
    except Exception as e:  # noqa: BLE001 - datasets/pyarrow raise many types
        raise DatasetError(f"corpus file {path} cannot be read as {kind}: {e}") from None
    missing = [c for c in REQUIRED if c not in ds.column_names]
    if missing:
        raise DatasetError(f"corpus {path} lacks columns {missing}; expected at least {list(REQUIRED)} "
                           f"(has {ds.column_names})")
    data = ds.to_dict()
    n = len(data["reward"])
    for i in range(n):
        r = data["reward"][i]
        if r is None or not math.isfinite(float(r)):
            raise DatasetError(f"corpus {path}: column 'reward' is {r!r} at row {i}; expected a finite number")
        if not data["prompt_ids"][i] or not data["completion_ids"][i]:
            raise DatasetError(f"corpus {path}: row {i} has an empty prompt_ids or completion_ids")
        if "behavior_logp" in data:
            lp, c = data["behavior_logp"][i], data["completion_ids"][i]
            if lp is None or len(lp) != len(c):
                raise DatasetError(f"corpus {path}: column 'behavior_logp' has {None if lp is None else len(lp)} "
                                   f"values at row {i} but the completion has {len(c)} tokens")
            if not all(v is not None and math.isfinite(v) for v in lp):
                raise DatasetError(f"corpus {path}: column 'behavior_logp' is not finite at row {i}")
    if n == 0:
        raise DatasetError(f"corpus {path} has no rows")
    p_ids, p_mask = pad_sequences(data["prompt_ids"], pad_id, "left")
    c_ids, c_mask = pad_sequences(data["completion_ids"], pad_id, "right")
    fields: dict[str, Any] = {"prompt_ids": p_ids, "prompt_mask": p_mask, "completion_ids": c_ids,
                              "completion_mask": c_mask, "reward": torch.tensor(data["reward"], dtype=torch.float32),
                              "group": torch.tensor(data["group"], dtype=torch.long)}
    if "behavior_logp" in data:
        fields["behavior_logp"] = pad_values(data["behavior_logp"], c_ids.shape[1])
    if "policy_version" in data:
        fields["policy_version"] = torch.tensor(data["policy_version"], dtype=torch.long)
    return SequenceBatch(**fields), meta
