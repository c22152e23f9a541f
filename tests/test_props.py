"""PROPS: behaviour loss and KL by hand, config checks, reset and gradient isolation, buffer ordering and the
slices each update sees, the sampling-error diagnostic, PROPS vs on-policy sampling error with a fixed target,
and a CartPole learning test."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, Normal

from hybridrl.algos.ppo import PPOLearner
from hybridrl.algos.props import PROPSConfig, PROPSLearner, _rows
from hybridrl.data.batches import Segments, Transitions
from hybridrl.data.sampling_error import sampling_error, tabular_sampling_error
from hybridrl.errors import ConfigError, ShapeError
from hybridrl.loops.props import train_props
from hybridrl.losses.core import ppo_clip_loss
from hybridrl.losses.props import policy_kl, props_behavior_loss
from hybridrl.nn import CategoricalPolicy, make_policy

OBS = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
SPACES = {"discrete": gym.spaces.Discrete(3), "continuous": gym.spaces.Box(-1.0, 1.0, (2,), np.float32)}
SMALL = dict(num_envs=2, n_steps=16, props_n_steps=8, minibatch_size=16, props_minibatch_size=16, n_epochs=2,
             props_n_epochs=2, hidden=(16,))
BANDIT3 = "hybridrl-test/Bandit3-v0"
if BANDIT3 not in gym.registry:
    gym.register(BANDIT3, entry_point="hybridrl.envs.toy:BanditEnv", kwargs={"n_arms": 3})


def _segments(space, b=2, t=16, seed=0) -> Segments:
    g = torch.Generator().manual_seed(seed)
    act = (torch.randint(space.n, (b, t), generator=g) if isinstance(space, gym.spaces.Discrete)
           else torch.rand(b, t, space.shape[0], generator=g) * 2 - 1)
    term = torch.rand(b, t, generator=g) < 0.1
    return Segments(obs=torch.randn(b, t, 4, generator=g), action=act, reward=torch.randn(b, t, generator=g),
                    next_obs=torch.randn(b, t, 4, generator=g), terminated=term,
                    truncated=(torch.rand(b, t, generator=g) < 0.1) & ~term,
                    behavior_log_prob=-torch.rand(b, t, generator=g))


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------------ loss
def test_props_loss_hand_computed_clipping_and_kl_term():
    """rho = [0.5, 1, 1.5], eps 0.3: max(rho, clip) = [0.7, 1, 1.5]; kl mean 0.2, lambda 0.5."""
    logp = torch.log(torch.tensor([0.5, 1.0, 1.5])).requires_grad_()
    kl = torch.tensor([0.1, 0.2, 0.3], requires_grad=True)
    loss, m = props_behavior_loss(logp, torch.zeros(3), kl, clip_ratio=0.3, kl_coef=0.5)
    assert loss.item() == pytest.approx((0.7 + 1.0 + 1.5) / 3 + 0.5 * 0.2, abs=1e-6)
    assert m["props_loss"] == pytest.approx(3.2 / 3, abs=1e-6) and m["kl_reg"] == pytest.approx(0.2, abs=1e-6)
    assert m["clip_fraction"] == pytest.approx(2 / 3) and m["ratio_max"] == pytest.approx(1.5, abs=1e-6)
    loss.backward()
    # below 1 - eps the term is flat (no further push down); inside and above it d/dlogp = rho / N
    assert logp.grad.tolist() == pytest.approx([0.0, 1 / 3, 0.5], abs=1e-6)
    assert kl.grad.tolist() == pytest.approx([0.5 / 3] * 3, abs=1e-7)


def test_props_loss_matches_independent_formula_with_weights():
    g = torch.Generator().manual_seed(0)
    logp, target = torch.randn(64, generator=g) * 0.4, torch.randn(64, generator=g) * 0.4
    kl, w = torch.rand(64, generator=g), torch.rand(64, generator=g) * 2
    loss, _ = props_behavior_loss(logp, target, kl, 0.2, 0.3, weight=w)
    rho = torch.exp(logp - target)
    expected = (w * torch.maximum(rho, rho.clamp(0.8, 1.2))).mean() + 0.3 * kl.mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # PPO's clipped surrogate with advantage -1 is the unweighted PROPS surrogate
    assert props_behavior_loss(logp, target, kl, 0.2, 0.0)[0].item() == pytest.approx(
        ppo_clip_loss(logp, target, -torch.ones(64), 0.2)[0].item(), rel=1e-6)


def test_props_loss_rejects_bad_inputs():
    x = torch.zeros(3)
    with pytest.raises(ShapeError):
        props_behavior_loss(x, torch.zeros(4), x, 0.2, 0.1)
    with pytest.raises(ValueError):
        props_behavior_loss(x, x, x, 0.2, -1.0)
    with pytest.raises(ValueError):
        props_behavior_loss(x, x, x, 0.2, 0.1, weight=-torch.ones(3))


def test_policy_kl_categorical_and_gaussian_by_hand():
    p, q = torch.tensor([[0.2, 0.3, 0.5]]), torch.tensor([[0.4, 0.4, 0.2]])
    expected = float((p * (p / q).log()).sum())
    assert policy_kl(Categorical(probs=p), Categorical(probs=q)).item() == pytest.approx(expected, rel=1e-5)
    mu_p, s_p = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.5]])
    mu_q, s_q = torch.tensor([[0.5, 0.0]]), torch.tensor([[2.0, 1.0]])
    per_dim = torch.log(s_q / s_p) + (s_p**2 + (mu_p - mu_q) ** 2) / (2 * s_q**2) - 0.5  # PPOROS lines 355-358
    dp, dq = Independent(Normal(mu_p, s_p), 1), Independent(Normal(mu_q, s_q), 1)
    assert policy_kl(dp, dq, "mean").item() == pytest.approx(per_dim.mean().item(), rel=1e-6)
    assert policy_kl(dp, dq, "sum").item() == pytest.approx(per_dim.sum().item(), rel=1e-6)
    with pytest.raises(ShapeError):
        policy_kl(dp, Categorical(probs=q))


# ------------------------------------------------------------------------------------------------ learner
def test_config_checks():
    with pytest.raises(ConfigError, match="props_n_steps"):
        PROPSConfig(n_steps=100, props_n_steps=30, minibatch_size=50)
    with pytest.raises(ConfigError, match="props_kl_direction"):
        PROPSConfig(props_kl_direction="forward")
    with pytest.raises(ConfigError, match="minibatch_size"):
        PROPSConfig(n_steps=100, props_n_steps=50, minibatch_size=64)
    with pytest.raises(ConfigError):
        PROPSConfig(buffer_batches=0)
    assert PROPSConfig().ppo_config().ent_coef == 0.01 and PROPSConfig().buffer_steps == 4096


@pytest.mark.parametrize("kind", list(SPACES))
def test_reset_makes_behavior_equal_target_and_first_ratio_is_one(kind):
    space = SPACES[kind]
    learner = PROPSLearner(PROPSConfig(**{**SMALL, "props_n_epochs": 1, "props_minibatch_size": 64}), OBS, space)
    learner.update_target(_segments(space))  # the target moves away from the initial copy
    with torch.no_grad():
        for p in learner.behavior_policy.parameters():
            p.add_(0.3)
    learner.reset_behavior()
    target = learner.policy.state_dict()
    assert all(torch.equal(v, target[k]) for k, v in learner.behavior_policy.state_dict().items())
    with torch.no_grad():
        for p in learner.behavior_policy.parameters():
            p.add_(0.3)
    m = learner.update_behavior(_segments(space, seed=1))  # resets first: one step on all 32 samples from phi = theta
    assert m["behavior_minibatches"] == 1.0
    assert m["behavior_ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert m["behavior_approx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < m["behavior_kl"] < 0.1


@pytest.mark.parametrize("kind", list(SPACES))
def test_gradient_isolation_between_target_and_behavior(kind):
    space = SPACES[kind]
    learner = PROPSLearner(PROPSConfig(**SMALL), OBS, space)
    pol, crit = _state(learner.policy), _state(learner.critic)
    m = learner.update_behavior(_segments(space))
    assert all(np.isfinite(v) for v in m.values()) and m["behavior_minibatches"] > 0
    assert all(torch.equal(v, learner.policy.state_dict()[k]) for k, v in pol.items())
    assert all(torch.equal(v, learner.critic.state_dict()[k]) for k, v in crit.items())
    assert any(not torch.equal(v, pol[k]) for k, v in learner.behavior_policy.state_dict().items())
    beh = _state(learner.behavior_policy)
    learner.update_target(_segments(space, seed=2))
    assert all(torch.equal(v, learner.behavior_policy.state_dict()[k]) for k, v in beh.items())


def test_minibatch_target_rows_are_aligned_with_the_samples():
    """The section 1(e) fix: the target distribution used for a minibatch is pi_theta at that minibatch's states."""
    obs, idx = torch.randn(40, 4), torch.tensor([39, 3, 17, 0, 22])
    for space in SPACES.values():
        pol = make_policy(OBS, space, (16,))
        with torch.no_grad():
            rows, direct = _rows(pol.distribution(obs), idx), pol.distribution(obs[idx])
            other = make_policy(OBS, space, (16,)).distribution(obs[idx])
            assert torch.allclose(policy_kl(other, rows), policy_kl(other, direct), atol=1e-6)


