"""Run directory, config overrides, metrics, checkpoints and plots (hybridrl.runs)."""

from __future__ import annotations

import collections
import dataclasses
from typing import Literal

import numpy as np
import pytest
import torch
from torch import nn

from hybridrl.errors import ConfigError, HybridRLError, RunExistsError
from hybridrl.runs import (
    MetricsLogger,
    RunDir,
    apply_overrides,
    dataclass_from_dict,
    dataclass_to_dict,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_config,
    nonfinite_keys,
    plot_curves,
    plot_estimates,
    plot_histogram,
    read_metrics,
    save_checkpoint,
    save_config,
)

# --- run directory --------------------------------------------------------------------------------------

def _snapshot(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_rundir_paths_and_create_new(tmp_path):
    run = RunDir.create(tmp_path / "runs" / "a")
    assert run.path.is_dir() and run.config_path.name == "config.yaml" and run.tb_dir.name == "tb"
    names = (run.metrics_csv.name, run.checkpoints_dir.name, run.policy_dir.name)
    assert names == ("metrics.csv", "checkpoints", "policy")
    assert (run.eval_json.name, run.curves_png.name, run.report_md.name) == ("eval.json", "curves.png", "report.md")
    run.write_json("eval.json", {"mean": np.float32(1.5), "returns": np.arange(3), "shape": (1, 2)})
    assert run.eval_json.read_text().count("\n") > 1 and '"mean": 1.5' in run.eval_json.read_text()
    run.write_text("report.md", "# hi\n")
    assert run.report_md.read_text() == "# hi\n"
    assert list(run.path.iterdir()) and not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]


def test_existing_run_is_not_overwritten(tmp_path):
    run = RunDir.create(tmp_path / "r")
    run.write_json("eval.json", {"mean": 1.0})
    save_checkpoint(run, 5, {"x": torch.ones(2)})
    before = _snapshot(run.path)
    run.release()
    with pytest.raises(RunExistsError, match="--overwrite.*--resume"):
        RunDir.create(run.path)
    assert _snapshot(run.path) == before
    with pytest.raises(ConfigError, match="mutually exclusive"):
        RunDir.create(run.path, overwrite=True, resume=True)
    resumed = RunDir.create(run.path, resume=True)
    assert latest_checkpoint(resumed).name == "step_5" and _snapshot(run.path) == before


def test_resume_without_checkpoint_raises(tmp_path):
    run = RunDir.create(tmp_path / "r")
    run.write_text("config.yaml", "a: 1\n")
    run.release()
    with pytest.raises(ConfigError, match="nothing to resume"):
        RunDir.create(run.path, resume=True)
    with pytest.raises(ConfigError, match="nothing to resume"):
        RunDir.create(tmp_path / "missing", resume=True)


