"""Tests for hybridrl.data.dataset (Minari storage, validation, views) and hybridrl.data.measures."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest
import torch
from minari.data_collector import EpisodeBuffer

from hybridrl.data import Transitions
from hybridrl.data.dataset import SIDECAR, Dataset, dataset_id_for_path
from hybridrl.data.measures import (
    dataset_summary,
    plot_return_histogram,
    state_action_coverage,
    trajectory_quality,
    unique_state_actions,
)
from hybridrl.envs import check_env_matches, make_env
from hybridrl.errors import DatasetError, ShapeError

CARTPOLE = gym.make("CartPole-v1")


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    r = tmp_path / "minari"
    r.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(r))
    return r


def _episodes(n_eps=3, obs_dim=4, seed=0, logp=True, last_truncated=True):
    rng = np.random.default_rng(seed)
    eps = []
    for e in range(n_eps):
        t = 4 + 2 * e
        term = np.zeros(t, bool)
        trunc = np.zeros(t, bool)
        (trunc if (last_truncated and e == n_eps - 1) else term)[-1] = True
        ep = dict(observations=rng.normal(size=(t + 1, obs_dim)).astype(np.float32),
                  actions=rng.integers(0, 2, t), rewards=rng.normal(size=t).astype(np.float32),
                  terminations=term, truncations=trunc)
        if logp:
            ep["behavior_log_prob"] = np.full(t, -np.log(2.0))
        eps.append(ep)
    return eps


def _toy(**kw) -> Dataset:
    return Dataset.from_episodes(_episodes(**kw), CARTPOLE.observation_space, CARTPOLE.action_space,
                                 env_id="CartPole-v1", metadata={"behavior_policy": {"kind": "random",
                                                                                     "description": "uniform"}})


def _write_foreign(ds_id: str, buffers, env="CartPole-v1", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return minari.create_dataset_from_buffers(ds_id, buffers, env=env, algorithm_name="other tool", **kw)


def _tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- in-memory views
def test_from_episodes_layout():
    eps = _episodes()
    ds = _toy()
    assert ds.n_episodes == 3 and len(ds) == ds.n_steps == 4 + 6 + 8
    np.testing.assert_array_equal(ds.episode_starts, [0, 4, 10, 18])
    np.testing.assert_array_equal(ds.episode_lengths(), [4, 6, 8])
    e1 = slice(4, 10)
    np.testing.assert_array_equal(ds.observations[e1], eps[1]["observations"][:-1])
    np.testing.assert_array_equal(ds.next_observations[e1], eps[1]["observations"][1:])
    assert ds.observations.dtype == np.float32 and ds.actions.dtype == np.int64
    assert ds.behavior_log_prob.dtype == np.float64
    assert ds.truncations[-1] and not ds.terminations[-1] and ds.terminations[3]
    assert ds.metadata["mean_return"] == pytest.approx(ds.episode_returns().mean())


def test_mc_returns_match_naive_loop():
    ds = _toy()
    gamma = 0.9
    expect = np.zeros(len(ds))
    for e in range(ds.n_episodes):
        a, b = ds.episode_starts[e], ds.episode_starts[e + 1]
        g = 0.0
        for t in range(b - 1, a - 1, -1):  # truncated last episode: no bootstrap
            g = float(ds.rewards[t]) + gamma * g
            expect[t] = g
    np.testing.assert_allclose(ds.mc_returns(gamma), expect, rtol=1e-12)
    np.testing.assert_allclose(ds.episode_returns(gamma), expect[ds.episode_starts[:-1]])
    np.testing.assert_allclose(ds.episode_returns(), [ds.rewards[a:b].astype(np.float64).sum()
                                                      for a, b in zip(ds.episode_starts[:-1], ds.episode_starts[1:])])


def test_transitions_and_sample():
    ds = _toy()
    batch = ds.sample(32, np.random.default_rng(0), mc_gamma=0.99)
    assert isinstance(batch, Transitions) and len(batch) == 32
    assert batch.obs.shape == (32, 4) and batch.action.dtype == torch.int64
    assert batch.behavior_log_prob is not None and batch.mc_return is not None
    full = ds.transitions()
    assert len(full) == len(ds) and torch.equal(full.next_obs, torch.from_numpy(ds.next_observations))
    assert ds.transitions(np.array([0, 1])).behavior_log_prob.shape == (2,)
    mean, var = ds.obs_stats()
    np.testing.assert_allclose(mean, ds.observations.astype(np.float64).mean(0))
    assert var.shape == (4,)
    assert _toy(logp=False).sample(4, np.random.default_rng(0)).behavior_log_prob is None


def test_episode_without_done_flag_is_marked_truncated():
    eps = _episodes(n_eps=1)
    eps[0]["terminations"][:] = False
    eps[0]["truncations"][:] = False
    ds = Dataset.from_episodes(eps, CARTPOLE.observation_space, CARTPOLE.action_space)
    assert ds.truncations[-1] and ds.env_id is None


def test_validation_errors():
    space = (CARTPOLE.observation_space, CARTPOLE.action_space)
    eps = _episodes()
    eps[1]["rewards"][2] = np.nan
    with pytest.raises(DatasetError, match=r"'rewards'.*episode 1 at step 2"):
        Dataset.from_episodes(eps, *space)
    eps = _episodes()
    eps[2]["observations"][5, 1] = np.inf
    with pytest.raises(DatasetError, match=r"'observations'.*episode 2"):
        Dataset.from_episodes(eps, *space)
    eps = _episodes()
    eps[0]["terminations"][1] = True
    with pytest.raises(DatasetError, match="before its last step"):
        Dataset.from_episodes(eps, *space)
    eps = _episodes()
    eps[0]["actions"] = eps[0]["actions"][:-1]
    with pytest.raises(DatasetError, match="'actions'"):
        Dataset.from_episodes(eps, *space)
    eps = _episodes()
    del eps[1]["behavior_log_prob"]
    with pytest.raises(DatasetError, match="behavior_log_prob"):
        Dataset.from_episodes(eps, *space)
    with pytest.raises(DatasetError, match="shape"):
        Dataset.from_episodes(_episodes(obs_dim=3), *space)
    eps = _episodes()
    eps[0]["actions"][0] = 5
    with pytest.raises(DatasetError, match="outside"):
        Dataset.from_episodes(eps, *space)


def test_normalized_score_and_select_episodes():
    ds = _toy()
    np.testing.assert_allclose(ds.normalized_score(np.array([22.4, 500.0])), [0.0, 100.0])
    ds.env_id = None
    assert ds.normalized_score(1.0) is None
    sub = _toy().select_episodes([2, 0])
    np.testing.assert_array_equal(sub.episode_lengths(), [8, 4])
    assert sub.truncations[7] and sub.terminations[-1]


# ---------------------------------------------------------------------- Minari storage
def test_save_writes_minari_layout_and_load_by_id_and_path(root):
    ds = _toy()
    path = ds.save(root / "toy-random-v0")
    assert (path / "data" / "main_data.hdf5").is_file() and (path / SIDECAR).is_file()
    side = json.loads((path / SIDECAR).read_text())
    assert side["behavior_policy"]["kind"] == "random" and side["env_id"] == "CartPole-v1"
    with h5py.File(path / "data" / "main_data.hdf5") as f:  # T+1 alignment, index 0 = NaN
        lp = f["episode_1/infos/behavior_log_prob"][()]
    assert lp.dtype == np.float64 and lp.shape == (7,) and np.isnan(lp[0])
    np.testing.assert_allclose(lp[1:], ds.behavior_log_prob[4:10])
    # Minari tolerates the sidecar: listing and loading work
    assert "toy-random-v0" in minari.list_local_datasets()
    m = minari.load_dataset("toy-random-v0")
    assert m.total_steps == len(ds) and m.storage.metadata["ref_max_score"] == 500.0
    for source in ("toy-random-v0", path, path / "data", str(path)):
        back = Dataset.load(source)
        assert back.path == path and back.env_id == "CartPole-v1"
        for name in ("observations", "actions", "rewards", "next_observations", "terminations", "truncations",
                     "behavior_log_prob", "episode_starts"):
            np.testing.assert_array_equal(getattr(back, name), getattr(ds, name), err_msg=name)
        assert back.metadata["behavior_policy"] == ds.metadata["behavior_policy"]


def test_save_outside_minari_root_and_namespaced(root, tmp_path):
    ds = _toy()
    p = ds.save(tmp_path / "elsewhere" / "mydata-v3")
    assert json.loads((p / "data" / "metadata.json").read_text())["dataset_id"] == "mydata-v3"
    assert dataset_id_for_path(root / "team" / "cartpole-v1") == "team/cartpole-v1"
    ds.save(root / "team" / "cartpole-v1")
    assert minari.load_dataset("team/cartpole-v1").total_episodes == 3
    assert Dataset.load("team/cartpole-v1").n_episodes == 3


def test_invalid_dataset_name_suggests_valid_one(tmp_path):
    with pytest.raises(DatasetError, match=r"'my_data-v0'"):
        _toy().save(tmp_path / "my data")
    with pytest.raises(DatasetError, match="not a valid Minari dataset id"):
        _toy().save(tmp_path / "cartpole.random")
    assert not any(tmp_path.iterdir())


def test_existing_dataset_not_overwritten(root):
    path = _toy(seed=0).save(root / "keep-v0")
    before = _tree_hash(path)
    with pytest.raises(DatasetError, match="already exists.*overwrite"):
        _toy(seed=1).save(path)
    assert _tree_hash(path) == before
    _toy(seed=1).save(path, overwrite=True)
    assert _tree_hash(path) != before
    np.testing.assert_array_equal(Dataset.load(path).rewards, _toy(seed=1).rewards)
    assert [p.name for p in root.iterdir()] == ["keep-v0"]  # no temporary leftovers
    other = root / "not_a_dataset-v0"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a Minari dataset"):
        _toy().save(other, overwrite=True)


def test_load_dataset_from_other_tool_sb3(root):
    from stable_baselines3 import PPO

    env = gym.make("CartPole-v1")
    model = PPO("MlpPolicy", env, seed=0, device="cpu")
    buffers = []
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        o, a, r, te, tr = [obs], [], [], [], []
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=False)
            obs, rew, term, trunc, _ = env.step(int(action))
            o.append(obs), a.append(int(action)), r.append(rew), te.append(term), tr.append(trunc)
            done = term or trunc
        buffers.append(EpisodeBuffer(observations=np.asarray(o), actions=np.asarray(a), rewards=np.asarray(r),
                                     terminations=np.asarray(te), truncations=np.asarray(tr)))
        obs, _ = env.reset()
    _write_foreign("sb3-ppo-v0", buffers)
    ds = Dataset.load("sb3-ppo-v0")
    assert ds.behavior_log_prob is None and ds.env_id == "CartPole-v1"
    assert ds.n_episodes == 3 and len(ds) == sum(len(b.rewards) for b in buffers)
    np.testing.assert_array_equal(ds.actions[: len(buffers[0].actions)], buffers[0].actions)
    assert ds.metadata["algorithm_name"] == "other tool" and ds.transitions().behavior_log_prob is None
    # without an env spec (spaces only) env_id is unknown
    _write_foreign("nospec-v0", buffers, env=None, observation_space=env.observation_space,
                   action_space=env.action_space)
    assert Dataset.load(root / "nospec-v0").env_id is None
    # saving a foreign dataset again works and keeps it loadable by Minari
    ds.save(root / "resaved-v0")
    assert minari.load_dataset("resaved-v0").total_episodes == 3


def test_load_bad_inputs(root, tmp_path):
    with pytest.raises(DatasetError, match="no dataset at"):
        Dataset.load(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no dataset at.*Close local ids: toy-v0"):
        _toy().save(root / "toy-v0")
        Dataset.load("toy-v1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a Minari dataset directory"):
        Dataset.load(tmp_path / "empty")
    # truncated HDF5
    path = _toy().save(root / "trunc-v0")
    main = path / "data" / "main_data.hdf5"
    main.write_bytes(main.read_bytes()[: main.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"main_data\.hdf5 could not be read"):
        Dataset.load(path)
    main.unlink()
    with pytest.raises(DatasetError, match=r"main_data\.hdf5 is missing"):
        Dataset.load(path)
    # corrupt metadata.json
    path = _toy().save(root / "meta-v0")
    (path / "data" / "metadata.json").write_text("{not json")
    with pytest.raises(DatasetError, match="metadata.json is not readable JSON"):
        Dataset.load(path)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.pop("total_episodes"), r"metadata\.json: field 'total_episodes' is None; expected an integer >= 0"),
    (lambda m: m.update(total_episodes="three"), r"metadata\.json: field 'total_episodes' is 'three'"),
    (lambda m: m.update(observation_space="{broken"), r"metadata\.json: fields 'observation_space'/'action_space'"),
    (lambda m: (m.pop("action_space"), m.pop("env_spec", None)), r"metadata\.json: fields 'observation_space'"),
    (lambda m: m.update(action_space=json.dumps({"type": "Text", "max_length": 3, "min_length": 1,
                                                 "charset": "abc"})), r"metadata\.json: action space Text"),
])
def test_bad_metadata_json_fields_are_blamed_on_metadata_json(root, edit, match):
    """A field error in metadata.json names metadata.json, never main_data.hdf5 (which is intact)."""
    path = _toy().save(root / "fields-v0")
    meta_path = path / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=match) as info:
        Dataset.load(path)
    assert "main_data.hdf5" not in str(info.value)


def test_minari_io_is_the_disk_layer_and_dataset_delegates(root):
    from hybridrl.data import minari_io

    ds = _toy()
    path = minari_io.save_dataset(ds, root / "io-v0")
    back = minari_io.load_dataset(Dataset, "io-v0")
    assert ds.path == path == back.path and np.array_equal(back.rewards, ds.rewards)
    assert minari_io.dataset_id_for_path(root / "ns" / "x-v2") == "ns/x-v2" and minari_io.minari_root() == root


def test_load_rejects_nan_reward_written_by_minari(root):
    eps = _episodes(logp=False)
    eps[1]["rewards"][3] = np.nan
    buffers = [EpisodeBuffer(**ep) for ep in eps]
    _write_foreign("nan-v0", buffers)
    with pytest.raises(DatasetError, match=r"main_data\.hdf5: field 'rewards'.*episode 1 at step 3"):
        Dataset.load("nan-v0")


def test_observation_shape_mismatch_with_env(root):
    ds = Dataset.load(_toy().save(root / "shape-v0"))
    env = make_env("Pendulum-v1")
    with pytest.raises(ShapeError, match="dataset shape-v0: observation shape"):
        check_env_matches(env, ds.observation_space, ds.action_space, "dataset shape-v0")


# ---------------------------------------------------------------------- measures
def test_measures(tmp_path):
    ds = _toy()
    s = dataset_summary(ds)
    assert s["episodes"] == 3 and s["steps"] == 18 and s["has_behavior_log_prob"]
    assert s["return_mean"] == pytest.approx(ds.episode_returns().mean())
    assert s["normalized_score_mean"] == pytest.approx(float(np.mean(ds.normalized_score(ds.episode_returns()))))
    json.dumps(s)
    assert trajectory_quality(ds, random_return=0.0, best_return=2 * s["return_mean"]) == pytest.approx(0.5)
    assert trajectory_quality(ds) == pytest.approx((s["return_mean"] - 22.4) / (500 - 22.4))
    assert unique_state_actions(ds) == len(ds)  # continuous random obs: all distinct
    assert unique_state_actions(ds, bins=1) == 2  # one state bin x two actions
    assert state_action_coverage(ds, ds) == 1.0
    sub = ds.select_episodes([0])
    assert 0 < state_action_coverage(sub, ds) < 1
    assert state_action_coverage(sub, ds, log=True) == pytest.approx(np.log(4) / np.log(18))
    out = plot_return_histogram(ds, tmp_path / "hist.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_needs_overwrite_to_replace_and_names_unwritable_paths(tmp_path):
    from hybridrl.errors import ConfigError

    ds = _toy()
    out = tmp_path / "hist.png"
    out.write_bytes(b"keep")
    with pytest.raises(ConfigError, match=r"hist.png already exists; pass overwrite=True"):
        plot_return_histogram(ds, out)
    assert out.read_bytes() == b"keep"
    assert plot_return_histogram(ds, out, overwrite=True).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="is a directory"):
        plot_return_histogram(ds, tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"cannot write the plot .*file/sub/h.png"):
        plot_return_histogram(ds, tmp_path / "file" / "sub" / "h.png")
