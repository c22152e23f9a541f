"""What a new user found (issue 7, "Hardening"): interrupts, --overwrite, two processes on one run, --resume with
changed settings, validation gaps, filesystem edges and where messages go. Each test runs the real CLI in a child
process, so exit codes, stdout/stderr and the files left behind are what a user sees."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import ENV, cli, expect_error

from hybridrl.runs import read_metrics

pytestmark = pytest.mark.subprocess

PPO_LONG = ["train", "ppo", "--env", "CartPole-v1", "--steps", "200000", "--set", "n_steps=256",
            "--set", "minibatch_size=128", "--set", "n_epochs=1", "--eval-episodes", "1"]



def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hybridrl.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for(cond, proc, timeout=120.0):
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def metrics_rows(run: Path) -> int:
    f = run / "metrics.csv"
    return max(0, len(f.read_text().splitlines()) - 1) if f.exists() else 0


def checkpoints(run: Path) -> list[int]:
    d = run / "checkpoints"
    return sorted(int(p.name.split("_")[1]) for p in d.glob("step_*")) if d.is_dir() else []


def snapshot(path: Path) -> dict:
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A Pendulum dataset and a finished BC run on it."""
    root = tmp_path_factory.mktemp("hard")
    cli("collect", "--env", "Pendulum-v1", "--steps", "600", "--out", root / "pend-v0", "--seed", "1")
    cli("train", "bc", "--dataset", root / "pend-v0", "--steps", "20", "--out", root / "bc", "--eval-episodes", "0")
    return root


# --- 1. Ctrl-C / SIGTERM -----------------------------------------------------------------------------------

