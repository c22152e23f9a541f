"""`hybridrl ope` on a large dataset: sequential vs ``--workers N`` (Ray tasks), end to end, identical estimates.

Makes ``--candidates`` CartPole policies (64x64 categorical networks, randomly initialised with seeds 0..K-1 and
saved with ``save_policy``: real, distinct candidates, not trained), then runs the real command line
``hybridrl ope --dataset DATA --policy ... --estimators E --fqe-steps S --json`` sequentially and with
``--workers N``, alternating (A B A B), and times each whole process (Python start, loading, Ray start-up included).
It checks that both print the same JSON text, byte for byte (every estimate, interval and diagnostic; comparing
parsed dicts would call NaN fields of degenerate estimates unequal).

    python -m hybridrl.cli collect --env CartPole-v1 --policy random --steps 200000 --out DATA_DIR/cartpole-random-v0
    python benchmarks/ope_parallel.py --dataset DATA_DIR/cartpole-random-v0 --candidates 16 --workers 2 \
        --estimators fqe,pdis,dr --fqe-steps 500 --pairs 1 --out benchmarks/results/ope_parallel.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import machine, save_json  # noqa: E402


def make_candidates(env_id: str, k: int, root: Path) -> list[Path]:
    import torch

    from hybridrl.envs import make_env
    from hybridrl.nn import make_policy, save_policy

    env = make_env(env_id)
    paths = []
    for i in range(k):
        torch.manual_seed(i)
        policy = make_policy(env.observation_space, env.action_space, (64, 64), "tanh")
        paths.append(save_policy(policy, root / f"cand{i:02d}", env_id=env_id))
    return paths


def run(args: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "hybridrl.cli", *args], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"hybridrl {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    json.loads(out.stdout)  # it is JSON (NaN fields of degenerate estimates included, so compare the text)
    return wall, out.stdout


def differences(a: dict, b: dict, path: str = "") -> list[tuple[str, float, float]]:
    """Numbers that differ between two parsed outputs (NaN equals NaN): ``(path, a, b)``."""
    if isinstance(a, dict):
        return [d for k in a for d in differences(a[k], b.get(k) if isinstance(b, dict) else None, f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b):
        return []
    return [(path, a, b)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--candidates", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--estimators", default="fqe,pdis,dr")
    p.add_argument("--fqe-steps", type=int, default=500)
    p.add_argument("--pairs", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/ope_parallel.json")
    a = p.parse_args()
    info = machine(threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        cands = make_candidates(a.env, a.candidates, Path(tmp))
        base = ["ope", "--dataset", a.dataset, "--estimators", a.estimators, "--fqe-steps", str(a.fqe_steps),
                "--json", *[x for c in cands for x in ("--policy", str(c))]]
        seq, par, same, diffs = [], [], [], []
        for _ in range(a.pairs):
            t_seq, r_seq = run([*base, "--no-fqe-batch"])  # per-candidate fits, as each Ray task does
            t_par, r_par = run([*base, "--workers", str(a.workers)])
            seq.append(t_seq)
            par.append(t_par)
            same.append(r_seq == r_par)
            diffs.append(differences(json.loads(r_seq), json.loads(r_par)))
    speedup = statistics.median(s / q for s, q in zip(seq, par))
    info["load_avg_at_end"] = os.getloadavg()[0]
    save_json({"machine": info, "args": vars(a), "sequential_s": seq, "parallel_s": par, "identical": same,
               "differences": diffs,
               "speedup_median": speedup}, a.out)
    print(f"{a.candidates} candidates, {a.estimators}, fqe-steps {a.fqe_steps}, {info['cores']} cores, "
          f"load {info['load_avg_at_start']:.1f} -> {info['load_avg_at_end']:.1f}")
    print(f"sequential {statistics.median(seq):.1f} s; --workers {a.workers} {statistics.median(par):.1f} s; "
          f"speed-up {speedup:.2f}x; identical JSON: {all(same)}")
    for path, x, y in (d for run_diffs in diffs for d in run_diffs):
        print(f"differs: {path}: sequential {x!r}, parallel {y!r}")


if __name__ == "__main__":
    main()
