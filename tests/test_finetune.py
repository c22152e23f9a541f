"""Fine-tuning (issue 8): critic pre-training targets, dip/gain, the warm-up learner, a toy learning run that must
keep and beat its start, resume, and the ``hybridrl finetune`` verb."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from hybridrl.data.batches import Segments
from hybridrl.data.collect import collect
from hybridrl.data.dataset import Dataset
from hybridrl.envs.toy import TabularPolicy
from hybridrl.errors import ConfigError, RunExistsError
from hybridrl.loops.finetune import (
    FinetuneConfig,
    FinetunePPOLearner,
    critic_pretrain_targets,
    dataset_reward_scale,
    pretrain_critic,
)
from hybridrl.loops.finetune_run import (
    FINETUNE_METHODS,
    dip_and_gain,
    eval_grid,
    finetune_result,
    finetune_run,
    get_finetune_method,
)
from hybridrl.nn import ValueNet, make_policy, save_policy

BOX1 = gym.spaces.Box(0.0, 1.0, (1,), np.float32)


def _dataset(rewards_per_episode: list[list[float]]) -> Dataset:
    eps = []
    for i, rs in enumerate(rewards_per_episode):
        n = len(rs)
        obs = (np.arange(n + 1, dtype=np.float32)[:, None] + 10 * i) / 5
        eps.append({"observations": obs, "actions": np.zeros(n, np.int64),
                    "rewards": np.asarray(rs, np.float32), "terminations": np.r_[np.zeros(n - 1), 1].astype(bool),
                    "truncations": np.zeros(n, bool)})
    return Dataset.from_episodes(eps, BOX1, gym.spaces.Discrete(2))


def test_critic_pretrain_targets_are_scaled_discounted_returns_to_go():
    ds = _dataset([[1.0, 2.0, 3.0], [4.0, 0.0]])
    gamma, scale = 0.5, 0.1
    # Episode 1: G2 = 3, G1 = 2 + 0.5*3 = 3.5, G0 = 1 + 0.5*3.5 = 2.75; episode 2: G1 = 0, G0 = 4.
    expected = np.array([2.75, 3.5, 3.0, 4.0, 0.0]) * scale
    np.testing.assert_allclose(critic_pretrain_targets(ds, gamma, scale).numpy(), expected, rtol=1e-6)
    g = np.array([2.75, 3.5, 3.0, 4.0, 0.0])
    assert dataset_reward_scale(ds, gamma) == pytest.approx(1.0 / g.std())
    assert dataset_reward_scale(_dataset([[1.0], [1.0]]), gamma) == 1.0  # no spread: no scaling


def test_pretrain_critic_fits_the_targets():
    ds = _dataset([[1.0] * 6, [0.5] * 4])
    critic = ValueNet(1, (32, 32))
    obs = torch.as_tensor(ds.observations)
    targets = critic_pretrain_targets(ds, 0.9, 0.3)
    m = pretrain_critic(critic, obs, targets, 300, 8, 1e-2, torch.Generator().manual_seed(0), None)
    assert m["pretrain_explained_variance"] > 0.8 and m["pretrain_value_loss"] < 0.02


def test_dip_and_gain_on_a_hand_made_curve():
    steps, rets = [100, 200, 300, 500, 1000], [90.0, 80.0, 95.0, 70.0, 130.0]
    r = dip_and_gain(100.0, steps, rets, final=120.0, budget=1000)
    # first 20% of 1000 steps: evaluations at 100 and 200 -> lowest 80 (the 70 at step 500 is outside).
    assert r == {"dip": pytest.approx(0.8), "dip_return": 80.0, "gain": pytest.approx(1.2)}
    assert dip_and_gain(100.0, [500], [10.0], 50.0, 1000)["dip"] is None  # nothing in the window
    assert dip_and_gain(-5.0, steps, rets, 1.0, 1000)["gain"] is None  # no ratio to a non-positive start
    assert eval_grid(1000, 4) == [50, 100, 150, 200, 250, 500, 750, 1000]


def test_result_says_in_words_when_the_start_was_lost():
    ev = {"mean": 0.0, "std": 0.0, "episodes": 3, "normalized_score": None}
    start = {"deterministic": {**ev, "mean": 100.0}, "stochastic": {**ev, "mean": 80.0}}
    final = {"deterministic": {**ev, "mean": 90.0}, "stochastic": {**ev, "mean": 85.0}}
    curve = [{"step": 10, "deterministic": 100.0, "stochastic": 60.0}]
    r = finetune_result("ppo", "X-v0", 100, start, final, curve)
    assert r["gain"]["deterministic"] == pytest.approx(0.9) and r["dip"]["stochastic"] == pytest.approx(0.75)
    assert "deterministic return 90.0 is below the start 100.0" in r["lost_start"]
    assert "stochastic return dipped to 60.0" in r["lost_start"]


def test_a_drop_within_the_evaluation_noise_is_not_called_a_lost_start():
    # std 10 over 10 episodes each: two standard errors of the difference = 2 sqrt(10 + 10) = 8.94
    ev = {"mean": 0.0, "std": 10.0, "episodes": 10, "normalized_score": None}
    start = {"deterministic": {**ev, "mean": 100.0}, "stochastic": {**ev, "mean": 100.0}}
    final = {"deterministic": {**ev, "mean": 95.0}, "stochastic": {**ev, "mean": 90.0}}
    r = finetune_result("ppo", "X-v0", 100, start, final, [])
    assert "deterministic return 95.0 is below the start 100.0 by 5.0, within the evaluation noise" in r["lost_start"]
    assert "(two standard errors: 8.9)" in r["lost_start"]
    assert "stochastic return 90.0 is below the start 100.0: this run lost its start" in r["lost_start"]


def test_warmup_learner_keeps_the_actor_fixed_until_the_critic_explains_returns():
    cfg = FinetuneConfig(n_steps=16, num_envs=2, minibatch_size=16, n_epochs=2, hidden=(16,), critic_warmup_max=2,
                         critic_warmup_ev=0.99, lr=1e-2)
    learner = FinetunePPOLearner(cfg, gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-1, 1, (2,)))
    before = [p.detach().clone() for p in learner.policy.parameters()]
    critic_before = [p.detach().clone() for p in learner.critic.parameters()]
    g = torch.Generator().manual_seed(0)
    obs, act = torch.randn(2, 16, 3, generator=g), torch.randn(2, 16, 2, generator=g)
    with torch.no_grad():
        logp = learner.policy.log_prob(obs, act)
    batch = Segments(obs=obs, action=act, reward=torch.randn(2, 16, generator=g), next_obs=obs.roll(-1, 1),
                     terminated=torch.zeros(2, 16, dtype=torch.bool), truncated=torch.zeros(2, 16, dtype=torch.bool),
                     behavior_log_prob=logp)
    for _ in range(2):
        m = learner.update(batch)
        assert m["critic_warmup"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, learner.policy.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(critic_before, learner.critic.parameters()))
    assert learner.update(batch)["critic_warmup"] == 0.0  # bounded: the third update moves the actor
    assert not all(torch.equal(a, b) for a, b in zip(before, learner.policy.parameters()))
    state = learner.state_dict()
    clone = FinetunePPOLearner(cfg, gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-1, 1, (2,)))
    clone.load_state_dict(state)
    assert (clone.warmup_updates, clone.actor_frozen) == (2, False)


def test_separate_critic_learning_rate_and_config_checks():
    learner = FinetunePPOLearner(FinetuneConfig(hidden=(8,)), gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-1, 1, (2,)))
    assert [g["lr"] for g in learner.optimizer.param_groups] == [2e-5, 2e-4]
    learner.set_progress(0.5)
    assert [g["lr"] for g in learner.optimizer.param_groups] == pytest.approx([1e-5, 1e-4])
    with pytest.raises(ConfigError, match="normalize_reward"):
        FinetuneConfig(normalize_reward=True)
    with pytest.raises(ConfigError, match="unknown fine-tuning method"):
        get_finetune_method("nope")
    assert set(FINETUNE_METHODS) >= {"ppo"}


@pytest.fixture(scope="module")
def bandit(tmp_path_factory):
    """``(policy_dir, dataset_dir)``: a deliberately imperfect BC policy on the 2-armed bandit (arm 1 pays 1,
    arm 0 pays 0), trained on data where the behaviour picked arm 1 60% of the time: its stochastic return is ~0.6
    (its mode is already arm 1)."""
    from hybridrl.loops.train import train

    tmp_path = tmp_path_factory.mktemp("bandit")
    data = collect("hybridrl/Bandit-v0", TabularPolicy([[0.4, 0.6]]), 300, seed=0, progress=False)
    data.save(tmp_path / "bandit-v0")
    run = train("bc", tmp_path / "bc", 300, dataset=tmp_path / "bandit-v0", eval_episodes=0, progress=False,
                overrides=["hidden=16", "lr=0.01"])
    return run.policy_dir, tmp_path / "bandit-v0"


TOY = ["num_envs=4", "n_steps=32", "minibatch_size=64", "n_epochs=4", "lr=0.02", "critic_lr=0.01", "hidden=16",
       "critic_pretrain_steps=100", "critic_warmup_max=1", "clip_ratio=0.2", "target_kl=1.0"]
"""Toy-sized settings: on a bandit the critic is a constant (explained variance ~0), so warm-up stops at its bound."""


@pytest.mark.slow
def test_ppo_finetuning_keeps_and_beats_its_start_on_a_bandit(tmp_path, bandit):
    run = finetune_run(bandit[0], tmp_path / "ft", algo="ppo", env_id="hybridrl/Bandit-v0", dataset=bandit[1],
                       steps=1024, overrides=TOY, eval_episodes=100, progress=False)
    r = json.loads((run.path / "eval.json").read_text())
    assert 0.45 < r["start"]["stochastic"] < 0.75 and r["start"]["deterministic"] == 1.0
    assert r["final"]["deterministic"] == 1.0 and r["dip"]["deterministic"] == 1.0
    assert r["final"]["stochastic"] > r["start"]["stochastic"] + 0.15, r["curve"]
    assert min(c["stochastic"] for c in r["curve"]) > 0.9 * r["start"]["stochastic"]
    assert "kept its start" in (run.path / "report.md").read_text()
    assert (run.path / "curves.png").stat().st_size > 0 and (run.path / "policy" / "model.safetensors").exists()
    assert r["best"]["stochastic"] >= r["final"]["stochastic"] and (run.path / "best_policy" / "policy.json").exists()


def _good_then_bad(policy, *, steps, callback, **_):
    """A fine-tuning method for the test below: half-way its policy plays arm 1 always, at the end arm 0 always."""
    import copy

    def pushed(arm: int):
        p = copy.deepcopy(policy)
        with torch.no_grad():
            last = [m for m in p.modules() if isinstance(m, torch.nn.Linear)][-1]
            last.weight.zero_()
            last.bias.copy_(torch.tensor([20.0, -20.0] if arm == 0 else [-20.0, 20.0]))
        return p

    callback(steps // 2, pushed(1))
    return pushed(0)


def test_best_policy_is_kept_when_the_run_ends_below_it(tmp_path, bandit, monkeypatch):
    from hybridrl.loops import finetune_run as fr
    from hybridrl.nn import load_policy

    monkeypatch.setitem(fr.FINETUNE_METHODS, "good_then_bad", f"{__name__}:_good_then_bad")
    run = finetune_run(bandit[0], tmp_path / "ft", algo="good_then_bad", env_id="hybridrl/Bandit-v0", steps=100,
                       eval_episodes=20, eval_points=2, progress=False)
    r = json.loads((run.path / "eval.json").read_text())
    assert r["start"]["deterministic"] == 1.0 and r["final"]["deterministic"] == 0.0
    assert r["best"] == {"step": 50, "deterministic": 1.0, "stochastic": 1.0, "policy_dir": "best_policy"}
    best = load_policy(run.path / "best_policy", "hybridrl/Bandit-v0")
    with torch.no_grad():
        assert float(best.distribution(torch.zeros(1, 1)).probs[0, 1]) > 0.999  # arm 1, as at step 50
    assert "lost its start" in r["lost_start"] and "the one at step 50" in (run.path / "report.md").read_text()


@pytest.mark.slow
def test_finetune_run_resumes_from_its_checkpoint(tmp_path, bandit):
    start = bandit[0]
    kw = dict(algo="ppo", env_id="hybridrl/Bandit-v0", dataset=bandit[1], overrides=TOY,
              eval_episodes=20, progress=False)
    finetune_run(start, tmp_path / "ft", steps=256, **kw)
    with pytest.raises(RunExistsError, match="seed"):
        finetune_run(start, tmp_path / "ft", steps=512, seed=3, resume=True, **kw)
    run = finetune_run(start, tmp_path / "ft", steps=512, resume=True, **kw)
    r = json.loads((run.path / "eval.json").read_text())
    assert r["steps"] == 512 and r["curve"][-1]["step"] == 512
    steps = [c["step"] for c in r["curve"]]
    assert steps == sorted(set(steps)) and steps[0] <= 256 < steps[-1]
    ckpts = sorted(p.name for p in (run.path / "checkpoints").iterdir())
    assert "step_512" in ckpts


@pytest.mark.subprocess
def test_cli_finetune_verb(tmp_path):
    data = collect("hybridrl/Bandit-v0", TabularPolicy([[0.5, 0.5]]), 50, seed=0, progress=False)
    data.save(tmp_path / "b-v0")
    policy = make_policy(BOX1, gym.spaces.Discrete(2), (8,))
    save_policy(policy, tmp_path / "pol", env_id="hybridrl/Bandit-v0")
    args = [sys.executable, "-m", "hybridrl.cli", "finetune", str(tmp_path / "pol"), "--dataset",
            str(tmp_path / "b-v0"), "--steps", "64", "--out", str(tmp_path / "ft"), "--eval-episodes", "2", "--json",
            "--set", "n_steps=64", "--set", "minibatch_size=32", "--set", "hidden=8",
            "--set", "critic_pretrain_steps=5"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["algo"] == "ppo" and set(out["start"]) == {"deterministic", "stochastic"} and "gain" in out
    proc = subprocess.run(args[:-8] + ["--algo", "nope"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown fine-tuning method 'nope'" in proc.stderr
