"""SAC: losses vs hand-computed values, the tanh log-prob vs torch's TransformedDistribution, the replay
buffer, the off-policy loop's resume, and learning Pendulum-v1 (slow)."""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import AffineTransform, Independent, Normal, TanhTransform, TransformedDistribution

from hybridrl.algos.sac import SACConfig, SACLearner
from hybridrl.data.batches import Transitions
from hybridrl.data.replay import ReplayBuffer
from hybridrl.errors import ConfigError, ShapeError
from hybridrl.losses.sac import sac_actor_loss, sac_critic_loss, sac_target, sac_temperature_loss
from hybridrl.nn import load_policy, save_policy
from hybridrl.nn.tanh_gaussian import TanhGaussianPolicy, tanh_log_det
from hybridrl.runs import RunDir, latest_checkpoint, load_checkpoint, read_metrics, save_checkpoint

OBS = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32))


# ------------------------------------------------------------------------------------------------ losses
def test_sac_target_by_hand_and_truncation_bootstraps():
    r, nq, nlp = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([3.0, 4.0, 1.0]), torch.tensor([-1.0, 0.5, 2.0])
    term = torch.tensor([False, True, False])  # the third step is a truncation: it still bootstraps
    y = sac_target(r, term, nq, nlp, alpha=0.2, gamma=0.9)
    assert y.tolist() == pytest.approx([1 + 0.9 * (3 + 0.2), 2.0, 0.5 + 0.9 * (1 - 0.4)])
    with pytest.raises(ShapeError):
        sac_target(r, term.float(), nq, nlp, 0.2, 0.9)
    with pytest.raises(ShapeError):
        sac_target(r, term, nq[:2], nlp, 0.2, 0.9)


def test_sac_critic_and_actor_losses_by_hand():
    q1, q2, y = torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([0.0, 4.0]), torch.tensor([1.0, 1.0])
    loss, m = sac_critic_loss(q1, q2, y)
    assert float(loss.detach()) == pytest.approx(0.5 * 0.5 + 0.5 * 5.0)
    assert m["q_mean"] == pytest.approx(1.75) and m["target_mean"] == 1.0
    loss.backward()
    assert q1.grad.tolist() == pytest.approx([0.0, 0.5])  # d/dq1 0.5 mean((q1 - y)^2) = (q1 - y) / B
    logp, q = torch.tensor([-1.0, -2.0], requires_grad=True), torch.tensor([3.0, 1.0])
    loss, m = sac_actor_loss(logp, q, torch.tensor(0.5, requires_grad=True))
    assert float(loss.detach()) == pytest.approx(((-0.5 - 3) + (-1 - 1)) / 2)
    assert m["entropy"] == pytest.approx(1.5)
    loss.backward()
    assert logp.grad.tolist() == pytest.approx([0.25, 0.25])


def test_temperature_loss_by_hand_and_direction():
    """-log(alpha) (logp + H) as in the paper's eq. 18 up to d alpha = alpha d log alpha: alpha falls when the
    entropy -E[logp] exceeds the target and rises when it is below."""
    log_alpha = torch.tensor([math.log(0.5)], requires_grad=True)
    loss, m = sac_temperature_loss(log_alpha, torch.tensor([-1.0, -2.0]), target_entropy=-1.0)
    assert float(loss.detach()) == pytest.approx(-math.log(0.5) * -2.5) and m["alpha"] == pytest.approx(0.5)
    loss.backward()
    assert float(log_alpha.grad) == pytest.approx(2.5)  # entropy 1.5 > -1: gradient step lowers alpha
    paper = -(log_alpha.exp() * (torch.tensor([-1.0, -2.0]) + -1.0)).mean()  # J(alpha), eq. 18
    (g,) = torch.autograd.grad(paper, log_alpha)
    assert torch.sign(g) == torch.sign(log_alpha.grad)
    with pytest.raises(ShapeError):
        sac_temperature_loss(torch.zeros(2, requires_grad=True), torch.zeros(3), -1.0)


# ------------------------------------------------------------------------------------------------ policy
def test_tanh_log_prob_matches_transformed_distribution():
    torch.manual_seed(0)
    pol = TanhGaussianPolicy(3, 2, (16,), action_low=ACT.low.tolist(), action_high=ACT.high.tolist())
    obs = torch.randn(64, 3)
    a, logp = pol.sample(obs)
    mu, log_std = pol.params(obs)
    ref = TransformedDistribution(Independent(Normal(mu, log_std.exp()), 1),
                                  [TanhTransform(), AffineTransform(pol.action_bias, pol.action_scale, event_dim=1)])
    assert torch.allclose(logp, ref.log_prob(a), atol=1e-4)
    assert torch.allclose(pol.log_prob(obs, a), ref.log_prob(a), atol=1e-3)  # re-derived u = atanh(y)
    assert torch.allclose(pol.distribution(obs).log_prob(a), ref.log_prob(a), atol=1e-4)
    assert ((a >= pol.action_bias - pol.action_scale) & (a <= pol.action_bias + pol.action_scale)).all()
    # boundary and saturated actions: finite (clamped atanh), where the naive formula gives inf
    edge = torch.tensor([[-2.0, 1.0], [2.0, 0.0]])
    assert torch.isfinite(pol.log_prob(obs[:2], edge)).all()
    u = torch.tensor([0.0, 5.0, 30.0, -30.0])
    naive = torch.log(1 - torch.tanh(u[:2].double()) ** 2)
    assert torch.allclose(tanh_log_det(u)[:2].double(), naive, atol=1e-5)
    assert torch.isfinite(tanh_log_det(u)).all()


