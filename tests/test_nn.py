"""Tests for hybridrl.nn: the NumPy rollout samplers agree with the PyTorch policies; cached normaliser stats."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from hybridrl.nn import GaussianPolicy, ObsNormalizer, make_policy, numpy_mlp

BOX = gym.spaces.Box(-2.0, 3.0, (3,), np.float32)
OBS = gym.spaces.Box(-np.inf, np.inf, (5,), np.float32)


def _policy(action_space, **kw):
    torch.manual_seed(0)
    policy = make_policy(OBS, action_space, hidden=(16, 16), **kw)
    policy.obs_norm.update(np.random.default_rng(0).normal(2.0, 3.0, (100, 5)))
    with torch.no_grad():  # a non-trivial last layer, so the distribution is not near uniform / zero-mean
        last = policy.mean_net[-1] if hasattr(policy, "mean_net") else policy.logits[-1]
        last.weight.normal_(0, 1.0)
    return policy


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_numpy_mlp_matches_torch(activation):
    torch.manual_seed(1)
    from hybridrl.nn import mlp

    net = mlp(5, 3, (16, 8), activation)
    x = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32)
    np.testing.assert_allclose(numpy_mlp(net)(x), net(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="Linear, Tanh and ReLU"):
        numpy_mlp(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sigmoid()))


def test_obs_normalizer_numpy_and_cache_follow_updates():
    norm = ObsNormalizer(4)
    x = np.random.default_rng(2).normal(5.0, 2.0, (50, 4)).astype(np.float32)
    norm.update(x)
    first = norm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(norm.numpy()(x), first, rtol=1e-5, atol=1e-5)
    assert abs(first.mean()) < 1e-4  # normalised with the statistics of x
    norm.update(x + 10.0)  # the cached float32 stats must be refreshed
    expected = ((x - norm.mean.numpy()) / np.sqrt(norm.var.numpy() + norm.eps)).clip(-10, 10)
    np.testing.assert_allclose(norm(torch.from_numpy(x)).numpy(), expected, rtol=1e-5, atol=1e-5)
    other = ObsNormalizer(4)
    other.load_state_dict(ObsNormalizer(4).state_dict())  # identity stats loaded in place
    other(torch.from_numpy(x))
    other.load_state_dict(norm.state_dict())
    np.testing.assert_allclose(other(torch.from_numpy(x)).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_gaussian_sampler_matches_policy_distribution():
    policy = _policy(BOX, log_std_init=-0.5)
    obs = np.random.default_rng(3).normal(2.0, 3.0, (5,)).astype(np.float32)
    mu = policy.mode(torch.from_numpy(obs)[None])[0].detach().numpy()
    np.testing.assert_allclose(policy.sampler(deterministic=True)(obs), mu, rtol=1e-5, atol=1e-5)
    n = 20_000
    draws = policy.sampler(np.random.default_rng(4))(np.repeat(obs[None], n, 0))
    assert draws.shape == (n, 3) and draws.dtype == np.float32
    std = np.exp(-0.5)
    assert np.all(np.abs(draws.mean(0) - mu) < 5 * std / np.sqrt(n))
    assert np.all(np.abs(draws.std(0) - std) < 0.02)


def test_gaussian_sampler_with_tanh_mean_matches_mode():
    torch.manual_seed(0)
    policy = GaussianPolicy(5, 3, (16,), tanh_mean=True, action_low=[-2.0] * 3, action_high=[3.0] * 3)
    obs = np.random.default_rng(5).normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_allclose(policy.sampler(deterministic=True)(obs),
                               policy.mode(torch.from_numpy(obs)).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_categorical_sampler_matches_probabilities():
    policy = _policy(gym.spaces.Discrete(4))
    obs = np.random.default_rng(6).normal(2.0, 3.0, (5,)).astype(np.float32)
    probs = policy.probs(torch.from_numpy(obs)[None])[0].detach().numpy()
    assert policy.sampler(deterministic=True)(obs) == probs.argmax()
    n = 40_000
    draws = policy.sampler(np.random.default_rng(7))(np.repeat(obs[None], n, 0))
    assert draws.shape == (n,) and draws.dtype == np.int64
    freq = np.bincount(draws, minlength=4) / n
    assert np.all(np.abs(freq - probs) < 5 * np.sqrt(probs * (1 - probs) / n) + 1e-9), (freq, probs)


def test_sampler_default_rng_follows_torch_seed_and_is_a_snapshot():
    policy = _policy(BOX)
    obs = np.ones((3, 5), np.float32)
    torch.manual_seed(11)
    a = policy.sampler()(obs)
    torch.manual_seed(11)
    sample = policy.sampler()
    np.testing.assert_array_equal(sample(obs), a)
    with torch.no_grad():
        policy.mean_net[-1].bias.add_(100.0)  # later updates do not reach an existing sampler
    assert np.all(np.abs(sample(obs)) < 50)


# ------------------------------------------------------------------------------------ saving and loading
def _saved(tmp_path, policy=None):
    from hybridrl.nn import save_policy

    torch.manual_seed(0)
    return save_policy(policy or make_policy(OBS, BOX, hidden=(8,)), tmp_path / "pi", env_id="Foo-v0")


def _edit_meta(path, edit):
    meta = json.loads((path / "policy.json").read_text())
    edit(meta)
    (path / "policy.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["kwargs"].update(hidden="abc"), r"field 'kwargs.hidden' is 'abc'; expected a list of integers"),
    (lambda m: m["kwargs"].update(hidden=[8.5]), r"'kwargs.hidden' is \[8.5\]"),
    (lambda m: m["kwargs"].update(activation="gelu"), r"'kwargs.activation' is 'gelu'; expected one of \['relu'"),
    (lambda m: m["kwargs"].update(obs_dim="5"), r"'kwargs.obs_dim' is '5'; expected an integer >= 1"),
    (lambda m: m["kwargs"].update(normalize_obs="yes"), r"'kwargs.normalize_obs' is 'yes'; expected true or false"),
    (lambda m: m["kwargs"].update(log_std_init=None), r"'kwargs.log_std_init' is None; expected a finite number"),
    (lambda m: m["kwargs"].update(action_low="x"), r"'kwargs.action_low' is 'x'; expected null or a list"),
    (lambda m: m["kwargs"].pop("obs_dim"), r"field 'kwargs' lacks \['obs_dim'\]; GaussianPolicy needs"),
    (lambda m: m["kwargs"].update(depth=3), r"field 'kwargs' has \['depth'\], which GaussianPolicy does not take"),
    (lambda m: m.update(kwargs=[1, 2]), r"field 'kwargs' is \[1, 2\]; expected an object"),
    (lambda m: m.update({"class": 7}), r"field 'class' is 7; expected one of \["),
    (lambda m: m.update({"class": ["GaussianPolicy"]}), r"field 'class' is \['GaussianPolicy'\]"),
    (lambda m: m.update({"class": "MLPPolicy"}), r"field 'class' is 'MLPPolicy'; expected one of"),
    (lambda m: m.update(env_id=3), r"field 'env_id' is 3; expected a string or null"),
])
def test_malformed_policy_json_names_file_field_and_expected_value(tmp_path, edit, match):
    from hybridrl.errors import PolicyError
    from hybridrl.nn import load_policy

    path = _saved(tmp_path)
    _edit_meta(path, edit)
    with pytest.raises(PolicyError, match=match) as info:
        load_policy(path)
    assert "policy.json" in str(info.value) and "model.safetensors" not in str(info.value)


def test_policy_json_kwargs_the_constructor_rejects(tmp_path):
    from hybridrl.envs.toy import TabularPolicy
    from hybridrl.errors import PolicyError
    from hybridrl.nn import load_policy

    path = _saved(tmp_path, TabularPolicy([[0.5, 0.5], [0.0, 1.0]]))
    _edit_meta(path, lambda m: m["kwargs"].update(probs=[[0.5, 0.7], [0.0, 1.0]]))
    with pytest.raises(PolicyError, match=r"policy.json: field 'kwargs' does not describe a valid TabularPolicy: "
                                          r"TabularPolicy: probs must be a row-stochastic"):
        load_policy(path)


def test_policy_json_that_is_not_an_object_or_not_json(tmp_path):
    from hybridrl.errors import PolicyError
    from hybridrl.nn import load_policy

    path = _saved(tmp_path)
    for text, match in (("[1, 2]", "holds list; expected a JSON object"), ("{not json", "is not valid JSON")):
        (path / "policy.json").write_text(text)
        with pytest.raises(PolicyError, match=match) as info:
            load_policy(path)
        assert "policy.json" in str(info.value) and "model.safetensors" not in str(info.value)


def test_bad_weights_are_blamed_on_model_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    from hybridrl.errors import PolicyError
    from hybridrl.nn import load_policy

    path = _saved(tmp_path)
    state = load_file(str(path / "model.safetensors"))
    for value in (float("nan"), float("inf"), float("-inf")):
        bad = dict(state)
        bad["mean_net.2.weight"] = bad["mean_net.2.weight"].clone()
        bad["mean_net.2.weight"][0, 0] = value
        save_file(bad, str(path / "model.safetensors"))
        with pytest.raises(PolicyError, match=r"model.safetensors: tensor 'mean_net.2.weight' holds 1 NaN/inf values"):
            load_policy(path)
    save_file({k: v for k, v in state.items() if k != "log_std"}, str(path / "model.safetensors"))
    with pytest.raises(PolicyError, match=r"model.safetensors does not fit the GaussianPolicy that policy.json"):
        load_policy(path)
    (path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(PolicyError, match=r"model.safetensors could not be read"):
        load_policy(path)


def test_register_policy_class_for_user_classes(tmp_path):
    from hybridrl.errors import PolicyError
    from hybridrl.nn import POLICY_CLASSES, CategoricalPolicy, load_policy, register_policy_class, save_policy

    class MyPolicy(CategoricalPolicy):
        pass

    with pytest.raises(PolicyError, match="not a registered policy class"):
        save_policy(MyPolicy(3, 2), tmp_path / "a")
    register_policy_class(MyPolicy)
    try:
        save_policy(MyPolicy(3, 2), tmp_path / "a")
        assert type(load_policy(tmp_path / "a")) is MyPolicy
        with pytest.raises(PolicyError, match="already registered"):
            register_policy_class(type("MyPolicy", (CategoricalPolicy,), {}))
        with pytest.raises(PolicyError, match="Policy subclass"):
            register_policy_class(int)
    finally:
        POLICY_CLASSES.pop("MyPolicy")


@pytest.mark.subprocess
def test_saved_tabular_policy_loads_in_a_process_that_imports_only_hybridrl_nn(tmp_path):
    """Policy classes are found by an explicit registry, not by whatever modules happen to be imported."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    save = ("from hybridrl.envs.toy import TabularPolicy; from hybridrl.nn import save_policy; "
            f"save_policy(TabularPolicy([[0.25, 0.75], [1.0, 0.0]]), {str(tmp_path / 'pi')!r})")
    load = ("import sys; from hybridrl.nn import load_policy; import torch; "
            "assert 'hybridrl.envs' not in sys.modules; "
            f"p = load_policy({str(tmp_path / 'pi')!r}); print(type(p).__name__, p.probs(torch.eye(2)).tolist())")
    for code in (save, load):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "TabularPolicy" and "[1.0, 0.0]" in proc.stdout
