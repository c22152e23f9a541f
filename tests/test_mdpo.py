"""MDPO: losses vs hand computations, the KL direction of the official code, the step-size schedule, learning."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from hybridrl.algos.mdpo import MDPOConfig, MDPOLearner
from hybridrl.algos.mdpo_off import MDPOOffConfig, MDPOOffLearner
from hybridrl.data.batches import Segments, Transitions
from hybridrl.errors import ConfigError, ShapeError
from hybridrl.losses.mdpo import mdpo_loss, mdpo_off_actor_loss
from hybridrl.losses.sac import sac_actor_loss
from hybridrl.nn.tanh_gaussian import squashed_log_prob

OBS = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
BOX = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def _segments(policy, b=2, t=16, seed=0, discrete=False):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(b, t, 3, generator=g)
    with torch.no_grad():
        action, logp = policy.sample(obs.reshape(b * t, 3))
    term = torch.rand(b, t, generator=g) < 0.1
    return Segments(obs=obs, action=action.reshape(b, t, *action.shape[1:]), reward=torch.randn(b, t, generator=g),
                    next_obs=torch.randn(b, t, 3, generator=g), terminated=term,
                    truncated=(torch.rand(b, t, generator=g) < 0.1) & ~term, behavior_log_prob=logp.reshape(b, t))


def test_mdpo_loss_hand_case():
    """ratios (2, 0.5), A (1, -2): mean r A = 0.5; mean KL 0.2 / t 0.5 = 0.4; loss = -0.1."""
    logp = torch.tensor([math.log(0.5), math.log(0.2)], requires_grad=True)
    old = torch.log(torch.tensor([0.25, 0.4]))
    adv = torch.tensor([1.0, -2.0])
    kl = torch.tensor([0.1, 0.3], requires_grad=True)
    loss, m = mdpo_loss(logp, old, adv, kl, step_size=0.5)
    assert float(loss.detach()) == pytest.approx(-0.1, abs=1e-6)
    assert m["surrogate"] == pytest.approx(0.5, abs=1e-6) and m["kl"] == pytest.approx(0.2)
    assert m["kl_coef"] == 2.0 and m["ratio_max"] == pytest.approx(2.0)
    loss.backward()
    # d/d logp_i of -mean(r_i A_i) = -r_i A_i / n; d/d kl_i of mean(kl)/t = 1 / (n t)
    assert torch.allclose(logp.grad, torch.tensor([-1.0, 0.5]), atol=1e-6)
    assert torch.allclose(kl.grad, torch.tensor([1.0, 1.0]))


def test_mdpo_loss_rejects_bad_inputs():
    x = torch.zeros(4)
    with pytest.raises(ShapeError):
        mdpo_loss(x, x, x, torch.zeros(4, 1), 1.0)
    with pytest.raises(ValueError, match="step_size"):
        mdpo_loss(x, x, x, x, 0.0)
    with pytest.raises(ValueError):
        mdpo_off_actor_loss(x, x, x, kl_coef=-1.0, ent_coef=0.2)


def test_mdpo_off_actor_loss_matches_official_form():
    """mean(c (logp - old) + lam old - Q) == official mean(c logp + (lam - c) old - Q1); hand case too."""
    g = torch.Generator().manual_seed(0)
    logp, old, q = torch.randn(8, generator=g), torch.randn(8, generator=g), torch.randn(8, generator=g)
    loss, m = mdpo_off_actor_loss(logp, old, q, kl_coef=1.0, ent_coef=0.2)
    assert float(loss) == pytest.approx(float((1.0 * logp + (0.2 - 1.0) * old - q).mean()), abs=1e-6)
    loss, m = mdpo_off_actor_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([3.0]), 0.5, 0.1)
    assert float(loss) == pytest.approx(0.5 * 1.0 + 0.1 * -2.0 - 3.0)  # = -2.7
    assert m["kl"] == 1.0 and m["entropy"] == 1.0 and m["q_pi"] == 3.0


def _gauss_params(policy, obs):
    with torch.no_grad():
        return policy.mean(obs), policy.log_std.clamp(policy.log_std_min, policy.log_std_max).clone()


def test_kl_direction_is_new_policy_first():
    """``kl_final`` is KL(pi_theta || pi_theta_k) (official ``policy_pi.kl(old_policy)``), by the closed form

    KL(N1 || N2) = sum log(s2/s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2, and not the reverse direction.
    """
    learner = MDPOLearner(MDPOConfig(n_steps=32, sgd_steps=5, lr=3e-2, critic_epochs=1, hidden=(16,)), OBS, BOX, seed=0)
    batch = _segments(learner.policy, b=1, t=32)
    obs = batch.obs.reshape(32, 3)
    m2, ls2 = _gauss_params(learner.policy, obs)
    out = learner.update(batch)
    m1, ls1 = _gauss_params(learner.policy, obs)

    def kl(ma, la, mb, lb):
        return (lb - la + (torch.exp(2 * la) + (ma - mb) ** 2) / (2 * torch.exp(2 * lb)) - 0.5).sum(-1).mean()

    forward, reverse = float(kl(m1, ls1, m2, ls2)), float(kl(m2, ls2, m1, ls1))
    assert out["kl_final"] == pytest.approx(forward, rel=1e-4)
    assert abs(forward - reverse) > 1e-3 * forward  # the check can tell the two directions apart
    assert out["step_size"] == 1.0 and out["kl_coef"] == 1.0


def test_step_size_schedule():
    """t_k = 1 - (k - 1)/K from the loop's progress; constant; by own iteration count; floored."""
    learner = MDPOLearner(MDPOConfig(n_steps=16), OBS, BOX)
    for f, t in [(0.0, 1.0), (0.25, 0.75), (0.9, 0.1), (1.0, 1e-4)]:
        learner.set_progress(f)
        assert learner.step_size() == pytest.approx(t)
    learner = MDPOLearner(MDPOConfig(n_steps=16, step_size=0.3, step_size_schedule="constant"), OBS, BOX)
    learner.set_progress(0.7)
    assert learner.step_size() == 0.3
    learner = MDPOLearner(MDPOConfig(n_steps=16, schedule_iterations=4, critic_epochs=1, sgd_steps=1), OBS, BOX)
    learner.set_progress(0.9)  # ignored: K is given in iterations
    ts = [learner.update(_segments(learner.policy, seed=i))["step_size"] for i in range(3)]
    assert ts == pytest.approx([1.0, 0.75, 0.5])
    assert learner.state_dict()["iteration"] == 3


def test_discrete_update_and_config_errors():
    learner = MDPOLearner(MDPOConfig(n_steps=16, sgd_steps=2, critic_epochs=1), OBS, gym.spaces.Discrete(3))
    out = learner.update(_segments(learner.policy))
    assert out["kl_final"] > 0 and all(np.isfinite(v) for v in out.values())
    for bad in (dict(sgd_steps=0), dict(step_size=0.0), dict(gamma=1.0), dict(step_size_schedule="cosine")):
        with pytest.raises(ConfigError):
            MDPOConfig(**bad)


def _transitions(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Transitions(obs=torch.randn(n, 3, generator=g), action=torch.rand(n, 2, generator=g) * 2 - 1,
                       reward=torch.randn(n, generator=g), next_obs=torch.randn(n, 3, generator=g),
                       terminated=torch.rand(n, generator=g) < 0.1, truncated=torch.zeros(n, dtype=torch.bool))


def test_mdpo_off_old_policy_is_frozen_then_copied():
    """pi_k gets no gradient and stays put between refreshes; every ``old_policy_interval`` updates pi_k <- pi."""
    learner = MDPOOffLearner(MDPOOffConfig(hidden=(16, 16), old_policy_interval=2), OBS, BOX, seed=0)
    start = {k: v.clone() for k, v in learner.old_policy.state_dict().items()}
    m = learner.update(_transitions(seed=0))
    assert all(np.isfinite(v) for v in m.values()) and m["kl"] == pytest.approx(0.0, abs=1e-5)  # pi_k = pi at start
    assert all(p.grad is None for p in learner.old_policy.parameters())
    assert all(torch.equal(v, learner.old_policy.state_dict()[k]) for k, v in start.items())
    assert not all(torch.equal(v, learner.policy.state_dict()[k]) for k, v in start.items())
    learner.update(_transitions(seed=1))
    assert all(torch.equal(v, learner.old_policy.state_dict()[k]) for k, v in learner.policy.state_dict().items())
    with pytest.raises(ConfigError):
        MDPOOffLearner(MDPOOffConfig(), OBS, gym.spaces.Discrete(3))


def test_mdpo_off_actor_with_c_equal_alpha_is_sac():
    """c = lambda cancels log pi_k: the actor gradient is SAC's mean(alpha log pi - Q1) with the same noise."""
    cfg = MDPOOffConfig(hidden=(16, 16), alpha=0.3, kl_coef=0.3, param_reg=0.0)
    learner = MDPOOffLearner(cfg, OBS, BOX, seed=0)
    learner.update(_transitions(seed=0))  # move pi away from pi_k so the log pi_k term is not trivially 0
    obs = _transitions(seed=2).obs
    torch.manual_seed(5)
    loss, _ = learner._actor_loss(obs)
    grads = torch.autograd.grad(loss, list(learner.policy.parameters()))
    pol = learner.policy
    torch.manual_seed(5)
    mu, log_std = pol.params(obs)
    u = mu + torch.randn_like(mu) * log_std.exp()
    action = torch.tanh(u) * pol.action_scale + pol.action_bias
    sac, _ = sac_actor_loss(squashed_log_prob(u, mu, log_std, pol.log_scale), learner.critic.q1(obs, action), 0.3)
    ref = torch.autograd.grad(sac, list(pol.parameters()))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, ref))


