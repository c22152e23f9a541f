"""Issue 11 "Speed": tokens/s of the tiny text model, and hybridrl's GRPO step against TRL's ``GRPOTrainer``, in one
run with the two implementations alternated (so machine load hits both alike). Not a test; from the repository root:

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/text_speed.py --reps 11 --warmup 2

The model is the one ``hybridrl text demo`` builds (:func:`hybridrl.text.tiny.build_tiny_model`: a 2-layer
Llama-architecture character LM, hidden 64, written to a temporary directory; random weights — no download, no SFT:
speed does not depend on the weights except through completion lengths, which are counted). The batch is the demo's:
``--prompts`` addition prompts × ``--group`` completions, ``--completion-length`` new tokens at most (the demo's 4),
temperature 1, exact-match ±1 reward. Tokens are *completion* tokens (EOS included, padding excluded) for every
number. Each measurement is the median over ``--reps`` alternating repetitions after ``--warmup`` untimed ones; the
order of the two arms is swapped every repetition (ABBA...). Both wall time and process CPU time are recorded: with
one torch thread on a loaded machine, CPU time is the less load-sensitive of the two.

Measurements (both arms on their own copy of the same weights, one torch thread):

1. ``generation``: hybridrl ``CausalLMPolicy.sample`` (own KV-cached loop, returns behaviour log-probs) vs
   ``model.generate(do_sample=True, top_k=0, top_p=1)`` — the generation path ``GRPOTrainer`` uses without vLLM.
2. ``update``: update-only on identical pre-generated completions (one batch sampled once by hybridrl; rewards set
   to one +1 and G−1 −1 per group, since random weights answer nothing right and would give zero advantages; no
   behaviour log-probs, so μ = the current policy on both sides; the final weights of the two arms are compared and
   recorded as a check that both computed the same update). hybridrl:
   ``TextPGLearner.update`` (forward, GRPO loss, backward, grad-norm clip 1.0, AdamW step). TRL:
   ``GRPOTrainer.training_step`` with ``_prepare_inputs`` bypassed (so it does not generate) + the trainer's grad
   clip, ``optimizer.step()``, ``zero_grad()`` — what ``Trainer`` does per step after the batch exists.
3. ``full``: a whole online step. hybridrl: ``rollout`` (sample + reward) then ``update`` — the body of
   :func:`hybridrl.text.loops.fit` without evaluation. TRL: ``GRPOTrainer.train()`` timed from ``on_step_begin`` to
   ``on_step_end`` (generation, reward, advantages, loss, backward, clip, optimiser and scheduler step; not the data
   loader or logging); the hybridrl step runs inside ``on_step_end`` after TRL's time is taken (fixed order here).
   Both arms start this phase from the start weights with fresh AdamW states.

Matched settings: GRPO, ε = 0.2 both sides, β = 0 (no reference model), TRL ``loss_type="grpo"`` = hybridrl's
``seq-mean-token-mean``, one update per generation (TRL ``num_iterations=1``), AdamW lr 3e-4 (the demo's), weight decay
0, constant lr, max grad norm 1.0, fp32 on CPU. Known differences (small): TRL computes per-token entropies for its
metrics and uses Bessel-corrected group std; hybridrl validates the batch and logs ratio/ESS/clip-fraction metrics.

TRL is NOT a dependency of hybridrl: it is imported only inside the TRL arms (``--no-trl`` skips them). Versions
used are recorded in the JSON.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import machine, save_json  # noqa: E402


def _ntok(mask) -> int:
    return int(mask.sum())


def _generate_tokens(out_ids: torch.Tensor, prompt_len: int, eos: int, pad: int) -> int:
    """Completion tokens of ``generate`` output: up to and including the first EOS (pad after it not counted)."""
    comp = out_ids[:, prompt_len:]
    is_eos = comp == eos
    after = (is_eos.cumsum(1) - is_eos.long()) > 0  # positions after the first EOS
    return int((~after).sum())


class Bench:
    """The shared setup: the tiny model directory, both arms' models and the fixed batch."""

    def __init__(self, args, workdir: Path):
        from hybridrl.algos import get_algo
        from hybridrl.text.tasks import AdditionTask
        from hybridrl.text.tiny import build_tiny_model

        self.args = args
        self.dir = build_tiny_model(workdir / "model", hidden=args.hidden, seed=args.seed)
        self.task = AdditionTask(max_operand=19, max_new_tokens=args.completion_length)
        spec = get_algo("grpo")
        cfg = spec.config_cls(model=str(self.dir), lr=args.lr, batch_prompts=args.prompts, group_size=args.group)
        self.learner = spec.make(cfg, seed=args.seed)
        self.policy = self.learner.policy
        self.tok = self.policy.tokenizer
        self.rng = np.random.default_rng(args.seed)
        self.gen = torch.Generator().manual_seed(args.seed)

    def problems(self):
        return self.task.problems(self.args.prompts, self.rng)

    def prompts(self):
        from hybridrl.text.tasks import encode_prompts

        ps = [self.task.prompt(a, b) for a, b in self.problems() for _ in range(self.args.group)]
        return encode_prompts(self.tok, ps)

    def fixed_batch(self):
        from hybridrl.text.tasks import rollout

        batch = rollout(self.policy, self.task, self.problems(), self.args.group, 1.0, self.gen)
        # random weights get every reward -1 (zero advantages); one +1 per group keeps the gradient non-trivial
        reward = torch.tensor([1.0] + [-1.0] * (self.args.group - 1)).repeat(self.args.prompts)
        # no behaviour log-probs: mu = the current policy (detached) on every reuse, as TRL with num_iterations=1, so
        # both arms compute the same loss and gradient on every repetition
        return batch.replace(reward=reward, behavior_logp=None)

    def hybridrl_full_step(self) -> tuple[float, int]:
        from hybridrl.text.tasks import rollout

        t0, c0 = time.perf_counter(), time.process_time()
        batch = rollout(self.policy, self.task, self.problems(), self.args.group, 1.0, self.gen)
        self.learner.update(batch)
        return time.perf_counter() - t0, time.process_time() - c0, _ntok(batch.completion_mask)