@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_exits_nonzero_says_so_and_resume_continues(sig, code, tmp_path):
    out = tmp_path / "run"
    proc = start(*PPO_LONG, "--out", out, "--checkpoint-every", "1024")
    wait_for(lambda: checkpoints(out), proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert re.search(rf"interrupted( at step \d+)? by {signal.Signals(sig).name}", err) and "Traceback" not in err, err
    assert not (out / "policy").exists()
    last = checkpoints(out)[-1]
    cli(*PPO_LONG[:5], last + 512, "--out", out, "--resume", "--eval-episodes", "1")
    steps = read_metrics(out / "metrics.csv")["step"]
    assert steps.max() >= last + 512 and len(steps) == len(set(steps.tolist()))
    assert (out / "policy" / "model.safetensors").exists()


def test_interrupted_collect_exits_130_and_writes_no_dataset(tmp_path):
    out = tmp_path / "d-v0"
    proc = start("collect", "--env", "Pendulum-v1", "--steps", "10000000", "--out", out)
    time.sleep(8.0)  # imports, then collecting
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert not out.exists()


STOP_LOOP = """
import os
from dataclasses import dataclass
from hybridrl.algos import register
from hybridrl.errors import Interrupted

@dataclass(frozen=True)
class StopConfig:
    pass

def stop_loop(**kwargs):  # what a loop does after checkpointing on SIGINT/SIGTERM
    raise Interrupted(7, checkpoint="ckpt/step_7", signal_number=int(os.environ["STOP_SIGNAL"]))

register("stop", StopConfig, build=lambda config, seed=0: None, loop="__main__:stop_loop", inputs="none")
import hybridrl.cli
hybridrl.cli.main()
"""


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_from_a_loop_names_the_step_and_checkpoint(sig, code, tmp_path):
    proc = subprocess.run([sys.executable, "-c", STOP_LOOP, "train", "stop", "--steps", "10", "--out", tmp_path / "r"],
                          capture_output=True, text=True, env={**ENV, "STOP_SIGNAL": str(int(sig))}, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert f"interrupted at step 7 by {signal.Signals(sig).name}; checkpoint ckpt/step_7" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()


# --- 2. --overwrite ------------------------------------------------------------------------------------------

def test_overwrite_with_a_bad_config_leaves_the_old_run_in_place(work, tmp_path):
    run = tmp_path / "bc"
    shutil.copytree(work / "bc", run)
    before = snapshot(run)
    expect_error(cli("train", "bc", "--dataset", work / "pend-v0", "--steps", "20", "--out", run, "--overwrite",
                     "--set", "lr=-1", check=False), "lr")
    assert snapshot(run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["bc"]


def test_overwrite_interrupted_before_first_checkpoint_restores_the_old_run(work, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(work / "bc", run)
    before = snapshot(run)
    proc = start(*PPO_LONG, "--out", run, "--overwrite", "--checkpoint-every", "10000000")
    wait_for(lambda: list(tmp_path.glob(".old.old-*")) and metrics_rows(run) > 0, proc)  # the new run is training
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    if checkpoints(run):  # the loop checkpointed on the way out: the new run is the resumable one
        assert "checkpoint" in err and not (run / "eval.json").exists()
    else:
        assert snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


# --- 3. two processes, one run -------------------------------------------------------------------------------

def test_second_process_on_a_running_run_gets_a_clear_error_and_a_stale_lock_does_not_block(tmp_path):
    out = tmp_path / "run"
    first = start(*PPO_LONG, "--out", out, "--checkpoint-every", "1024")
    try:
        wait_for(lambda: checkpoints(out), first)
        expect_error(cli(*PPO_LONG, "--out", out, "--overwrite", check=False), "in use by another process")
        expect_error(cli(*PPO_LONG, "--out", out, "--resume", check=False), "in use by another process")
        assert first.poll() is None and (out / "config.yaml").exists()
    finally:
        first.kill()  # a crash: the lock file stays, the lock goes with the process
        first.communicate()
    last = checkpoints(out)[-1]
    cli(*PPO_LONG[:5], last + 256, "--out", out, "--resume", "--eval-episodes", "0")
    assert read_metrics(out / "metrics.csv")["step"].max() >= last + 256


# --- 4. --resume with changed settings -------------------------------------------------------------------------

def test_resume_refuses_changed_settings(work, tmp_path):
    run = tmp_path / "bc"
    shutil.copytree(work / "bc", run)
    before = snapshot(run)
    base = ["train", "bc", "--dataset", work / "pend-v0", "--steps", "40", "--out", run, "--resume"]
    expect_error(cli(*base, "--set", "lr=0.5", check=False), "--resume", "differ", "lr")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("batch_size: 7\n")
    expect_error(cli(*base, "--config", cfg, check=False), "differ", "batch_size")
    expect_error(cli(*base, "--env", "MountainCarContinuous-v0", check=False), "differ", "--env")
    expect_error(cli(*base, "--seed", "3", check=False), "differ", "--seed")
    assert snapshot(run) == before
    cli(*base, "--set", "lr=0.001", "--eval-episodes", "0")  # the saved value: not a change
    assert read_metrics(run / "metrics.csv")["step"].max() == 40


# --- 5. validation ------------------------------------------------------------------------------------------------

def test_nan_and_inf_config_values_are_one_line_errors(tmp_path):
    for name, value in (("a", "nan"), ("b", "inf")):
        expect_error(cli("train", "ppo", "--env", "CartPole-v1", "--steps", "10", "--out", tmp_path / name,
                         "--set", f"lr={value}", check=False), "lr")
    assert not any(tmp_path.iterdir())  # a failed config check leaves no run directory


PIPELINE = """env_id: Pendulum-v1
collect: {name: %s, parts: [{policy: random, steps: 200}]}
candidates:
  - {name: %s, algo: bc, steps: %s}
"""


@pytest.mark.parametrize("dataset,name,steps,fragment", [
    ("p-v0", "bc", "many", "candidates[0].steps"),
    ("p-v0", "../evil", "10", "candidates[0].name"),
    ("p-v0", "a/b", "10", "candidates[0].name"),
    ("ABSOLUTE", "bc", "10", "collect.name"),
    ("..", "bc", "10", "collect.name"),
    ("[1, 2]", "bc", "10", "collect.name"),
])
def test_malformed_or_escaping_pipeline_config_is_refused(dataset, name, steps, fragment, tmp_path):
    outside = tmp_path / "outside-v0"  # an absolute path next to --out
    cfg = tmp_path / "p.yaml"
    cfg.write_text(PIPELINE % (str(outside) if dataset == "ABSOLUTE" else dataset, name, steps))
    expect_error(cli("pipeline", cfg, "--out", tmp_path / "out", check=False), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml"]


def test_pipeline_structure_errors(tmp_path):
    cfg = tmp_path / "p.yaml"
    for text, fragment in [("env_id: Pendulum-v1\ncollect: [1]\ncandidates: []\n", "collect"),
                           ("env_id: Pendulum-v1\ncollect: {parts: [{steps: 10}]}\ncandidates: bc\n", "candidates"),
                           ("env_id: 3\ncollect: {parts: [{steps: 10}]}\ncandidates: [{name: a, algo: bc, steps: 1}]\n",
                            "env_id"),
                           ("env_id: Pendulum-v1\ncollect: {parts: [{steps: 10}]}\n"
                            "candidates: [{name: a, algo: bc, steps: 1, set: [lrr=1]}]\n", "lrr")]:
        cfg.write_text(text)
        expect_error(cli("pipeline", cfg, "--out", tmp_path / "out", check=False), fragment)
        assert not (tmp_path / "out").exists()


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    expect_error(cli("pipeline", bomb, "--out", tmp_path / "out", check=False, timeout=60), "aliases")
    expect_error(cli("train", "bc", "--dataset", "x-v0", "--steps", "1", "--out", tmp_path / "r", "--config", bomb,
                     check=False, timeout=60), "aliases")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.yaml"]


def test_offline_training_refuses_an_env_other_than_the_datasets(work, tmp_path):
    expect_error(cli("train", "bc", "--dataset", work / "pend-v0", "--env", "CartPole-v1", "--steps", "5", "--out",
                     tmp_path / "r", check=False), "CartPole-v1", "Pendulum-v1")
    assert not (tmp_path / "r").exists()


# --- 6. filesystem edges -----------------------------------------------------------------------------------------

def test_out_that_is_a_file_or_under_a_file(work, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for out in (f, f / "r"):
        expect_error(cli("train", "bc", "--dataset", work / "pend-v0", "--steps", "5", "--out", out, check=False),
                     "file")
    t0 = time.time()
    expect_error(cli("collect", "--env", "Pendulum-v1", "--steps", "100000", "--out", f, check=False), "file")
    expect_error(cli("collect", "--env", "Pendulum-v1", "--steps", "100000", "--out", f / "d-v0", check=False),
                 "not a directory")
    assert time.time() - t0 < 60  # refused before collecting 100k steps
    assert f.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_directory(work, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        expect_error(cli("train", "bc", "--dataset", work / "pend-v0", "--steps", "5", "--out", ro / "r", check=False),
                     "ro")
        expect_error(cli("collect", "--env", "Pendulum-v1", "--steps", "10", "--out", ro / "d-v0", check=False),
                     "not writable")
    finally:
        ro.chmod(0o755)


def test_inspect_writes_nothing_into_the_dataset_and_plots_only_where_told(work, tmp_path):
    before = snapshot(work / "pend-v0")
    out = cli("inspect", work / "pend-v0")
    assert snapshot(work / "pend-v0") == before
    assert "episodes" in out.stdout and "episodes" not in out.stderr  # the result goes to stdout
    png = tmp_path / "h.png"
    cli("inspect", work / "pend-v0", "--plot", png)
    assert png.stat().st_size > 1000
    png.write_bytes(b"mine")
    expect_error(cli("inspect", work / "pend-v0", "--plot", png, check=False), "--overwrite")
    assert png.read_bytes() == b"mine"
    cli("inspect", work / "pend-v0", "--plot", png, "--overwrite")
    assert png.stat().st_size > 1000


# --- 7. messages ---------------------------------------------------------------------------------------------------

def test_evaluate_prints_its_result_on_stdout(work):
    out = cli("evaluate", work / "bc" / "policy", "--env", "Pendulum-v1", "--episodes", "1")
    assert "return" in out.stdout and "return" not in out.stderr


def test_ope_says_when_behaviour_log_probs_were_estimated(work, tmp_path):
    from hybridrl.data.dataset import Dataset

    ds = Dataset.load(work / "pend-v0")
    ds.behavior_log_prob = None
    ds.save(tmp_path / "nolp-v0")
    out = cli("ope", "--dataset", tmp_path / "nolp-v0", "--policy", work / "bc" / "policy", "--estimators", "pdis")
    assert "estimated" in out.stdout and "behaviour" in out.stdout, out.stdout
