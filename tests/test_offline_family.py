"""TD3+BC, AWAC, PRDC, A2PR and trajectory-weighted sampling: losses against hand-computed cases, the deterministic
policy behind the policy interface, the KD-tree neighbour against brute force, sampling probabilities against a hand
computation, and the sampler wired through the offline loop and config overrides."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from hybridrl.algos.iql import IQLConfig
from hybridrl.algos.prdc import PRDCConfig, PRDCLearner, nearest_actions
from hybridrl.algos.td3_bc import TD3BCConfig, TD3BCLearner
from hybridrl.data.batches import Transitions
from hybridrl.data.collect import collect
from hybridrl.data.dataset import Dataset
from hybridrl.data.weighting import TransitionSampler, trajectory_weights
from hybridrl.errors import ConfigError, PolicyError, ShapeError
from hybridrl.loops.evaluate import evaluate_policy
from hybridrl.loops.offline import train_offline
from hybridrl.losses.offline_reg import (
    a2pr_bc_target,
    awac_actor_loss,
    awac_weights,
    regularized_actor_loss,
    td3_critic_target,
    vae_loss,
)
from hybridrl.nn import load_policy, save_policy
from hybridrl.nn.deterministic import DeterministicPolicy
from hybridrl.runs import apply_overrides

OBS = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT = gym.spaces.Box(np.array([-1.0, -2.0], np.float32), np.array([1.0, 2.0], np.float32))


# ------------------------------------------------------------------------------------------ losses, by hand
def test_regularized_actor_loss_hand_case():
    q = torch.tensor([1.0, -3.0], requires_grad=True)
    pi = torch.tensor([[0.5], [0.0]], requires_grad=True)
    target = torch.tensor([[0.0], [1.0]])
    loss, m = regularized_actor_loss(q, pi, target, alpha=2.5)
    # lambda = 2.5 / mean(|1|, |-3|) = 1.25; -lambda mean q = 1.25; bc = (0.25 + 1) / 2 = 0.625
    assert m["lambda"] == pytest.approx(1.25) and m["bc_loss"] == pytest.approx(0.625)
    assert float(loss.detach()) == pytest.approx(1.875)
    loss.backward()
    assert torch.allclose(q.grad, torch.tensor([-0.625, -0.625]))  # lambda is a constant: d/dq = -1.25 / 2
    weighted, _ = regularized_actor_loss(q, pi, target, 2.5, weight=torch.tensor([2.0, 0.0]))
    assert float(weighted.detach()) == pytest.approx(1.25 + (2 * 0.25 + 0) / 2)
    with pytest.raises(ShapeError):
        regularized_actor_loss(q, pi, torch.zeros(2, 2), 2.5)


def test_td3_critic_target_hand_case():
    y = td3_critic_target(torch.tensor([1.0, 2.0]), torch.tensor([False, True]), torch.tensor([3.0, 5.0]),
                          torch.tensor([4.0, 1.0]), gamma=0.5)
    assert torch.allclose(y, torch.tensor([1.0 + 0.5 * 3.0, 2.0]))  # min of the twins; no bootstrap at termination


def test_awac_weights_and_loss_hand_case():
    lam = 1.0 / 3.0
    adv = torch.tensor([0.0, lam * math.log(3.0)])  # A / lambda = [0, log 3]
    assert torch.allclose(awac_weights(adv, lam), torch.tensor([0.5, 1.5]))  # 2 * softmax = 2 * [1/4, 3/4]
    assert torch.allclose(awac_weights(adv, lam, normalize=False), torch.tensor([1.0, 3.0]))
    assert torch.allclose(awac_weights(adv, lam, normalize=False, max_weight=2.0), torch.tensor([1.0, 2.0]))
    loss, m = awac_actor_loss(torch.tensor([-1.0, -2.0]), torch.tensor([0.5, 1.5]))
    assert float(loss) == pytest.approx((0.5 * 1.0 + 1.5 * 2.0) / 2) and m["weight_max"] == 1.5


def test_a2pr_target_and_weight_hand_case():
    refined = torch.tensor([[1.0], [2.0], [3.0]])
    target, m = a2pr_bc_target(refined, torch.zeros(3, 1), torch.tensor([1.0, -1.0, -2.0]),
                               torch.tensor([0.0, 0.5, -1.0]), mask=0.4)
    assert torch.equal(target, torch.tensor([[1.0], [0.0], [0.0]]))  # refined only where A_pi >= A_D
    assert torch.allclose(m, torch.tensor([0.4, 0.4, 0.0]))  # mask (1[A_pi >= 0] + 1[A_D > 0])


def test_vae_loss_hand_case():
    loss, m = vae_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.tensor([[1.0]]))
    assert m["kl"] == pytest.approx(0.5) and float(loss) == pytest.approx(1.0 + 0.5 * 0.5)  # KL(N(1,1)||N(0,1))
    loss, m = vae_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.zeros(1, 1), torch.ones(1, 1),
                       weight=torch.tensor([2.0]))
    assert m["recon_loss"] == pytest.approx(2.0) and m["kl"] == pytest.approx(0.0)


# ------------------------------------------------------------------------------------------ deterministic policy
def test_deterministic_policy_interface(tmp_path):
    torch.manual_seed(0)
    pol = DeterministicPolicy(3, 2, (8,), action_low=[-1.0, -2.0], action_high=[1.0, 2.0], exploration_std=0.1)
    obs = torch.randn(5, 3) * 100
    mu = pol.mode(obs)
    assert (mu[:, 0].abs() <= 1).all() and (mu[:, 1].abs() <= 2).all()
    act = torch.randn(5, 2)
    std = torch.tensor([0.1, 0.2])  # 0.1 of each half-width
    by_hand = torch.distributions.Normal(mu, std).log_prob(act).sum(-1)
    assert torch.allclose(pol.log_prob(obs, act), by_hand, atol=1e-5)
    assert torch.allclose(pol.distribution(obs).log_prob(act), by_hand, atol=1e-5)
    a, logp = pol.sample(obs, deterministic=True)
    assert torch.equal(a, mu) and torch.allclose(logp, pol.log_prob(obs, a), atol=1e-5)
    assert np.allclose(pol.sampler(deterministic=True)(obs.numpy()), mu.detach().numpy(), atol=1e-5)
    save_policy(pol, tmp_path / "p", env_id=None)
    back = load_policy(tmp_path / "p")
    assert type(back) is DeterministicPolicy and back.kwargs == pol.kwargs
    assert torch.equal(back.mode(obs), mu.detach())
    with pytest.raises(PolicyError, match="exploration_std"):
        DeterministicPolicy(3, 2, exploration_std=0.0)


def test_deterministic_policy_collects_and_evaluates_without_special_cases():
    """collect stores the exploration Gaussian's log-density of the (clipped) stored action; evaluate uses mu."""
    env = gym.make("Pendulum-v1")
    pol = DeterministicPolicy(3, 1, (8,), action_low=env.action_space.low.tolist(),
                              action_high=env.action_space.high.tolist())
    ds = collect("Pendulum-v1", pol, 40, seed=0, progress=False)
    with torch.no_grad():
        expected = pol.log_prob(torch.from_numpy(ds.observations), torch.from_numpy(ds.actions)).double().numpy()
    assert np.allclose(ds.behavior_log_prob, expected, atol=1e-4)
    assert evaluate_policy(pol, "Pendulum-v1", 1, seed=0)["mean"] < 0