def test_target_update_ignores_behavior_log_probs_and_is_ppo_on_recomputed_log_probs():
    space = SPACES["continuous"]
    seg = _segments(space)
    results = []
    for variant in ("a", "b", "ppo"):
        learner = PROPSLearner(PROPSConfig(**SMALL), OBS, space, seed=4)
        s = seg if variant != "b" else Segments(seg.obs, seg.action, seg.reward, seg.next_obs, seg.terminated,
                                                seg.truncated, torch.zeros_like(seg.behavior_log_prob))
        if variant == "ppo":  # the composed PPOLearner on the same data with pi_theta's own log-probs
            ppo = learner.ppo
            with torch.no_grad():
                logp = ppo.policy.log_prob(seg.obs.reshape(32, 4), seg.action.reshape(32, 2)).reshape(2, 16)
            ppo2 = PPOLearner(learner.config.ppo_config(), OBS, space, seed=4, policy=learner.policy)
            ppo2.critic.load_state_dict(ppo.critic.state_dict())
            torch.manual_seed(0)
            ppo2.update(Segments(seg.obs, seg.action, seg.reward, seg.next_obs, seg.terminated, seg.truncated, logp))
        else:
            torch.manual_seed(0)
            learner.update_target(s)
        results.append(_state(learner.policy))
    for other in results[1:]:
        assert all(torch.allclose(v, other[k], atol=1e-6) for k, v in results[0].items())


