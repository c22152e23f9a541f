"""The Ray runtime's safe defaults: loopback-only listeners, fast clear errors, two simulated nodes."""

import time

import numpy as np
import pytest

from hybridrl.errors import ConfigError
from hybridrl.scale import runtime

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


@pytest.mark.ray
def test_local_runtime_listens_on_loopback_only(ray_runtime):
    psutil = pytest.importorskip("psutil")

    @ray_runtime.remote
    def pid():
        import os

        return os.getpid()

    worker = runtime.get(pid.remote(), timeout_s=60, what="a task")
    listening = {}
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            socks = [c.laddr for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
            listening[(proc.pid, proc.name())] = socks
        except psutil.Error:
            continue
    names = {name for (_, name), socks in listening.items() if socks}
    assert {"gcs_server", "raylet"} <= names, listening  # the runtime's servers were found: the check is not vacuous
    assert any(pid == worker for pid, _ in listening), "the task's worker process is not a child of this process"
    wrong = {key: [a for a in socks if a.ip not in LOOPBACK] for key, socks in listening.items()}
    assert not any(wrong.values()), f"listening beyond loopback: {wrong}"


@pytest.mark.parametrize("address", ["127.0.0.1:1", "192.0.2.1:6379"])
def test_unreachable_address_fails_fast_with_a_clear_error(address):
    t = time.monotonic()
    with pytest.raises(ConfigError, match="cannot reach the Ray cluster at"):
        runtime.connect(address, timeout_s=2)
    assert time.monotonic() - t < 4


def test_auto_address_without_a_cluster(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(ConfigError, match="127.0.0.1:1"):
        runtime.probe("auto", 2)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        runtime.probe("nonsense", 2)


def test_missing_ray_is_named(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees without the extra
    with pytest.raises(ConfigError, match=r"hybridrl\[ray\]"):
        runtime.require_ray()


@pytest.mark.ray
def test_two_simulated_nodes_host_rollout_workers(ray_runtime):
    """Ray's own test cluster: two nodes on loopback; one rollout worker is placed on each (custom resources)."""
    from ray.cluster_utils import Cluster

    from hybridrl.envs import make_env
    from hybridrl.loops.common import EpisodeStats
    from hybridrl.nn import make_policy
    from hybridrl.scale.workers import RayVecEnv

    runtime.shutdown()  # this process's shared runtime; the fixture restarts it for later tests
    runtime._safe_local_env()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 1},
                                                            "node_ip_address": "127.0.0.1"})
    try:
        cluster.add_node(num_cpus=1, resources={"node_b": 1}, node_ip_address="127.0.0.1")
        ray = runtime.connect(cluster.address, timeout_s=60)
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert len(nodes) == 2
        env = make_env("CartPole-v1")
        policy = make_policy(env.observation_space, env.action_space, (8,), "tanh")
        vec = RayVecEnv("CartPole-v1", 2, 1, 0, policy, resources=[{"node_a": 0.5}, {"node_b": 0.5}])
        try:
            placed = vec.node_ids()
            assert set(placed) == nodes, (placed, nodes)
            obs, _ = vec.reset(0)
            _, block = vec.collect_block(policy, obs, 16, EpisodeStats(2))
            assert block["obs"].shape == (16, 2, 4) and np.isfinite(block["behavior_log_prob"]).all()
        finally:
            vec.close()
    finally:
        runtime.shutdown()
        cluster.shutdown()
