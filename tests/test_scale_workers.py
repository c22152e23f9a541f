"""Ray rollout workers: the same Segments as the single-process loop, every on-policy learner, placement."""

import dataclasses
import time

import numpy as np
import pytest
import torch

from hybridrl.algos import get_algo
from hybridrl.data.rollout import SEGMENT_FIELDS
from hybridrl.errors import ConfigError
from hybridrl.loops.on_policy import train_on_policy


def _segments(env_id, algo="ppo", steps=None, **scale):
    """Every Segments batch the learner's update receives in a short real run (seed 3)."""
    spec = get_algo(algo)
    config = dataclasses.replace(spec.config_cls(), **{**spec.tiny, "num_envs": 2})
    if hasattr(config, "n_steps"):
        config = dataclasses.replace(config, n_steps=48)
    if algo == "props":
        config = dataclasses.replace(config, props_n_steps=24)
    torch.manual_seed(3)
    obs_space, act_space = _spaces(env_id)
    learner = spec.learner_cls(config, obs_space, act_space, seed=3)
    seen = []
    update = learner.update

    def recording(seg, **kw):
        seen.append({f: getattr(seg, f).clone() for f in SEGMENT_FIELDS})
        return update(seg, **kw)

    learner.update = recording
    train_on_policy(env_id, config, steps or 3 * 2 * config.n_steps, seed=3, learner=learner, algo=algo,
                    progress=False, **scale)
    return seen


def _spaces(env_id):
    from hybridrl.envs import make_env

    env = make_env(env_id)
    return env.observation_space, env.action_space


def _assert_same(a, b):
    assert len(a) == len(b) and len(a) >= 3
    for x, y in zip(a, b):
        for f in SEGMENT_FIELDS:
            np.testing.assert_array_equal(x[f].numpy(), y[f].numpy(), err_msg=f)


@pytest.mark.ray
def test_workers_give_the_single_process_segments(ray_runtime):
    """PPO on Hopper-v5 (Gaussian policy, running reward scaling, episode ends inside rollouts)."""
    one = _segments("Hopper-v5")
    assert any(s["terminated"].any() or s["truncated"].any() for s in one), "no episode ended: weak test"
    _assert_same(one, _segments("Hopper-v5", workers=1, envs_per_worker=2))
    _assert_same(one, _segments("Hopper-v5", workers=2, envs_per_worker=1))


@pytest.mark.ray
def test_props_discrete_gives_the_single_process_segments(ray_runtime):
    """PROPS (acts with its behaviour policy, raw-reward blocks) on CartPole-v1 (categorical policy)."""
    one = _segments("CartPole-v1", algo="props")
    assert any(s["terminated"].any() for s in one), "no episode ended: weak test"
    _assert_same(one, _segments("CartPole-v1", algo="props", workers=2, envs_per_worker=1))


@pytest.mark.ray
def test_train_cli_with_workers(ray_runtime, tmp_path):
    from typer.testing import CliRunner

    from hybridrl.cli import app
    from hybridrl.runs import load_config, read_metrics

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "ppo", "--env", "CartPole-v1", "--steps", "64", "--out", str(out),
                                      "--set", "n_steps=32", "--set", "minibatch_size=32", "--workers", "2",
                                      "--envs-per-worker", "1", "--eval-episodes", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record = load_config(out / "config.yaml")
    assert record["config"]["num_envs"] == 2 and record["scale"]["workers"] == 2
    assert read_metrics(out / "metrics.csv")["step"][-1] == 64


def test_worker_count_must_match_num_envs():
    config = dataclasses.replace(get_algo("ppo").config_cls(), num_envs=2, n_steps=8, minibatch_size=8)
    with pytest.raises(ConfigError, match="num_envs = 2"):
        train_on_policy("CartPole-v1", config, 16, workers=3, envs_per_worker=1, progress=False)


def test_async_vector_gives_the_sync_segments():
    _assert_same(_segments("Hopper-v5"), _segments("Hopper-v5", vector="async"))


@pytest.mark.subprocess
def test_ray_is_not_imported_without_workers(tmp_path):
    import subprocess
    import sys

    code = ("import sys; import hybridrl.cli; from hybridrl.loops.train import train; "
            f"train('ppo', {str(tmp_path / 'r')!r}, 64, env_id='CartPole-v1', overrides=['n_steps=32', 'num_envs=2'],"
            " eval_episodes=1, progress=False); print('ray' in sys.modules)")
    t = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False", (out.stdout, time.time() - t)
