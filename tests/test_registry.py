"""The algorithm registry as an extension point: a learner defined and registered in this file trains through
``hybridrl.loops.train.train`` like a built-in one (a new offline learner = one file + its test + its doc page), a
learner that is not built from gym spaces plugs in with ``build`` and its own loop, every registered algorithm is
in ``hybridrl train --help`` and in the contract cases, and a failed ``--overwrite`` run puts the old run back.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from typer.testing import CliRunner

from hybridrl.algos import check_config, get_algo, register, registry, unregister
from hybridrl.errors import ConfigError
from hybridrl.loops.train import train
from hybridrl.nn import load_policy, make_policy
from hybridrl.runs import read_metrics

# --- a trivial offline learner: fits the policy mean to the dataset's mean action -------------------------

@dataclass(frozen=True)
class MeanActionConfig:
    lr: float = 0.01
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_config(self, lr=(1e-12, None), batch_size=(1, None))


class MeanActionLearner:
    """Least squares of the policy mean to the dataset actions: loss = mean_b ||mu(s_b) - a_b||^2 (when the actions do
    not depend on the state, its minimiser is the mean action)."""

    def __init__(self, config, observation_space, action_space, seed: int = 0):
        torch.manual_seed(seed)
        self.config = config
        self.policy = make_policy(observation_space, action_space, (8,))
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr)

    def update(self, batch) -> dict[str, float]:
        loss = ((self.policy.mode(batch.obs) - batch.action) ** 2).sum(-1).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"mse": float(loss.detach())}

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])


@pytest.fixture(scope="module")
def pendulum():
    from hybridrl.data.collect import collect

    ds = collect("Pendulum-v1", None, 400, seed=0, progress=False)
    ds.actions[:] = 1.0 + 0.2 * ds.actions  # mean action about 1.0, independent of the state
    return ds


@pytest.fixture
def mean_action():
    register("mean_action", MeanActionConfig, MeanActionLearner, loop="offline", inputs="dataset",
             action_spaces=("continuous",), summary="fits the mean action (test)")
    yield get_algo("mean_action")
    unregister("mean_action")


def test_learner_registered_in_a_test_file_trains_through_train(pendulum, mean_action, tmp_path):
    run = train("mean_action", tmp_path / "run", 300, dataset=pendulum, eval_episodes=1, progress=False)
    policy = load_policy(run.policy_dir, "Pendulum-v1")
    with torch.no_grad():
        mode = policy.mode(torch.as_tensor(pendulum.observations[:50])).numpy()
    assert mode.mean() == pytest.approx(pendulum.actions.mean(), abs=0.1) and mode.std() < 0.2
    assert read_metrics(run.metrics_csv)["step"].max() == 300 and run.eval_json.exists()
    assert "mean_action" in registry() and get_algo("mean_action").loop == "offline"


def test_failed_overwrite_run_restores_the_old_run(pendulum, mean_action, tmp_path):
    """Any failure before the new run's first checkpoint (here an exception in update) puts the old run back."""
    out = tmp_path / "run"
    train("mean_action", out, 20, dataset=pendulum, eval_episodes=0, progress=False)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}

    def boom(self, batch):
        raise RuntimeError("boom")

    original = MeanActionLearner.update
    MeanActionLearner.update = boom
    try:
        with pytest.raises(RuntimeError, match="boom"):
            train("mean_action", out, 20, dataset=pendulum, eval_episodes=0, progress=False, overwrite=True)
    finally:
        MeanActionLearner.update = original
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no hidden .run.old-* left behind
    # a config check that fails happens before anything is moved
    with pytest.raises(ConfigError, match="lr"):
        train("mean_action", out, 20, dataset=pendulum, overrides=["lr=-1"], overwrite=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and (out / "policy").is_dir()


# --- a learner not built from gym spaces: a unigram "language model" with its own loop -------------------

@dataclass(frozen=True)
class UnigramConfig:
    vocab: int = 5


class UnigramLearner:
    def __init__(self, config, seed: int = 0):
        self.counts = torch.ones(config.vocab)

    def update(self, tokens: list[int]) -> dict[str, float]:
        self.counts += torch.bincount(torch.tensor(tokens), minlength=len(self.counts))
        p = self.counts / self.counts.sum()
        return {"entropy": float(-(p * p.log()).sum())}

    def state_dict(self) -> dict:
        return {"counts": self.counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.counts = state["counts"].clone()


def train_tokens(*, config, steps, env_id, dataset, algo, run, seed, resume, checkpoint_every, progress, record):
    """A loop for token sequences: ``dataset`` is a list of token lists, one update per sequence."""
    from hybridrl.loops.common import checkpoint, open_run

    learner = get_algo(algo).make(config, seed=seed)
    run, logger = open_run(run, record, resume)
    for step in range(1, steps + 1):
        logger.log(step, learner.update(dataset[(step - 1) % len(dataset)]))
    checkpoint(run, steps, learner)
    logger.close()
    return learner


def test_learner_without_gym_spaces_registers_with_build(tmp_path):
    register("unigram", UnigramConfig, build=lambda config, seed=0: UnigramLearner(config, seed),
             loop=f"{__name__}:train_tokens", inputs="sequences", action_spaces=())
    try:
        run = train("unigram", tmp_path / "lm", 3, dataset=[[0, 1, 1], [2, 2, 2, 2], [4]], progress=False)
    finally:
        unregister("unigram")
    m = read_metrics(run.metrics_csv)
    assert list(m["step"]) == [1, 2, 3] and run.report_md.exists() and not run.policy_dir.exists()
    assert (run.checkpoints_dir / "step_3").is_dir()


def test_register_rejects_bad_entries():
    with pytest.raises(ConfigError, match="already registered"):
        register("ppo", MeanActionConfig, MeanActionLearner, loop="offline")
    with pytest.raises(ConfigError, match="loop="):
        register("x_test", MeanActionConfig, MeanActionLearner, loop="offlin")
    with pytest.raises(ConfigError, match="learner_cls or build"):
        register("x_test", MeanActionConfig, loop="offline")
    assert "x_test" not in registry()


# --- generated lists -------------------------------------------------------------------------------------

def test_every_algorithm_is_in_train_help_and_in_the_contract_cases():
    from test_learners import CASES

    from hybridrl.cli import app

    text = " ".join(CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output.split())
    for name, spec in registry().items():
        if spec.loop != "ope":
            assert f"{name}: {spec.summary}" in text, name
        assert {kind for a, kind in CASES if a == name} == set(spec.action_spaces), name


def test_check_config_rejects_nan_and_inf():
    with pytest.raises(ConfigError, match="lr=nan"):
        MeanActionConfig(lr=float("nan"))
    with pytest.raises(ConfigError, match="finite"):
        MeanActionConfig(lr=float("inf"))
    cfg = get_algo("ppo").config_cls
    with pytest.raises(ConfigError):
        cfg(lr=float("nan"))


@pytest.mark.subprocess
def test_algos_never_import_the_loops():
    code = ("import sys, hybridrl.algos as a; a.registry(); "
            "bad = [m for m in sys.modules if m.startswith('hybridrl.loops')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
