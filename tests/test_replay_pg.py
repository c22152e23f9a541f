"""V-trace, replay corrections and the replayed policy-gradient learner."""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from hybridrl.algos.ppo import PPOConfig, PPOLearner
from hybridrl.algos.replay_pg import ReplayPGConfig, ReplayPGLearner
from hybridrl.data.batches import Segments
from hybridrl.errors import ConfigError, ShapeError
from hybridrl.losses import ppo_clip_loss
from hybridrl.losses.replay_pg import correction_weights, weighted_pg_loss, weighted_ppo_clip_loss
from hybridrl.ops import gae, vtrace

OBS = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
SPACES = {"discrete": gym.spaces.Discrete(3), "continuous": gym.spaces.Box(-1.0, 1.0, (2,), np.float32)}


# ------------------------------------------------------------------------------------------------ V-trace
def _trajectories(b=3, t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    term = torch.rand(b, t, generator=g) < 0.15
    trunc = (torch.rand(b, t, generator=g) < 0.15) & ~term
    trunc[0, 4] = term[0, 4] = True  # both flags: terminated wins (no bootstrap)
    return dict(log_rho=torch.randn(b, t, generator=g, dtype=torch.float64) * 0.7,
                reward=torch.randn(b, t, generator=g, dtype=torch.float64),
                value=torch.randn(b, t, generator=g, dtype=torch.float64),
                next_value=torch.randn(b, t, generator=g, dtype=torch.float64), terminated=term, truncated=trunc)


def _naive_vtrace(log_rho, reward, value, next_value, terminated, truncated, gamma, rho_max, c_max, lam):
    """IMPALA eq. 1 written as sums of products, one segment and one start s at a time."""
    b, t = reward.shape
    vs, adv = torch.zeros(b, t, dtype=reward.dtype), torch.zeros(b, t, dtype=reward.dtype)
    ratio = log_rho.exp()
    for i in range(b):
        for s in range(t):
            total, trace = 0.0, 1.0
            for u in range(s, t):
                rho = min(rho_max, float(ratio[i, u]))
                boot = 0.0 if terminated[i, u] else float(next_value[i, u])
                total += gamma ** (u - s) * trace * rho * (float(reward[i, u]) + gamma * boot - float(value[i, u]))
                if terminated[i, u] or truncated[i, u]:
                    break
                trace *= lam * min(c_max, float(ratio[i, u]))
            vs[i, s] = value[i, s] + total
    for i in range(b):
        for s in range(t):
            ended = bool(terminated[i, s] or truncated[i, s]) or s == t - 1
            nxt = next_value[i, s] if ended else vs[i, s + 1]
            adv[i, s] = reward[i, s] + gamma * (0.0 if terminated[i, s] else nxt) - value[i, s]
    return vs, adv


@pytest.mark.parametrize("rho_max,c_max,lam", [(1.0, 1.0, 1.0), (2.0, 0.5, 0.9), (math.inf, math.inf, 0.95)])
def test_vtrace_matches_naive_loop(rho_max, c_max, lam):
    d = _trajectories()
    vs, adv = vtrace(**d, gamma=0.9, rho_max=rho_max, c_max=c_max, vtrace_lambda=lam)
    vs_ref, adv_ref = _naive_vtrace(**d, gamma=0.9, rho_max=rho_max, c_max=c_max, lam=lam)
    assert torch.allclose(vs, vs_ref, atol=1e-10) and torch.allclose(adv, adv_ref, atol=1e-10)


def test_vtrace_on_policy_reduces_to_gae():
    """All ratios 1: v = GAE(lambda) returns; with lambda = 1 also advantage = GAE(1) advantage (n-step returns)."""
    d = _trajectories(seed=1)
    d["log_rho"] = torch.zeros_like(d["log_rho"])
    done = d["terminated"] | d["truncated"]  # consistent data: V(s_{t+1}) is next step's value inside an episode
    d["next_value"][:, :-1] = torch.where(done[:, :-1], d["next_value"][:, :-1], d["value"][:, 1:])
    args = [d[k] for k in ("reward", "value", "next_value", "terminated", "truncated")]
    vs, adv = vtrace(**d, gamma=0.97, vtrace_lambda=1.0)
    gae_adv, gae_ret = gae(*args, gamma=0.97, gae_lambda=1.0)
    assert torch.allclose(vs, gae_ret, atol=1e-10) and torch.allclose(adv, gae_adv, atol=1e-10)
    vs, _ = vtrace(**d, gamma=0.97, rho_max=5.0, c_max=5.0, vtrace_lambda=0.8)
    assert torch.allclose(vs, gae(*args, gamma=0.97, gae_lambda=0.8)[1], atol=1e-10)


def test_vtrace_hand_case():
    """T = 2, gamma 0.5, ratios (2, 0.5), rho_bar = c_bar = 1, r = (1, 2), V = (0, 0), V(x_2) = 4.

    delta_1 = 0.5 (2 + 0.5*4) = 2; delta_0 = 1 (1 + 0.5*0) = 1; c_0 = 1
    v_1 = 2, v_0 = 1 + 0.5 * 1 * 2 = 2; adv_0 = 1 + 0.5 v_1 = 2, adv_1 = 2 + 0.5*4 = 4.
    """
    f = torch.zeros(1, 2, dtype=torch.bool)
    vs, adv = vtrace(torch.log(torch.tensor([[2.0, 0.5]])), torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2),
                     torch.tensor([[0.0, 4.0]]), f, f, gamma=0.5)
    assert torch.allclose(vs, torch.tensor([[2.0, 2.0]])) and torch.allclose(adv, torch.tensor([[2.0, 4.0]]))


