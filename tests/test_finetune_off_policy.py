"""Off-policy fine-tuning: the mixed sampler, Monte-Carlo returns in the replay buffer, CQL/Cal-QL losses against
hand computations, LayerNorm critics, a learning test per method on a one-step continuous bandit, and resume."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from hybridrl.algos.cql import CQLConfig, CQLLearner, calibrate, cql_regularizer
from hybridrl.algos.sac import SACConfig, SACLearner
from hybridrl.data.batches import Transitions
from hybridrl.data.dataset import Dataset
from hybridrl.data.mixed import MixedSampler
from hybridrl.data.replay import ReplayBuffer
from hybridrl.errors import ConfigError
from hybridrl.loops.evaluate import evaluate_policy
from hybridrl.nn import GaussianPolicy
from hybridrl.nn.critics import TwinQ
from hybridrl.runs import RunDir

OBS1 = gym.spaces.Box(-10.0, 10.0, (1,), np.float32)
ACT1 = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
BANDIT = "hybridrl_test/ContinuousBandit-v0"
TARGET = 0.5


class ContinuousBandit(gym.Env):
    """One step, observation [1.0], action a in [-1, 1], reward -(a - 0.5)^2: the best action is 0.5."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = ACT1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.ones(1, np.float32), {}

    def step(self, action):
        a = float(np.clip(np.asarray(action).reshape(-1)[0], -1.0, 1.0))
        return np.ones(1, np.float32), -(a - TARGET) ** 2, True, False, {}


if BANDIT not in gym.registry:
    gym.register(id=BANDIT, entry_point=ContinuousBandit)


def _transitions(n: int, reward: float) -> Transitions:
    return Transitions(obs=torch.zeros(n, 1), action=torch.zeros(n, 1), reward=torch.full((n,), reward),
                       next_obs=torch.zeros(n, 1), terminated=torch.ones(n, dtype=torch.bool),
                       truncated=torch.zeros(n, dtype=torch.bool), mc_return=torch.full((n,), reward))


def _buffer(n: int, reward: float, mc_gamma: float | None = None) -> ReplayBuffer:
    buf = ReplayBuffer(1000, OBS1, ACT1, mc_gamma=mc_gamma)
    for _ in range(n):
        buf.add(np.zeros((1, 1)), np.zeros((1, 1)), np.array([reward]), np.zeros((1, 1)), np.array([True]),
                np.array([False]))
    return buf


def test_mixed_sampler_symmetric_proportions_and_seeding():
    offline, online = _transitions(100, 0.0), _buffer(50, 1.0, mc_gamma=0.9)
    sampler = MixedSampler(offline, online, offline_fraction=0.5)
    b = sampler.sample(64, np.random.default_rng(0))
    assert len(b) == 64 and int(b.reward.sum()) == 32  # exactly half online, whatever the store sizes
    assert torch.equal(b.reward[:32], torch.zeros(32)) and b.mc_return is not None
    quarter = MixedSampler(offline, online, offline_fraction=0.25).sample(64, np.random.default_rng(0))
    assert int(quarter.reward.sum()) == 48
    b2 = sampler.sample(64, np.random.default_rng(0))  # same seed, same batch
    assert all(torch.equal(getattr(b, k), getattr(b2, k)) for k in ("obs", "reward", "mc_return"))
    # uniform over the seeded buffer: the online share is N_on / (N_off + N_on) = 1/3
    union = MixedSampler(offline, online, offline_fraction=None)
    rng = np.random.default_rng(1)
    share = np.mean([float(union.sample(256, rng).reward.mean()) for _ in range(40)])
    assert abs(share - 1 / 3) < 0.02  # binomial sd over 10240 draws is 0.0047
    empty = MixedSampler(offline, ReplayBuffer(10, OBS1, ACT1), offline_fraction=0.5)
    assert float(empty.sample(32, np.random.default_rng(0)).reward.sum()) == 0.0  # nothing online yet
    with pytest.raises(ConfigError, match="offline_fraction"):
        MixedSampler(offline, online, offline_fraction=1.5)


