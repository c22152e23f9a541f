"""`hybridrl ope` in-process: progress on stderr under --json, degenerate estimates in words, --ci, fallback."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rollouts import collect
from typer.testing import CliRunner

from hybridrl.cli import app
from hybridrl.envs.toy import ChainEnv, TabularPolicy
from hybridrl.nn import save_policy


@pytest.fixture(scope="module")
def chain_files(tmp_path_factory):
    """40 uniform-behaviour episodes of hybridrl/Chain-v0 with a near-deterministic 'left' candidate (its IS
    weights are 2^t on the few episodes that keep going left: tiny ESS) and a mild one."""
    root = tmp_path_factory.mktemp("opecli")
    data = collect(lambda: ChainEnv(5, 0.1, 20), TabularPolicy(np.full((5, 2), 0.5)), 40, seed=0)
    data.env_id = "hybridrl/Chain-v0"
    data.save(root / "chain-v0")
    save_policy(TabularPolicy(np.tile([0.999, 0.001], (5, 1))), root / "left", env_id="hybridrl/Chain-v0")
    save_policy(TabularPolicy(np.tile([0.4, 0.6], (5, 1))), root / "mild", env_id="hybridrl/Chain-v0")
    return root


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_json_mode_reports_progress_on_stderr_and_degeneracy(chain_files):
    r = run("ope", "--dataset", chain_files / "chain-v0", "--policy", chain_files / "left", "--policy",
            chain_files / "mild", "--estimators", "pdis,snpdis", "--ci", "t", "--json")
    out = json.loads(r.stdout)  # stdout is JSON alone
    assert "ope:" in r.stderr and "policy left" in r.stderr and "degenerate" in r.stderr
    left = out["estimates"]["left"]["pdis"]
    assert left["degenerate"] and not left["usable"] and left["interval"] == "t"
    assert any("effective sample size" in x for x in left["degenerate_reasons"])
    assert not out["estimates"]["mild"]["pdis"]["degenerate"]
    # pdis and snpdis are both degenerate for "left": selection says nothing passes and not to trust it
    assert out["usable_estimators"] == [] and "do not trust" in out["selection_note"]


def test_table_says_degenerate_in_words(chain_files):
    r = run("ope", "--dataset", chain_files / "chain-v0", "--policy", chain_files / "left", "--policy",
            chain_files / "mild", "--estimators", "pdis", "--ci", "bernstein")
    assert "degenerate (ESS" in r.stdout and "empirical Bernstein" in r.stdout
    assert "note: left / pdis: degenerate: effective sample size" in " ".join(r.stdout.split())
    assert "(E[w] = 1 under the behaviour policy)" in " ".join(r.stdout.split())  # text, not rich markup