def test_tanh_policy_save_load_and_entropy_estimate(tmp_path):
    pol = TanhGaussianPolicy(3, 2, (8,), action_low=[-2, 0], action_high=[2, 1])
    save_policy(pol, tmp_path / "p", env_id="X-v0")
    back = load_policy(tmp_path / "p")
    obs = torch.randn(5, 3)
    assert torch.equal(pol.mode(obs), back.mode(obs))
    a, _ = pol.act(obs.numpy(), deterministic=True)
    assert a.shape == (5, 2)
    torch.manual_seed(1)
    _, ent = pol.log_prob_entropy(obs, pol.mode(obs))
    assert ent.shape == (5,) and torch.isfinite(ent).all()


def test_tanh_policy_sample_n_matches_repeated_sample():
    """sample_n (one forward pass, n draws per state) = sample on repeated rows in distribution; its log-densities
    equal log_prob of the returned actions (the unsquash path, an independent formula)."""
    torch.manual_seed(0)
    pol = TanhGaussianPolicy(3, 2, (8,), action_low=[-2, 0], action_high=[2, 1])
    with torch.no_grad():
        pol.mean_head.weight.mul_(10.0)  # state-dependent means, so that a wrong broadcast shows
    obs = 5.0 * torch.randn(4, 3)
    a, logp = pol.sample_n(obs, 4000)
    assert a.shape == (4, 4000, 2) and logp.shape == (4, 4000)
    ref = pol.log_prob(obs.repeat_interleave(5, 0), a[:, :5].reshape(20, 2)).reshape(4, 5)
    torch.testing.assert_close(logp[:, :5], ref, atol=2e-4, rtol=1e-4)
    b, _ = pol.sample(obs.repeat_interleave(4000, 0))
    b = b.reshape(4, 4000, 2)
    se = (a.var(1) / 4000 + b.var(1) / 4000).sqrt()  # standard error of the difference of the two means
    assert ((a.mean(1) - b.mean(1)).abs() < 5 * se).all(), (a.mean(1), b.mean(1), se)
    torch.testing.assert_close(a.std(1), b.std(1), atol=0.05, rtol=0)
    spread = a.mean(1).max(0).values - a.mean(1).min(0).values
    assert (spread > 10 * se.max(0).values).any(), spread  # the states' means differ: the check can fail


# ------------------------------------------------------------------------------------------------ learner
def test_sac_learner_rejects_discrete_and_bad_config():
    with pytest.raises(ConfigError, match="Box"):
        SACLearner(SACConfig(), OBS, gym.spaces.Discrete(3))
    with pytest.raises(ConfigError, match="policy"):
        SACConfig(policy="gmm")
    with pytest.raises(ConfigError, match="tau"):
        SACConfig(tau=0.0)


def test_actor_step_leaves_critics_alone_and_targets_track_by_polyak():
    torch.manual_seed(0)
    learner = SACLearner(SACConfig(hidden=(16,), tau=0.1), OBS, ACT)
    obs = torch.randn(32, 3)
    loss, _, _ = learner._actor_loss(obs, torch.tensor(0.2))
    loss.backward()
    assert all(p.grad is None for p in learner.critic.parameters())
    assert all(p.requires_grad for p in learner.critic.parameters())
    assert learner.target_entropy == -2.0
    before = [p.clone() for p in learner.critic_target.parameters()]
    learner.update(_batch())
    for old, new, online in zip(before, learner.critic_target.parameters(), learner.critic.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online)
        assert not new.requires_grad


def _batch(n: int = 32):
    g = torch.Generator().manual_seed(1)
    return Transitions(torch.randn(n, 3, generator=g), torch.rand(n, 2, generator=g) * torch.tensor([4.0, 1.0])
                       - torch.tensor([2.0, 0.0]), torch.randn(n, generator=g), torch.randn(n, 3, generator=g),
                       torch.rand(n, generator=g) < 0.3, torch.zeros(n, dtype=torch.bool))