# ------------------------------------------------------------------------------------------ TD3+BC, PRDC
def _batch(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Transitions(torch.randn(n, 3, generator=g), torch.rand(n, 2, generator=g) * 2 - 1,
                       torch.randn(n, generator=g), torch.randn(n, 3, generator=g), torch.rand(n, generator=g) < 0.2,
                       torch.zeros(n, dtype=torch.bool))


def test_td3_bc_delays_the_actor_and_the_targets():
    learner = TD3BCLearner(TD3BCConfig(hidden=(16,), policy_freq=2), OBS, ACT)
    before = {k: v.clone() for k, v in learner.policy.state_dict().items()}
    target_before = {k: v.clone() for k, v in learner.critic_target.state_dict().items()}
    m = learner.update(_batch())
    assert all(torch.equal(v, learner.policy.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(v, learner.critic_target.state_dict()[k]) for k, v in target_before.items())
    assert m["actor_loss"] == 0.0  # no actor step yet
    m = learner.update(_batch(seed=1))
    assert any(not torch.equal(v, learner.policy.state_dict()[k]) for k, v in before.items())
    assert m["lambda"] > 0 and learner.n_updates == 2
    with pytest.raises(ConfigError, match="continuous"):
        TD3BCLearner(TD3BCConfig(), OBS, gym.spaces.Discrete(3))


def test_prdc_neighbour_is_the_brute_force_nearest_point():
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(0)
    s, a = rng.normal(size=(500, 3)), rng.uniform(-1, 1, size=(500, 2))
    qs, qa = rng.normal(size=(20, 3)), rng.uniform(-1, 1, size=(20, 2))
    beta = 2.0
    tree = cKDTree(np.concatenate([beta * s, a], 1))
    got, dist = nearest_actions(tree, a, qs, qa, beta)
    d2 = ((beta * qs[:, None] - beta * s[None]) ** 2).sum(-1) + ((qa[:, None] - a[None]) ** 2).sum(-1)
    assert np.array_equal(got, a[d2.argmin(1)]) and np.allclose(dist, np.sqrt(d2.min(1)))
    # a huge beta makes the state dominate: the neighbour of a dataset state is that state's own action (TD3+BC)
    got, _ = nearest_actions(cKDTree(np.concatenate([1e6 * s, a], 1)), a, s[:20], qa, 1e6)
    assert np.array_equal(got, a[:20])


def test_prdc_needs_an_attached_dataset():
    learner = PRDCLearner(PRDCConfig(hidden=(16,), policy_freq=1), OBS, ACT)
    with pytest.raises(ConfigError, match="attach_dataset"):
        learner.update(_batch())
    with pytest.raises(ConfigError, match="neighbour_set"):
        PRDCConfig(neighbour_set="all")


# ------------------------------------------------------------------------------------------ trajectory weighting
def test_return_weighted_probabilities_by_hand():
    # returns 0, 1, 2 -> normalised 0, 0.5, 1 -> exp(./0.1) = 1, e^5, e^10 per transition; episode 1 has 2 steps
    p, degenerate = trajectory_weights(np.array([0.0, 1.0, 2.0]), np.array([1, 2, 1]), np.zeros((3, 1)), "rw", 0.1)
    w = np.array([1.0, math.exp(5), math.exp(5), math.exp(10)])
    assert not degenerate and np.allclose(p, w / w.sum(), rtol=1e-12) and p.sum() == pytest.approx(1.0)
    # invariant to scaling the rewards (and to shifting them when episodes have equal length)
    p2, _ = trajectory_weights(np.array([0.0, 3.0, 6.0]), np.array([1, 2, 1]), np.zeros((3, 1)), "rw", 0.1)
    assert np.allclose(p, p2)
    eq, _ = trajectory_weights(np.array([1.0, 2.0]), np.array([2, 2]), np.zeros((2, 1)), "rw")
    eq2, _ = trajectory_weights(np.array([5 * 1.0 + 2 * 7, 5 * 2.0 + 2 * 7]), np.array([2, 2]), np.zeros((2, 1)), "rw")
    assert np.allclose(eq, eq2)


def test_advantage_weighted_probabilities_by_hand():
    # G = [0, 2, 2, 6] on s0 = [0, 1, 2, 3]: least squares G = 1.8 s0 - 0.2 -> A = [0.2, 0.4, -1.4, 0.8]
    g, s0 = np.array([0.0, 2.0, 2.0, 6.0]), np.array([[0.0], [1.0], [2.0], [3.0]])
    p, _ = trajectory_weights(g, np.ones(4, int), s0, "aw", 0.1)
    a_hat = (np.array([0.2, 0.4, -1.4, 0.8]) + 1.4) / 2.2
    w = np.exp(a_hat / 0.1)
    assert np.allclose(p, w / w.sum(), rtol=1e-9)


def test_top_percent_keeps_the_best_episodes_uniformly():
    # 10 episodes with returns 0..9 (lengths 1 or 2): top20 keeps episodes 8 and 9, every kept transition equally
    lengths = np.array([1, 2] * 5)
    p, degenerate = trajectory_weights(np.arange(10.0), lengths, np.zeros((10, 1)), "top20")
    kept = np.repeat(np.arange(10) >= 8, lengths)
    assert not degenerate and np.allclose(p[kept], 1 / kept.sum()) and (p[~kept] == 0).all()
    # ceil: top5 of 10 episodes keeps one; top100 is uniform; order-only, so any increasing rescaling gives the same p
    assert (trajectory_weights(np.arange(10.0), lengths, np.zeros((10, 1)), "top5")[0] > 0).sum() == 2
    assert np.allclose(trajectory_weights(np.arange(10.0), lengths, np.zeros((10, 1)), "top100")[0], 1 / 15)
    assert np.allclose(p, trajectory_weights(np.exp(np.arange(10.0)), lengths, np.zeros((10, 1)), "top20")[0])
    assert apply_overrides(IQLConfig(), ["sampler=top10"]).sampler == "top10"
    for bad in ("top0", "top101", "top", "topx"):
        with pytest.raises(ConfigError, match="sampler"):
            IQLConfig(sampler=bad)


def _episodes_dataset(returns_per_step, lengths):
    obs, acts, rews, starts = [], [], [], [0]
    for r, t in zip(returns_per_step, lengths):
        obs.append(np.random.default_rng(len(starts)).normal(size=(t, 3)))
        acts.append(np.zeros((t, 2)))
        rews.append(np.full(t, r))
        starts.append(starts[-1] + t)
    n = starts[-1]
    term = np.zeros(n, bool)
    term[np.array(starts[1:]) - 1] = True
    o = np.concatenate(obs)
    return Dataset(o, np.concatenate(acts), np.concatenate(rews), o, term, np.zeros(n, bool), np.array(starts),
                   OBS, ACT)


def test_sampler_draws_match_the_probabilities_and_uniform_keeps_the_old_stream():
    ds = _episodes_dataset([0.0, 1.0, 0.5], [3, 2, 4])
    sampler = TransitionSampler(ds, "rw", 0.5)
    idx = sampler.indices(np.random.default_rng(0), 200_000)
    freq = np.bincount(idx, minlength=len(ds)) / idx.size
    assert np.abs(freq - sampler.p).max() < 0.005
    uniform = TransitionSampler(ds, "uniform")
    assert np.array_equal(uniform.indices(np.random.default_rng(3), 50),
                          np.random.default_rng(3).integers(0, len(ds), size=50))
    flat = TransitionSampler(_episodes_dataset([1.0, 1.0], [2, 2]), "rw")
    assert flat.note is not None and np.allclose(flat.p, 0.25)
    with pytest.raises(ConfigError, match="sampler"):
        TransitionSampler(ds, "topk")


def test_sampler_is_a_config_field_of_every_offline_learner():
    assert apply_overrides(IQLConfig(), ["sampler=aw"]).sampler == "aw"
    assert apply_overrides(TD3BCConfig(), ["sampler=rw", "sampler_alpha=0.2"]).sampler_alpha == 0.2
    with pytest.raises(ConfigError, match="sampler"):
        apply_overrides(TD3BCConfig(), ["sampler=best"])
    with pytest.raises(ConfigError, match="sampler_alpha"):
        TD3BCConfig(sampler_alpha=0.0)


def test_offline_loop_uses_the_weighted_sampler():
    """With rw sampling and a tiny alpha, (almost) every batch comes from the best episode: the loop really uses it."""
    ds = _episodes_dataset([0.0, 10.0], [50, 50])
    seen = []

    class Spy(TD3BCLearner):
        def update(self, batch):
            seen.append(batch.reward.clone())
            return super().update(batch)

    import hybridrl.algos as algos

    spec = algos.get_algo("td3_bc")
    algos.register("spy_td3_bc", TD3BCConfig, Spy, loop="offline", inputs="dataset", action_spaces=("continuous",))
    try:
        train_offline("spy_td3_bc", ds, TD3BCConfig(hidden=(8,), batch_size=64, sampler="rw", sampler_alpha=0.01),
                      steps=3, progress=False)
        assert all((r == 10.0).all() for r in seen) and len(seen) == 3
        seen.clear()
        train_offline("spy_td3_bc", ds, TD3BCConfig(hidden=(8,), batch_size=64), steps=3, progress=False)
        assert any((r == 0.0).any() for r in seen)
    finally:
        algos.unregister("spy_td3_bc")
    assert spec.learner_cls is TD3BCLearner


def test_ppo_fine_tunes_a_deterministic_policy_with_its_fixed_noise():
    from hybridrl.loops.finetune import FinetuneConfig, finetune

    env = gym.make("Pendulum-v1")
    pol = DeterministicPolicy(3, 1, (8,), action_low=env.action_space.low.tolist(),
                              action_high=env.action_space.high.tolist())
    before = {k: v.clone() for k, v in pol.state_dict().items()}
    config = FinetuneConfig(n_steps=128, minibatch_size=64, n_epochs=1, critic_warmup_max=0)  # the actor moves at once
    learner = finetune("Pendulum-v1", None, pol, 128, config=config, progress=False)
    assert type(learner.policy) is DeterministicPolicy
    assert torch.allclose(learner.policy.log_std.exp(), torch.tensor([0.2]))  # 0.1 of the half-width 2
    assert any(not torch.equal(v, learner.policy.state_dict()[k]) for k, v in before.items())
