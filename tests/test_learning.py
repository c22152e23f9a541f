"""Learning tests on small problems with known answers (``slow``: seconds to a minute each)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hybridrl.algos.bc import BCConfig
from hybridrl.algos.iql import IQLConfig
from hybridrl.algos.ppo import PPOConfig
from hybridrl.data.collect import collect
from hybridrl.envs.toy import TabularPolicy, chain_policy_value
from hybridrl.loops.evaluate import evaluate_policy
from hybridrl.loops.offline import train_offline
from hybridrl.loops.on_policy import train_on_policy
from hybridrl.runs import RunDir, read_metrics

pytestmark = pytest.mark.slow


def test_ppo_reaches_475_on_cartpole_within_100k_steps(tmp_path):
    """RL Zoo's CartPole-v1 PPO settings; evaluation every 10k steps (5 deterministic episodes)."""
    torch.set_num_threads(1)
    cfg = PPOConfig(num_envs=8, n_steps=32, minibatch_size=256, n_epochs=20, gamma=0.98, gae_lambda=0.8, lr=1e-3,
                    normalize_reward=False)
    run = RunDir.create(tmp_path / "ppo")
    train_on_policy("CartPole-v1", cfg, 100_000, run=run, seed=0, eval_every=10_240, progress=False)
    m = read_metrics(run.metrics_csv)
    evals = m["eval_return"][~np.isnan(m["eval_return"])]
    assert m["step"].max() <= 100_352 and len(evals) >= 9
    assert evals.max() >= 475, evals


@pytest.fixture(scope="module")
def chain_data():
    """epsilon-noisy data on the 5-state chain: the behaviour goes right with probability 0.6."""
    behavior = TabularPolicy(np.tile([0.4, 0.6], (5, 1)))
    return collect("hybridrl/Chain-v0", behavior, 2000, seed=0, progress=False)


@pytest.mark.parametrize("algo,config", [("bc", BCConfig(hidden=(32, 32))),
                                         ("iql", IQLConfig(hidden=(32, 32), reward_scale=1.0))])
def test_offline_learners_beat_the_dataset_on_the_chain(chain_data, algo, config):
    """BC's mode (go right) and IQL's improved policy both beat the behaviour's mean return."""
    learner = train_offline(algo, chain_data, config, 1000, seed=0, progress=False)
    data_mean = chain_data.episode_returns(0.9).mean()
    ev = evaluate_policy(learner.policy, "hybridrl/Chain-v0", 30, gamma=0.9)
    optimal = chain_policy_value(np.tile([0.0, 1.0], (5, 1)), 0.9)
    assert ev["discounted_mean"] > data_mean + 0.1, (ev["discounted_mean"], data_mean)
    assert ev["discounted_mean"] == pytest.approx(optimal, abs=0.1)


def test_iql_on_bandit_data_picks_the_best_arm():
    """Uniform behaviour on a 2-armed bandit (means 0 and 1): BC stays at 1/2, IQL moves to the better arm."""
    data = collect("hybridrl/Bandit-v0", None, 2000, seed=1, progress=False)
    learner = train_offline("iql", data, IQLConfig(hidden=(32, 32), reward_scale=1.0, beta=10.0, actor_lr=3e-3,
                                                              critic_lr=3e-3, value_lr=3e-3), 1000,
                            seed=0, progress=False)
    probs = learner.policy.probs(torch.zeros(1, data.observations.shape[1]) + data.observations[:1])
    best = int(np.argmax([data.rewards[data.actions == a].mean() for a in (0, 1)]))
    assert probs[0, best] > 0.9


def test_divergence_stops_and_keeps_the_last_good_checkpoint(chain_data, tmp_path):
    """IQL resumed on data whose rewards overflow float32 squares: the run stops, the good checkpoint stays."""
    from hybridrl.errors import DivergenceError
    from hybridrl.runs import latest_checkpoint, load_checkpoint

    cfg = IQLConfig(hidden=(8,), reward_scale=1.0)
    run = RunDir.create(tmp_path / "iql")
    train_offline("iql", chain_data, cfg, 20, run=run, checkpoint_every=10, log_every=10, progress=False)
    good = latest_checkpoint(run)
    bad = chain_data.select_episodes(range(chain_data.n_episodes))
    bad.rewards[:] = 1e30
    with pytest.raises(DivergenceError, match="last good checkpoint is .*step_20"):
        train_offline("iql", bad, cfg, 200, run=run, resume=True, checkpoint_every=10, log_every=10, progress=False)
    assert latest_checkpoint(run) == good
    _, state = load_checkpoint(good)
    assert all(torch.isfinite(v).all() for v in state["learner"]["critic"].values())