def test_replay_buffer_monte_carlo_returns_and_round_trip():
    buf = ReplayBuffer(10, OBS1, ACT1, mc_gamma=0.5)
    for r, done in ((1.0, False), (2.0, False), (3.0, True), (4.0, False)):
        buf.add(np.zeros((1, 1)), np.zeros((1, 1)), np.array([r]), np.zeros((1, 1)), np.array([False]),
                np.array([done]))
    # G_2 = 3, G_1 = 2 + 0.5 * 3 = 3.5, G_0 = 1 + 0.5 * 3.5 = 2.75; the running episode is unknown (-inf)
    np.testing.assert_allclose(buf.mc_return[:4], [2.75, 3.5, 3.0, -np.inf])
    assert torch.equal(buf.rows(np.array([1])).mc_return, torch.tensor([3.5]))
    clone = ReplayBuffer(10, OBS1, ACT1, mc_gamma=0.5)
    clone.load_state_dict(buf.state_dict())
    np.testing.assert_array_equal(clone.mc_return[:4], buf.mc_return[:4])
    assert ReplayBuffer(10, OBS1, ACT1).rows(np.array([0])).mc_return is None


def test_cql_regularizer_two_samples_by_hand():
    q = torch.tensor([[1.0, 2.0]])
    log_mu = torch.tensor([[0.0, math.log(2.0)]])  # densities 1 and 2
    reg, m = cql_regularizer(q, log_mu, torch.tensor([0.5]))
    # log( (e^1 / 1 + e^2 / 2) / 2 ) - 0.5
    expected = math.log((math.exp(1.0) + math.exp(2.0) / 2.0) / 2.0) - 0.5
    assert float(reg) == pytest.approx(expected, rel=1e-6)
    assert m["cql_q_data"] == pytest.approx(0.5)


def test_calibration_is_max_of_q_and_monte_carlo_return():
    q = torch.tensor([[1.0, -3.0], [0.0, 5.0]])
    bounded, m = calibrate(q, torch.tensor([0.0, -math.inf]))
    assert torch.equal(bounded, torch.tensor([[1.0, 0.0], [0.0, 5.0]]))
    assert m["calibrated_fraction"] == pytest.approx(0.25)


def test_calql_regulariser_sees_the_bound():
    """With the bound far above every Q, Cal-QL's log-sum-exp term grows by about the bound; CQL's does not move."""
    obs, n = torch.randn(32, 1), 32
    batch = Transitions(obs=obs, action=torch.rand(n, 1) * 2 - 1, reward=torch.zeros(n), next_obs=obs,
                        terminated=torch.ones(n, dtype=torch.bool), truncated=torch.zeros(n, dtype=torch.bool),
                        mc_return=torch.full((n,), 50.0))
    out = {}
    for cal in (False, True):
        learner = CQLLearner(CQLConfig(hidden=(16,), calibrated=cal), OBS1, ACT1, seed=0)
        out[cal] = learner.update(batch, actor=False)["cql_logsumexp"]
    assert out[True] > out[False] + 40.0  # 2/3 of the samples sit at 50 after the bound


def test_layer_norm_critics_are_optional_and_sac_default_is_unchanged():
    ln = TwinQ(3, 2, False, (8, 8), layer_norm=True)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in ln.modules()) == 4
    sac = SACLearner(SACConfig(hidden=(8, 8)), OBS1, ACT1)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in sac.critic.modules())
    rlpd = SACLearner(SACConfig(hidden=(8, 8), layer_norm=True), OBS1, ACT1)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in rlpd.critic_target.modules()) == 4


def _bad_start() -> tuple[GaussianPolicy, Dataset]:
    """A Gaussian policy (IQL's kind) acting around a = -0.5 (return -1.0), and 256 steps of its own data."""
    torch.manual_seed(0)
    policy = GaussianPolicy(1, 1, (16,), "relu", tanh_mean=True, log_std_init=math.log(0.3))
    with torch.no_grad():
        policy.mean_net[-1].weight.zero_()
        policy.mean_net[-1].bias.fill_(math.atanh(-0.5))
    rng = np.random.default_rng(0)
    actions = np.clip(-0.5 + 0.3 * rng.standard_normal((256, 1)), -1, 1).astype(np.float32)
    episodes = [{"observations": np.ones((2, 1), np.float32), "actions": a[None], "rewards": [-(a[0] - TARGET) ** 2],
                 "terminations": [True], "truncations": [False]} for a in actions]
    return policy, Dataset.from_episodes(episodes, gym.spaces.Box(0.0, 1.0, (1,), np.float32), ACT1, env_id=BANDIT)


