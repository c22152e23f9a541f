"""Unit tests of hybridrl.ops: hand-computed cases, naive loops on random inputs, bad shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hybridrl.errors import ShapeError
from hybridrl.ops import (
    approx_kl,
    clipped_ratio,
    discounted_returns,
    effective_sample_size,
    explained_variance,
    gae,
    importance_ratio,
    kl_k1,
    kl_k2,
    kl_k3,
    masked_mean,
    masked_sum,
    masked_var,
    normalize,
    polyak_update,
    truncated_ratio,
)

T_, F_ = True, False


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


def b(x):
    return torch.tensor(x, dtype=torch.bool)


def close(a, expected, tol=1e-9):
    torch.testing.assert_close(a, torch.as_tensor(expected, dtype=a.dtype), atol=tol, rtol=tol)


# ---------------------------------------------------------------------------- naive references
def naive_returns(r, term, trunc, gamma, bv=None):
    """Walk forward from every t to the end of its episode, summing discounted rewards explicitly."""
    r, term, trunc = r.tolist(), term.tolist(), trunc.tolist()
    n = len(r)
    out = []
    for s in range(n):
        g, k = 0.0, s
        while True:
            g += gamma ** (k - s) * r[k]
            if term[k] or trunc[k] or k == n - 1:
                break
            k += 1
        if bv is not None and not term[k] and (trunc[k] or k == n - 1):
            g += gamma ** (k - s + 1) * float(bv[k])
        out.append(g)
    return out


def naive_gae(r, v, nv, term, trunc, gamma, lam):
    """A_t = sum_k (gamma lambda)^k delta_{t+k} within the episode (explicit double sum, no recursion)."""
    n = len(r)
    delta = [float(r[i]) + gamma * (0.0 if term[i] else float(nv[i])) - float(v[i]) for i in range(n)]
    adv = []
    for s in range(n):
        a, k = 0.0, s
        while True:
            a += (gamma * lam) ** (k - s) * delta[k]
            if term[k] or trunc[k] or k == n - 1:
                break
            k += 1
        adv.append(a)
    return adv, [a + float(x) for a, x in zip(adv, v)]


def random_episode_data(shape, seed, p_term=0.1, p_trunc=0.1):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(shape, generator=g, dtype=torch.float64)
    v = torch.randn(shape, generator=g, dtype=torch.float64)
    nv = torch.randn(shape, generator=g, dtype=torch.float64)
    term = torch.rand(shape, generator=g) < p_term
    trunc = torch.rand(shape, generator=g) < p_trunc
    return r, v, nv, term, trunc


# ------------------------------------------------------------------------- discounted_returns
def test_discounted_returns_hand():
    r, z = t([1.0, 2.0, 3.0]), b([F_, F_, F_])
    close(discounted_returns(r, z, z, 0.5), [2.75, 3.5, 3.0])
    close(discounted_returns(r, z, z, 0.5, bootstrap_value=t([0.0, 0.0, 4.0])), [3.25, 4.5, 5.0])
    term = b([F_, T_, F_])
    close(discounted_returns(r, term, z, 0.5), [2.0, 2.0, 3.0])
    bv = t([9.0, 10.0, 11.0])
    trunc = b([F_, T_, F_])
    close(discounted_returns(r, z, trunc, 0.5, bv), [4.5, 7.0, 8.5])
    close(discounted_returns(r, z, trunc, 0.5), [2.0, 2.0, 3.0])  # no bootstrap value: tail counts 0
    close(discounted_returns(r, term, trunc, 0.5, bv), [2.0, 2.0, 8.5])  # terminated wins over truncated
    close(discounted_returns(r, b([F_, F_, T_]), z, 0.5, bv), [2.75, 3.5, 3.0])  # terminal last step


@pytest.mark.parametrize("p_term,p_trunc", [(0.0, 0.0), (0.15, 0.0), (0.0, 0.15), (0.15, 0.15), (0.5, 0.5)])
@pytest.mark.parametrize("with_bv", [False, True])
def test_discounted_returns_vs_loop(p_term, p_trunc, with_bv):
    r, _, nv, term, trunc = random_episode_data((3, 2, 40), seed=1, p_term=p_term, p_trunc=p_trunc)
    out = discounted_returns(r, term, trunc, 0.9, nv if with_bv else None)
    assert out.shape == r.shape and out.dtype == torch.float64
    for i in range(3):
        for j in range(2):
            exp = naive_returns(r[i, j], term[i, j], trunc[i, j], 0.9, nv[i, j] if with_bv else None)
            close(out[i, j], exp, 1e-10)


def test_discounted_returns_errors():
    r, z = torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.bool)
    with pytest.raises(ShapeError):
        discounted_returns(r, z[:, :4], z, 0.9)
    with pytest.raises(ShapeError):
        discounted_returns(r, z, z, 0.9, bootstrap_value=torch.zeros(2, 5, 1))
    with pytest.raises(ShapeError):
        discounted_returns(torch.zeros(2, 0), z[:, :0], z[:, :0], 0.9)
    with pytest.raises(ValueError):
        discounted_returns(r, z, z, 1.5)


# ------------------------------------------------------------------------------------------ gae
def test_gae_hand():
    r, v, nv, z = t([1.0, 1.0]), t([0.5, 0.5]), t([0.5, 2.0]), b([F_, F_])
    adv, ret = gae(r, v, nv, z, z, 0.5, 0.5)
    close(adv, [1.125, 1.5])
    close(ret, [1.625, 2.0])
    adv, ret = gae(r, v, nv, b([T_, F_]), z, 0.5, 0.5)  # terminated: no bootstrap, recursion resets
    close(adv, [0.5, 1.5])
    close(ret, [1.0, 2.0])
    adv, ret = gae(r, v, nv, z, b([T_, F_]), 0.5, 0.5)  # truncated: bootstrap from next_value, resets
    close(adv, [0.75, 1.5])
    close(ret, [1.25, 2.0])
    adv, _ = gae(r, v, nv, b([T_, F_]), b([T_, F_]), 0.5, 0.5)  # both: as terminated
    close(adv, [0.5, 1.5])


@pytest.mark.parametrize("p_term,p_trunc", [(0.0, 0.0), (0.1, 0.0), (0.0, 0.1), (0.1, 0.1), (0.4, 0.4)])
@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_gae_vs_loop(p_term, p_trunc, lam):
    r, v, nv, term, trunc = random_episode_data((2, 3, 30), seed=2, p_term=p_term, p_trunc=p_trunc)
    adv, ret = gae(r, v, nv, term, trunc, 0.97, lam)
    assert adv.shape == ret.shape == r.shape
    for i in range(2):
        for j in range(3):
            ea, er = naive_gae(r[i, j], v[i, j], nv[i, j], term[i, j], trunc[i, j], 0.97, lam)
            close(adv[i, j], ea, 1e-10)
            close(ret[i, j], er, 1e-10)


@pytest.mark.parametrize("p_term,p_trunc", [(0.0, 0.0), (0.1, 0.0), (0.0, 0.1), (0.1, 0.1)])
def test_gae_lambda_one_equals_bootstrapped_returns(p_term, p_trunc):
    r, v, _, term, trunc = random_episode_data((4, 50), seed=3, p_term=p_term, p_trunc=p_trunc)
    done = term | trunc
    # next_value must equal value[t+1] inside an episode; at episode ends and the last step it is V(true next obs).
    nv = torch.cat([v[:, 1:], torch.randn(4, 1, dtype=torch.float64)], dim=1)
    nv = torch.where(done, torch.randn(4, 50, dtype=torch.float64), nv)
    _, ret = gae(r, v, nv, term, trunc, 0.99, 1.0)
    close(ret, discounted_returns(r, term, trunc, 0.99, bootstrap_value=nv), 1e-9)


def test_gae_lambda_zero_is_td_error():
    r, v, nv, term, trunc = random_episode_data((5, 20), seed=4)
    adv, _ = gae(r, v, nv, term, trunc, 0.9, 0.0)
    close(adv, r + 0.9 * (~term).double() * nv - v, 1e-12)


def test_gae_1d_and_batched_agree():
    r, v, nv, term, trunc = random_episode_data((2, 3, 25), seed=5)
    adv, ret = gae(r, v, nv, term, trunc, 0.99, 0.9)
    a1, r1 = gae(r[1, 2], v[1, 2], nv[1, 2], term[1, 2], trunc[1, 2], 0.99, 0.9)
    close(adv[1, 2], a1, 0)
    close(ret[1, 2], r1, 0)


def test_gae_long_float32_rollouts():
    r, v, nv, term, trunc = (x.float() if x.is_floating_point() else x for x in random_episode_data((8, 2048), seed=6))
    adv, _ = gae(r, v, nv, term, trunc, 0.99, 0.95)
    assert adv.dtype == torch.float32 and torch.isfinite(adv).all()


def test_gae_errors():
    x, z = torch.zeros(4, 6), torch.zeros(4, 6, dtype=torch.bool)
    with pytest.raises(ShapeError):
        gae(x, x[:, :5], x, z, z, 0.99, 0.95)
    with pytest.raises(ShapeError):
        gae(x, x, x.unsqueeze(-1), z, z, 0.99, 0.95)
    with pytest.raises(ShapeError):
        gae(x, x, x, z.T, z, 0.99, 0.95)
    with pytest.raises(ValueError):
        gae(x, x, x, z, z, 0.99, -0.1)


# -------------------------------------------------------------------------- importance ratios
def test_ratios_hand():
    close(importance_ratio(t([math.log(0.5), 0.0]), t([math.log(0.25), 0.0])), [2.0, 1.0], 1e-12)
    close(clipped_ratio(t([0.5, 1.0, 1.5]), 0.2), [0.8, 1.0, 1.2])
    close(truncated_ratio(t([0.5, 2.0]), 1.0), [0.5, 1.0])
    close(truncated_ratio(t([0.5, 2.0, 5.0]), 3.0), [0.5, 2.0, 3.0])
    with pytest.raises(ShapeError):
        importance_ratio(torch.zeros(3), torch.zeros(3, 1))
    with pytest.raises(ValueError):
        clipped_ratio(torch.ones(2), -0.1)
    with pytest.raises(ValueError):
        truncated_ratio(torch.ones(2), 0.0)


def test_ratio_random_vs_formula():
    g = torch.Generator().manual_seed(7)
    lp, blp = torch.randn(100, generator=g), torch.randn(100, generator=g)
    r = importance_ratio(lp, blp)
    exp = [math.exp(a - c) for a, c in zip(lp.tolist(), blp.tolist())]
    close(r, exp, 1e-5)
    close(clipped_ratio(r, 0.3), [min(max(x, 0.7), 1.3) for x in r.tolist()], 1e-6)
    close(truncated_ratio(r, 1.0), [min(x, 1.0) for x in r.tolist()], 1e-6)


def test_effective_sample_size():
    close(effective_sample_size(t([1.0, 1.0, 1.0, 1.0])), 4.0)
    close(effective_sample_size(t([1.0, 1.0, 1.0, 1.0]), normalized=True), 1.0)
    close(effective_sample_size(t([5.0, 0.0, 0.0, 0.0])), 1.0)
    close(effective_sample_size(t([1.0, 2.0, 3.0])), 36.0 / 14.0)
    close(effective_sample_size(t([0.0, 0.0])), 0.0)
    w = torch.rand(3, 50, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    exp = [sum(row) ** 2 / sum(x * x for x in row) for row in w.tolist()]
    close(effective_sample_size(w, dim=1), exp, 1e-10)
    close(effective_sample_size(w, normalized=True, dim=-1), [e / 50 for e in exp], 1e-10)
    with pytest.raises(ValueError):
        effective_sample_size(t([1.0, -1.0]))


# ------------------------------------------------------------------------------ KL estimators
def test_kl_estimators_hand():
    lr = t([math.log(2.0)])
    close(kl_k1(lr), [-math.log(2.0)])
    close(kl_k2(lr), [0.5 * math.log(2.0) ** 2])
    close(kl_k3(lr), [1.0 - math.log(2.0)])
    new, old = t([math.log(2.0), 0.0, 5.0]), t([0.0, 0.0, 0.0])
    close(approx_kl(new, old, "k3", mask=b([T_, T_, F_])), (1.0 - math.log(2.0)) / 2)
    close(approx_kl(new, old, "k1"), -(math.log(2.0) + 5.0) / 3)
    close(approx_kl(new, old, "k2"), 0.5 * (math.log(2.0) ** 2 + 25.0) / 3)
    with pytest.raises(ValueError):
        approx_kl(new, old, "k4")
    with pytest.raises(ShapeError):
        approx_kl(new, old[:2])


def test_kl_estimators_converge_to_gaussian_kl():
    old = torch.distributions.Normal(0.0, 1.0)
    new = torch.distributions.Normal(0.3, 1.2)
    true_kl = math.log(1.2 / 1.0) + (1.0 + 0.3**2) / (2 * 1.2**2) - 0.5
    torch.manual_seed(0)
    x = old.sample((400_000,)).double()
    lp_new, lp_old = new.log_prob(x), old.log_prob(x)
    assert abs(float(approx_kl(lp_new, lp_old, "k1")) - true_kl) < 5e-3
    assert abs(float(approx_kl(lp_new, lp_old, "k3")) - true_kl) < 5e-3
    k2 = float(approx_kl(lp_new, lp_old, "k2"))  # biased but close for nearby distributions
    assert k2 > 0 and abs(k2 - true_kl) < 0.02
    assert float(kl_k3(lp_new - lp_old).min()) >= 0.0


# --------------------------------------------------------------------------- masked reductions
def test_masked_reductions_hand():
    x, m = t([[1.0, 2.0], [3.0, 4.0]]), b([[T_, F_], [T_, T_]])
    close(masked_sum(x, m), 8.0)
    close(masked_mean(x, m), 8.0 / 3)
    close(masked_var(x, m), 7.0 / 3)
    close(masked_var(x, m, unbiased=False), 14.0 / 9)
    close(masked_sum(x, m, dim=1), [1.0, 7.0])
    close(masked_mean(x, m, dim=1), [1.0, 3.5])
    close(masked_var(x, m, dim=1), [0.0, 0.5])  # a single valid entry gives 0, not NaN
    close(masked_mean(x, m, dim=0, keepdim=True), [[2.0, 4.0]])
    close(masked_mean(x), 2.5)


def test_masked_reductions_empty_and_nan_safe():
    x = t([[1.0, float("nan")], [float("inf"), 4.0]])
    none = torch.zeros(2, 2, dtype=torch.bool)
    for f in (masked_sum, masked_mean, masked_var):
        close(f(x, none), 0.0)
        close(f(x, none, dim=0), [0.0, 0.0])
    m = b([[T_, F_], [F_, T_]])
    close(masked_mean(x, m), 2.5)
    close(masked_var(x, m), 4.5)


def test_masked_reductions_random():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(6, 20, generator=g, dtype=torch.float64)
    m = torch.rand(6, 20, generator=g) < 0.6
    close(masked_sum(x, m), x[m].sum(), 1e-12)
    close(masked_mean(x, m), x[m].mean(), 1e-12)
    close(masked_var(x, m), x[m].var(), 1e-12)
    close(masked_var(x, m, unbiased=False), x[m].var(unbiased=False), 1e-12)
    close(masked_mean(x, m, dim=1), [x[i][m[i]].mean() for i in range(6)], 1e-12)
    close(masked_var(x, m, dim=1), [x[i][m[i]].var() for i in range(6)], 1e-12)


def test_unmasked_fast_paths_agree_with_the_general_rule():
    # mask=None, dim=None takes x.mean()/x.var(); the general path (an all-True mask) must give the same values,
    # and the edge cases keep their documented results (empty -> 0, one entry -> variance 0, keepdim shape).
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ones = torch.ones_like(x, dtype=torch.bool)
    close(masked_mean(x), masked_mean(x, ones), 1e-12)
    close(masked_var(x), masked_var(x, ones), 1e-12)
    close(masked_var(x, unbiased=False), masked_var(x, ones, unbiased=False), 1e-12)
    assert masked_mean(x, keepdim=True).shape == (1, 1)
    close(masked_mean(torch.zeros(0)), 0.0)
    close(masked_var(t([2.0])), 0.0)
    close(masked_var(t([2.0]), unbiased=False), 0.0)


def test_masked_reductions_errors():
    x = torch.zeros(3, 4)
    with pytest.raises(ShapeError):
        masked_mean(x, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ShapeError):
        masked_sum(x, torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ShapeError):
        masked_var(x, torch.ones(3, 4))  # float mask
    with pytest.raises(ShapeError):
        normalize(x, torch.ones(3, 1, dtype=torch.bool))


def test_normalize():
    close(normalize(t([1.0, 2.0, 3.0])), [-1.0, 0.0, 1.0], 1e-7)
    x = torch.randn(64, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    close(normalize(x), (x - x.mean()) / (x.std() + 1e-8), 1e-12)  # CleanRL's formula
    m = torch.arange(64) % 3 != 0
    out = normalize(x, m)
    close(out[m], (x[m] - x[m].mean()) / (x[m].std() + 1e-8), 1e-12)
    assert (out[~m] == 0).all()
    close(normalize(t([5.0])), [0.0])


def test_explained_variance():
    y = t([1.0, 2.0, 3.0])
    assert explained_variance(y, y) == 1.0
    assert abs(explained_variance(t([1.0, 2.0, 2.0]), y) - 2.0 / 3) < 1e-12
    assert abs(explained_variance(torch.full((3,), 2.0, dtype=torch.float64), y)) < 1e-12
    assert math.isnan(explained_variance(t([1.0, 2.0]), t([3.0, 3.0])))
    g = torch.Generator().manual_seed(11)
    p, yy = torch.randn(100, generator=g, dtype=torch.float64), torch.randn(100, generator=g, dtype=torch.float64)
    ev = explained_variance(p, yy)
    assert isinstance(ev, float)
    assert abs(ev - (1 - np.var(yy.numpy() - p.numpy()) / np.var(yy.numpy()))) < 1e-10
    m = torch.arange(100) < 60
    assert abs(explained_variance(p, yy, m) - explained_variance(p[:60], yy[:60])) < 1e-12
    with pytest.raises(ShapeError):
        explained_variance(p, yy[:50])


# --------------------------------------------------------------------------------------- polyak
def test_polyak_update_hand_and_in_place():
    target, online = [torch.zeros(2), torch.ones(1)], [t([1.0, 2.0]).float(), t([3.0]).float()]
    ref = target[0]
    polyak_update(target, online, 0.1)
    assert target[0] is ref
    close(target[0], [0.1, 0.2], 1e-7)
    close(target[1], [1.2], 1e-7)
    close(online[0], [1.0, 2.0], 0)  # online untouched


def test_polyak_update_modules():
    torch.manual_seed(0)
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    polyak_update(target, online, 0.005)
    for p_t, p_b, p_o in zip(target.parameters(), before, online.parameters()):
        close(p_t.detach(), 0.995 * p_b + 0.005 * p_o.detach(), 1e-6)
        assert p_t.requires_grad
    polyak_update(target.parameters(), online.parameters(), 1.0)
    for p_t, p_o in zip(target.parameters(), online.parameters()):
        assert torch.equal(p_t, p_o)


def test_polyak_update_errors():
    with pytest.raises(ShapeError):
        polyak_update([torch.zeros(2)], [torch.zeros(2), torch.zeros(1)], 0.1)
    with pytest.raises(ShapeError):
        polyak_update([torch.zeros(2)], [torch.zeros(3)], 0.1)
    with pytest.raises(ValueError):
        polyak_update([torch.zeros(2)], [torch.zeros(2)], 1.5)
