"""Loop scaffolding: checkpoint on SIGINT and resume (on-policy, offline, off-policy), the wall-time checkpoint
default, triggers and metric means, and the uniform loop keywords."""

from __future__ import annotations

import pytest

from hybridrl.errors import ConfigError
from hybridrl.runs import (
    RunDir,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_metrics,
)


def _interrupt_when_logged(run, rows: int = 1):
    """A timer thread that sends SIGINT to the main thread once the loop has logged ``rows`` metric rows."""
    import _thread
    import threading
    import time

    def watch():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if run.metrics_csv.exists() and len(run.metrics_csv.read_text().splitlines()) > rows:
                _thread.interrupt_main()
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_on_policy_loop_checkpoints_on_sigint_and_resumes(tmp_path):
    """SIGINT during a CartPole PPO run: Interrupted(step, checkpoint) after a completed update; resume finishes."""
    from hybridrl.algos.ppo import PPOConfig
    from hybridrl.errors import Interrupted
    from hybridrl.loops.on_policy import train_on_policy

    cfg = PPOConfig(num_envs=2, n_steps=16, minibatch_size=16, n_epochs=1, hidden=(8,))
    run = RunDir.create(tmp_path / "ppo")
    _interrupt_when_logged(run)
    with pytest.raises(Interrupted) as info:
        train_on_policy("CartPole-v1", cfg, 10_000_000, run=run, seed=0, progress=False)
    e = info.value
    assert 0 < e.step < 10_000_000 and e.step % 32 == 0 and e.signal_number == 2
    assert e.checkpoint == latest_checkpoint(run) and load_checkpoint(e.checkpoint)[0] == e.step
    assert "interrupted at step" in str(e)
    learner = train_on_policy("CartPole-v1", cfg, e.step + 64, run=run, seed=0, resume=True, progress=False)
    assert load_checkpoint(latest_checkpoint(run))[0] == e.step + 64 and learner is not None


def test_offline_loop_checkpoints_on_sigint_and_resumes(tmp_path):
    from hybridrl.algos.bc import BCConfig
    from hybridrl.data.collect import collect
    from hybridrl.errors import Interrupted
    from hybridrl.loops.offline import train_offline

    data = collect("hybridrl/Chain-v0", None, 200, seed=0, progress=False)
    run = RunDir.create(tmp_path / "bc")
    _interrupt_when_logged(run)
    with pytest.raises(Interrupted) as info:
        train_offline("bc", data, BCConfig(hidden=(8,)), 100_000_000, run=run, log_every=5, progress=False)
    step = info.value.step
    assert 5 <= step < 100_000_000 and load_checkpoint(info.value.checkpoint)[0] == step
    train_offline("bc", data, BCConfig(hidden=(8,)), step + 7, run=run, log_every=5, resume=True, progress=False)
    assert load_checkpoint(latest_checkpoint(run))[0] == step + 7
    assert read_metrics(run.metrics_csv)["step"].max() == step + 7


def test_default_checkpoint_interval_is_wall_time(tmp_path, monkeypatch):
    """Without ``checkpoint_every`` the loops checkpoint every DEFAULT_CHECKPOINT_SECONDS (here 0: every update)."""
    from hybridrl.algos.ppo import PPOConfig
    from hybridrl.loops import common
    from hybridrl.loops.on_policy import train_on_policy

    cfg = PPOConfig(num_envs=1, n_steps=8, minibatch_size=8, n_epochs=1, hidden=(8,))
    run = RunDir.create(tmp_path / "default")
    train_on_policy("CartPole-v1", cfg, 32, run=run, progress=False)
    assert [s for s, _ in list_checkpoints(run)] == [32]  # 10 minutes never passed: only the end
    monkeypatch.setattr(common, "DEFAULT_CHECKPOINT_SECONDS", 0.0)
    run = RunDir.create(tmp_path / "timed")
    train_on_policy("CartPole-v1", cfg, 32, run=run, progress=False)
    assert [s for s, _ in list_checkpoints(run)] == [24, 32]  # every update (the last two are kept)


def test_every_and_metric_means():
    from hybridrl.loops.common import Every, MetricMeans

    every = Every(10, step=0)
    assert [s for s in range(0, 45, 4) if every(s)] == [12, 20, 32, 40]
    assert not any(Every(None)(s) for s in range(100))
    resumed = Every(10, step=17)  # a run resumed off the grid fires on the grid
    assert [s for s in range(18, 45, 4) if resumed(s)] == [22, 30, 42]
    means = MetricMeans()
    means.add({"a": 1.0})
    means.add({"a": 3.0, "b": 2.0})
    assert means.pop() == {"a": 2.0, "b": 1.0} and means.pop() == {}


def test_off_policy_loop_checkpoints_on_sigint_and_resumes(tmp_path):
    from hybridrl.algos.sac import SACConfig
    from hybridrl.errors import Interrupted
    from hybridrl.loops.off_policy import train_off_policy

    cfg = SACConfig(hidden=(8,), learning_starts=10, batch_size=8, buffer_size=1000)
    run = RunDir.create(tmp_path / "sac")
    _interrupt_when_logged(run)
    with pytest.raises(Interrupted) as info:
        train_off_policy("Pendulum-v1", cfg, 10_000_000, run=run, log_every=5, progress=False)
    step = info.value.step
    assert 5 <= step < 10_000_000 and load_checkpoint(info.value.checkpoint)[0] == step
    train_off_policy("Pendulum-v1", cfg, step + 3, run=run, log_every=5, resume=True, progress=False)
    assert load_checkpoint(latest_checkpoint(run))[0] == step + 3


def test_every_loop_accepts_the_uniform_keywords(tmp_path):
    """``loops.train`` calls each loop with the same keywords (unused ones accepted, a misplaced dataset refused)."""
    from hybridrl.algos.bc import BCConfig
    from hybridrl.algos.ppo import PPOConfig
    from hybridrl.algos.sac import SACConfig
    from hybridrl.data.collect import collect
    from hybridrl.loops.off_policy import train_off_policy
    from hybridrl.loops.offline import train_offline
    from hybridrl.loops.on_policy import train_on_policy

    data = collect("hybridrl/Chain-v0", None, 50, seed=0, progress=False)
    common = dict(run=None, seed=0, resume=False, checkpoint_every=None, progress=False, record=None)
    train_on_policy(config=PPOConfig(n_steps=8, minibatch_size=8, hidden=(8,)), steps=8, env_id="CartPole-v1",
                    dataset=None, algo="ppo", **common)
    train_off_policy(config=SACConfig(hidden=(8,), learning_starts=2, batch_size=4), steps=4, env_id="Pendulum-v1",
                     dataset=None, algo="sac", **common)
    train_offline(config=BCConfig(hidden=(8,)), steps=3, env_id="hybridrl/Chain-v0", dataset=data, algo="bc", **common)
    with pytest.raises(ConfigError, match="without --dataset"):
        train_off_policy(config=SACConfig(), steps=4, env_id="Pendulum-v1", dataset=data, algo="sac", **common)
    with pytest.raises(ConfigError, match="ppo does not use offline data"):
        train_on_policy(config=PPOConfig(n_steps=8, minibatch_size=8), steps=8, env_id="hybridrl/Chain-v0",
                        dataset=data, algo="ppo", **common)