def test_offline_data_is_rejected():
    from hybridrl.loops.on_policy import train_on_policy

    transitions = Transitions(obs=torch.zeros(4, 4), action=torch.zeros(4, dtype=torch.int64), reward=torch.zeros(4),
                              next_obs=torch.zeros(4, 4), terminated=torch.zeros(4, dtype=torch.bool),
                              truncated=torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ConfigError, match="offline"):
        train_on_policy("CartPole-v1", PROPSConfig(**SMALL), 16, algo="props", offline=transitions, progress=False)


# ------------------------------------------------------------------------------------------------ buffer + loop
def test_loop_updates_see_the_right_slices(monkeypatch):
    """n = 8, m = 4, b = 2 (capacity 16): targets every 8 steps on the whole buffer; behaviour every 4 steps on the
    newest min(size, 16 - 4) steps, i.e. all but the oldest m once the buffer is full."""
    seen = {"target": [], "behavior": [], "newest": []}
    orig_update, orig_behavior = PROPSLearner.update_target, PROPSLearner.update_behavior

    def spy_update(self, batch):
        seen["target"].append(batch.horizon)
        return orig_update(self, batch)

    def spy_behavior(self, batch):
        seen["behavior"].append(batch.horizon)
        seen["newest"].append(batch.obs[:, -1].clone())
        return orig_behavior(self, batch)

    monkeypatch.setattr(PROPSLearner, "update_target", spy_update)
    monkeypatch.setattr(PROPSLearner, "update_behavior", spy_behavior)
    buffers = []
    cfg = PROPSConfig(num_envs=2, n_steps=8, props_n_steps=4, buffer_batches=2, minibatch_size=8,
                      props_minibatch_size=8, n_epochs=1, props_n_epochs=1, hidden=(8,))
    train_props("CartPole-v1", cfg, 48, seed=0, progress=False,
                callback=lambda step, learner, buf: buffers.append(buf.segments().obs[:, -1].clone()))
    assert seen["target"] == [8, 16, 16] and seen["behavior"] == [4, 8, 12, 12, 12, 12]
    assert all(torch.equal(a, b) for a, b in zip(seen["newest"], buffers))  # the newest steps, not the oldest


def test_train_props_resumes_with_its_buffer(tmp_path):
    from hybridrl.runs import RunDir

    cfg = PROPSConfig(num_envs=1, n_steps=8, props_n_steps=4, minibatch_size=8, props_minibatch_size=8, n_epochs=1,
                      props_n_epochs=1, hidden=(8,))
    run = RunDir.create(tmp_path / "props")
    train_props("hybridrl/Bandit-v0", cfg, 16, run=run, seed=0, progress=False)
    sizes = []
    train_props("hybridrl/Bandit-v0", cfg, 24, run=run, seed=0, resume=True, progress=False,
                callback=lambda step, learner, buf: sizes.append((step, buf.size)))
    assert sizes == [(20, 16), (24, 16)]


