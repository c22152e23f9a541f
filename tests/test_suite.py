"""The D4RL-style dataset suite at the tiny budget: every kind built, logged probabilities exact, D4RL reference
scores attached, cached datasets reused and never replaced (``slow``: trains a tiny PPO on Hopper-v5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hybridrl.data.dataset import Dataset
from hybridrl.data.suite import make_suite
from hybridrl.errors import ConfigError
from hybridrl.nn import load_policy

pytestmark = pytest.mark.slow


def test_tiny_hopper_suite(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "suite"
    manifest = make_suite("Hopper-v5", "random,medium,medium-replay,medium-expert,expert", out, budget="tiny",
                          progress=False)
    data = {k: Dataset.load(out / v["path"]) for k, v in manifest["datasets"].items()}
    assert set(data) == {"random", "medium", "medium-replay", "medium-expert", "expert"}
    for kind, ds in data.items():
        assert ds.behavior_log_prob is not None, kind
        assert ds.reference_scores() == pytest.approx((-20.272305, 3234.3)), kind
        assert ds.metadata["suite"]["kind"] == kind
    assert len(data["medium-expert"]) == len(data["medium"]) + len(data["expert"])
    assert np.allclose(data["random"].behavior_log_prob, -3 * np.log(2.0))
    # medium-replay: each step's log-probability is that of one of the replay policies (the one that acted)
    replay = data["medium-replay"]
    obs, act = torch.from_numpy(replay.observations), torch.from_numpy(replay.actions)
    with torch.no_grad():
        lps = np.stack([load_policy(p).log_prob(obs, act).double().numpy()
                        for p in sorted((out / "policies" / "replay").iterdir())])
    assert np.abs(lps - replay.behavior_log_prob).min(0).max() < 1e-3
    training = manifest["training"]
    assert training["medium"]["env_steps"] <= training["expert"]["env_steps"]
    # cached: a second call rebuilds nothing; another budget in the same directory is refused
    before = (out / "suite.json").read_text()
    again = make_suite("Hopper-v5", "medium,expert", out, budget="tiny", progress=False)
    assert json.dumps(again, sort_keys=True) == json.dumps(json.loads(before), sort_keys=True)
    with pytest.raises(ConfigError, match="another --out"):
        make_suite("Hopper-v5", "random", out, budget="default", progress=False)
    with pytest.raises(ConfigError, match="unknown"):
        make_suite("Hopper-v5", "random,best", tmp_path / "other", budget="tiny", progress=False)