def test_vtrace_rejects_bad_inputs():
    d = _trajectories()
    with pytest.raises(ShapeError):
        vtrace(**{**d, "value": d["value"][:, :-1]}, gamma=0.9)
    with pytest.raises(ValueError, match="rho_max"):
        vtrace(**d, gamma=0.9, rho_max=0.0)
    with pytest.raises(ValueError):
        vtrace(**d, gamma=1.5)


# --------------------------------------------------------------------------------------------- losses
def test_correction_weights_hand_cases():
    log_rho = torch.log(torch.tensor([0.5, 1.0, 3.0]))
    assert correction_weights(log_rho, "none").tolist() == [1.0, 1.0, 1.0]
    assert torch.allclose(correction_weights(log_rho, "clipped", clip_ratio=0.2), torch.tensor([0.8, 1.0, 1.2]))
    assert torch.allclose(correction_weights(log_rho, "truncated", rho_max=2.0), torch.tensor([0.5, 1.0, 2.0]))
    assert torch.allclose(correction_weights(log_rho, "vtrace"), torch.tensor([0.5, 1.0, 1.0]))
    with pytest.raises(ValueError, match="correction"):
        correction_weights(log_rho, "retrace")


def test_weighted_ppo_loss_with_unit_weights_is_ppo():
    g = torch.Generator().manual_seed(0)
    logp, old, adv = torch.randn(16, generator=g), torch.randn(16, generator=g) * 0.3, torch.randn(16, generator=g)
    a, ma = weighted_ppo_clip_loss(logp, old, adv, torch.ones(16), 0.2)
    b, mb = ppo_clip_loss(logp, old, adv, 0.2)
    assert float(a) == pytest.approx(float(b), abs=1e-7) and ma["clip_fraction"] == mb["clip_fraction"]
    # hand case: r = 2 (clipped to 1.2 for A > 0), w = 0.5 -> loss = -0.5 * 1.2 * 1
    loss, m = weighted_ppo_clip_loss(torch.log(torch.tensor([2.0])), torch.zeros(1), torch.ones(1), torch.tensor([0.5]),
                                     0.2)
    assert float(loss) == pytest.approx(-0.6) and m["weight_mean"] == 0.5


def test_weighted_pg_loss_hand_case_and_gradient():
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    loss, m = weighted_pg_loss(logp, torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0]))
    assert float(loss.detach()) == pytest.approx(-((0.5 * 2 * -1.0) + (1.0 * -1 * -2.0)) / 2)  # = -0.5
    loss.backward()
    assert logp.grad.tolist() == [-0.5, 0.5]  # -w A / n
    assert m["weight_max"] == 1.0