def make_trl(b: Bench, workdir: Path, max_steps: int):
    """A ``GRPOTrainer`` on its own copy of the tiny model, with the demo's task as dataset and reward."""
    import trl  # the TRL arm only: not a hybridrl dependency
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    a = b.args
    model = AutoModelForCausalLM.from_pretrained(b.dir, local_files_only=True, use_safetensors=True)
    eos = b.policy.eos_id
    counted = {"tokens": 0}

    def addition_reward(prompts, completions, completion_ids, **_):
        """The demo's ±1 exact-match reward (``AdditionTask.score``), from TRL's completion ids (EOS kept)."""
        out = []
        for p, ids in zip(prompts, completion_ids):
            ids = list(ids)
            counted["tokens"] += len(ids)
            finished = bool(ids) and ids[-1] == eos
            text = b.tok.decode(ids[:-1] if finished else ids, skip_special_tokens=False)
            out.append(b.task.score(p, text, finished)[0])
        return out

    n_rows = (max_steps + 2) * a.prompts
    rows = [{"prompt": b.task.prompt(x, y)} for x, y in b.task.problems(n_rows, np.random.default_rng(a.seed + 1))]
    cfg = trl.GRPOConfig(
        output_dir=str(workdir / "trl"), per_device_train_batch_size=a.prompts * a.group, num_generations=a.group,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        max_completion_length=a.completion_length, temperature=1.0, top_p=1.0, top_k=0, beta=0.0, epsilon=0.2,
        loss_type="grpo", scale_rewards="group", learning_rate=a.lr, weight_decay=0.0, lr_scheduler_type="constant",
        warmup_steps=0, max_grad_norm=1.0, optim="adamw_torch", max_steps=max_steps, use_cpu=True, bf16=False,
        fp16=False, report_to="none", logging_strategy="no", save_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0, seed=a.seed, log_completions=False)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=addition_reward, args=cfg,
                              train_dataset=Dataset.from_list(rows), processing_class=b.tok)
    return trainer, counted


def _empty() -> dict:
    return {"seconds": [], "cpu_seconds": [], "tokens": []}


def _add(r: dict, wall: float, cpu: float, tokens: int) -> None:
    r["seconds"].append(wall)
    r["cpu_seconds"].append(cpu)
    r["tokens"].append(tokens)