@pytest.mark.slow
def test_mdpo_learns_cartpole(tmp_path):
    """On-policy MDPO on CartPole-v1, 50k steps: the deterministic policy goes from ~10 to >= 200 steps."""
    from hybridrl.loops.evaluate import evaluate_policy
    from hybridrl.loops.on_policy import train_on_policy

    torch.set_num_threads(1)
    cfg = MDPOConfig(num_envs=8, n_steps=64, sgd_steps=20, lr=1e-3, critic_lr=1e-3, critic_epochs=10,
                     critic_minibatch_size=64,
                     gamma=0.98, gae_lambda=0.8, normalize_reward=False)
    learner = train_on_policy("CartPole-v1", cfg, 50_000, seed=0, progress=False, algo="mdpo")
    ev = evaluate_policy(learner.policy, "CartPole-v1", 5, seed=0)
    assert ev["mean"] >= 200, ev


@pytest.mark.slow
def test_mdpo_off_learns_pendulum():
    """Off-policy MDPO, 5k steps (1k random): seeds 0-1 reached -202 / -201 (random play: about -1230)."""
    from hybridrl.loops.evaluate import evaluate_policy
    from hybridrl.loops.off_policy import train_off_policy

    cfg = MDPOOffConfig(hidden=(64, 64), batch_size=128, learning_starts=1000, actor_lr=1e-3, critic_lr=1e-3)
    learner = train_off_policy("Pendulum-v1", cfg, 5000, seed=0, progress=False, algo="mdpo_off")
    ev = evaluate_policy(learner.policy, "Pendulum-v1", 10, seed=123)
    assert ev["mean"] > -400, ev["returns"]
