"""`hybridrl sweep` on a real local Ray runtime: a driver killed mid-sweep, `--resume`, trials identical to `train`,
and the aggregate report opened in headless Chromium. Plus the PBT checkpoint hand-over without Ray."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def _datasets(tmp: Path) -> Path:
    from hybridrl.data.collect import collect

    path = tmp / "pend-v0"
    collect("Pendulum-v1", None, 400, seed=0, progress=False).save(path)
    return path


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "hybridrl.cli", *args], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _statuses(out: Path) -> dict[str, str]:
    try:
        return {k: v["status"] for k, v in json.loads((out / "sweep.json").read_text())["trials"].items()}
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    pytest.importorskip("ray")
    tmp = tmp_path_factory.mktemp("sweep")
    ds = _datasets(tmp)
    sweep = tmp / "s.yaml"
    sweep.write_text(f"steps: 200\neval_episodes: 1\nalgorithms: [bc]\ndatasets: [{ds}]\nseeds: 2\n"
                     "set: [batch_size=32]\n")
    out = tmp / "out"
    first = _cli("sweep", str(sweep), "--out", str(out), "--num-cpus", "1")  # one trial at a time
    t0 = time.monotonic()
    try:
        while "done" not in _statuses(out).values():
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() - t0 < 150, "no trial finished within 150 s"
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and everything it started (Ray, trial workers)
        first.wait()
    before = {n for n, s in _statuses(out).items() if s == "done"}
    assert len(before) == 1
    stamps = {n: [(p.name, p.stat().st_mtime_ns) for p in sorted((out / "runs" / n).iterdir())] for n in before}
    second = _cli("sweep", str(sweep), "--out", str(out), "--num-cpus", "2", "--resume", "--json")
    try:
        stdout, stderr = second.communicate(timeout=240)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
    assert second.returncode == 0, stderr[-3000:]
    return {"out": out, "before": before, "stamps": stamps, "summary": json.loads(stdout), "ds": ds}


@pytest.mark.ray
@pytest.mark.subprocess
def test_killed_sweep_resumes_without_rerunning(killed_and_resumed):
    r = killed_and_resumed
    out = r["out"]
    assert set(_statuses(out).values()) == {"done"}
    assert r["summary"]["to_run"] == 2 - len(r["before"]) and r["summary"]["errors"] == 0
    for name in r["before"]:  # finished before the kill: not one file touched by the resumed sweep
        now = [(p.name, p.stat().st_mtime_ns) for p in sorted((out / "runs" / name).iterdir())]
        assert now == r["stamps"][name]
    assert not list((out / "runs").glob(".*.old-*")), "a restarted trial left its old directory behind"


@pytest.mark.ray
@pytest.mark.subprocess
def test_trial_run_directory_equals_train(killed_and_resumed, tmp_path):
    import torch

    from hybridrl.loops.train import train

    out, name = killed_and_resumed["out"], "bc-pend-v0-s1"  # the trial the killed driver left unfinished
    torch.set_num_threads(1)
    train("bc", tmp_path / "direct", 200, dataset=killed_and_resumed["ds"], seed=1, overrides=["batch_size=32"],
          eval_episodes=1, progress=False)
    trial = out / "runs" / name
    assert (trial / "metrics.csv").read_text() == (tmp_path / "direct" / "metrics.csv").read_text()
    assert (trial / "config.yaml").read_text() == (tmp_path / "direct" / "config.yaml").read_text()
    assert json.loads((trial / "eval.json").read_text()) == json.loads((tmp_path / "direct" / "eval.json").read_text())
    files = lambda d: sorted(p.name for p in d.iterdir() if not p.name.startswith("."))
    assert files(trial) == files(tmp_path / "direct")


@pytest.mark.ray
@pytest.mark.subprocess
def test_report_renders_in_headless_chromium(killed_and_resumed, tmp_path):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("HYBRIDRL_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing and HYBRIDRL_REQUIRE_BROWSER=1 (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} not installed")
    out = killed_and_resumed["out"]
    page = out / "report.html"
    assert (out / "report.md").exists() and page.exists()
    assert "src='data:image/png;base64," in page.read_text() and "http" not in page.read_text().split("<body>")[0]
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"]
    url = page.resolve().as_uri()
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count("<table") >= 2 and "bc" in html and "pend-v0" in html
    assert html.count("<img") >= 2 and "IQM" in html
    png = tmp_path / "shot.png"
    shot = subprocess.run([CHROMIUM, *flags, f"--screenshot={png}", "--window-size=1200,1600", url],
                          capture_output=True, text=True, timeout=60)
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert pixels.shape[0] > 100 and pixels.std() > 10.0  # not a blank page
    shutil.copy(png, out / "report_screenshot.png")


def _same_tree(a, b, where="state"):
    import torch

    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b, where


def test_pbt_handover_uses_the_project_checkpoint(tmp_path):
    """PBT's exploit step without Tune: the donor's checkpoint reported to Tune (a copy of step_<N>/ + config +
    metrics) goes into the receiving run, which continues with train(resume=True) and its mutated config."""
    import torch

    from hybridrl.loops.train import train
    from hybridrl.runs import list_checkpoints, load_checkpoint, load_config
    from hybridrl.scale.sweep import _restore_from, _snapshot
    from hybridrl.scale.sweep_spec import TrialSpec

    torch.set_num_threads(1)
    ds = _datasets(tmp_path)
    donor = tmp_path / "donor"
    train("bc", donor, 100, dataset=ds, seed=0, overrides=["batch_size=32"], checkpoint_every=50, eval_episodes=0,
          progress=False)
    step50 = dict(list_checkpoints(donor))[50]
    snap = _snapshot(donor, step50)
    spec = TrialSpec(name="recv", algo="bc", variant="bc", task="pend", seed=1, steps=100, overrides=("batch_size=32",),
                     dataset=str(ds))
    donor_rows = (donor / "metrics.csv").read_text().splitlines()
    for name, mutated in (("same", []), ("mutated", ["lr=0.0005"])):
        recv = tmp_path / name
        _restore_from(snap, recv, spec, ["batch_size=32", *mutated])
        for f in sorted(step50.iterdir()):  # byte-identical project checkpoint
            assert (recv / "checkpoints" / "step_50" / f.name).read_bytes() == f.read_bytes()
        train("bc", recv, 100, resume=True, eval_episodes=0, progress=False)
        rows = (recv / "metrics.csv").read_text().splitlines()
        if not mutated:  # exact continuation: the same state at step 100 as the donor's uninterrupted run (the
            # metrics row differs: it averages steps 51-100 instead of 1-100)
            _same_tree(load_checkpoint(dict(list_checkpoints(donor))[100]),
                       load_checkpoint(recv / "checkpoints" / "step_100"))
        else:
            assert load_config(recv / "config.yaml")["config"]["lr"] == 0.0005
            assert rows[0] == donor_rows[0] and rows[1].split(",")[0] == "100" and rows[1] != donor_rows[1]
    shutil.rmtree(snap)