def alternate(reps: int, warmup: int, arms: dict) -> dict:
    """Run each arm (``name -> () -> (wall s, process CPU s, tokens)``) ``warmup + reps`` times, swapping the order
    every repetition; returns per arm the timed values of the last ``reps``."""
    names = list(arms)
    rec = {n: _empty() for n in names}
    for i in range(warmup + reps):
        for n in (names if i % 2 == 0 else names[::-1]):
            out = arms[n]()
            if i >= warmup:
                _add(rec[n], *out)
    return rec


def summarise(rec: dict) -> dict:
    out = {}
    for n, r in rec.items():
        tps = [t / s for s, t in zip(r["seconds"], r["tokens"])]
        tpc = [t / s for s, t in zip(r["cpu_seconds"], r["tokens"])]
        out[n] = {**r, "median_s": statistics.median(r["seconds"]), "median_cpu_s": statistics.median(r["cpu_seconds"]),
                  "median_tokens_per_s": statistics.median(tps), "median_tokens_per_cpu_s": statistics.median(tpc),
                  "tokens_per_step": statistics.median(r["tokens"])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step (demo: 16)")
    ap.add_argument("--group", type=int, default=4, help="completions per prompt (demo: 4)")
    ap.add_argument("--completion-length", type=int, default=4, help="max new tokens (demo task: 4)")
    ap.add_argument("--hidden", type=int, default=64, help="model width (demo: 64)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-trl", action="store_true", help="skip the TRL arms (hybridrl numbers only)")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    ap.add_argument("--out", default=f"benchmarks/results/text_speed_{stamp}.json")
    args = ap.parse_args()
    if os.path.exists(args.out):
        sys.exit(f"{args.out} exists; results are never overwritten: pass another --out")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    info = machine(args.threads)
    try:  # which code was measured
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=Path(__file__).resolve().parent).stdout.strip()
    except OSError:
        pass
    results: dict = {"machine": info, "args": vars(args), "tokens": "completion tokens (EOS included, no padding)"}

    with tempfile.TemporaryDirectory() as d:
        b = Bench(args, Path(d))
        fixed = b.fixed_batch()
        p_ids, p_mask = fixed.prompt_ids, fixed.prompt_mask

        def h_gen():
            t0, c0 = time.perf_counter(), time.process_time()
            _, m, _ = b.policy.sample(p_ids, p_mask, args.completion_length, 1.0, generator=b.gen)
            return time.perf_counter() - t0, time.process_time() - c0, _ntok(m)

        def h_upd():
            t0, c0 = time.perf_counter(), time.process_time()
            b.learner.update(fixed)
            return time.perf_counter() - t0, time.process_time() - c0, _ntok(fixed.completion_mask)

        gen_arms, upd_arms = {"hybridrl": h_gen}, {"hybridrl": h_upd}
        trainer = None
        if not args.no_trl:
            import transformers
            import trl

            info.update(trl=trl.__version__, transformers=transformers.__version__)
            trainer, counted = make_trl(b, Path(d), args.warmup + args.reps)
            tmodel = trainer.model
            from hybridrl.text.losses import group_advantages

            inputs = {"prompt_ids": p_ids, "prompt_mask": p_mask.long(), "completion_ids": fixed.completion_ids,
                      "completion_mask": fixed.completion_mask.long(),
                      "advantages": group_advantages(fixed.reward, fixed.group, "mean", "group"),
                      "num_items_in_batch": fixed.completion_mask.sum()}

            def t_gen():
                t0, c0 = time.perf_counter(), time.process_time()
                tmodel.eval()
                with torch.no_grad():
                    out = tmodel.generate(input_ids=p_ids, attention_mask=p_mask.long(), do_sample=True,
                                          temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=args.completion_length,
                                          pad_token_id=b.policy.pad_id, eos_token_id=b.policy.eos_id)
                return (time.perf_counter() - t0, time.process_time() - c0,
                        _generate_tokens(out, p_ids.shape[1], b.policy.eos_id, b.policy.pad_id))

            trainer.create_optimizer()
            trainer.current_gradient_accumulation_steps = 1
            params = [p for p in tmodel.parameters() if p.requires_grad]

            def t_upd():
                t0, c0 = time.perf_counter(), time.process_time()
                trainer._prepare_inputs = lambda x: x  # no generation: the batch is given
                trainer.training_step(tmodel, dict(inputs), inputs["num_items_in_batch"])
                trainer.accelerator.clip_grad_norm_(params, 1.0)
                trainer.optimizer.step()
                tmodel.zero_grad()
                return time.perf_counter() - t0, time.process_time() - c0, _ntok(fixed.completion_mask)

            gen_arms["trl"], upd_arms["trl"] = t_gen, t_upd
        print("timing generation ...", flush=True)
        results["generation"] = summarise(alternate(args.reps, args.warmup, gen_arms))
        print("timing update-only ...", flush=True)
        w0 = {k: v.detach().clone() for k, v in b.policy.model.named_parameters()}
        results["update"] = summarise(alternate(args.reps, args.warmup, upd_arms))
        if trainer is not None:  # both arms did the same updates from the same weights: how far apart did they end?
            h = dict(b.policy.model.named_parameters())
            diff = max(float((p - h[k]).abs().max()) for k, p in trainer.model.named_parameters())
            moved = max(float((p - w0[k]).abs().max()) for k, p in h.items())
            results["update_max_abs_weight_difference"] = {"hybridrl_vs_trl": diff, "hybridrl_vs_start": moved}
        print("timing full steps ...", flush=True)
        if trainer is None:
            results["full"] = summarise(alternate(args.reps, args.warmup, {"hybridrl": b.hybridrl_full_step}))
        else:
            del trainer._prepare_inputs
            trainer.optimizer = None  # train() builds its own optimiser and scheduler ...
            b.learner.optimizer.state.clear()  # ... so hybridrl's AdamW restarts too (no momentum carried over)
            # both start the full steps from the start weights: the update phase taught both models the short +1
            # completions of the fixed batch, after which completion lengths drift differently in each arm
            with torch.no_grad():
                for model in (b.policy.model, trainer.model):
                    for k, p in model.named_parameters():
                        p.copy_(w0[k])
            results["full"] = summarise(_full_trl(trainer, counted, b, args.warmup))
    results["ratios"] = {k: results[k]["trl"]["median_s"] / results[k]["hybridrl"]["median_s"]
                         for k in ("generation", "update", "full") if "trl" in results[k]}
    results["ratios_cpu"] = {k: results[k]["trl"]["median_cpu_s"] / results[k]["hybridrl"]["median_cpu_s"]
                             for k in ("generation", "update", "full") if "trl" in results[k]}
    results["ratios_tokens_per_s"] = {
        k: results[k]["hybridrl"]["median_tokens_per_s"] / results[k]["trl"]["median_tokens_per_s"]
        for k in ("generation", "update", "full") if "trl" in results[k]}
    info["load_avg_at_end"] = os.getloadavg()[0]
    save_json(results, args.out)
    print(table(results))
    print(f"wrote {args.out}")