def test_critic_step_matches_the_soft_target_written_out():
    """q_loss and target_mean of one update against eq. 5 on copies of the networks (same RNG draw for a')."""
    cfg = SACConfig(hidden=(16,), gamma=0.9, reward_scale=3.0, alpha=0.5)
    learner = SACLearner(cfg, OBS, ACT, seed=2)
    batch = _batch()
    policy, critic, target = (copy.deepcopy(m) for m in (learner.policy, learner.critic, learner.critic_target.net))
    torch.manual_seed(4)
    with torch.no_grad():
        a2, logp2 = policy.sample(batch.next_obs)
        next_v = torch.minimum(target.q1(batch.next_obs, a2), target.q2(batch.next_obs, a2)) - 0.5 * logp2
        y = 3.0 * batch.reward + 0.9 * (~batch.terminated).float() * next_v
        q_loss = 0.5 * ((critic.q1(batch.obs, batch.action) - y) ** 2).mean() \
            + 0.5 * ((critic.q2(batch.obs, batch.action) - y) ** 2).mean()
    torch.manual_seed(4)
    m = learner.update(batch)
    assert m["target_mean"] == pytest.approx(float(y.mean()), rel=1e-5)
    assert m["q_loss"] == pytest.approx(float(q_loss), rel=1e-5) and m["alpha"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------ replay
def _rows(start: int, n: int):
    obs = np.arange(start, start + n, dtype=np.float32)[:, None].repeat(3, 1)
    return dict(obs=obs, action=np.full((n, 2), 0.5, np.float32) * obs[:, :2], reward=obs[:, 0].copy(),
                next_obs=obs + 0.5, terminated=obs[:, 0] % 3 == 0, truncated=obs[:, 0] % 3 == 1)


def test_replay_wraparound_flags_and_state_round_trip(tmp_path):
    buf = ReplayBuffer(5, OBS, ACT)
    for s in range(3):  # 3 envs x 3 steps = rows 0..8 into capacity 5
        buf.add(**_rows(3 * s, 3))
    assert len(buf) == 5 and buf.pos == 4
    assert sorted(buf.obs[:, 0].tolist()) == [4.0, 5.0, 6.0, 7.0, 8.0]
    assert buf.obs[0, 0] == 5.0 and buf.obs[4, 0] == 4.0  # 5..8 wrapped to rows 0..3
    batch = buf.sample(200, np.random.default_rng(0))
    ids = batch.obs[:, 0]
    assert set(ids.tolist()) == {4.0, 5.0, 6.0, 7.0, 8.0}
    assert torch.equal(batch.terminated, ids % 3 == 0) and torch.equal(batch.truncated, ids % 3 == 1)
    assert torch.equal(batch.next_obs, batch.obs + 0.5) and torch.equal(batch.reward, ids)
    run = RunDir(tmp_path / "run")
    _, state = load_checkpoint(save_checkpoint(run, 1, {"replay": buf.state_dict()}))
    back = ReplayBuffer(5, OBS, ACT)
    back.load_state_dict(state["replay"])
    assert (back.pos, len(back)) == (buf.pos, len(buf))
    b1, b2 = buf.sample(16, np.random.default_rng(3)), back.sample(16, np.random.default_rng(3))
    assert all(torch.equal(getattr(b1, f), getattr(b2, f)) for f in ("obs", "action", "reward", "terminated"))
    with pytest.raises(ShapeError):
        ReplayBuffer(6, OBS, ACT).load_state_dict(state["replay"])
    with pytest.raises(ShapeError, match="action"):
        buf.add(**{**_rows(0, 2), "action": np.zeros((2, 3), np.float32)})
    with pytest.raises(ShapeError):
        ReplayBuffer(5, OBS, ACT).sample(4, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------------ loop
def test_train_sac_resume_restores_buffer_and_learner(tmp_path):
    from hybridrl.loops.train import train

    sets = ["hidden=16,16", "batch_size=32", "learning_starts=100", "buffer_size=5000"]
    train("sac", tmp_path / "r", 200, env_id="Pendulum-v1", overrides=sets, checkpoint_every=100, eval_episodes=1,
          progress=False)
    run = RunDir(tmp_path / "r")
    _, first = load_checkpoint(latest_checkpoint(run))
    train("sac", tmp_path / "r", 300, resume=True, checkpoint_every=100, eval_episodes=1, progress=False)
    step, last = load_checkpoint(latest_checkpoint(run))
    assert step == 300 and last["loop"]["replay"]["size"] == 300
    np.testing.assert_array_equal(last["loop"]["replay"]["obs"][:200], first["loop"]["replay"]["obs"])
    assert int(last["learner"]["actor_opt"]["state"][0]["step"]) == 201  # updates at steps 100..300: Adam continued
    m = read_metrics(run.metrics_csv)
    assert m["step"].tolist() == [200, 300]  # one row per log interval (1000) or run end
    pol = load_policy(run.policy_dir, env_id="Pendulum-v1")
    assert isinstance(pol, TanhGaussianPolicy)


# ------------------------------------------------------------------------------------------------ learning
@pytest.mark.slow
def test_sac_learns_pendulum():
    from hybridrl.loops.evaluate import evaluate_policy
    from hybridrl.loops.off_policy import train_off_policy

    cfg = SACConfig(hidden=(64, 64), batch_size=128, learning_starts=1000, actor_lr=1e-3, critic_lr=1e-3,
                    alpha_lr=1e-3)
    learner = train_off_policy("Pendulum-v1", cfg, 5000, seed=0, progress=False)
    ev = evaluate_policy(learner.policy, "Pendulum-v1", 10, seed=123)
    assert ev["mean"] > -400, ev["returns"]
