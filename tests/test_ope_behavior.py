"""Calibrated behaviour model (uniform floor + temperature on held-out likelihood) and FQE's convergence check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rollouts import collect

from hybridrl.algos.bc import BCConfig
from hybridrl.algos.fqe import FQEConfig, default_max_steps
from hybridrl.envs.toy import ChainEnv, TabularPolicy, chain_policy_value
from hybridrl.ope import estimate_value, fit_behavior_model, fit_fqe
from hybridrl.ope.behavior import _calibrated_log_prob

GAMMA = 0.9
EPS_GREEDY = np.tile([0.1, 0.9], (5, 1))  # epsilon-greedy (eps = 0.2) around "always right"



@pytest.fixture(scope="module")
def eps_data():
    return collect(lambda: ChainEnv(5, 0.1, 20), TabularPolicy(EPS_GREEDY), 400, seed=3, log_prob=False)


def test_mixture_log_prob_hand_computed(eps_data):
    pi = TabularPolicy(np.tile([0.2, 0.8], (5, 1)))
    rows = np.arange(6)
    a = np.asarray(eps_data.actions[rows])
    got = _calibrated_log_prob(pi, eps_data, rows, 0.3, 1.0)
    np.testing.assert_allclose(got, np.log(0.7 * np.where(a == 1, 0.8, 0.2) + 0.15), rtol=1e-6)
    # temperature 2: softmax(log p / 2) = sqrt(p) / sum sqrt(p)
    p2 = np.sqrt([0.2, 0.8]) / np.sqrt([0.2, 0.8]).sum()
    np.testing.assert_allclose(_calibrated_log_prob(pi, eps_data, rows, 0.0, 2.0), np.log(p2[a]), rtol=1e-6)


@pytest.mark.slow
def test_behavior_model_is_calibrated_on_epsilon_greedy_data(eps_data):
    model = fit_behavior_model(eps_data, steps=300, seed=0,
                               config=BCConfig(hidden=(32,), lr=3e-3))
    target = TabularPolicy(np.full((5, 2), 0.5))
    with torch.no_grad():
        t_lp = target.log_prob(torch.as_tensor(eps_data.observations[:len(eps_data)]),
                               torch.as_tensor(eps_data.actions)).double().numpy()
    assert model.heldout.any() and model.heldout_mean_weight(t_lp) == pytest.approx(1.0, abs=0.1)
    true_ll = float(np.mean(np.log(np.where(np.asarray(eps_data.actions)[model.heldout] == 1, 0.9, 0.1))))
    assert model.heldout_loglik == pytest.approx(true_ll, abs=0.03)
    d = model.diagnostics(t_lp)
    assert set(d) >= {"behavior_heldout_loglik", "behavior_heldout_mean_weight", "behavior_epsilon"}
    assert "held-out" in model.describe()


def test_fqe_default_budget_fits_the_horizon():
    assert default_max_steps(0.99, 0.005) == 100_000 and default_max_steps(0.99, FQEConfig().tau) == 10_000
    assert default_max_steps(0.9, 0.05) == 2_000 and default_max_steps(1.0, 0.005) == 200_000


@pytest.mark.slow
def test_fqe_stops_early_when_converged_and_warns_when_not(eps_data):
    cfg = FQEConfig(hidden=(32, 32), lr=1e-3, tau=0.05, batch_size=128)
    target = TabularPolicy(np.tile([0.3, 0.7], (5, 1)))
    fqe = fit_fqe(eps_data, target, GAMMA, cfg, steps=6000, seed=0)
    rep = fqe.fit_report
    assert rep.converged and rep.steps < 6000 and rep.heldout_episodes == 40 and not rep.warnings
    dm = estimate_value("dm", eps_data, target, GAMMA, fqe, n_boot=0)
    assert dm.usable and dm.diagnostics["fqe_converged"] == 1.0
    assert dm.estimate == pytest.approx(chain_policy_value(np.tile([0.3, 0.7], (5, 1)), GAMMA, horizon=None), abs=0.05)
    short = fit_fqe(eps_data, target, GAMMA, cfg, steps=150, seed=0)
    assert not short.fit_report.converged
    r = estimate_value("dm", eps_data, target, GAMMA, short, n_boot=0)
    assert not r.usable and not r.degenerate and r.diagnostics["fqe_converged"] == 0.0
    assert any(n.startswith("warning: FQE did not converge: 150 steps are too few") for n in r.notes)
