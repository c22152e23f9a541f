"""``hybridrl text ...``: causal-LM commands (demo, collect, train, evaluate). Imports transformers only when run."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Language models: sequence-level policy gradients (GRPO, RLOO, TOPR, AsymRE, DPO, ...).")


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("runs/text_demo"), "--out", help="Output folder (report.md, curves.png, ...)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
    seed: int = typer.Option(0, "--seed"),
    rl_steps: int = typer.Option(60, "--rl-steps", min=1, help="Updates per compared learner."),
    quick: bool = typer.Option(False, "--quick", help="A seconds-long smoke budget (numbers mean nothing)."),
) -> None:
    """Tiny char-level LM: SFT on addition with a partly wrong teacher, a logged corpus, then on-policy GRPO,
    replayed GRPO with/without correction, TOPR / AsymRE / positive-only on the corpus, and DPO (a few minutes)."""
    from dataclasses import replace

    from hybridrl.text.demo import QUICK, DemoSettings, run_demo

    settings = replace(QUICK if quick else DemoSettings(rl_steps=rl_steps), seed=seed)
    run_demo(out, settings, overwrite=overwrite, log=typer.echo)
    typer.echo(f"report: {out / 'report.md'}")


@app.command("collect")
def collect_cmd(
    model: Path = typer.Option(..., "--model", help="Local model directory (safetensors + tokenizer)."),
    out: Path = typer.Option(..., "--out", help="Corpus file, .jsonl or .parquet (a .meta.json sidecar is added)."),
    prompts: int = typer.Option(256, "--prompts", min=1),
    group_size: int = typer.Option(4, "--group-size", min=1),
    temperature: float = typer.Option(1.0, "--temperature", min=1e-6),
    task: str = typer.Option("addition", "--task"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cuda."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Sample completions of a task's prompts with a model and log them (token ids, rewards, behaviour log-probs)."""
    import numpy as np
    import torch

    from hybridrl.text.corpus import write_corpus
    from hybridrl.text.policy import CausalLMPolicy, tokenizer_hash
    from hybridrl.text.tasks import make_task, rollout

    t = make_task(task)
    policy = CausalLMPolicy.load(model, device=device, reference=False)
    batch = rollout(policy, t, t.problems(prompts, np.random.default_rng(seed)), group_size, temperature,
                    torch.Generator().manual_seed(seed))
    write_corpus(out, batch, tokenizer=policy.tokenizer, tokenizer_hash=tokenizer_hash(model),
                 model_hash=policy.model_hash(), temperature=temperature, task=task, overwrite=overwrite)
    typer.echo(f"{out}: {len(batch)} completions, mean reward {float(batch.reward.mean()):.3f}")


@app.command("train")
def train_cmd(
    algo: str = typer.Argument(..., help="grpo, rloo, topr, dpo, text_pg (--set loss=...), text_pair."),
    model: Path = typer.Option(..., "--model", help="Local model directory (safetensors + tokenizer)."),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    steps: int = typer.Option(..., "--steps", min=1, help="Updates."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Train on this logged corpus (else generate online)."),
    task: str = typer.Option("addition", "--task", help="Online task / evaluation task."),
    set_: list[str] = typer.Option([], "--set", help="Config override key=value (repeatable)."),
    seed: int | None = typer.Option(None, "--seed"),
    resume: bool = typer.Option(False, "--resume"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    checkpoint_every: int | None = typer.Option(None, "--checkpoint-every", min=1),
) -> None:
    """Train a text learner (same as ``hybridrl train ALGO --set model=DIR``); the final model is <out>/model."""
    from hybridrl.loops.train import train

    overrides = [] if resume else [f"model={model}", *set_]
    train(algo, out, steps, env_id=task, dataset=str(corpus) if corpus else None, seed=seed, overrides=overrides,
          resume=resume, overwrite=overwrite, checkpoint_every=checkpoint_every, eval_episodes=0)


@app.command("evaluate")
def evaluate_cmd(
    model: Path = typer.Option(..., "--model", help="Local model directory."),
    task: str = typer.Option("addition", "--task"),
    problems: int = typer.Option(500, "--problems", min=1),
    seed: int = typer.Option(10_000, "--seed"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Greedy accuracy and well-formed fraction of a model on a task (prints JSON)."""
    import json

    import numpy as np

    from hybridrl.text.policy import CausalLMPolicy
    from hybridrl.text.tasks import evaluate, make_task

    t = make_task(task)
    policy = CausalLMPolicy.load(model, device=device, reference=False)
    typer.echo(json.dumps(evaluate(policy, t, t.problems(problems, np.random.default_rng(seed)))))


@app.command("sft")
def sft_cmd(
    model: Path = typer.Option(..., "--model", help="Local model directory (safetensors + tokenizer)."),
    corpus: Path = typer.Option(..., "--corpus", help="Demonstrations: a logged corpus (rewards ignored)."),
    out: Path = typer.Option(..., "--out", help="Run directory; the fine-tuned model is <out>/model."),
    steps: int = typer.Option(..., "--steps", min=1),
    positive_only: bool = typer.Option(False, "--positive-only", help="Only rows with reward > 0 (filtered BC)."),
    set_: list[str] = typer.Option([], "--set", help="Config override key=value (repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Supervised fine-tuning (NLL of the completions) on a corpus: ``text_pg`` with loss=sft (or sft_positive)."""
    from hybridrl.loops.train import train

    loss = "sft_positive" if positive_only else "sft"
    train("text_pg", out, steps, dataset=str(corpus), overrides=[f"model={model}", f"loss={loss}", *set_],
          overwrite=overwrite, eval_episodes=0)
