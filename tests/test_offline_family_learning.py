"""Learning tests of the offline family on a one-step continuous task with a known answer (``slow``).

The contextual bandit: s ~ U[-1, 1]^2, a in [-1, 1], r = -(a - s_0)^2, every episode one step. The data are uniform
random actions (mean reward -2/3). The best action is a = s_0 (reward 0); cloning the data gives a ~ 0 (-1/3).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from hybridrl.algos import get_algo
from hybridrl.data.dataset import Dataset
from hybridrl.loops.offline import train_offline

pytestmark = pytest.mark.slow
OBS = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


def bandit_dataset(n: int = 2000, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    s = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    a = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    r = -((a[:, 0] - s[:, 0]) ** 2)
    return Dataset(s, a, r, s, np.ones(n, bool), np.zeros(n, bool), np.arange(n + 1), OBS, ACT)


def expected_reward(policy) -> float:
    s = torch.rand(4000, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        a = policy.mode(s)[:, 0]
    return float(-((a - s[:, 0]) ** 2).mean())


@pytest.fixture(scope="module")
def data():
    return bandit_dataset()


@pytest.mark.parametrize("algo,fields,steps,threshold", [
    ("td3_bc", dict(hidden=(32, 32)), 300, -0.08),
    ("prdc", dict(hidden=(32, 32)), 300, -0.08),
    ("a2pr", dict(actor_hidden=(32, 32), critic_hidden=(32, 32), vae_hidden=(32, 32)), 300, -0.08),
    ("awac", dict(actor_hidden=(32, 32), critic_hidden=(32, 32)), 400, -0.15),
])
def test_offline_family_beats_cloning_on_the_bandit(data, algo, fields, steps, threshold):
    """Measured (seed 0): td3_bc -0.011, prdc -0.016, a2pr -0.014 at 300 steps; awac -0.08 at 300 steps."""
    torch.set_num_threads(1)
    config = get_algo(algo).config_cls(batch_size=64, **fields)
    learner = train_offline(algo, data, config, steps=steps, seed=0, progress=False)
    assert expected_reward(learner.policy) > threshold  # data: -0.667, cloning the data: about -0.333


def test_return_weighting_lifts_behaviour_cloning(data):
    """BC on uniform batches clones random actions; RW sampling (alpha 0.1) clones the high-reward ones."""
    torch.set_num_threads(1)
    cfg = get_algo("bc").config_cls(hidden=(32, 32), batch_size=64)
    plain = expected_reward(train_offline("bc", data, cfg, steps=400, seed=0, progress=False).policy)
    weighted_cfg = get_algo("bc").config_cls(hidden=(32, 32), batch_size=64, sampler="rw")
    weighted = expected_reward(train_offline("bc", data, weighted_cfg, steps=400, seed=0, progress=False).policy)
    assert plain < -0.25 and weighted > plain + 0.15, (plain, weighted)
