"""The whole pipeline (``hybridrl pipeline`` / ``demo``) on a tiny Pendulum budget, and its config checks."""

from __future__ import annotations

import json
import re

import pytest

from hybridrl.errors import ConfigError
from hybridrl.pipeline import _validate, demo_config_path, run_pipeline
from hybridrl.runs import load_config

TINY = {
    "env_id": "Pendulum-v1", "seed": 0, "gamma": 0.9,
    "behavior": {"algo": "ppo", "steps": 256, "set": ["n_steps=128", "minibatch_size=64", "n_epochs=1"]},
    "collect": {"name": "tiny-v0", "parts": [{"policy": "random", "steps": 200}, {"policy": "behavior", "steps": 200}]},
    "candidates": [{"name": "bc", "algo": "bc", "steps": 20}, {"name": "bc-small", "algo": "bc", "steps": 20,
                                                                "set": ["hidden=16,16"]}],
    "ope": {"estimators": ["fqe", "pdis"], "fqe_steps": 20, "eval_episodes": 1},
    "select": {"by": "fqe", "k": 1},
    "finetune": {"steps": 256, "set": ["n_steps=128", "minibatch_size=64", "n_epochs=1"]},
}


def test_demo_config_is_valid():
    _validate(load_config(demo_config_path()), "demo.yaml")


@pytest.mark.slow
def test_tiny_pipeline_runs_end_to_end(tmp_path):
    run = run_pipeline(TINY, tmp_path / "p", progress=False)
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["selected"] in ("bc", "bc-small") and summary["finetune"]["episodes"] == 1
    for f in ("config.yaml", "report.md", "ope.json", "selection.json", "datasets/tiny-v0/hybridrl.json",
              "candidates/bc/policy/model.safetensors", "finetune/policy/model.safetensors", "img/ope_fqe.png"):
        assert (run.path / f).exists(), f
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


@pytest.mark.parametrize("change,fragment", [
    ({"candidates": [{"name": "x", "algo": "ppo", "steps": 5}]}, "does not learn from a dataset"),
    ({"candidates": [{"name": "x", "algo": "bc", "steps": 0}]}, "candidates[0].steps"),
    ({"candidates": [{"name": "x", "algo": "bc", "steps": 5}, {"name": "x", "algo": "bc", "steps": 5}]}, "unique"),
    ({"gamma": float("nan")}, "gamma"),
    ({"select": {"by": "dr"}}, "select.by"),
    ({"finetune": {"steps": 10, "set": ["lr=nan"]}}, "finetune.set"),
    ({"collect": {"parts": [{"steps": 10, "policy": "random", "noise": 1}]}}, "collect.parts[0]"),
    ({"ope": {"fqe_batch": "yes"}}, "ope.fqe_batch"),
])
def test_pipeline_config_errors_name_the_field(change, fragment, tmp_path):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        run_pipeline({**TINY, **change}, tmp_path / "p", progress=False)
    assert not any(tmp_path.iterdir())
