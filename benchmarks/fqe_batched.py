"""Issue 10 speed targets on a 1M-transition dataset with 10 candidates: IS-family estimators, and FQE fitted
sequentially (one :func:`hybridrl.algos.fqe.fit` per candidate) vs batched
(:func:`hybridrl.algos.fqe_batched.fit_batched`).

Candidates: 10 real policy objects built with ``make_policy`` for the dataset's spaces (64x64 tanh networks, seeds
0..9) whose output layer is scaled by 1, 10, 20, ... 90 (inverse temperature), so they range from near-uniform to
near-deterministic and differ in value. Their true discounted values come from ``--truth-episodes`` online episodes
of the stochastic policy (``evaluate_policy(deterministic=False)``).

(a) pdis, snpdis, tis, sntis (:func:`hybridrl.ope.estimate_value`, the dataset's logged behaviour log-probs, the
    default 1,000-resample bootstrap interval) for all candidates: wall and CPU time.
(b) FQE with the default FQEConfig and ``--fqe-steps`` steps for each candidate, without early stop (both run every
    step: ``min_steps = max_steps``), alternating sequential / batched ``--pairs`` times; wall and CPU time
    (``time.process_time``), the ratio, and the estimates Vhat(s_0) of both with their largest difference.
``--layers``: only the micro-benchmark of one FQE-shaped update (K = 10 MLPs 256x256, batch 256) with K separate
modules, ``torch.func`` (stack_module_state + functional_call + vmap) and stacked ``torch.baddbmm`` layers.

    python -m hybridrl.cli collect --env CartPole-v1 --policy random --steps 1000000 --out DATA/cartpole-random-1m-v0
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/fqe_batched.py --dataset DATA/cartpole-random-1m-v0 \
        --fqe-steps 1000 --pairs 2 --out benchmarks/results/fqe_batched.json
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/fqe_batched.py --layers --out benchmarks/results/fqe_layers.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, save_json  # noqa: E402


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def candidates(dataset, k: int):
    from hybridrl.nn import make_policy

    pols = {}
    for i in range(k):
        torch.manual_seed(i)
        p = make_policy(dataset.observation_space, dataset.action_space, (64, 64), "tanh")
        head = p.logits[-1] if hasattr(p, "logits") else p.mean_net[-1]
        with torch.no_grad():
            head.weight.mul_(max(1.0, 10.0 * i))
        pols[f"cand{i}"] = p
    return pols


def layers(hidden: tuple[int, int], k: int = 10, reps: int = 200) -> dict:
    """One update (forward, backward, Adam) of K MLPs (4 -> hidden -> 2, CartPole's Q-network) on a shared batch of
    256, ms."""
    from torch.func import functional_call, stack_module_state, vmap

    from hybridrl.nn import mlp

    torch.manual_seed(0)
    nets = [mlp(4, 2, hidden, "relu") for _ in range(k)]
    x, y = torch.randn(256, 4), torch.randn(256, 2)
    opt_sep = torch.optim.Adam([p for n in nets for p in n.parameters()], lr=3e-4)

    def separate():
        loss = sum(((n(x) - y) ** 2).mean() for n in nets)
        opt_sep.zero_grad()
        loss.backward()
        opt_sep.step()

    params, buffers = stack_module_state(nets)
    params = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
    base = mlp(4, 2, hidden, "relu").to("meta")
    opt_vm = torch.optim.Adam(params.values(), lr=3e-4)

    def fmodel(p, b, inp):
        return functional_call(base, (p, b), (inp,))

    def vmapped():
        out = vmap(fmodel, in_dims=(0, 0, None))(params, buffers, x)  # [K, B, 2]
        loss = ((out - y) ** 2).mean((1, 2)).sum()
        opt_vm.zero_grad()
        loss.backward()
        opt_vm.step()

    from hybridrl.algos.fqe_batched import BatchedQ

    stacked = []
    for i in range(0, 6, 2):
        stacked += [torch.stack([n[i].weight.detach() for n in nets]).clone().requires_grad_(),
                    torch.stack([n[i].bias.detach() for n in nets]).clone().requires_grad_()]
    opt_bmm = torch.optim.Adam(stacked, lr=3e-4)
    xk = x.unsqueeze(0).expand(k, -1, -1)

    def bmm():
        out = BatchedQ.forward(stacked, xk, torch.relu)
        loss = ((out - y) ** 2).mean((1, 2)).sum()
        opt_bmm.zero_grad()
        loss.backward()
        opt_bmm.step()

    res = {}
    for name, fn in (("separate", separate), ("vmap", vmapped), ("baddbmm", bmm)) * 2:  # twice: alternate, keep 2nd
        for _ in range(10):
            fn()
        _, wall, cpu = timed(lambda fn=fn: [fn() for _ in range(reps)])
        res[name] = {"ms_per_update_wall": 1000 * wall / reps, "ms_per_update_cpu": 1000 * cpu / reps}
        print(name, res[name], flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset")
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--fqe-steps", type=int, default=1000)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--gamma", type=float, default=0.99)
    ap.add_argument("--truth-episodes", type=int, default=30)
    ap.add_argument("--hidden", default="256,256", help="Q-network hidden widths (FQEConfig default 256,256).")
    ap.add_argument("--skip-is", action="store_true", help="Only the FQE comparison.")
    ap.add_argument("--skip-fqe", action="store_true", help="Only the IS-family timings.")
    ap.add_argument("--layers", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.layers:
        res = {h: layers(tuple(int(x) for x in h.split(","))) for h in ("256,256", "64,64")}
        save_json({"machine": machine(1), "layers": res}, args.out)
        return

    from hybridrl.algos.fqe import FQEConfig, fit
    from hybridrl.algos.fqe_batched import fit_batched
    from hybridrl.data.dataset import Dataset
    from hybridrl.loops.evaluate import evaluate_policy
    from hybridrl.ope import estimate_value

    ds = Dataset.load(args.dataset)
    pols = candidates(ds, args.candidates)
    print(f"{args.dataset}: {len(ds)} transitions, {ds.n_episodes} episodes, {len(pols)} candidates", flush=True)
    out = {"machine": machine(1), "dataset": args.dataset, "transitions": len(ds), "episodes": ds.n_episodes,
           "candidates": len(pols), "gamma": args.gamma, "threads": torch.get_num_threads()}

    # (a) IS family
    is_res, is_time = {}, {}
    core_names = ("pdis", "snpdis", "tis", "sntis")
    for est in () if args.skip_is else core_names:
        vals, wall, cpu = timed(lambda est=est: {n: estimate_value(est, ds, p, args.gamma, seed=0)
                                                 for n, p in pols.items()})
        is_res[est] = {n: [r.estimate, r.ci_low, r.ci_high, r.degenerate] for n, r in vals.items()}
        is_time[est] = {"wall_s": wall, "cpu_s": cpu}
        print(est, is_time[est], flush=True)
    if not args.skip_is:  # where the time goes: log-ratios once per candidate, then the pure [E, T] estimators
        from hybridrl.ope import core, episode_arrays, importance_weights

        parts = {"log_ratio_s": 0.0, "episode_arrays_s": 0.0, **{f"{e}_point_s": 0.0 for e in core_names}}
        for p in pols.values():
            lr, _, c = timed(lambda p=p: importance_weights(ds, p))
            parts["log_ratio_s"] += c
            (arr, _, c) = timed(lambda lr=lr: (episode_arrays(ds, lr), episode_arrays(ds, ds.rewards)[0]))
            parts["episode_arrays_s"] += c
            for e in core_names:
                parts[f"{e}_point_s"] += timed(
                    lambda e=e, arr=arr: getattr(core, e)(arr[0][0], arr[1], arr[0][1], args.gamma))[2]
        is_time["breakdown_cpu_s_all_candidates"] = parts
        print("breakdown", parts, flush=True)
    if not args.skip_is:  # the user's path: one evaluate_ope call, the four estimators share each candidate's arrays
        from hybridrl.ope import evaluate_ope

        _, wall, cpu = timed(lambda: evaluate_ope(ds, pols, core_names, gamma=args.gamma, seed=0))
        is_time["evaluate_ope_all_four"] = {"wall_s": wall, "cpu_s": cpu}
        print("evaluate_ope, four IS estimators, all candidates", is_time["evaluate_ope_all_four"], flush=True)
    out["is"] = {"estimates": is_res, "time": is_time,
                 "total_wall_s": sum(is_time[e]["wall_s"] for e in is_res),
                 "total_cpu_s": sum(is_time[e]["cpu_s"] for e in is_res)}
    if args.skip_fqe:
        save_json(out, args.out)
        return

    # (b) FQE: sequential vs batched, same steps, no early stop, alternating
    cfg = FQEConfig(gamma=args.gamma, hidden=tuple(int(h) for h in args.hidden.split(",")))
    n = args.fqe_steps
    kw = dict(max_steps=n, seed=0, min_steps=n)
    runs = []
    for pair in range(args.pairs):
        for mode in (("seq", "bat") if pair % 2 == 0 else ("bat", "seq")):
            if mode == "seq":
                fits, wall, cpu = timed(lambda: [fit(ds, p, cfg, **kw) for p in pols.values()])
            else:
                fits, wall, cpu = timed(lambda: fit_batched(ds, list(pols.values()), cfg, **kw))
            v0 = [r.v0_mean for _, r in fits]
            runs.append({"mode": mode, "pair": pair, "wall_s": wall, "cpu_s": cpu, "v0": v0,
                         "converged": [r.converged for _, r in fits]})
            print(mode, f"wall {wall:.1f} s cpu {cpu:.1f} s", [round(v, 3) for v in v0], flush=True)
    seq = [r for r in runs if r["mode"] == "seq"]
    bat = [r for r in runs if r["mode"] == "bat"]
    out["fqe"] = {"steps": n, "config": f"FQEConfig defaults (batch 256, tau 0.05), hidden {cfg.hidden}", "runs": runs,
                  "wall_ratio": float(np.mean([r["wall_s"] for r in seq]) / np.mean([r["wall_s"] for r in bat])),
                  "cpu_ratio": float(np.mean([r["cpu_s"] for r in seq]) / np.mean([r["cpu_s"] for r in bat])),
                  "max_abs_v0_diff": float(np.max(np.abs(np.array(seq[0]["v0"]) - np.array(bat[0]["v0"]))))}
    print("fqe ratios", out["fqe"]["wall_ratio"], out["fqe"]["cpu_ratio"], out["fqe"]["max_abs_v0_diff"], flush=True)

    if args.truth_episodes:
        out["truth"] = {name: evaluate_policy(p, ds.env_id, args.truth_episodes, seed=50_000, deterministic=False,
                                              gamma=args.gamma)["discounted_mean"] for name, p in pols.items()}
        print("truth", out["truth"], flush=True)
    save_json(out, args.out)


if __name__ == "__main__":
    main()
