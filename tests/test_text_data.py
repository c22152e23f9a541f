"""SequenceBatch validation, logged corpora (JSONL/Parquet through `datasets`, sidecar, clear errors), the causal-LM
policy (behaviour log-probs of sampling equal a fresh forward pass; LoRA reference = base) and the text learners
(update, checkpoint round trip, registry, `hybridrl train`)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("datasets")

from hybridrl.errors import DatasetError, PolicyError, RunExistsError, ShapeError  # noqa: E402
from hybridrl.text.batch import SequenceBatch, concat  # noqa: E402


def _batch(**kw):
    f = dict(prompt_ids=[[0, 5, 6], [7, 8, 9]], prompt_mask=[[0, 1, 1], [1, 1, 1]],
             completion_ids=[[5, 1, 0], [6, 6, 1]], completion_mask=[[1, 1, 0], [1, 1, 1]],
             reward=[1.0, -1.0], group=[0, 0])
    f.update(kw)
    return SequenceBatch(**{k: torch.tensor(v) if isinstance(v, list) else v for k, v in f.items()})


def test_sequence_batch_validates_layout_and_values():
    b = _batch(behavior_logp=torch.tensor([[-1.0, -2.0, float("nan")], [-1.0, -1.0, -1.0]]))
    assert b.prompt_mask.dtype == torch.bool and b.completion_lengths.tolist() == [2, 3]
    with pytest.raises(ShapeError, match="left-padded"):
        _batch(prompt_mask=[[1, 1, 0], [1, 1, 1]])
    with pytest.raises(ShapeError, match="right-padded"):
        _batch(completion_mask=[[0, 1, 1], [1, 1, 1]])
    with pytest.raises(ShapeError, match="reward"):
        _batch(reward=[1.0, float("nan")])
    with pytest.raises(ShapeError, match="shape"):
        _batch(group=[0, 0, 1])
    with pytest.raises(ShapeError, match="behavior_logp is not finite"):
        _batch(behavior_logp=torch.tensor([[-1.0, float("inf"), 0.0], [-1.0, -1.0, -1.0]]))
    with pytest.raises(ShapeError, match="integers"):
        _batch(prompt_ids=torch.zeros(2, 3))
    both = concat([b, b.select([1])], pad_id=0)
    assert len(both) == 3 and both.completion_ids[2].tolist() == [6, 6, 1]
    assert b.select([0]).completion_ids.shape == (1, 2)  # all-padding columns trimmed


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from hybridrl.text.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("lm") / "tiny", hidden=32)


@pytest.fixture(scope="module")
def policy(model_dir):
    from hybridrl.text.policy import CausalLMPolicy

    return CausalLMPolicy.load(model_dir)


def _rollout(policy, n=6, group=3, seed=0, temperature=1.0):
    from hybridrl.text.tasks import AdditionTask, rollout

    task = AdditionTask()
    return rollout(policy, task, task.problems(n, np.random.default_rng(seed)), group, temperature,
                   torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_behaviour_logp_equals_a_fresh_forward_pass(policy, temperature):
    b = _rollout(policy, temperature=temperature)
    assert b.prompt_mask.sum(1).min() < b.prompt_mask.shape[1]  # prompts of different lengths: left padding used
    with torch.no_grad():
        fresh = policy.logprobs(b.prompt_ids, b.prompt_mask, b.completion_ids, b.completion_mask, temperature)
    assert torch.allclose(b.behavior_logp, fresh, atol=1e-5)
    assert bool((fresh[~b.completion_mask] == 0).all())


def test_logprobs_with_logits_to_keep_equal_the_full_logits(policy):
    """``logprobs`` asks the model for the last C + 1 positions only; an independent full-sequence forward, sliced at
    P − 1 … P + C − 2 and log-softmaxed by hand, must give the same values."""
    from hybridrl.text.policy import _keep, position_ids

    assert _keep(policy.model, 5) == {"logits_to_keep": 5}  # the tiny Llama takes it: the fast path is the one tested
    b = _rollout(policy)
    ids = torch.cat([b.prompt_ids, b.completion_ids], 1)
    mask = torch.cat([b.prompt_mask, b.completion_mask], 1)
    p, c = b.prompt_ids.shape[1], b.completion_ids.shape[1]
    with torch.no_grad():
        full = policy.model(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids(mask)).logits
        expected = torch.log_softmax(full[:, p - 1: p - 1 + c] / 0.7, -1).gather(-1, b.completion_ids[..., None])
        got = policy.logprobs(b.prompt_ids, b.prompt_mask, b.completion_ids, b.completion_mask, 0.7)
    assert torch.allclose(got, expected.squeeze(-1) * b.completion_mask, atol=1e-6)


def test_sampling_runs_one_forward_pass_per_completion_position(policy):
    """Prefill + one decode per further token: C forward passes for C completion columns (the last sampled token
    needs no forward pass; before this was fixed, truncated batches paid one more)."""
    from hybridrl.text.tasks import AdditionTask, encode_prompts

    calls = []
    handle = policy.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        p_ids, p_mask = encode_prompts(policy.tokenizer, [AdditionTask.prompt(a, 7) for a in range(12)])
        for n in (1, 3, 6):
            calls.clear()
            c_ids, _, _ = policy.sample(p_ids, p_mask, n, 1.0, generator=torch.Generator().manual_seed(n))
            assert len(calls) == c_ids.shape[1] <= n
    finally:
        handle.remove()


def test_lora_reference_is_the_base_model(model_dir):
    from hybridrl.text.policy import CausalLMPolicy

    lora = CausalLMPolicy.load(model_dir, lora_rank=2)
    b = _rollout(lora, n=2)
    args = (b.prompt_ids, b.prompt_mask, b.completion_ids, b.completion_mask)
    with torch.no_grad():  # LoRA B starts at 0: policy == reference; after a step they differ, reference does not
        assert torch.allclose(lora.logprobs(*args), lora.ref_logprobs(*args), atol=1e-6)
        ref0 = lora.ref_logprobs(*args)
    opt = torch.optim.SGD(lora.parameters(), lr=1.0)
    (-lora.logprobs(*args).sum()).backward()
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(lora.logprobs(*args), ref0, atol=1e-4)
        assert torch.allclose(lora.ref_logprobs(*args), ref0, atol=1e-6)
    assert all("lora" in k for k in lora.state_dict())


def test_policy_refuses_pickled_weights(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(PolicyError, match="safetensors"):
        from hybridrl.text.policy import CausalLMPolicy

        CausalLMPolicy.load(tmp_path)


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_corpus_round_trip_and_errors(policy, model_dir, tmp_path, ext):
    from hybridrl.text.corpus import read_corpus, sidecar_path, write_corpus
    from hybridrl.text.policy import tokenizer_hash

    b = _rollout(policy)
    th = tokenizer_hash(model_dir)
    path = write_corpus(tmp_path / f"c.{ext}", b, tokenizer=policy.tokenizer, tokenizer_hash=th, temperature=1.0,
                        task="addition")
    back, meta = read_corpus(path, th)
    for f in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "reward", "group", "policy_version"):
        assert torch.equal(getattr(back, f), getattr(b, f)), f
    assert torch.equal(back.behavior_logp, b.behavior_logp) and meta["temperature"] == 1.0
    with pytest.raises(RunExistsError):
        write_corpus(path, b, tokenizer_hash=th)
    with pytest.raises(DatasetError, match="unknown tokenizer"):
        read_corpus(path, "0" * 64)
    if ext != "jsonl":
        return
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    bad = tmp_path / "bad.jsonl"
    sidecar_path(bad).write_text(sidecar_path(path).read_text())

    def write(rs):
        bad.write_text("\n".join(json.dumps(r) for r in rs) + "\n")

    write([{k: v for k, v in r.items() if k != "reward"} for r in rows])
    with pytest.raises(DatasetError, match=r"lacks columns \['reward'\]"):
        read_corpus(bad)
    write([{**r, "reward": None} if i == 2 else r for i, r in enumerate(rows)])
    with pytest.raises(DatasetError, match="'reward' is None at row 2"):
        read_corpus(bad)
    write([{**r, "behavior_logp": r["behavior_logp"][:-1]} if i == 1 else r for i, r in enumerate(rows)])
    with pytest.raises(DatasetError, match="behavior_logp' has .* at row 1 but the completion has"):
        read_corpus(bad)
    sidecar_path(bad).unlink()
    with pytest.raises(DatasetError, match="no sidecar"):
        read_corpus(bad)


@pytest.mark.parametrize("algo,overrides", [
    ("grpo", {"kl_coef": 0.04}), ("rloo", {}), ("topr", {}), ("dpo", {}),
    ("text_pg", {"loss": "reinforce", "correction": "truncate"}), ("text_pg", {"loss": "reinforce_pp"}),
    ("text_pg", {"loss": "asymre"}), ("text_pg", {"loss": "opmd"}), ("text_pg", {"loss": "sft_positive"}),
    ("text_pg", {"loss": "bapo"}), ("text_pg", {"loss": "alol"}), ("text_pair", {"loss": "copg"}),
    ("text_pair", {"loss": "ipo"}),
])
def test_text_learner_contract(model_dir, tmp_path, algo, overrides):
    from dataclasses import replace

    from hybridrl.algos import get_algo
    from hybridrl.runs import RunDir, load_checkpoint, save_checkpoint

    spec = get_algo(algo)
    cfg = replace(spec.config_cls(model=str(model_dir), lr=1e-2), **overrides)
    learner = spec.make(cfg, seed=0)
    batch = _rollout(learner.policy, n=4, group=3)
    batch = batch.replace(reward=torch.tensor([1.0, -1.0, -1.0] * 4))  # an untrained model is never right
    frozen = {k: v.clone() for k, v in vars(batch).items() if isinstance(v, torch.Tensor)}
    before = learner.policy.state_dict()
    metrics = learner.update(batch)
    assert metrics and all(isinstance(v, float) and np.isfinite(v) for v in metrics.values()), metrics
    assert all(torch.equal(getattr(batch, k), v) for k, v in frozen.items())
    assert any(not torch.equal(before[k], v) for k, v in learner.policy.state_dict().items())
    path = save_checkpoint(RunDir(tmp_path / "run"), 1, {"learner": learner.state_dict()})
    clone = spec.make(cfg, seed=1)
    clone.load_state_dict(load_checkpoint(path)[1]["learner"])
    torch.manual_seed(3)
    m1 = learner.update(batch)
    torch.manual_seed(3)
    m2 = clone.update(batch)
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-5)


def test_chord_adds_the_weighted_sft_term_on_expert_data(model_dir):
    from hybridrl.algos import get_algo

    spec = get_algo("grpo")
    learner = spec.make(spec.config_cls(model=str(model_dir), chord_mu=0.5, chord_mu_valley=0.1, chord_decay=2), seed=0)
    batch = _rollout(learner.policy, n=2, group=2).replace(reward=torch.tensor([1.0, -1.0, 1.0, -1.0]))
    m0 = learner.update(batch, expert=batch)
    m1 = learner.update(batch, expert=batch)
    assert m0["chord_mu"] == pytest.approx(0.5) and m1["chord_mu"] == pytest.approx(0.3) and m0["sft_loss"] > 0
    assert learner.state_dict()["updates"] == 2


@pytest.mark.subprocess
def test_text_learners_are_registered_and_hybridrl_does_not_import_transformers():
    code = ("import sys, hybridrl.algos as a, hybridrl.cli; names = a.algo_names(); "
            "assert {'grpo', 'rloo', 'topr', 'dpo', 'text_pg', 'text_pair'} <= set(names), names; "
            "bad = [m for m in ('transformers', 'datasets', 'peft') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow
def test_train_verb_online_then_resume_and_corpus(model_dir, tmp_path):
    from hybridrl.loops.train import train
    from hybridrl.runs import read_metrics
    from hybridrl.text.corpus import write_corpus
    from hybridrl.text.policy import CausalLMPolicy, tokenizer_hash

    sets = [f"model={model_dir}", "batch_prompts=4", "group_size=2", "eval_every=2", "eval_problems=8"]
    run = train("grpo", tmp_path / "online", 2, env_id="addition", overrides=sets, progress=False, eval_episodes=0)
    assert (run.path / "model" / "model.safetensors").is_file()
    run = train("grpo", tmp_path / "online", 4, resume=True, progress=False, eval_episodes=0)
    m = read_metrics(run.metrics_csv)
    assert list(m["step"]) == [0, 1, 2, 3, 4] and np.isfinite(m["eval/accuracy"][-1])
    policy = CausalLMPolicy.load(model_dir)
    corpus = write_corpus(tmp_path / "c.parquet", _rollout(policy), tokenizer_hash=tokenizer_hash(model_dir),
                          task="addition")
    run = train("topr", tmp_path / "corpus", 3, dataset=str(corpus), overrides=sets, progress=False,
                eval_episodes=0)
    assert list(read_metrics(run.metrics_csv)["step"]) == [0, 1, 2, 3]
    from typer.testing import CliRunner

    from hybridrl.cli import app

    r = CliRunner().invoke(app, ["text", "sft", "--model", str(model_dir), "--corpus", str(corpus), "--out",
                                 str(tmp_path / "sft"), "--steps", "2", "--set", "eval_problems=4"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "sft" / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_text_demo_quick_writes_its_report(tmp_path):
    from typer.testing import CliRunner

    from hybridrl.cli import app

    out = tmp_path / "demo"
    r = CliRunner().invoke(app, ["text", "demo", "--quick", "--out", str(out)])
    assert r.exit_code == 0, r.output[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 10 and (out / "curves.png").stat().st_size > 0
    assert "| corpus: TOPR | corpus |" in (out / "report.md").read_text()
    r = CliRunner().invoke(app, ["text", "evaluate", "--model", str(out / "sft"), "--problems", "8"])
    assert r.exit_code == 0 and set(json.loads(r.output.strip().splitlines()[-1])) == {"accuracy", "well_formed"}
