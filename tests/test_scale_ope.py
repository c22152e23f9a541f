"""`hybridrl ope --workers N`: candidates fitted as Ray tasks give exactly the sequential estimates."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rollouts import collect
from typer.testing import CliRunner

from hybridrl.cli import app
from hybridrl.envs.toy import ChainEnv, TabularPolicy
from hybridrl.nn import save_policy


@pytest.mark.ray
def test_ope_workers_equal_sequential(ray_runtime, tmp_path):
    data = collect(lambda: ChainEnv(5, 0.1, 20), TabularPolicy(np.full((5, 2), 0.5)), 30, seed=1)
    data.env_id = "hybridrl/Chain-v0"
    data.save(tmp_path / "chain-v0")
    args = ["ope", "--dataset", tmp_path / "chain-v0", "--estimators", "fqe,pdis,dr", "--fqe-steps", "100",
            "--ci", "t", "--json"]
    for i, p in enumerate([0.2, 0.7]):
        save_policy(TabularPolicy(np.tile([p, 1 - p], (5, 1))), tmp_path / f"c{i}", env_id="hybridrl/Chain-v0")
        args += ["--policy", tmp_path / f"c{i}"]

    def run(*extra):
        result = CliRunner().invoke(app, [str(a) for a in args + list(extra)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout, result.stderr

    sequential, _ = run("--no-fqe-batch")  # one FQE fit per candidate, as each Ray task does
    parallel, log = run("--workers", "2")
    assert "Ray tasks on 2 workers" in log
    assert parallel == sequential  # the JSON text: every estimate, interval and diagnostic, exactly (NaN included)
    estimates = json.loads(sequential)["estimates"]
    assert len({json.dumps(estimates[f"c{i}"]["fqe"]) for i in range(2)}) == 2
