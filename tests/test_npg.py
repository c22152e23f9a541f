"""NPG / TRPO: surrogate, Fisher-vector product, conjugate gradient, step size, line search, learner, learning."""

from __future__ import annotations

import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, Normal

from hybridrl.algos import get_algo
from hybridrl.algos.npg import NPGConfig, NPGLearner, TRPOConfig, npg_policy_step
from hybridrl.data.batches import Transitions
from hybridrl.errors import ConfigError, ShapeError
from hybridrl.losses.npg import (
    backtracking_line_search,
    conjugate_gradient,
    fisher_vector_product,
    kl_step_scale,
    mean_policy_kl,
    natural_gradient_step,
    npg_surrogate_loss,
)
from hybridrl.nn import make_policy


# ------------------------------------------------------------------------------------------- surrogate / KL
def test_surrogate_hand_case_and_gradient():
    logp = torch.log(torch.tensor([0.5, 0.2])).requires_grad_()
    old = torch.log(torch.tensor([0.25, 0.4]))
    adv = torch.tensor([1.0, -2.0])
    loss, m = npg_surrogate_loss(logp, old, adv)
    assert float(loss.detach()) == pytest.approx(-0.5)  # -mean(2 * 1 + 0.5 * -2)
    assert m["ratio_mean"] == pytest.approx(1.25)
    assert m["approx_kl"] == pytest.approx(np.mean([(2 - 1) - math.log(2), (0.5 - 1) - math.log(0.5)]))
    loss.backward()  # dL/dlogp_i = -A_i r_i / n
    assert torch.allclose(logp.grad, torch.tensor([-1.0, 0.5]))
    with pytest.raises(ShapeError):
        npg_surrogate_loss(logp, old[:1], adv)


def test_mean_policy_kl_matches_closed_forms():
    p, q = torch.tensor([[0.2, 0.8], [0.5, 0.5]]), torch.tensor([[0.4, 0.6], [0.9, 0.1]])
    kl, m = mean_policy_kl(Categorical(probs=p), Categorical(probs=q))
    assert float(kl) == pytest.approx(float((p * (p / q).log()).sum(1).mean()), rel=1e-6)
    mu0, mu1 = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    s0, s1 = torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 1.0]])
    kl, _ = mean_policy_kl(Independent(Normal(mu0, s0), 1), Independent(Normal(mu1, s1), 1))
    by_hand = (torch.log(s1 / s0) + (s0**2 + (mu0 - mu1) ** 2) / (2 * s1**2) - 0.5).sum()
    assert float(kl) == pytest.approx(float(by_hand), rel=1e-6) and m["kl"] >= 0
    with pytest.raises(ShapeError, match="Independent"):
        mean_policy_kl(Normal(mu0, s0), Normal(mu1, s1))


# ------------------------------------------------------------------------------------------ CG and FVP
def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x, info = conjugate_gradient(lambda v: a @ v, b, n_iters=6, residual_tol=0.0)
    assert torch.allclose(x, torch.linalg.solve(a, b), atol=1e-8)
    assert info["cg_iters"] == 6 and info["cg_residual"] < 1e-8
    x2, info2 = conjugate_gradient(lambda v: a @ v, b, n_iters=50, residual_tol=1e-20)  # stops on the tolerance
    assert info2["cg_iters"] < 50 and torch.allclose(x2, x, atol=1e-8)
    x3, _ = conjugate_gradient(lambda v: a @ v, b, n_iters=2)  # truncated CG still reduces the quadratic model
    assert 0.5 * x3 @ a @ x3 - b @ x3 < 0
    with pytest.raises(ShapeError):
        conjugate_gradient(lambda v: v, b[None])
    with pytest.raises(ValueError):
        conjugate_gradient(lambda v: v, b, n_iters=0)


def _tiny_categorical(theta: torch.Tensor, states: torch.Tensor) -> Categorical:
    w = theta[:6].reshape(3, 2)  # logits = W s + c, 3 actions, 2-d states
    return Categorical(logits=states @ w.T + theta[6:])


def test_fvp_equals_explicit_fisher_of_a_tiny_policy():
    g = torch.Generator().manual_seed(1)
    states = torch.randn(5, 2, generator=g, dtype=torch.float64)
    theta0 = torch.randn(9, generator=g, dtype=torch.float64)
    old = _tiny_categorical(theta0, states)
    old = Categorical(probs=old.probs.detach())

    def mean_kl(theta):
        return torch.distributions.kl_divergence(old, _tiny_categorical(theta, states)).mean()

    hessian = torch.autograd.functional.hessian(mean_kl, theta0)  # explicit Fisher (Hessian of KL at theta_old)
    # independent formula: F = mean_s sum_a pi(a|s) grad log pi(a|s) grad log pi(a|s)^T
    jac = torch.autograd.functional.jacobian(lambda t: _tiny_categorical(t, states).logits, theta0)  # [5, 3, 9]
    fisher = torch.einsum("sa,sai,saj->ij", old.probs, jac, jac) / 5
    assert torch.allclose(hessian, fisher, atol=1e-10)
    theta = theta0.clone().requires_grad_()
    damping = 0.1
    fvp = fisher_vector_product(mean_kl(theta), [theta], damping)
    for _ in range(3):
        v = torch.randn(9, generator=g, dtype=torch.float64)
        assert torch.allclose(fvp(v), fisher @ v + damping * v, atol=1e-10)


