"""Sweep report statistics (hybridrl.scale.report) against hand computations and SciPy; sweep-file validation."""

import numpy as np
import pytest
from scipy import stats

from hybridrl.errors import ConfigError
from hybridrl.scale import report

pytest.importorskip("rliable")


def test_iqm_by_hand():
    # 8 scores: the 25% trimmed mean drops the 2 lowest and 2 highest and averages the middle 4
    x = np.array([[10.0, 0.0], [1.0, 7.0], [3.0, 100.0], [2.0, 5.0]])  # [runs, tasks], flattened by IQM
    assert report.iqm(x) == pytest.approx((2.0 + 3.0 + 5.0 + 7.0) / 4)


def test_probability_of_improvement_by_hand():
    # task 0: pairs (x > y) + ties/2 over 3x3 = (3 + 2 + 0.5 + 0) / 9; task 1: x beats y in every pair
    x = np.array([[5.0, 9.0], [3.0, 8.0], [1.0, 7.0]])
    y = np.array([[2.0, 1.0], [3.0, 2.0], [6.0, 3.0]])
    # x=5 beats 2,3 (2); x=3 beats 2, ties 3 (1.5); x=1 beats none (0) -> 3.5 / 9
    want = (3.5 / 9 + 1.0) / 2
    p, lo, hi = report.probability_of_improvement(x, y, reps=2000)
    assert p == pytest.approx(want)
    assert report._poi_batched(x[None], y[None])[0] == pytest.approx(want)  # the bootstrap's own statistic
    assert lo <= p <= hi


def test_single_task_iqm_interval_matches_scipy_bootstrap():
    # one task: the stratified bootstrap is the ordinary bootstrap, so SciPy's percentile interval of the
    # 25%-trimmed mean is an independent computation of the same interval (up to Monte Carlo error)
    scores = np.random.default_rng(3).normal(50.0, 10.0, size=12)
    est = report.interval_estimates({"a": scores[:, None]}, reps=20000)["a"]["iqm"]
    ref = stats.bootstrap((scores,), lambda s, axis: stats.trim_mean(s, 0.25, axis=axis), n_resamples=20000,
                          method="percentile", confidence_level=0.95, random_state=1).confidence_interval
    assert est[0] == pytest.approx(stats.trim_mean(scores, 0.25))
    width = ref.high - ref.low
    assert abs(est[1] - ref.low) < 0.05 * width and abs(est[2] - ref.high) < 0.05 * width


def test_stratified_resampling_stays_within_each_task():
    scores = np.array([[1.0, 10.0, 100.0], [2.0, 20.0, 200.0], [3.0, 30.0, 300.0]])
    boot = report.stratified_resample(scores, 500, np.random.default_rng(0))
    assert boot.shape == (500, 3, 3)
    for t in range(3):
        assert set(np.unique(boot[:, :, t])) <= set(scores[:, t])
    # a degenerate task column (all equal) gives a zero-width interval for its mean
    est = report.interval_estimates({"c": np.full((5, 1), 4.0)}, reps=500)["c"]["mean"]
    assert est == (4.0, 4.0, 4.0)


def test_performance_profile_by_hand():
    scores = np.array([[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]])
    prof, bands = report.performance_profiles({"a": scores}, np.array([0.0, 2.5, 5.5]), reps=300)
    np.testing.assert_allclose(prof["a"], [1.0, 4 / 6, 1 / 6])
    assert bands["a"].shape == (2, 3) and np.all(bands["a"][0] <= prof["a"] + 1e-12)


def test_sweep_file_errors(tmp_path):
    from hybridrl.scale.sweep_spec import load_sweep

    bad = tmp_path / "s.yaml"
    bad.write_text("steps: 10\nalgorithms: [bc]\nseeds: 2\n")
    with pytest.raises(ConfigError, match="learns from logged data"):
        load_sweep(bad)
    bad.write_text("steps: 10\nalgorithms: [ppo]\nenvs: [CartPole-v1]\ngrid: {no_such_field: [1, 2]}\n")
    with pytest.raises(ConfigError, match="no_such_field"):
        load_sweep(bad)
    bad.write_text("steps: 10\nalgorithms: [ppo]\nenvs: [CartPole-v1]\nstep: 3\n")
    with pytest.raises(ConfigError, match="unknown field"):
        load_sweep(bad)
    good = tmp_path / "g.yaml"
    good.write_text("steps: 10\nalgorithms: {ppo: {grid: {lr: [0.001, 0.0003]}}}\nenvs: [CartPole-v1]\nseeds: 3\n"
                    "set: [n_steps=16, minibatch_size=16]\n")
    sweep = load_sweep(good, scheduler="asha")
    assert len(sweep.trials) == 6 and sweep.metric == "episode_return" and sweep.scheduler == "asha"
    assert sweep.trials[0].name == "ppo-CartPole-v1-lr=0.001-s0"
    assert sweep.trials[0].overrides == ("n_steps=16", "minibatch_size=16", "lr=0.001")
    with pytest.raises(ConfigError, match="one algorithm"):
        good.write_text("steps: 10\nalgorithms: [ppo, npg]\nenvs: [CartPole-v1]\n"
                        "scheduler: {pbt: {mutations: {lr: [0.001]}}}\n")
        load_sweep(good)
