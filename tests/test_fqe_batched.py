"""Batched FQE over candidate policies: same result as the sequential fits, per-candidate early stop, bad input."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from rollouts import collect

from hybridrl.algos.fqe import FQEConfig, fit
from hybridrl.algos.fqe_batched import _stacked_categorical, fit_batched
from hybridrl.data.dataset import Dataset
from hybridrl.envs.toy import ChainEnv, TabularPolicy
from hybridrl.errors import ShapeError
from hybridrl.nn import CategoricalPolicy, GaussianPolicy

CFG = FQEConfig(hidden=(32, 32), lr=3e-3, tau=0.1, batch_size=64, gamma=0.9)


def candidates(n: int) -> list[CategoricalPolicy]:
    """n softmax policies with different weights and different observation normalisers."""
    out = []
    for k in range(n):
        torch.manual_seed(100 + k)
        p = CategoricalPolicy(5, 2, hidden=(16,))
        with torch.no_grad():
            p.logits[-1].weight.mul_(300.0 * (k + 1))  # far from uniform, different per candidate
        p.obs_norm.set_stats(np.full(5, 0.1 * k), np.full(5, 1.0 + k), 10.0)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def chain_data() -> Dataset:
    return collect(lambda: ChainEnv(), TabularPolicy(np.full((5, 2), 0.5)), 40, seed=2)


def all_q(learner, data: Dataset) -> np.ndarray:
    return learner.q(data.observations, data.actions).numpy()


def test_batched_equals_sequential_fits(chain_data):
    """K=3 discrete candidates: same init, split and minibatches -> the same Q-values as 3 calls of fit()."""
    pols = candidates(3)
    assert _stacked_categorical(pols) is not None  # the stacked policy pass is what is checked here
    assert _stacked_categorical([*pols, TabularPolicy(np.full((5, 2), 0.5))]) is None
    kw = dict(max_steps=120, seed=4, check_every=40, min_steps=10**9)
    batched = fit_batched(chain_data, pols, CFG, **kw)
    qs = []
    for p, (b_learner, b_report) in zip(pols, batched):
        s_learner, s_report = fit(chain_data, p, CFG, **kw)
        q_b, q_s = all_q(b_learner, chain_data), all_q(s_learner, chain_data)
        np.testing.assert_allclose(q_b, q_s, atol=1e-5, rtol=0)
        np.testing.assert_allclose([h[1:] for h in b_report.history], [h[1:] for h in s_report.history],
                                   rtol=1e-4, atol=1e-6)
        assert b_report.steps == s_report.steps == 120 and not b_report.converged
        assert b_report.warnings == s_report.warnings and b_learner.policy is p
        for a, b in zip(b_learner.q_target.net.parameters(), s_learner.q_target.net.parameters()):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        qs.append(q_b)
    assert np.abs(qs[0] - qs[2]).max() > 1e-2  # the candidates' fits really differ (not one fit copied K times)


def test_batched_single_continuous_candidate_equals_fit():
    """K=1 with Gaussian target actions: the torch RNG is consumed in fit()'s order, so the fits agree."""
    rng = np.random.default_rng(0)
    obs_space, act_space = gym.spaces.Box(-5, 5, (3,), np.float32), gym.spaces.Box(-1, 1, (2,), np.float32)
    eps = [dict(observations=rng.normal(size=(9, 3)).astype(np.float32),
                actions=rng.uniform(-1, 1, (8, 2)).astype(np.float32), rewards=rng.normal(size=8).astype(np.float32),
                terminations=np.r_[np.zeros(7, bool), True], truncations=np.zeros(8, bool)) for _ in range(12)]
    data = Dataset.from_episodes(eps, obs_space, act_space)
    torch.manual_seed(0)
    pi = GaussianPolicy(3, 2, hidden=(16,), log_std_init=-0.5)
    cfg = FQEConfig(hidden=(32, 32), lr=1e-3, tau=0.1, batch_size=32, gamma=0.9, target_action_samples=2)
    kw = dict(max_steps=60, seed=1, check_every=30, min_steps=10**9)
    (b, b_rep), = fit_batched(data, [pi], cfg, **kw)
    s, s_rep = fit(data, pi, cfg, **kw)
    np.testing.assert_allclose(all_q(b, data), all_q(s, data), atol=1e-5, rtol=0)
    np.testing.assert_allclose([h[1] for h in b_rep.history], [h[1] for h in s_rep.history], rtol=1e-5)


def test_per_candidate_early_stop(chain_data):
    """Each candidate stops when its own stop rule holds (as in fit()); a stopped one is frozen at that step."""
    pols = candidates(3)
    kw = dict(max_steps=2000, seed=0, check_every=25, tol=0.02)
    batched = fit_batched(chain_data, pols, CFG, **kw)
    stops = []
    for p, (b_learner, b_report) in zip(pols, batched):
        s_learner, s_report = fit(chain_data, p, CFG, **kw)
        assert b_report.converged == s_report.converged and b_report.steps == s_report.steps
        np.testing.assert_allclose(all_q(b_learner, chain_data), all_q(s_learner, chain_data), atol=1e-5, rtol=0)
        stops.append(b_report.steps)
    assert all(b[1].converged for b in batched) and len(set(stops)) > 1, stops  # stopped at different steps


def test_mismatched_candidate_is_named(chain_data):
    pols = [*candidates(1), CategoricalPolicy(5, 3, hidden=(16,))]
    with pytest.raises(ShapeError, match=r"candidate 1 .*3 actions"):
        fit_batched(chain_data, pols, CFG, max_steps=5)


def test_evaluate_ope_batches_by_default_with_the_same_values(chain_data):
    """evaluate_ope fits the candidates' FQE together by default; fqe_batch=False gives the same (discrete) values."""
    from hybridrl.ope import evaluate_ope

    pols = dict(zip(("a", "b"), candidates(2)))
    kw = dict(estimators=("fqe", "dr"), gamma=0.9, fqe_steps=60, fqe_config=CFG, n_boot=50)
    on, off = evaluate_ope(chain_data, pols, **kw), evaluate_ope(chain_data, pols, fqe_batch=False, **kw)
    for n in pols:
        for e in ("fqe", "dr"):
            assert on[n][e].estimate == pytest.approx(off[n][e].estimate, abs=1e-5)
            assert on[n][e].diagnostics["fqe_steps"] == off[n][e].diagnostics["fqe_steps"] == 60
    assert abs(on["a"]["fqe"].estimate - on["b"]["fqe"].estimate) > 1e-3
