"""OPS plots (hybridrl.ope.plots) and `hybridrl ope --plot DIR --true-values FILE` with the new estimators."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rollouts import collect
from typer.testing import CliRunner

from hybridrl.cli import app
from hybridrl.envs.toy import ChainEnv, TabularPolicy
from hybridrl.errors import ConfigError
from hybridrl.nn import save_policy
from hybridrl.ope.estimators import OPEResult
from hybridrl.ope.plots import plot_estimates_vs_truth, plot_top_k_curve


def res(name, est, degenerate=False):
    return OPEResult(name, est, None, est - 1, est + 1, degenerate=degenerate)


def test_plots_refuse_to_overwrite_and_check_inputs(tmp_path):
    results = {"a": {"pdis": res("pdis", 1.0), "dm": res("dm", 2.0)},
               "b": {"pdis": res("pdis", 5.0, degenerate=True), "dm": res("dm", 3.0)}}
    (tmp_path / "e.png").write_bytes(b"old")
    with pytest.raises(ConfigError, match="already exists"):
        plot_estimates_vs_truth(results, ["pdis", "dm"], tmp_path / "e.png", {"a": 1.0, "b": 4.0})
    assert (tmp_path / "e.png").read_bytes() == b"old"
    with pytest.raises(ConfigError, match="missing"):
        plot_top_k_curve(results, ["pdis"], {"a": 1.0}, tmp_path / "k2.png")
    with pytest.raises(ConfigError, match="no result"):
        plot_estimates_vs_truth(results, ["tis"], tmp_path / "e2.png")


def test_cli_plot_dir_with_new_estimators(tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = collect(lambda: ChainEnv(5, 0.1, 20), TabularPolicy(np.full((5, 2), 0.5)), 60, seed=0)
        data.env_id = "hybridrl/Chain-v0"
        data.save(tmp_path / "chain-v0")
        for name, p in (("good", [0.25, 0.75]), ("bad", [0.7, 0.3])):
            save_policy(TabularPolicy(np.tile(p, (5, 1))), tmp_path / name, env_id="hybridrl/Chain-v0")
        (tmp_path / "truth.json").write_text(json.dumps({"good": 0.5, "bad": 0.2}))
        args = ["ope", "--dataset", tmp_path / "chain-v0", "--policy", tmp_path / "good", "--policy", tmp_path / "bad",
                "--estimators", "snpdis,mis_mwl", "--weight-steps", "30"]
        args = [str(a) for a in args]
        args += ["--plot", str(tmp_path / "plots"), "--true-values", str(tmp_path / "truth.json"), "--json"]
        r = CliRunner().invoke(app, args, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        assert sorted(p.rsplit("/", 1)[1] for p in out["plots"]) == ["estimates.png", "top_k.png"]
        assert all((tmp_path / "plots" / f).stat().st_size > 1000 for f in ("estimates.png", "top_k.png"))
        assert "regret_at_k" in json.dumps(out["selection"]) and "weights_converged" in json.dumps(out)
        again = CliRunner().invoke(app, args)  # refused before any fitting
        assert again.exit_code != 0 and "already exists" in str(again.exception)
    finally:
        torch.set_num_threads(n)
