"""The shared learner contract, run on every learner, with discrete and continuous actions.

finite metrics; the batch is not mutated; gradient isolation (FQE never changes the evaluated
policy, target networks move only by Polyak averaging); state_dict round trip through a real
checkpoint; same seed, same result.
"""

from __future__ import annotations

import copy
import functools

import gymnasium as gym
import numpy as np
import pytest
import torch

from hybridrl.algos import algo_names, get_algo, registry
from hybridrl.data.batches import Segments, Transitions
from hybridrl.errors import ConfigError
from hybridrl.nn import make_policy
from hybridrl.runs import RunDir, load_checkpoint, save_checkpoint

OBS = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
SPACES = {"discrete": gym.spaces.Discrete(3), "continuous": gym.spaces.Box(-1.0, 1.0, (2,), np.float32)}
KINDS = {"discrete": gym.spaces.Discrete, "continuous": gym.spaces.Box}
SPECS = {name: spec for name, spec in registry().items() if spec.build is None}  # the gym-space learners
SMALL = {name: spec.tiny for name, spec in SPECS.items()}
"""Tiny configs, from each algorithm's registration (``register(..., tiny=...)``)."""


def _actions(space, shape, g):
    if isinstance(space, gym.spaces.Discrete):
        return torch.randint(space.n, shape, generator=g)
    return torch.rand(*shape, space.shape[0], generator=g) * 2 - 1


def _batch(algo: str, space, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if get_algo(algo).loop == "on_policy":
        b, t = 2, 16
        term = torch.rand(b, t, generator=g) < 0.1
        return Segments(obs=torch.randn(b, t, 4, generator=g), action=_actions(space, (b, t), g),
                        reward=torch.randn(b, t, generator=g), next_obs=torch.randn(b, t, 4, generator=g),
                        terminated=term, truncated=(torch.rand(b, t, generator=g) < 0.1) & ~term,
                        behavior_log_prob=-torch.rand(b, t, generator=g))
    n = 64
    return Transitions(obs=torch.randn(n, 4, generator=g), action=_actions(space, (n,), g),
                       reward=torch.randn(n, generator=g), next_obs=torch.randn(n, 4, generator=g),
                       terminated=torch.rand(n, generator=g) < 0.1, truncated=torch.zeros(n, dtype=torch.bool))


def _make(algo: str, space, seed: int = 0, policy=None):
    spec = get_algo(algo)
    config = spec.config_cls(**SMALL[algo])
    torch.manual_seed(0)  # the evaluated policy of FQE is the same in every call
    kwargs = {"policy": policy or make_policy(OBS, space, (16,))} if spec.inputs == "dataset+policy" else {}
    learner = spec.make(config, OBS, space, seed=seed, **kwargs)
    if spec.inputs == "env+dataset":  # a hybrid on-policy learner: every update also gets offline transitions
        learner.update = functools.partial(learner.update, offline=_batch("bc", space, seed=5))
    return learner


def _params(learner) -> dict[str, torch.Tensor]:
    out = {}
    for name, m in vars(learner).items():
        if isinstance(m, torch.nn.Module):
            out.update({f"{name}.{k}": v.detach().clone() for k, v in m.state_dict().items()})
    return out


CASES = [(a, kind) for a, spec in sorted(SPECS.items()) for kind in spec.action_spaces]
"""(algorithm, action space kind) for every registered learner and every action space it declares."""


def test_registry_lists_every_learner_and_rejects_unknown():
    """Every registered gym-space learner is covered by the contract below (CASES come from the registry)."""
    assert set(SPECS) == {a for a, _ in CASES} == set(SMALL) and set(SPECS) <= set(algo_names())
    builtin = {"ppo", "props", "mdpo", "replay_pg", "npg", "trpo", "hnpg", "bc", "iql", "fqe", "sac", "mdpo_off"}
    assert builtin <= set(SPECS)
    with pytest.raises(ConfigError, match="did you mean 'iql'"):
        get_algo("iqll")


@pytest.mark.parametrize("algo,kind", CASES)
def test_learner_contract(algo, kind, tmp_path):
    space = SPACES[kind]
    learner = _make(algo, space)
    batch = _batch(algo, space)
    frozen = copy.deepcopy(batch)
    policy_before = {k: v.clone() for k, v in learner.policy.state_dict().items()}
    before = _params(learner)
    metrics = learner.update(batch)
    # finite float metrics
    assert metrics and all(isinstance(v, float) and np.isfinite(v) for v in metrics.values()), metrics
    # the batch is not mutated
    for f in ("obs", "action", "reward", "next_obs", "terminated", "truncated"):
        assert torch.equal(getattr(batch, f), getattr(frozen, f)), f
    after = _params(learner)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "update changed nothing"
    if get_algo(algo).inputs == "dataset+policy":  # gradient isolation (FQE): the evaluated policy never moves
        assert all(torch.equal(v, learner.policy.state_dict()[k]) for k, v in policy_before.items())
    else:
        assert any(k.startswith("policy.") for k in changed)
    if hasattr(learner.config, "tau"):  # targets move by Polyak averaging, tau of the online change
        tau = learner.config.tau
        for k in [k for k in before if "_target." in k and k.endswith("weight")]:
            online = k.replace("q_target.", "q_net.") if k.startswith("q_target.") else k.replace("_target", "")
            expected = (1 - tau) * before[k] + tau * after[online]
            assert torch.allclose(after[k], expected, atol=1e-6), k
    # state_dict round trip through a real checkpoint, then identical continuation
    run = RunDir(tmp_path / "run")
    path = save_checkpoint(run, 1, {"learner": learner.state_dict()})
    _, state = load_checkpoint(path)
    clone = _make(algo, space, seed=123)
    clone.load_state_dict(state["learner"])
    assert all(torch.equal(v, _params(clone)[k]) for k, v in _params(learner).items())
    batch2 = _batch(algo, space, seed=1)
    torch.manual_seed(7)
    m1 = learner.update(batch2)
    torch.manual_seed(7)
    m2 = clone.update(batch2)
    assert m1 == pytest.approx(m2, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("algo,kind", CASES)
def test_same_seed_same_result(algo, kind):
    space = SPACES[kind]
    results = []
    for _ in range(2):
        learner = _make(algo, space, seed=3)
        torch.manual_seed(11)
        results.append((learner.update(_batch(algo, space)), _params(learner)))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(v, results[1][1][k]) for k, v in results[0][1].items())


def test_ppo_first_minibatch_ratio_is_one():
    """With the rollout policy's own log-probs the first minibatch has ratio 1 (no clipping, KL 0)."""
    space = SPACES["continuous"]
    learner = _make("ppo", space)
    b = _batch("ppo", space)
    with torch.no_grad():
        logp = learner.policy.log_prob(b.obs.reshape(-1, 4), b.action.reshape(-1, 2)).reshape(2, 16)
    b = Segments(b.obs, b.action, b.reward, b.next_obs, b.terminated, b.truncated, logp)
    cfg = learner.config
    learner.config = type(cfg)(**{**cfg.__dict__, "n_epochs": 1, "minibatch_size": 32})
    m = learner.update(b)
    assert m["approx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert m["clip_fraction"] == 0.0
