"""``hybridrl text demo``: a tiny causal LM, SFT on addition with a partly wrong teacher, a logged corpus, and a
comparison of on-policy, replayed and fixed-corpus learners, with a report. No download; minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from hybridrl.errors import RunExistsError
from hybridrl.runs.io import atomic_write_text
from hybridrl.text.batch import SequenceBatch, pad_sequences


@dataclass(frozen=True)
class DemoSettings:
    """Budget of the demo. ``max_operand``: operands 0..max_operand; ``teacher_error``: fraction of wrong SFT
    answers; ``sft_steps`` / ``rl_steps``: updates; ``corpus_prompts``: prompts in the logged corpus (× group 4);
    ``rl_lr`` / ``pair_lr``: AdamW learning rates of the policy-gradient and the DPO learners."""

    max_operand: int = 19
    teacher_error: float = 0.4
    sft_steps: int = 600
    rl_steps: int = 60
    corpus_prompts: int = 512
    group_size: int = 4
    batch_prompts: int = 16
    eval_every: int = 10
    eval_problems: int = 200
    hidden: int = 64
    rl_lr: float = 3e-4
    pair_lr: float = 1e-4
    seed: int = 0


QUICK = DemoSettings(sft_steps=5, rl_steps=2, corpus_prompts=8, batch_prompts=4, eval_every=2, eval_problems=8)
"""A seconds-long budget for tests (numbers mean nothing)."""

METHODS = [
    # name, data, learner, config overrides
    ("GRPO on-policy", "online", "text_pg", {"loss": "grpo"}),
    ("replay k=4, no correction", "online", "text_pg", {"loss": "reinforce", "correction": "none", "replay": 4}),
    ("replay k=4, PPO-clip", "online", "text_pg", {"loss": "grpo", "replay": 4}),
    ("replay k=4, truncated IS", "online", "text_pg", {"loss": "reinforce", "correction": "truncate", "replay": 4}),
    ("replay k=4, REC one-side mask", "online", "text_pg", {"loss": "reinforce", "correction": "mask", "replay": 4}),
    ("corpus: naive REINFORCE ±1", "corpus", "text_pg",
     {"loss": "reinforce", "baseline": "none", "scale": "none", "aggregation": "seq-sum"}),
    ("corpus: TOPR", "corpus", "text_pg", {"loss": "topr"}),
    ("corpus: positive-only", "corpus", "text_pg", {"loss": "sft_positive"}),
    ("corpus: AsymRE δ=-0.1", "corpus", "text_pg", {"loss": "asymre", "delta": -0.1}),
    ("corpus: DPO β=0.1", "corpus", "text_pair", {"loss": "dpo", "beta": 0.1}),
]


def _teacher_corpus(task, tokenizer, n: int, error: float, rng: np.random.Generator) -> SequenceBatch:
    """Addition answers from a teacher that is wrong on a fixed ``error`` fraction of the problems (answer off by
    1–9); the same problem always gets the same answer, so the student cannot average the errors away."""
    from hybridrl.text.tasks import encode_prompts

    probs = task.problems(n, rng)
    answers = []
    for a, b in probs:
        wrong = (a * 31 + b * 17) % 100 < 100 * error
        shift = 1 + (a * 7 + b * 3) % 9
        answers.append(str(a + b + shift) if wrong else str(a + b))
    p_ids, p_mask = encode_prompts(tokenizer, [task.prompt(a, b) for a, b in probs])
    eos = int(tokenizer.eos_token_id)
    c_ids, c_mask = pad_sequences([tokenizer(s, add_special_tokens=False)["input_ids"] + [eos] for s in answers],
                                  int(tokenizer.pad_token_id), "right")
    return SequenceBatch(p_ids, p_mask, c_ids, c_mask, torch.ones(n), torch.arange(n))


def run_demo(out: str | os.PathLike, settings: DemoSettings = DemoSettings(), overwrite: bool = False,
             log=print) -> dict:
    """Run the demo into ``out`` (``report.md``, ``results.json``, ``curves.png``, ``corpus.parquet``, models).

    Returns the results dict. Raises RunExistsError if ``out`` is not empty and not ``overwrite``.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise RunExistsError(f"demo output {out} is not empty; pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    prep = prepare(out, settings, log=log)
    results = {"settings": asdict(settings), "start": prep["start"], "corpus_rows": len(prep["corpus"]),
               "corpus_correct": prep["corpus_correct"], "runs": {}}
    for name, data, algo, overrides in METHODS:
        results["runs"][name] = run_method(prep, data, algo, overrides, settings)
        r = results["runs"][name]
        log(f"{name:34s} accuracy {r['accuracy']:.3f}  well-formed {r['well_formed']:.3f}  "
            f"[{time.perf_counter() - t_start:.0f} s]")
    results["seconds"] = time.perf_counter() - t_start
    _write_report(out, results)
    return results


def prepare(out: Path, s: DemoSettings, log=print) -> dict:
    """Steps 1–2 of the demo in ``out``: a tiny model, SFT on the partly wrong teacher, a logged corpus of the SFT
    policy (T = 1, ±1 rewards). Returns ``{"task", "eval_problems", "sft_dir", "corpus", "start",
    "corpus_correct"}`` for :func:`run_method`."""
    from hybridrl.algos import get_algo
    from hybridrl.text.corpus import read_corpus, write_corpus
    from hybridrl.text.loops import fit
    from hybridrl.text.policy import tokenizer_hash
    from hybridrl.text.tasks import AdditionTask, evaluate, rollout
    from hybridrl.text.tiny import build_tiny_model

    t_start = time.perf_counter()
    task = AdditionTask(max_operand=s.max_operand)
    rng = np.random.default_rng(s.seed)
    eval_problems = task.problems(s.eval_problems, np.random.default_rng(10_000 + s.seed))
    base = build_tiny_model(out / "base", hidden=s.hidden, seed=s.seed)

    # 1. SFT on a partly wrong teacher
    pg = get_algo("text_pg")
    sft_cfg = pg.config_cls(model=str(base), loss="sft", lr=3e-3, batch_prompts=64, eval_every=max(s.sft_steps, 1))
    sft = pg.make(sft_cfg, seed=s.seed)
    teacher = _teacher_corpus(task, sft.policy.tokenizer, 4096, s.teacher_error, rng)
    fit(sft, s.sft_steps, corpus=teacher, seed=s.seed)
    sft_dir = sft.policy.save(out / "sft")
    start = evaluate(sft.policy, task, eval_problems)
    log(f"SFT ({s.sft_steps} steps, teacher wrong on {s.teacher_error:.0%}): accuracy {start['accuracy']:.3f}, "
        f"well-formed {start['well_formed']:.3f}  [{time.perf_counter() - t_start:.0f} s]")

    # 2. a logged corpus from the SFT policy (T = 1, ±1 rewards)
    gen = torch.Generator().manual_seed(s.seed)
    logged = rollout(sft.policy, task, task.problems(s.corpus_prompts, rng), s.group_size, 1.0, gen)
    corpus_path = write_corpus(out / "corpus.parquet", logged, tokenizer=sft.policy.tokenizer,
                               tokenizer_hash=tokenizer_hash(sft_dir), model_hash=sft.policy.model_hash(),
                               temperature=1.0, top_p=1.0, task="addition", overwrite=True)
    corpus, _ = read_corpus(corpus_path, tokenizer_hash(sft_dir), sft.policy.pad_id)
    correct = float((corpus.reward > 0).float().mean())
    log(f"corpus: {len(corpus)} completions, {correct:.2f} correct")
    return {"task": task, "eval_problems": eval_problems, "sft_dir": sft_dir, "corpus": corpus, "start": start,
            "corpus_correct": correct}


def run_method(prep: dict, data: str, algo: str, overrides: dict, s: DemoSettings,
               corpus: SequenceBatch | None = None) -> dict:
    """Step 3 of the demo for one learner: ``algo`` with ``overrides`` from the SFT weights of ``prep`` (from
    :func:`prepare`) for ``s.rl_steps`` updates, on the logged corpus (``data="corpus"``; ``corpus`` replaces it) or
    online (``data="online"``). ``overrides`` may set ``lr`` (default ``s.rl_lr``, or ``s.pair_lr`` for DPO).
    Returns ``{"curve": [(step, accuracy, well_formed)], "accuracy", "well_formed", "best_accuracy", ...}``."""
    from hybridrl.algos import get_algo
    from hybridrl.text.loops import fit
    from hybridrl.text.policy import CausalLMPolicy

    spec = get_algo(algo)
    cfg = spec.config_cls(model=str(prep["sft_dir"]), lr=s.rl_lr if algo == "text_pg" else s.pair_lr,
                          batch_prompts=s.batch_prompts, group_size=s.group_size, eval_every=s.eval_every,
                          eval_problems=s.eval_problems)
    cfg = replace(cfg, **overrides)
    policy = CausalLMPolicy.load(prep["sft_dir"], reference=algo == "text_pair")
    learner = spec.make(cfg, seed=s.seed, policy=policy)
    if data == "corpus":
        corpus = prep["corpus"] if corpus is None else corpus
    else:
        corpus = None
    t0 = time.perf_counter()
    rows = fit(learner, s.rl_steps, task=prep["task"], corpus=corpus, seed=s.seed, eval_problems=prep["eval_problems"])
    curve = [(r["step"], r["eval/accuracy"], r["eval/well_formed"]) for r in rows if "eval/accuracy" in r]
    final = curve[-1]
    tps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    return {"data": data, "algo": algo, "config": overrides, "curve": curve, "accuracy": final[1],
            "well_formed": final[2], "best_accuracy": max(c[1] for c in curve),
            "seconds": time.perf_counter() - t0, "train_tokens_per_s": tps[-1] if tps else 0.0}


def _write_report(out: Path, results: dict) -> None:
    from hybridrl.runs.plots import _figure, _save

    fig, axes = _figure(1, 2, (6.0, 4.2))
    axes = axes[0]
    for name, r in results["runs"].items():
        steps, acc, well = zip(*r["curve"])
        style = "-" if r["data"] == "online" else "--"
        axes[0].plot(steps, acc, style, label=name)
        axes[1].plot(steps, well, style, label=name)
    axes[0].set(xlabel="update", ylabel="greedy accuracy", title="accuracy")
    axes[1].set(xlabel="update", ylabel="fraction well-formed", title="well-formed outputs")
    axes[1].legend(fontsize=6)
    _save(fig, out / "curves.png")
    s, st = results["settings"], results["start"]
    lines = [
        "# hybridrl text demo", "",
        f"Tiny Llama-architecture character LM (hidden {s['hidden']}, 2 layers), two-number addition with operands "
        f"0..{s['max_operand']}, exact-match reward ±1, seed {s['seed']} (one seed: indicative only).",
        f"SFT: {s['sft_steps']} updates on a teacher that is wrong on {s['teacher_error']:.0%} of the problems; start "
        f"accuracy {st['accuracy']:.3f}, well-formed {st['well_formed']:.3f}.",
        f"Logged corpus: {results['corpus_rows']} completions of the SFT policy at T = 1 "
        f"({results['corpus_correct']:.2f} correct).",
        f"Every learner: {s['rl_steps']} updates of {s['batch_prompts']} prompts × {s['group_size']} completions, from "
        f"the SFT weights; greedy evaluation on {s['eval_problems']} held-out problems. "
        f"Total {results['seconds']:.0f} s.",
        "", "| method | data | final accuracy | best accuracy | well-formed | Δ accuracy vs start | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results["runs"].items():
        lines.append(f"| {name} | {r['data']} | {r['accuracy']:.3f} | {r['best_accuracy']:.3f} | "
                     f"{r['well_formed']:.3f} | {r['accuracy'] - st['accuracy']:+.3f} | {r['seconds']:.0f} |")
    lines += ["", "![curves](curves.png)", "",
              "Reading: a number from one seed and a few dozen updates; differences under ~0.05 are noise."]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))