# ------------------------------------------------------------------------------------------------ sampling error
def test_tabular_sampling_error_by_hand():
    # one state, actions [0, 0, 1, 2]: pi_D = [1/2, 1/4, 1/4] vs pi = [1/3] * 3
    kl = tabular_sampling_error(np.zeros(4, int), np.array([0, 0, 1, 2]), np.full((1, 3), 1 / 3))
    assert kl == pytest.approx(0.5 * math.log(1.5) + 0.5 * math.log(0.75), abs=1e-12)
    with pytest.raises(ShapeError):
        tabular_sampling_error(np.zeros(2, int), np.array([0, 3]), np.full((1, 3), 1 / 3))


def _bandit_target(p=(0.2, 0.3, 0.5)) -> CategoricalPolicy:
    pol = CategoricalPolicy(1, 3, hidden=(8,), normalize_obs=False)
    with torch.no_grad():
        pol.logits[-1].weight.zero_()
        pol.logits[-1].bias.copy_(torch.log(torch.tensor(p)))
    return pol


def test_mle_sampling_error_matches_counts_on_a_single_state():
    rng = np.random.default_rng(0)
    actions = rng.choice(3, size=60, p=[0.2, 0.3, 0.5])
    exact = tabular_sampling_error(np.zeros(60, int), actions, np.array([[0.2, 0.3, 0.5]]))
    est = sampling_error(_bandit_target(), np.ones((60, 1), np.float32), actions, epochs=300, lr=1e-2,
                         minibatch_size=60)
    assert est["kl"] == pytest.approx(exact, abs=3e-4) and exact > 0.002


def test_props_collection_has_lower_sampling_error_than_on_policy_with_a_fixed_target():
    """3-armed bandit, fixed pi_theta = [0.2, 0.3, 0.5], 100 steps in batches of m = 10, 6 seeds each: the exact
    KL(pi_D || pi_theta) of all collected actions (on-policy: about (K - 1) / 2N = 0.01) is at least halved."""
    p = np.array([[0.2, 0.3, 0.5]])
    final = {True: [], False: []}
    for props in (True, False):
        cfg = PROPSConfig(num_envs=1, n_steps=100, buffer_batches=2, props_n_steps=10, minibatch_size=25,
                          props_minibatch_size=256, props=props, props_lr=1e-2, props_target_kl=0.03, props_kl_coef=0.1,
                          normalize_reward=False, normalize_obs=False, hidden=(8,))
        for seed in range(6):
            def keep_actions(step, lrn, buf, props=props):
                if step == 100:
                    final[props].append(buf.data["action"][0, : buf.size].copy())

            learner = train_props(BANDIT3, cfg, 100, seed=seed, policy=_bandit_target(), freeze_target=True,
                                  progress=False, callback=keep_actions)
            assert torch.equal(learner.policy.logits[-1].bias, torch.log(torch.tensor([0.2, 0.3, 0.5])))  # frozen
    kl = {k: np.mean([tabular_sampling_error(np.zeros(len(a), int), a, p) for a in v]) for k, v in final.items()}
    assert len(final[True]) == len(final[False]) == 6
    assert kl[True] < 0.5 * kl[False], kl


# ------------------------------------------------------------------------------------------------ learning
@pytest.mark.slow
def test_props_learns_cartpole():
    """RL-Zoo-like PPO settings with a 2-rollout buffer and 4 PROPS updates per target update; 30k steps."""
    from hybridrl.loops.evaluate import evaluate_policy

    cfg = PROPSConfig(num_envs=8, n_steps=128, buffer_batches=2, props_n_steps=32, minibatch_size=256,
                      props_minibatch_size=512, lr=1e-3, props_lr=1e-3, props_kl_coef=0.1, props_target_kl=0.03,
                      gamma=0.98, gae_lambda=0.8, normalize_reward=False, ent_coef=0.0, target_kl=None,
                      props_n_epochs=4)
    evals = []
    train_props("CartPole-v1", cfg, 30_720, seed=0, progress=False,
                callback=lambda step, lrn, buf: evals.append(evaluate_policy(lrn.policy, "CartPole-v1", 5,
                                                                             seed=step)["mean"])
                if step % 10_240 == 0 else None)
    # Random play scores ~22. Over seeds 0-10 the best of the three evaluations ranged from 157 to 500 (5 of 11
    # seeds reached 500), so 150 is a bar every seed we ran clears, well above an untrained policy.
    assert len(evals) == 3 and max(evals) >= 150, evals