def _deterministic_return(policy) -> float:
    return evaluate_policy(policy, BANDIT, episodes=1, seed=0)["mean"]


FAST = ["hidden=16", "batch_size=64", "critic_pretrain_steps=100", "callback_every=100", "critic_lr=3e-3"]
METHODS = {
    "iql": FAST + ["reward_scale=1", "beta=10", "actor_lr=3e-3", "value_lr=3e-3", "offline_fraction=0.5"],
    # the CQL weight is relative to the scale of Q: rewards of order 1 here (Q of order 100 on Hopper, where 5 is used)
    "calql": FAST + ["offline_steps=0", "actor_lr=1e-3", "n_actions=4", "cql_alpha=1"],
    "rlpd": FAST + ["actor_lr=3e-3"],
    "famo2o": FAST + ["reward_scale=1", "actor_lr=3e-3", "value_lr=3e-3", "offline_fraction=0.5",
                      "offline_steps=20", "beta_min=5", "beta_max=15"],
}
STEPS = 300


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_finetuning_beats_its_start(method):
    from hybridrl.loops import finetune_off_policy as ft

    torch.set_num_threads(1)
    start, data = _bad_start()
    before = _deterministic_return(start)
    assert before == pytest.approx(-1.0, abs=1e-3)
    seen = []
    tuned = getattr(ft, f"finetune_{method}")(start, env_id=BANDIT, dataset=data, steps=STEPS, run=None, seed=0,
                                            overrides=METHODS[method], callback=lambda s, p: seen.append(s),
                                            progress=False)
    assert seen[-1] == STEPS and all(b - a <= 100 for a, b in zip(seen, seen[1:]))
    after = _deterministic_return(tuned)
    assert after > 0.5 * before, (method, before, after)  # at least halfway from a = -0.5 towards a = 0.5
    assert _deterministic_return(start) == before  # the caller's policy is untouched


def test_resume_continues_exactly(tmp_path):
    from hybridrl.loops.finetune_off_policy import finetune_rlpd

    start, data = _bad_start()
    kw = dict(env_id=BANDIT, dataset=data, seed=0, progress=False,
              overrides=["hidden=8", "batch_size=16", "critic_pretrain_steps=10", "checkpoint_every=20"])
    straight = finetune_rlpd(start, steps=40, run=RunDir.create(tmp_path / "a"), **kw)
    first = RunDir.create(tmp_path / "b")
    finetune_rlpd(start, steps=20, run=first, **kw)
    first.release()
    resumed = finetune_rlpd(start, steps=40, run=RunDir.create(tmp_path / "b", resume=True), resume=True, **kw)
    for (k, v), w in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v, w), k


def test_famo2o_embedding_balance_density_and_start_equivalence(tmp_path):
    from torch.distributions import AffineTransform, Normal, TanhTransform, TransformedDistribution

    from hybridrl.algos.famo2o import FamilyPolicy, coefficient_embedding
    from hybridrl.nn import load_policy, save_policy

    emb = coefficient_embedding(torch.tensor([2.0]))
    f = [1.0, 10000 ** (-1 / 3), 10000 ** (-2 / 3)]
    np.testing.assert_allclose(emb[0].numpy(), [math.sin(2 * x) for x in f] + [math.cos(2 * x) for x in f], rtol=1e-6)
    start, _ = _bad_start()
    with torch.no_grad():
        start.mean_net[-1].weight.normal_()  # a state-dependent start
    fam = FamilyPolicy.from_gaussian(start, 1.0, 10.0)
    obs = torch.randn(5, 1)
    for beta in (1.0, 7.0):  # the widened policy acts exactly like its start, whatever the coefficient
        assert torch.allclose(fam.mean_at(obs, torch.full((5,), beta)), start.mean(obs), atol=1e-6)
    torch.manual_seed(0)
    beta, logp = fam.sample_coefficient(obs)
    mu, log_std = fam._balance(obs)
    dist = TransformedDistribution(Normal(mu, log_std.exp()), [TanhTransform(), AffineTransform(5.5, 4.5)])
    assert torch.allclose(logp, dist.log_prob(beta), atol=1e-4)
    assert ((beta > 1.0) & (beta < 10.0)).all()
    loaded = load_policy(save_policy(fam, tmp_path / "fam"))
    assert type(loaded) is FamilyPolicy and torch.equal(loaded.mean(obs), fam.mean(obs))
