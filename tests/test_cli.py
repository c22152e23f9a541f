"""CLI end to end on tiny budgets, every bad input of the foundation issue, and kill-then-resume.

The CLI runs in a real subprocess (``python -m hybridrl.cli``), so exit codes, stdout/stderr
separation and the absence of tracebacks are what a user sees.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import cli, expect_error

from hybridrl.data.dataset import Dataset
from hybridrl.runs import read_metrics

pytestmark = pytest.mark.subprocess

TINY_PPO = ["--set", "n_steps=256", "--set", "minibatch_size=128", "--set", "n_epochs=2"]



@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A dataset and a trained policy shared by the tests (Pendulum-v1: fast, continuous)."""
    root = tmp_path_factory.mktemp("cli")
    cli("collect", "--env", "Pendulum-v1", "--policy", "random", "--steps", "600", "--out", root / "pend-v0",
        "--seed", "1")
    cli("train", "ppo", "--env", "Pendulum-v1", "--steps", "512", "--out", root / "ppo", *TINY_PPO,
        "--eval-episodes", "1")
    return root


def test_help_on_every_verb():
    from typer.testing import CliRunner

    from hybridrl.cli import app

    assert "Usage" in cli("--help").stdout  # the real entry point starts
    runner = CliRunner()
    for verb in ("collect", "inspect", "train", "evaluate", "ope", "finetune", "pipeline", "demo", "text", "datasets",
                 "sweep", "sweep-report"):
        res = runner.invoke(app, [verb, "--help"])
        assert res.exit_code == 0 and "Usage" in res.output and "--help" in res.output, (verb, res.output)


def test_collect_inspect_train_evaluate_ope_end_to_end(work):
    info = json.loads(cli("inspect", work / "pend-v0", "--json", "--plot", work / "returns.png").stdout)  # JSON alone
    assert info["episodes"] == 3 and info["steps"] == 600 and info["has_behavior_log_prob"]
    assert Path(info["histogram"]).stat().st_size > 1000
    run = work / "ppo"
    for f in ("config.yaml", "metrics.csv", "policy/model.safetensors", "policy/policy.json", "eval.json",
              "curves.png", "report.md"):
        assert (run / f).exists(), f
    assert list((run / "tb").iterdir())
    ev = json.loads(cli("evaluate", run / "policy", "--env", "Pendulum-v1", "--episodes", "2", "--json").stdout)
    assert ev["episodes"] == 2 and -2000 < ev["mean"] < 0
    # offline training from the dataset, then OPE of both policies
    cli("train", "bc", "--dataset", work / "pend-v0", "--steps", "50", "--out", work / "bc", "--eval-episodes", "1")
    out = cli("ope", "--dataset", work / "pend-v0", "--policy", run / "policy", "--policy", work / "bc" / "policy",
              "--estimators", "fqe,pdis,snpdis,dr", "--fqe-steps", "50", "--json")
    res = json.loads(out.stdout)
    assert set(res["estimates"]) == {"ppo", "bc"}
    assert all(np.isfinite(res["estimates"]["ppo"][e]["estimate"]) for e in ("fqe", "pdis", "snpdis", "dr"))
    assert len(res["selection"]["top_k"]) == 1


def test_config_file_and_set_override(work, tmp_path):
    cfg = tmp_path / "bc.yaml"
    cfg.write_text("lr: 0.01\nhidden: [16, 16]\n")
    cli("train", "bc", "--dataset", work / "pend-v0", "--steps", "20", "--out", tmp_path / "r", "--config", cfg,
        "--set", "batch_size=32", "--eval-episodes", "0")
    import yaml

    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["config"]
    assert saved["lr"] == 0.01 and saved["hidden"] == [16, 16] and saved["batch_size"] == 32


# --- bad input: a specific, readable error, exit status 2, nothing overwritten -------------------

def test_missing_dataset(tmp_path):
    expect_error(cli("inspect", tmp_path / "nope-v0", check=False), "nope-v0")


def test_truncated_dataset_file(work, tmp_path):
    import shutil

    bad = tmp_path / "trunc-v0"
    shutil.copytree(work / "pend-v0", bad)
    h5 = bad / "data" / "main_data.hdf5"
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    expect_error(cli("inspect", bad, check=False), "main_data.hdf5")
    expect_error(cli("train", "bc", "--dataset", bad, "--steps", "5", "--out", tmp_path / "r", check=False),
                 "main_data.hdf5")
    assert not (tmp_path / "r" / "policy").exists()


def test_nan_reward_in_dataset(work, tmp_path):
    ds = Dataset.load(work / "pend-v0")
    ds.rewards[7] = np.nan
    import minari
    from minari.data_collector import EpisodeBuffer

    s = ds.episode_starts
    eps = []
    for e in range(ds.n_episodes):
        a, b = s[e], s[e + 1]
        eps.append(EpisodeBuffer(observations=np.concatenate([ds.observations[a:b], ds.next_observations[b - 1:b]]),
                                 actions=ds.actions[a:b], rewards=ds.rewards[a:b], terminations=ds.terminations[a:b],
                                 truncations=ds.truncations[a:b]))
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_path)
    try:
        minari.create_dataset_from_buffers("nanrew-v0", eps, env="Pendulum-v1")
    finally:
        del os.environ["MINARI_DATASETS_PATH"]
    expect_error(cli("inspect", tmp_path / "nanrew-v0", check=False), "rewards", "non-finite", "episode 0 at step 7")


