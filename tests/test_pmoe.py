"""PMOE: the mixture policy's log-prob vs an explicit sum, the PMOE actor/router losses by hand, gradient routing
(best expert only, router on detached features), the learner contract for PMOE-SAC and PMOE-PPO, and PMOE-SAC
improving on Pendulum-v1 (slow)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import test_learners as contract
import torch
from torch.distributions import AffineTransform, Independent, Normal, TanhTransform, TransformedDistribution

from hybridrl.algos.pmoe_ppo import PMOEPPOConfig, PMOEPPOLearner
from hybridrl.algos.sac import SACConfig, SACLearner
from hybridrl.data.batches import Segments
from hybridrl.errors import ConfigError, ShapeError
from hybridrl.losses.sac import pmoe_actor_loss, pmoe_router_loss
from hybridrl.nn import load_policy, save_policy
from hybridrl.nn.mixture import GaussianMixturePolicy

OBS = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32))


def _mixture(squash: bool, k: int = 3) -> GaussianMixturePolicy:
    torch.manual_seed(0)
    pol = GaussianMixturePolicy(3, 2, k, (16,), squash=squash, state_dependent_std=squash,
                                action_low=ACT.low.tolist(), action_high=ACT.high.tolist())
    with torch.no_grad():  # spread the experts and the router so the test is not degenerate
        pol.mean_head.weight.normal_(0, 1.0)
        pol.router.weight.normal_(0, 1.0)
    return pol


@pytest.mark.parametrize("squash", [True, False])
def test_mixture_log_prob_is_the_explicit_weighted_sum(squash):
    pol = _mixture(squash)
    obs = torch.randn(32, 3)
    action, logp = pol.sample(obs)
    mu, log_std, logits = pol.params(obs)
    w = torch.softmax(logits, -1)
    total = torch.zeros(32, dtype=torch.float64)
    for k in range(3):
        dist = Independent(Normal(mu[:, k].double(), log_std[:, k].exp().double()), 1)
        if squash:
            dist = TransformedDistribution(dist, [TanhTransform(), AffineTransform(
                pol.action_bias.double(), pol.action_scale.double(), event_dim=1)])
        total += w[:, k].double() * dist.log_prob(action.double()).exp()
    assert torch.allclose(pol.log_prob(obs, action).double(), total.log(), atol=2e-3)
    assert torch.allclose(logp.double(), total.log(), atol=2e-3)  # sample() returns the mixture density
    assert torch.allclose(pol.distribution(obs).log_prob(action).double(), total.log(), atol=2e-3)
    assert pol.distribution(obs).sample((4,)).shape == (4, 32, 2)
    acts, expert_logp, weights = pol.expert_sample(obs)
    assert acts.shape == (32, 3, 2) and expert_logp.shape == (32, 3) and torch.allclose(weights, w)
    for k in range(3):  # each expert's density of its own sample, re-evaluated from the action
        assert torch.allclose(pol.expert_log_prob(obs, acts[:, k])[:, k], expert_logp[:, k], atol=2e-3)


def test_mixture_mode_save_load_and_entropy_bounds(tmp_path):
    pol = _mixture(squash=False)
    obs = torch.randn(8, 3)
    best = pol.weights(obs).argmax(-1)
    assert torch.equal(pol.mode(obs), pol.params(obs)[0][torch.arange(8), best])
    save_policy(pol, tmp_path / "p")
    back = load_policy(tmp_path / "p")
    assert isinstance(back, GaussianMixturePolicy) and torch.equal(back.mode(obs), pol.mode(obs))
    # sum_k w_k H_k <= H(pi) <= sum_k w_k H_k + H(w), H(pi) by Monte Carlo
    _, est = pol.log_prob_entropy(obs, pol.mode(obs))
    with torch.no_grad():
        samples = pol.distribution(obs).sample((4000,))  # [n, B, A]
        h_mc = -pol.log_prob(obs.repeat(4000, 1), samples.reshape(-1, 2)).reshape(4000, 8).mean(0)
    w = pol.weights(obs)
    h_w = -(w * w.log()).sum(-1)
    assert (est.detach() <= h_mc + 0.05).all() and (h_mc <= est.detach() + h_w + 0.05).all()


def test_pmoe_losses_by_hand_and_gradient_routing():
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]], requires_grad=True)
    q = torch.tensor([[1.0, 5.0], [2.0, 0.0]], requires_grad=True)
    loss, m = pmoe_actor_loss(logp, q, alpha=0.1)  # best experts: 1, 0
    assert float(loss.detach()) == pytest.approx(((0.1 * -2 - 5) + (0.1 * -3 - 2)) / 2)
    assert m["entropy"] == pytest.approx(2.5) and m["best_q_mean"] == pytest.approx(3.5)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[0.0, 0.05], [0.05, 0.0]]))  # only the best expert
    assert torch.allclose(q.grad, torch.tensor([[0.0, -0.5], [-0.5, 0.0]]))
    w = torch.tensor([[0.3, 0.7], [0.6, 0.4]], requires_grad=True)
    r_loss, rm = pmoe_router_loss(w, q.detach())
    assert float(r_loss.detach()) == pytest.approx((0.09 + 0.09 + 0.16 + 0.16) / 4)
    assert rm["best_weight"] == pytest.approx(0.65)
    assert rm["router_entropy"] == pytest.approx(-(0.3 * math.log(0.3) + 0.7 * math.log(0.7) + 0.6 * math.log(0.6)
                                                   + 0.4 * math.log(0.4)) / 2)
    r_loss.backward()
    assert torch.allclose(w.grad, torch.tensor([[0.15, -0.15], [-0.2, 0.2]]))  # 2 (w - onehot) / (B K)
    with pytest.raises(ShapeError):
        pmoe_router_loss(w[0], q[0])


def test_pmoe_sac_actor_step_trains_only_the_best_expert_and_the_router_not_the_trunk():
    learner = SACLearner(SACConfig(hidden=(16,), policy="mixture", n_experts=4), OBS, ACT, seed=0)
    pol = learner.policy
    obs = torch.randn(1, 3)  # one state: exactly one best expert
    loss, _, _ = learner._actor_loss(obs, torch.tensor(0.2))
    loss.backward()
    mean_grad = pol.mean_head.weight.grad.reshape(4, 2, -1).abs().sum((1, 2))
    assert (mean_grad > 0).sum() == 1  # one expert's mean head moved
    from hybridrl.losses.sac import pmoe_router_loss as router_loss

    pol.zero_grad(set_to_none=True)
    _, _, w = pol.expert_sample(obs)
    router_loss(w, torch.randn(1, 4))[0].backward()
    assert pol.router.weight.grad is not None and all(p.grad is None for p in pol.trunk.parameters())


def test_config_checks():
    with pytest.raises(ConfigError, match="n_experts"):
        PMOEPPOConfig(n_experts=0)
    with pytest.raises(ConfigError, match="n_experts"):
        SACConfig(n_experts=0)
    with pytest.raises(ShapeError, match="Box"):
        PMOEPPOLearner(PMOEPPOConfig(), OBS, gym.spaces.Discrete(3))
    learner = PMOEPPOLearner(PMOEPPOConfig(n_experts=5), OBS, ACT)
    assert isinstance(learner.policy, GaussianMixturePolicy) and learner.policy.log_std.shape == (5, 2)


def test_pmoe_sac_passes_the_contract(tmp_path, monkeypatch):
    monkeypatch.setitem(contract.SMALL, "sac", dict(hidden=(32, 32), policy="mixture", n_experts=3))
    contract.test_learner_contract("sac", "continuous", tmp_path)
    contract.test_same_seed_same_result("sac", "continuous")


def test_pmoe_ppo_first_minibatch_ratio_is_one():
    """With the mixture's own log-probs the first minibatch has ratio 1: ``log_prob`` and ``log_prob_entropy`` agree
    (the learner contract itself runs in test_learners)."""
    space = contract.SPACES["continuous"]
    cfg = PMOEPPOConfig(**{**contract.SMALL["pmoe_ppo"], "n_epochs": 1, "minibatch_size": 32})
    learner = PMOEPPOLearner(cfg, contract.OBS, space)
    b = contract._batch("pmoe_ppo", space)
    with torch.no_grad():
        logp = learner.policy.log_prob(b.obs.reshape(32, -1), b.action.reshape(32, -1)).reshape(2, 16)  # [N, D] only
    m = learner.update(Segments(b.obs, b.action, b.reward, b.next_obs, b.terminated, b.truncated, logp))
    assert m["approx_kl"] == pytest.approx(0.0, abs=1e-6) and m["clip_fraction"] == 0.0


def test_pmoe_ppo_router_and_q_terms_match_a_per_expert_loop():
    """L_Q + L_router of PMOE-PPO against a loop over experts; gradients reach only Q and the router head."""
    learner = PMOEPPOLearner(PMOEPPOConfig(n_experts=3, hidden=(16,)), OBS, ACT, seed=1)
    with torch.no_grad():
        learner.policy.mean_head.weight.normal_(0, 1.0)
        learner.policy.router.weight.normal_(0, 1.0)
    g = torch.Generator().manual_seed(2)
    obs, act, ret = torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g), torch.randn(8, generator=g)
    torch.manual_seed(3)
    loss, metrics = learner.router_q_loss({"obs": obs, "action": act, "ret": ret})
    torch.manual_seed(3)
    with torch.no_grad():
        actions, _, w = learner.policy.expert_sample(obs)
        q = torch.stack([learner.q_net(obs, actions[:, j]) for j in range(3)], -1)
        onehot = torch.nn.functional.one_hot(q.argmax(-1), 3).float()
        expected = ((learner.q_net(obs, act) - ret) ** 2).mean() + ((w - onehot) ** 2).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert metrics["q_loss"] > 0 and 0 < metrics["best_weight"] < 1
    loss.backward()
    assert all(p.grad is not None for p in learner.q_net.parameters())
    assert learner.policy.router.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in learner.policy.trunk.parameters())  # router reads detached features
    assert learner.policy.mean_head.weight.grad is None  # expert samples carry no gradient


class TwoPeaks(gym.Env):
    """One-step continuous bandit with two optimal actions, r(a) = exp(-(a-1)^2/0.1) + exp(-(a+1)^2/0.1),
    a in [-2, 2]."""

    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Box(-2, 2, (1,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        a = float(np.clip(action[0], -2, 2))
        reward = float(np.exp(-(a - 1) ** 2 / 0.1) + np.exp(-(a + 1) ** 2 / 0.1))
        return np.zeros(1, np.float32), reward, True, False, {}


@pytest.mark.slow
def test_pmoe_ppo_learns_a_two_peak_bandit():
    """15k steps raise the stochastic policy's mean reward from 0.22 (untrained) to > 0.35 (seeds 0-2 gave
    0.40-0.47)."""
    from hybridrl.loops.evaluate import evaluate_policy
    from hybridrl.loops.on_policy import train_on_policy

    env_id = "hybridrl-test/TwoPeaks-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=TwoPeaks)
    cfg = PMOEPPOConfig(num_envs=8, n_steps=64, minibatch_size=128, lr=1e-3, log_std_init=-0.5, normalize_reward=False,
                        normalize_obs=False, n_experts=4, hidden=(32, 32), gamma=0.9)
    untrained = PMOEPPOLearner(cfg, TwoPeaks.observation_space, TwoPeaks.action_space, seed=1).policy
    before = evaluate_policy(untrained, env_id, 200, seed=0, deterministic=False)["mean"]
    learner = train_on_policy(env_id, cfg, 15_000, seed=1, progress=False, algo="pmoe_ppo")
    after = evaluate_policy(learner.policy, env_id, 200, seed=0, deterministic=False)["mean"]
    assert before < 0.3 and after > 0.35, (before, after)


@pytest.mark.slow
def test_pmoe_sac_improves_on_pendulum():
    from hybridrl.loops.evaluate import evaluate_policy
    from hybridrl.loops.off_policy import train_off_policy

    cfg = SACConfig(hidden=(64, 64), batch_size=128, learning_starts=1000, actor_lr=1e-3, critic_lr=1e-3,
                    alpha_lr=1e-3, policy="mixture", n_experts=4)
    learner = train_off_policy("Pendulum-v1", cfg, 5000, seed=0, progress=False)
    ev = evaluate_policy(learner.policy, "Pendulum-v1", 10, seed=123)
    assert ev["mean"] > -400, ev["returns"]