def test_overwrite_moves_old_run_aside_until_commit(tmp_path):
    old = RunDir.create(tmp_path / "r")
    old.write_json("eval.json", {"mean": 1.0})
    before = _snapshot(old.path)
    old.release()
    new = RunDir.create(old.path, overwrite=True)
    assert new.path.is_dir() and [p.name for p in new.path.iterdir()] == [".lock"]
    assert new.replaced_path.name.startswith(".r.old-") and _snapshot(new.replaced_path) == before
    new.write_json("eval.json", {"mean": 2.0})
    new.commit()
    assert not new.replaced_path and [p.name for p in tmp_path.iterdir()] == ["r"]
    assert '"mean": 2.0' in new.eval_json.read_text()
    # a failed overwrite run can be rolled back to the old results
    new.release()
    again = RunDir.create(new.path, overwrite=True)
    again.write_text("partial.txt", "x")
    again.rollback()
    assert '"mean": 2.0' in again.eval_json.read_text() and not (again.path / "partial.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["r"]


# --- config ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Inner:
    lr: float = 1e-3


@dataclasses.dataclass(frozen=True)
class _Cfg:
    lr: float = 3e-4
    anneal_lr: bool = True
    n_steps: int = 2048
    hidden: tuple[int, ...] = (64, 64)
    target_kl: float | None = None
    activation: Literal["tanh", "relu"] = "tanh"
    name: str = "ppo"
    inner: _Inner = _Inner()

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def test_apply_overrides_types():
    cfg = _Cfg()
    new = apply_overrides(cfg, ["anneal_lr=False", "n_steps=1e3", "lr=1e-3", "hidden=256,256", "target_kl=0.02",
                                "activation=relu", "name=x=y", "inner.lr=5e-4"])
    assert new == _Cfg(lr=1e-3, anneal_lr=False, n_steps=1000, hidden=(256, 256), target_kl=0.02,
                       activation="relu", name="x=y", inner=_Inner(5e-4))
    assert cfg == _Cfg()  # not mutated
    for text, expected in [("true", True), ("0", False), ("YES", True), ("no", False), ("On", True)]:
        assert apply_overrides(cfg, [f"anneal_lr={text}"]).anneal_lr is expected
    assert apply_overrides(cfg, ["hidden=[128, 32]"]).hidden == (128, 32)
    assert apply_overrides(cfg, ["hidden=[]"]).hidden == ()
    assert apply_overrides(new, ["target_kl=None"]).target_kl is None
    assert apply_overrides(cfg, {"n_steps": 7}).n_steps == 7


@pytest.mark.parametrize("override, match", [
    ("n_step=10", r"unknown config key 'n_step'.*did you mean 'n_steps'.*Valid keys: lr, anneal_lr"),
    ("anneal_lr=maybe", r"invalid value 'maybe' for config key 'anneal_lr': expected bool"),
    ("n_steps=1.5", r"'1.5'.*'n_steps': expected int"),
    ("lr=fast", r"'fast'.*'lr': expected float"),
    ("hidden=64,x", r"'x'.*'hidden\[1\]': expected int"),
    ("target_kl=big", r"'big'.*'target_kl': expected float \| None"),
    ("activation=gelu", r"'gelu'.*one of 'tanh', 'relu'"),
    ("lr=-1", r"lr must be > 0"),
    ("inner.x=1", r"unknown config key 'inner.x'"),
    ("lr", r"expected key=value"),
])
def test_apply_overrides_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(_Cfg(), [override])


def test_config_yaml_round_trip(tmp_path):
    cfg = _Cfg(hidden=(32,), target_kl=0.01)
    save_config(tmp_path / "c.yaml", {"algo": "ppo", "config": dataclass_to_dict(cfg)})
    data = load_config(tmp_path / "c.yaml")
    assert data["config"]["hidden"] == [32]
    assert dataclass_from_dict(_Cfg, data["config"]) == cfg
    assert dataclass_from_dict(_Cfg, {"lr": "1e-3", "inner": {"lr": 2}}) == _Cfg(lr=1e-3, inner=_Inner(2.0))
    with pytest.raises(ConfigError, match="c.yaml: unknown config key 'lrr'"):
        dataclass_from_dict(_Cfg, {"lrr": 1}, where="c.yaml")
    with pytest.raises(ConfigError, match="'anneal_lr': expected bool"):
        dataclass_from_dict(_Cfg, {"anneal_lr": "False!"})
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")


# --- metrics --------------------------------------------------------------------------------------------

def test_metrics_csv_changing_keys_and_truncate(tmp_path):
    run = RunDir.create(tmp_path / "r")
    with MetricsLogger(run, tensorboard=True) as log:
        log.log(0, {"loss": 1.0})
        log.log(10, {"loss": np.float32(0.5), "kl": torch.tensor(0.1)})
        log.log(20, {"return": 3.0}, prefix="eval")
        log.log(30, {"loss": float("nan")})
    assert run.metrics_csv.read_text().splitlines()[0] == "step,eval/return,kl,loss"
    m = read_metrics(run.metrics_csv)
    assert m["step"].tolist() == [0, 10, 20, 30] and m["step"].dtype == np.int64
    np.testing.assert_allclose(m["loss"][:2], [1.0, 0.5])
    assert np.isnan(m["loss"][2]) and np.isnan(m["loss"][3]) and np.isnan(m["kl"][0])
    assert m["eval/return"][2] == 3.0
    assert any(run.tb_dir.iterdir())
    log2 = MetricsLogger(run, tensorboard=False)  # resume: continue the same file
    assert log2.truncate(after_step=10) == 2
    log2.log(20, {"loss": 0.25})
    m = read_metrics(run)
    assert m["step"].tolist() == [0, 10, 20] and m["loss"][2] == 0.25 and np.isnan(m["eval/return"]).all()
    assert nonfinite_keys({"a": 1.0, "b": float("inf"), "c": np.float32("nan"), "d": torch.tensor(2.0)}) == ["b", "c"]


def test_read_metrics_ignores_partial_last_line(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("step,a,b\n0,1.0,2.0\n5,1.5")
    assert read_metrics(p)["a"].tolist() == [1.0]
    p.write_text("step,a\n0,x\n5,1.5\n")
    with pytest.raises(HybridRLError, match="line 2"):
        read_metrics(p)


# --- checkpoints ----------------------------------------------------------------------------------------

def _model_and_optim(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def _step(model, optim, x):
    optim.zero_grad()
    model(x).pow(2).mean().backward()
    optim.step()


def test_checkpoint_exact_resume_model_optimizer_rng(tmp_path):
    run = RunDir.create(tmp_path / "r")
    xs = torch.randn(6, 8, 4, generator=torch.Generator().manual_seed(1))
    model, optim = _model_and_optim()
    for x in xs[:5]:
        _step(model, optim, x)
    rng = np.random.default_rng(123)
    rng.random(3)
    torch.manual_seed(7)
    state = {"model": model.state_dict(), "optim": optim.state_dict(), "np_rng": rng.bit_generator.state,
             "torch_rng": torch.get_rng_state(), "legacy": np.random.RandomState(5).get_state(),
             "misc": {1: (2, None, "s"), "arr": np.arange(4, dtype=np.uint32), "f": np.float32(0.5)}}
    path = save_checkpoint(run, 5, state)
    expected_np, expected_torch = rng.random(4), torch.rand(3)
    _step(model, optim, xs[5])  # uninterrupted run

    step, loaded = load_checkpoint(path)
    assert step == 5 and isinstance(loaded["model"], collections.OrderedDict)
    assert list(loaded["optim"]["state"]) == [0, 1, 2, 3]
    assert isinstance(loaded["optim"]["param_groups"][0]["betas"], tuple)
    assert loaded["misc"][1] == (2, None, "s") and loaded["misc"]["arr"].dtype == np.uint32
    assert isinstance(loaded["misc"]["f"], np.float32) and loaded["np_rng"] == state["np_rng"]
    model2, optim2 = _model_and_optim(seed=99)
    model2.load_state_dict(loaded["model"])
    optim2.load_state_dict(loaded["optim"])
    _step(model2, optim2, xs[5])
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = loaded["np_rng"]
    torch.set_rng_state(loaded["torch_rng"])
    np.testing.assert_array_equal(rng2.random(4), expected_np)
    assert torch.equal(torch.rand(3), expected_torch)
    legacy = np.random.RandomState()
    legacy.set_state(loaded["legacy"])
    assert legacy.randint(1000) == np.random.RandomState(5).randint(1000)


def test_checkpoint_keep_last_and_latest(tmp_path):
    run = RunDir.create(tmp_path / "r")
    assert latest_checkpoint(run) is None
    for s in (1, 2, 3, 10):
        save_checkpoint(run, s, {"w": torch.full((2,), float(s))})
    assert [s for s, _ in list_checkpoints(run)] == [3, 10] and latest_checkpoint(run).name == "step_10"
    save_checkpoint(run, 11, {"w": torch.zeros(1)}, keep_last=None)
    assert [s for s, _ in list_checkpoints(run)] == [3, 10, 11]
    save_checkpoint(run, 12, {"w": torch.zeros(1)}, keep_last=1)
    assert [p.name for p in run.checkpoints_dir.iterdir()] == ["step_12"]
    with pytest.raises(ConfigError):
        save_checkpoint(run, -1, {})
    with pytest.raises(HybridRLError, match="cannot checkpoint object at 'bad/0'"):
        save_checkpoint(run, 13, {"bad": [object()]})
    assert latest_checkpoint(run).name == "step_12"  # failed save left nothing behind


def test_corrupt_checkpoint_raises_clear_error(tmp_path):
    run = RunDir.create(tmp_path / "r")
    path = save_checkpoint(run, 3, {"w": torch.randn(100, 10), "b": torch.zeros(3)})
    st = path / "state.safetensors"
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(HybridRLError, match=r"state\.safetensors is truncated or corrupt.*delete"):
        load_checkpoint(path)
    (path / "state.json").write_text("{not json")
    with pytest.raises(HybridRLError, match=r"state\.json is corrupt"):
        load_checkpoint(path)
    (path / "state.json").unlink()
    with pytest.raises(HybridRLError, match="state.json is missing"):
        load_checkpoint(path)


# --- plots ----------------------------------------------------------------------------------------------

def _is_png(path):
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png(tmp_path):
    metrics = {"step": np.arange(10), "loss": np.linspace(1, 0, 10), "kl": np.r_[np.nan, np.ones(9)]}
    assert _is_png(plot_curves(metrics, ["loss", "kl", "absent"], tmp_path / "curves.png", title="run"))
    assert _is_png(plot_curves(metrics, ["absent"], tmp_path / "empty.png"))
    assert _is_png(plot_estimates(["IS", "WIS", "DR"], [1.0, 1.2, 0.9], [0.5, 1.0, np.nan], [1.5, 1.4, np.nan],
                                  true_values=[1.1, 1.1, 1.1], out_png=tmp_path / "ope.png", title="OPE"))
    assert _is_png(plot_histogram(np.r_[np.random.default_rng(0).normal(size=200), np.inf], tmp_path / "h.png",
                                  title="returns", xlabel="return"))
    assert not list(tmp_path.glob(".*"))  # no temp files left


# --- hardening: lock, abandon, file modes, YAML aliases, NaN ----------------------------------------------

def _hold_lock(path):
    """A child process that opens (and so locks) the run ``path`` and waits; returns it once the lock is held."""
    import subprocess
    import sys

    code = ("import sys, time; from hybridrl.runs import RunDir; RunDir.create(sys.argv[1]); "
            "print('locked', flush=True); time.sleep(120)")
    child = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


@pytest.mark.subprocess
def test_run_lock_blocks_a_second_process_and_a_stale_lock_does_not(tmp_path):
    path = tmp_path / "r"
    child = _hold_lock(path)
    try:
        with pytest.raises(RunExistsError, match=rf"in use by another process \(pid {child.pid}\)"):
            RunDir.create(path)
        with pytest.raises(RunExistsError, match="in use"):
            RunDir.create(path, overwrite=True)
    finally:
        child.kill()
        child.wait()
    assert (path / ".lock").exists()  # the crashed holder left its lock file: it must not block
    RunDir.create(path).release()


def test_abandon_restores_overwritten_run_until_first_checkpoint(tmp_path):
    old = RunDir.create(tmp_path / "r")
    old.write_json("eval.json", {"mean": 1.0})
    old.release()
    new = RunDir.create(old.path, overwrite=True)
    new.write_text("config.yaml", "a: 1\n")
    new.abandon()  # failed before its first checkpoint: the old run is back
    assert '"mean": 1.0' in old.eval_json.read_text() and sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    new = RunDir.create(old.path, overwrite=True)
    save_checkpoint(new, 1, {"x": torch.ones(1)})
    new.abandon()  # failed after it: the new run stays (resumable), the old one is gone
    assert new.has_checkpoint() and not new.eval_json.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    new.release()
    fresh = RunDir.create(tmp_path / "empty")
    fresh.abandon()  # a run that wrote nothing leaves no empty folder
    assert not (tmp_path / "empty").exists()


def test_run_files_get_normal_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        run = RunDir.create(tmp_path / "r")
        run.write_json("eval.json", {"a": 1})
        save_checkpoint(run, 3, {"x": torch.ones(1)})
        save_config(run.config_path, {"a": 1})
    finally:
        os.umask(old)
    modes = {p.relative_to(run.path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in run.path.rglob("*")}
    assert modes["eval.json"] == modes["config.yaml"] == modes["checkpoints/step_3/state.json"] == 0o644, modes
    assert modes["checkpoints/step_3"] == 0o755, modes


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"bomb.yaml.*aliases"):
        load_config(bomb)
    plain = tmp_path / "ok.yaml"
    plain.write_text("a: &x 1\nb: [1, 2]\n")  # an anchor without an alias is harmless
    assert load_config(plain) == {"a": 1, "b": [1, 2]}


def test_nan_override_is_a_config_error():
    @dataclasses.dataclass(frozen=True)
    class C:
        lr: float = 1.0

    with pytest.raises(ConfigError, match="'lr'.*not NaN"):
        apply_overrides(C(), ["lr=nan"])
    with pytest.raises(ConfigError, match="'lr'"):
        dataclass_from_dict(C, {"lr": float("nan")})
    assert apply_overrides(C(), ["lr=inf"]).lr == float("inf")  # ranges (check_config) decide about inf