def test_observation_shape_mismatch(work, tmp_path):
    # the Pendulum dataset (obs shape (3,)) cannot drive a CartPole policy
    cli("train", "ppo", "--env", "CartPole-v1", "--steps", "256", "--out", tmp_path / "cp", *TINY_PPO,
        "--eval-episodes", "0")
    expect_error(cli("ope", "--dataset", work / "pend-v0", "--policy", tmp_path / "cp" / "policy", check=False),
                 "CartPole-v1")
    expect_error(cli("evaluate", tmp_path / "cp" / "policy", "--env", "Pendulum-v1", check=False), "CartPole-v1")


def test_unknown_env_and_algorithm(tmp_path):
    expect_error(cli("train", "ppo", "--env", "Hoper-v5", "--steps", "10", "--out", tmp_path / "a", check=False),
                 "Hoper-v5", "Hopper-v5")
    expect_error(cli("train", "ppx", "--env", "CartPole-v1", "--steps", "10", "--out", tmp_path / "b", check=False),
                 "unknown algorithm", "ppo")
    expect_error(cli("collect", "--env", "NoSuchEnv-v0", "--steps", "10", "--out", tmp_path / "c-v0", check=False),
                 "NoSuchEnv-v0")


def test_policy_dir_with_missing_files(work, tmp_path):
    import shutil

    pol = tmp_path / "pol"
    shutil.copytree(work / "ppo" / "policy", pol)
    (pol / "model.safetensors").unlink()
    expect_error(cli("evaluate", pol, "--env", "Pendulum-v1", check=False), "model.safetensors")
    (pol / "policy.json").unlink()
    expect_error(cli("evaluate", pol, "--env", "Pendulum-v1", check=False), "policy.json")


def test_invalid_set_key_and_value(tmp_path):
    expect_error(cli("train", "ppo", "--env", "CartPole-v1", "--steps", "10", "--out", tmp_path / "a", "--set", "lrr=1",
                     check=False), "lrr", "lr")
    expect_error(cli("train", "ppo", "--env", "CartPole-v1", "--steps", "10", "--out", tmp_path / "b", "--set",
                     "lr=fast", check=False), "lr", "fast")
    expect_error(cli("train", "ppo", "--env", "CartPole-v1", "--steps", "10", "--out", tmp_path / "c", "--set",
                     "minibatch_size=100", check=False), "minibatch_size")
    expect_error(cli("train", "iql", "--dataset", "x-v0", "--steps", "10", "--out", tmp_path / "d", "--set",
                     "expectile=1.5", check=False), "expectile=1.5", "<= 0.999")
    usage = cli("train", "ppo", "--steps", "10", check=False)  # missing --out: a usage error, no traceback
    assert usage.returncode == 2 and "Traceback" not in usage.stderr and "--out" in usage.stderr


def test_existing_run_and_dataset_are_not_overwritten(work):
    before = (work / "ppo" / "metrics.csv").read_bytes()
    expect_error(cli("train", "ppo", "--env", "Pendulum-v1", "--steps", "256", "--out", work / "ppo", check=False),
                 "--overwrite")
    assert (work / "ppo" / "metrics.csv").read_bytes() == before
    h5 = (work / "pend-v0" / "data" / "main_data.hdf5").read_bytes()
    expect_error(cli("collect", "--env", "Pendulum-v1", "--steps", "10", "--out", work / "pend-v0", check=False),
                 "--overwrite")
    assert (work / "pend-v0" / "data" / "main_data.hdf5").read_bytes() == h5


def test_debug_shows_traceback(tmp_path):
    proc = cli("--debug", "inspect", tmp_path / "nope-v0", check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


# --- kill a run, resume it, it completes ---------------------------------------------------------

def test_kill_then_resume_completes(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "hybridrl.cli", "train", "ppo", "--env", "CartPole-v1", "--steps", "40960",
            "--out", out,
            "--set", "n_steps=512", "--set", "minibatch_size=256", "--set", "n_epochs=4", "--checkpoint-every", "1024",
            "--eval-episodes", "1"]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "checkpoints").exists() and any((out / "checkpoints").glob("step_*"))):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "policy").exists(), "the run finished before it was killed; raise --steps"
    ckpts = sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))
    assert ckpts
    cli("train", "ppo", "--env", "CartPole-v1", "--steps", "40960", "--out", out, "--resume", "--eval-episodes", "1")
    m = read_metrics(out / "metrics.csv")
    assert m["step"].max() == 40960
    assert len(m["step"]) == len(set(m["step"].tolist()))  # rows after the checkpoint were replaced, not duplicated
    assert (out / "policy" / "model.safetensors").exists() and (out / "eval.json").exists()


@pytest.mark.parametrize("algo,env,overrides", [
    ("npg", "CartPole-v1", ["n_steps=256", "critic_minibatch_size=64", "critic_epochs=1"]),
    ("props", "CartPole-v1", ["n_steps=128", "props_n_steps=64", "minibatch_size=64", "props_minibatch_size=32",
                              "n_epochs=1", "props_n_epochs=1"]),
    ("sac", "Pendulum-v1", ["learning_starts=200", "batch_size=32", "hidden=32,32"]),
])
def test_train_dispatches_every_loop_kind(algo, env, overrides, tmp_path):
    """`train` reaches each loop (on-policy, PROPS, off-policy) and writes a complete, resumable run."""
    from hybridrl.loops.train import train
    from hybridrl.runs import latest_checkpoint

    run = train(algo, tmp_path / algo, 512, env_id=env, overrides=overrides, eval_episodes=1, progress=False)
    assert (run.policy_dir / "model.safetensors").exists() and run.eval_json.exists()
    assert latest_checkpoint(run) is not None and read_metrics(run.metrics_csv)["step"].max() >= 512
    train(algo, tmp_path / algo, 768, resume=True, eval_episodes=1, progress=False)
    assert read_metrics(run.metrics_csv)["step"].max() >= 768
