"""Verifiable synthetic tasks: prompts, a reward from the completion text, and a well-formedness check.

``addition``: prompts ``"a+b="`` with 0 ≤ a, b ≤ 99 written without leading zeros; the answer is the decimal sum
followed by EOS. Reward: +1 for an exact match, −1 otherwise (``reward_scale="pm1"``) or 1/0 (``"01"``).
Well-formed: 1–3 digits, then EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hybridrl.errors import ConfigError
from hybridrl.text.batch import SequenceBatch, pad_sequences


@dataclass(frozen=True)
class AdditionTask:
    """Two-digit addition as characters. ``max_operand`` bounds a and b; ``max_new_tokens`` = 4 (3 digits + EOS)."""

    max_operand: int = 99
    reward_scale: str = "pm1"
    max_new_tokens: int = 4
    name: str = "addition"

    def __post_init__(self) -> None:
        if self.reward_scale not in ("pm1", "01"):
            raise ConfigError(f"AdditionTask.reward_scale={self.reward_scale!r}; expected 'pm1' or '01'")

    def problems(self, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        """``n`` operand pairs drawn uniformly."""
        ab = rng.integers(0, self.max_operand + 1, size=(n, 2))
        return [(int(a), int(b)) for a, b in ab]

    @staticmethod
    def prompt(a: int, b: int) -> str:
        return f"{a}+{b}="

    @staticmethod
    def answer(a: int, b: int) -> str:
        return str(a + b)

    @staticmethod
    def parse(prompt: str) -> tuple[int, int]:
        left, right = prompt.rstrip("=").split("+")
        return int(left), int(right)

    def score(self, prompt: str, completion: str, finished: bool) -> tuple[float, bool]:
        """``(reward, well_formed)`` of a decoded completion (EOS stripped); ``finished`` = it ended with EOS."""
        well = finished and 1 <= len(completion) <= 3 and completion.isdigit()
        correct = well and completion == self.answer(*self.parse(prompt))
        if self.reward_scale == "pm1":
            return (1.0 if correct else -1.0), well
        return (1.0 if correct else 0.0), well


def encode_prompts(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(prompt_ids, prompt_mask)`` of ``prompts`` (no special tokens added)."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    return pad_sequences(ids, int(tokenizer.pad_token_id), "left")


def score_batch(task: AdditionTask, tokenizer, prompts: list[str], completion_ids: torch.Tensor,
                completion_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Rewards ``[B]``, well-formed flags ``[B]`` and decoded completions of sampled completions."""
    eos = int(tokenizer.eos_token_id)
    rewards, wells, texts = [], [], []
    for p, ids, m in zip(prompts, completion_ids, completion_mask):
        toks = ids[m].tolist()
        finished = bool(toks) and toks[-1] == eos
        text = tokenizer.decode(toks[:-1] if finished else toks, skip_special_tokens=False)
        r, w = task.score(p, text, finished)
        rewards.append(r)
        wells.append(w)
        texts.append(text)
    return torch.tensor(rewards), torch.tensor(wells), texts


def rollout(policy, task: AdditionTask, problems: list[tuple[int, int]], group_size: int, temperature: float,
            generator: torch.Generator, version: int = 0, group_offset: int = 0) -> SequenceBatch:
    """Sample ``group_size`` completions per problem with ``policy``; returns a scored :class:`SequenceBatch` with
    behaviour log-probs, group ids ``group_offset + problem index`` and ``policy_version = version``."""
    prompts = [task.prompt(a, b) for a, b in problems for _ in range(group_size)]
    p_ids, p_mask = encode_prompts(policy.tokenizer, prompts)
    c_ids, c_mask, blp = policy.sample(p_ids, p_mask, task.max_new_tokens, temperature, generator=generator)
    reward, _, _ = score_batch(task, policy.tokenizer, prompts, c_ids, c_mask)
    group = torch.arange(len(problems)).repeat_interleave(group_size) + group_offset
    return SequenceBatch(p_ids, p_mask, c_ids, c_mask, reward, group, behavior_logp=blp,
                         policy_version=torch.full((len(prompts),), version))


@torch.no_grad()
def evaluate(policy, task: AdditionTask, problems: list[tuple[int, int]], batch_size: int = 256) -> dict[str, float]:
    """Greedy decoding on ``problems``: ``accuracy`` (exact match) and ``well_formed`` fractions."""
    acc, well = [], []
    for i in range(0, len(problems), batch_size):
        chunk = problems[i: i + batch_size]
        prompts = [task.prompt(a, b) for a, b in chunk]
        p_ids, p_mask = encode_prompts(policy.tokenizer, prompts)
        c_ids, c_mask, _ = policy.sample(p_ids, p_mask, task.max_new_tokens, temperature=0.0)
        r, w, _ = score_batch(task, policy.tokenizer, prompts, c_ids, c_mask)
        acc.append(r == 1.0)
        well.append(w)
    return {"accuracy": float(torch.cat(acc).float().mean()), "well_formed": float(torch.cat(well).float().mean())}


TASKS = {"addition": AdditionTask}


def make_task(name: str, **kwargs) -> AdditionTask:
    """A task by name (``"addition"``). Raises ConfigError for an unknown name."""
    if name not in TASKS:
        raise ConfigError(f"unknown text task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name](**kwargs)