def _full_trl(trainer, counted: dict, b: Bench, warmup: int) -> dict:
    """``trainer.train()`` with a callback timing each TRL step; after each TRL step one hybridrl full step runs."""
    from transformers import TrainerCallback

    rec = {"hybridrl": _empty(), "trl": _empty()}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            counted["tokens"] = 0
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            wall, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
            h = b.hybridrl_full_step()
            if state.global_step > warmup:
                _add(rec["trl"], wall, cpu, counted["tokens"])
                _add(rec["hybridrl"], *h)

    trainer.add_callback(Timer())
    trainer.train()
    return rec


def table(results: dict) -> str:
    a = results["args"]
    lines = [f"batch {a['prompts']} prompts x {a['group']} completions, <= {a['completion_length']} new tokens, "
             f"hidden {a['hidden']}, {a['threads']} thread(s); median of {a['reps']} after {a['warmup']} warm-up",
             "| measurement | impl | completion tokens/step | wall ms/step | tokens/s (wall) | CPU ms/step | "
             "tokens/CPU-s | TRL/hybridrl wall | TRL/hybridrl CPU |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k in ("generation", "update", "full"):
        for impl, r in results[k].items():
            both = impl == "hybridrl" and k in results.get("ratios", {})
            ratio = f"{results['ratios'][k]:.2f} | {results['ratios_cpu'][k]:.2f}" if both else " | "
            lines.append(f"| {k} | {impl} | {r['tokens_per_step']:.0f} | {r['median_s'] * 1e3:.1f} | "
                         f"{r['median_tokens_per_s']:.0f} | {r['median_cpu_s'] * 1e3:.1f} | "
                         f"{r['median_tokens_per_cpu_s']:.0f} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
