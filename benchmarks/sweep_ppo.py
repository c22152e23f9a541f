"""Sweep benchmark of issue 12: 20 PPO trials (4 configurations x 5 seeds) on Hopper-v5 at a short budget, on two
simulated Ray nodes on loopback (``ray.cluster_utils.Cluster``, 1 CPU each), with the driver killed mid-sweep and the
sweep finished with ``--resume``.

Reports: errors, trials per node, Tune overhead per trial, and whether the trials finished before the kill were left
untouched. Run (about 15 minutes on 2 free cores; the budget is reduced, not the project's full PPO budget)::

    nice -n 10 python benchmarks/sweep_ppo.py --out runs/bench_sweep_ppo --steps 5000 --kill-after 8
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SWEEP = """name: ppo-hopper-short
steps: {steps}
eval_episodes: 5
algorithms: [ppo]
envs: [Hopper-v5]
grid: {{lr: [0.0003, 0.001], n_steps: [1024, 2048]}}
seeds: 5
"""


def _done(out: Path) -> dict[str, dict]:
    try:
        trials = json.loads((out / "sweep.json").read_text())["trials"]
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {k: v for k, v in trials.items() if v["status"] == "done"}


def _driver(sweep: Path, out: Path, address: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hybridrl.cli", "sweep", str(sweep), "--out", str(out), "--address", address,
           "--json", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--kill-after", type=int, default=8, help="SIGKILL the driver once this many trials are done")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback nodes; Ray reads it at import
    from ray.cluster_utils import Cluster

    args.out.mkdir(parents=True, exist_ok=False)
    sweep = args.out / "sweep_ppo.yaml"
    sweep.write_text(SWEEP.format(steps=args.steps))
    out = args.out / "sweep"
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    cluster.add_node(**{k: v for k, v in node.items() if k != "include_dashboard"})
    cluster.wait_for_nodes()
    result: dict = {"steps": args.steps, "address": cluster.address}
    try:
        t0 = time.monotonic()
        first = _driver(sweep, out, cluster.address)
        while len(_done(out)) < args.kill_after:
            if first.poll() is not None:
                raise SystemExit(f"driver exited early: {first.communicate()[1][-3000:]}")
            time.sleep(0.5)
        first.send_signal(signal.SIGKILL)  # the driver only: the cluster's nodes stay up, as on a real cluster
        first.wait()
        result["phase1_wall_s"] = time.monotonic() - t0
        before = _done(out)
        stamps = {n: (out / "runs" / n / "report.md").stat().st_mtime_ns for n in before}
        result["done_at_kill"] = len(before)
        time.sleep(2.0)
        t1 = time.monotonic()
        second = _driver(sweep, out, cluster.address, "--resume")
        stdout, stderr = second.communicate(timeout=7200)
        if second.returncode != 0:
            raise SystemExit(f"resumed driver failed: {stderr[-3000:]}")
        result["phase2_wall_s"] = time.monotonic() - t1
        result["resume_summary"] = json.loads(stdout)
        after = json.loads((out / "sweep.json").read_text())["trials"]
        result["untouched_after_resume"] = all(
            (out / "runs" / n / "report.md").stat().st_mtime_ns == t for n, t in stamps.items())
        nodes: dict[str, int] = {}
        for e in after.values():
            if "node_id" in e:
                nodes[e["node_id"][:12]] = nodes.get(e["node_id"][:12], 0) + 1
        result["trials_per_node"] = nodes
        result["statuses"] = {s: sum(1 for e in after.values() if e["status"] == s)
                              for s in ("done", "stopped", "error", "pending")}
        timed = [e for e in after.values() if e.get("train_s")]
        result["train_s_mean"] = sum(e["train_s"] for e in timed) / len(timed)
        result["in_actor_overhead_s_mean"] = sum(e["trial_s"] - e["train_s"] for e in timed) / len(timed)
        n2 = len(after) - len(before)
        sum2 = sum(e["train_s"] for k, e in after.items() if k not in before)
        result["phase2_trials"] = n2
        # upper bound: all of the resumed driver's wall time on 2 slots not spent in `hybridrl train` processes
        result["overhead_per_trial_upper_s"] = (2 * result["phase2_wall_s"] - sum2) / n2
        result["overhead_per_trial_s"] = result["resume_summary"].get("overhead_per_trial_s")  # tune.fit only
        result["total_wall_s"] = time.monotonic() - t0
    finally:
        cluster.shutdown()
    (args.out / "benchmark.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