def test_fvp_gaussian_policy_closed_form():
    """Linear Gaussian mean mu = w s, log-std l: F = mean_s [s s^T / sigma^2, 0; 0, 2]."""
    states = torch.tensor([[1.0, 0.0], [1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
    w = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    log_std = torch.tensor([0.4], dtype=torch.float64, requires_grad=True)

    def dist():
        return Independent(Normal((states @ w)[:, None], log_std.exp().expand(3, 1)), 1)

    with torch.no_grad():
        old = dist()
    fvp = fisher_vector_product(mean_policy_kl(old, dist())[0], [w, log_std], damping=0.0)
    sigma2 = math.exp(0.8)
    f = torch.zeros(3, 3, dtype=torch.float64)
    f[:2, :2] = states.T @ states / 3 / sigma2
    f[2, 2] = 2.0
    v = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert torch.allclose(fvp(v), f @ v, atol=1e-10)


# ------------------------------------------------------------------------------ step size, line search
def test_kl_step_scale_by_hand():
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    f = torch.diag(torch.tensor([2.0, 0.5], dtype=torch.float64))
    beta = kl_step_scale(x, f @ x, 0.01)  # x^T F x = 2 + 2 = 4, beta = sqrt(0.02 / 4)
    assert float(beta) == pytest.approx(math.sqrt(0.005))
    step = beta * x
    assert float(0.5 * step @ f @ step) == pytest.approx(0.01)  # the quadratic KL model hits delta exactly
    assert float(kl_step_scale(x, -x, 0.01)) == 0.0
    with pytest.raises(ValueError):
        kl_step_scale(x, f @ x, 0.0)


def test_line_search_by_hand():
    """g(theta) = -(theta - 1)^2 from theta = 0, full step 4: expected improvement g'(0) * 4 = 8."""

    def evaluate(frac):
        theta = 4 * frac
        return -((theta - 1) ** 2) + 1.0, frac**2  # (improvement, a stand-in KL)

    frac, m = backtracking_line_search(evaluate, 8.0)
    # f = 1: improvement -8 (rejected); f = 1/2: 0 (not > 0); f = 1/4: 1, ratio 1 / 2 = 0.5 > 0.1
    assert frac == 0.25 and m["line_search_backtracks"] == 2 and m["surrogate_improvement"] == 1.0
    frac, m = backtracking_line_search(evaluate, 8.0, max_kl=0.05)  # KL 1/16 rejects f = 1/4
    assert frac == 0.125 and m["surrogate_improvement"] == pytest.approx(0.75) and m["kl"] <= 0.05
    frac, m = backtracking_line_search(evaluate, 8.0, max_backtracks=2)
    assert frac == 0.0 and m["line_search_accepted"] == 0.0
    frac, _ = backtracking_line_search(evaluate, 8.0, accept_ratio=0.6)  # ratio 0.5 at 1/4 too low; 1/8: 0.75
    assert frac == 0.125
    assert backtracking_line_search(evaluate, -1.0)[0] == 0.0  # no predicted improvement, no step


# -------------------------------------------------------------------------------------- full step
def _policy_batch(discrete: bool, n: int = 256, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    obs_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    act_space = gym.spaces.Discrete(3) if discrete else gym.spaces.Box(-1, 1, (2,), np.float32)
    torch.manual_seed(seed)
    policy = make_policy(obs_space, act_space, (16,), normalize_obs=False)
    obs = torch.randn(n, 3, generator=g)
    with torch.no_grad():
        action = policy.sample(obs)[0]
    adv = 10 * torch.randn(n, generator=g)
    return policy, obs, action, adv


@pytest.mark.parametrize("discrete", [True, False])
def test_trust_region_steps_respect_the_kl_limit(discrete):
    delta = 0.01
    policy, obs, action, adv = _policy_batch(discrete)
    m_trpo = npg_policy_step(policy, obs, action, adv, TRPOConfig(max_kl=delta))
    assert m_trpo["line_search_accepted"] == 1.0
    assert 0 < m_trpo["kl"] <= 1.5 * delta and m_trpo["surrogate_improvement"] > 0
    policy, obs, action, adv = _policy_batch(discrete)
    m_npg = npg_policy_step(policy, obs, action, adv, NPGConfig(max_kl=delta))
    assert m_npg["step_fraction"] == 1.0
    assert 0.5 * delta < m_npg["kl"] < 2 * delta  # the quadratic model 0.5 s^T F s = delta, up to damping/curvature


def test_zero_advantage_takes_no_step():
    policy, obs, action, _ = _policy_batch(True)
    before = [p.detach().clone() for p in policy.parameters()]
    m = npg_policy_step(policy, obs, action, torch.zeros(len(obs)), TRPOConfig())
    assert m["step_norm"] == 0.0 and m["kl"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_natural_gradient_step_on_a_quadratic_problem():
    """L = -c^T theta with KL = 0.5 theta^T A theta: the step is sqrt(2 delta / c^T A^-1 c) A^-1 c."""
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    a = torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64))
    c = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    m = natural_gradient_step([theta], lambda: -(c @ theta), lambda: 0.5 * theta @ a @ theta, max_kl=0.02,
                              damping=0.0, cg_iters=3)
    direction = torch.linalg.solve(a, c)
    expected = math.sqrt(2 * 0.02 / float(c @ direction)) * direction
    assert torch.allclose(theta.detach(), expected, atol=1e-10)
    assert m["kl"] == pytest.approx(0.02) and m["surrogate_improvement"] == pytest.approx(m["expected_improvement"])


# ------------------------------------------------------------------------------------ config, learner
def test_npg_and_trpo_configs():
    assert NPGConfig().line_search is False and TRPOConfig().line_search is True
    npg_fields = [(f.name, f.default) for f in dataclasses.fields(NPGConfig) if f.name != "line_search"]
    assert npg_fields == [(f.name, f.default) for f in dataclasses.fields(TRPOConfig) if f.name != "line_search"]
    c = NPGConfig()
    assert (c.max_kl, c.damping, c.cg_iters, c.max_backtracks, c.accept_ratio, c.gamma, c.gae_lambda) == \
        (0.01, 0.1, 10, 10, 0.1, 0.995, 0.97)
    assert get_algo("npg").config_cls is NPGConfig and get_algo("trpo").config_cls is TRPOConfig
    assert get_algo("trpo").learner_cls is NPGLearner
    for bad in (dict(max_kl=0.0), dict(damping=-1.0), dict(cg_iters=0), dict(gamma=1.0), dict(kl_factor=0.5)):
        with pytest.raises(ConfigError):
            TRPOConfig(**bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        TRPOConfig().max_kl = 0.1


def test_on_policy_loop_rejects_offline_data_for_npg():
    """Only learners with ``uses_offline_data`` (HNPG) get the dataset; NPG with one is a ConfigError."""
    from hybridrl.loops.on_policy import train_on_policy

    off = Transitions(obs=torch.randn(4, 4), action=torch.zeros(4, dtype=torch.long), reward=torch.zeros(4),
                      next_obs=torch.randn(4, 4), terminated=torch.zeros(4, dtype=torch.bool),
                      truncated=torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ConfigError, match="npg does not use offline data"):
        train_on_policy("CartPole-v1", NPGConfig(n_steps=8), 8, algo="npg", offline=off, progress=False)


# ---------------------------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_trpo_learns_cartpole_within_30k_steps(tmp_path):
    """Measured (3 seeds, 40k steps): training return ~22 -> ~430-490 by 30k steps, deterministic eval 500."""
    from hybridrl.loops.evaluate import evaluate_policy
    from hybridrl.loops.on_policy import train_on_policy
    from hybridrl.runs import RunDir, read_metrics

    cfg = TRPOConfig(num_envs=8, n_steps=256, critic_minibatch_size=256)
    run = RunDir.create(tmp_path / "trpo")
    learner = train_on_policy("CartPole-v1", cfg, 30_720, run=run, seed=0, progress=False, algo="trpo")
    m = read_metrics(run.metrics_csv)
    ret = m["episode_return"]
    assert ret[0] < 60 and ret[-1] > 250, ret
    assert np.all(m["kl"] <= 1.5 * cfg.max_kl + 1e-6) and m["line_search_accepted"].mean() > 0.5
    assert evaluate_policy(learner.policy, "CartPole-v1", 5, seed=123)["mean"] > 250


@pytest.mark.slow
def test_npg_learns_cartpole_within_30k_steps():
    """Measured: deterministic eval 500 for seeds 0-2 after 30,720 steps (no line search: the plain KL-scaled step)."""
    from hybridrl.loops.evaluate import evaluate_policy
    from hybridrl.loops.on_policy import train_on_policy

    learner = train_on_policy("CartPole-v1", NPGConfig(num_envs=8, n_steps=256, critic_minibatch_size=256), 30_720,
                              seed=0, progress=False, algo="npg")
    assert evaluate_policy(learner.policy, "CartPole-v1", 5, seed=123)["mean"] > 250