# -------------------------------------------------------------------------------------------- learner
def _segments(space, policy=None, b=2, t=16, seed=0):
    """A rollout; behaviour log-probs from ``policy`` (on-policy data) or random ones."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(b, t, 3, generator=g)
    if isinstance(space, gym.spaces.Discrete):
        action = torch.randint(space.n, (b, t), generator=g)
    else:
        action = torch.rand(b, t, space.shape[0], generator=g) * 2 - 1
    if policy is None:
        logp = -torch.rand(b, t, generator=g)
    else:
        with torch.no_grad():
            logp = policy.log_prob(obs.reshape(b * t, 3), action.reshape(b * t, *action.shape[2:])).reshape(b, t)
    term = torch.rand(b, t, generator=g) < 0.1
    return Segments(obs=obs, action=action, reward=torch.randn(b, t, generator=g),
                    next_obs=torch.randn(b, t, 3, generator=g),
                    terminated=term, truncated=(torch.rand(b, t, generator=g) < 0.1) & ~term, behavior_log_prob=logp)


SMALL = dict(num_envs=2, n_steps=16, minibatch_size=8, n_epochs=3, hidden=(16, 16))


@pytest.mark.parametrize("kind", SPACES)
def test_k1_without_correction_is_ppo(kind):
    """k = 1, correction "none", objective "ppo": same seed, same batches -> the same parameters as PPO."""
    space = SPACES[kind]
    ppo = PPOLearner(PPOConfig(**SMALL), OBS, space, seed=5)
    rpg = ReplayPGLearner(ReplayPGConfig(**SMALL, n_rollouts=1, correction="none", objective="ppo"), OBS, space, seed=5)
    for seed in range(2):
        batch = _segments(space, seed=seed)
        m_ppo, m_rpg = ppo.update(batch), rpg.update(batch)
        assert m_rpg["policy_loss"] == m_ppo["policy_loss"] and m_rpg["value_loss"] == m_ppo["value_loss"]
    for name in ("policy", "critic"):
        a, b = getattr(ppo, name).state_dict(), getattr(rpg, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_ess_is_n_for_equal_weights_and_drops_with_age():
    """On-policy data: all weights 1, ESS = n. A rollout kept from an earlier update has ESS < n once pi moved."""
    space = SPACES["continuous"]
    learner = ReplayPGLearner(ReplayPGConfig(**SMALL, n_rollouts=2, lr=1e-2), OBS, space, seed=0)
    out = learner.update(_segments(space, learner.policy, seed=0))
    assert out["ess"] == pytest.approx(32.0, rel=1e-5) and out["ess_fraction_age0"] == pytest.approx(1.0, rel=1e-5)
    out = learner.update(_segments(space, learner.policy, seed=1))
    assert out["n_rollouts"] == 2.0 and out["ess_fraction_age0"] == pytest.approx(1.0, rel=1e-5)
    assert out["ess_fraction_age1"] < 0.999 and out["ess"] < 64.0


@pytest.mark.parametrize("objective,correction", [("ppo", "clipped"), ("ppo", "truncated"), ("ppo", "vtrace"),
                                                  ("reinforce", "none"), ("reinforce", "vtrace")])
def test_every_variant_updates_and_resumes_exactly(objective, correction):
    """The stored rollouts travel in state_dict: a clone continues with identical metrics and parameters."""
    space = SPACES["discrete"]
    cfg = ReplayPGConfig(**SMALL, n_rollouts=2, objective=objective, correction=correction)
    learner = ReplayPGLearner(cfg, OBS, space, seed=0)
    for seed in range(3):
        out = learner.update(_segments(space, seed=seed))
        assert all(isinstance(v, float) and np.isfinite(v) for v in out.values()), out
    state = copy.deepcopy(learner.state_dict())  # Adam's load_state_dict would share the live moment tensors
    assert len(state["rollouts"]) == 2 and all(isinstance(v, torch.Tensor) for v in state["rollouts"][0].values())
    clone = ReplayPGLearner(cfg, OBS, space, seed=99)
    clone.load_state_dict(state)
    batch = _segments(space, seed=7)
    assert learner.update(batch) == clone.update(batch)
    assert all(torch.equal(v, clone.policy.state_dict()[k]) for k, v in learner.policy.state_dict().items())


def test_stored_rollouts_are_private_copies():
    """The on-policy loop reuses its NumPy buffers: the learner must not keep views of them."""
    space = SPACES["discrete"]
    learner = ReplayPGLearner(ReplayPGConfig(**SMALL, n_rollouts=2), OBS, space)
    batch = _segments(space)
    learner.update(batch)
    batch.reward.add_(100.0)
    assert float(learner.rollouts[0].reward.max()) < 50


def test_config_errors():
    for bad in (dict(n_rollouts=0), dict(objective="a2c"), dict(correction="retrace"), dict(rho_max=0.0),
                dict(minibatch_size=7)):
        with pytest.raises(ConfigError):
            ReplayPGConfig(**bad)


@pytest.mark.slow
def test_replay_pg_vtrace_learns_cartpole():
    """ReplayPG (k = 4, V-trace, PPO objective) on CartPole-v1, 30k steps: the deterministic policy goes from ~10
    to >= 150 steps (274 on the reference machine)."""
    from hybridrl.loops.evaluate import evaluate_policy
    from hybridrl.loops.on_policy import train_on_policy

    torch.set_num_threads(1)
    cfg = ReplayPGConfig(n_rollouts=4, correction="vtrace", num_envs=8, n_steps=32, minibatch_size=128, n_epochs=5,
                         gamma=0.98, gae_lambda=0.8, lr=1e-3, anneal_lr=False, normalize_reward=False)
    learner = train_on_policy("CartPole-v1", cfg, 30_000, seed=0, progress=False, algo="replay_pg")
    ev = evaluate_policy(learner.policy, "CartPole-v1", 5, seed=0)
    assert ev["mean"] >= 150, ev
