"""OPE accuracy on real control: CartPole-v1 / Hopper-v5, 5 candidates of different quality, online truths.

For one env:
1. Behaviour: PPO for ``--behavior-steps`` env steps.
2. Two datasets of ``--data-steps`` steps each: "logged", the stochastic PPO policy with its log-probabilities
   (``--logged-epsilon``: optionally epsilon-greedy, log-probabilities of the mixture logged); and "unlogged", an
   epsilon-greedy PPO (``--epsilon``; Box envs: Gaussian action noise ``--action-noise`` around the mean) whose
   log-probabilities are dropped, so OPE must estimate the behaviour policy. Several values (e.g. ``--epsilon 0.1
   0.4 0.7 1.0``) split the steps equally between behaviours of different noise levels, one collection each (a
   multi-logger dataset: each episode's log-probabilities are those of the policy that acted in it).
3. Five candidates: the behaviour PPO, two shorter PPO runs (``--ppo-steps``), BC on the unlogged data, and BC with
   few steps (``--bc-short``).
4. Truth: each candidate's discounted return (gamma 0.99) of its stochastic policy over ``--truth-episodes`` online
   episodes.
5. OPE with every estimator at default settings (FQE: the horizon-fitted budget with early stop; intervals:
   bootstrap), per dataset: relative error per candidate, rank correlation, regret@1, degeneracy, FQE convergence.

Full budget (not in CI): ``python benchmarks/ope_control.py --env CartPole-v1`` and ``--env Hopper-v5``; the runs in
docs/benchmarks.md add mixed noise levels (``--epsilon 0.1 0.4 0.7 1.0 --logged-epsilon 0 0.25 0.5 0.75 1.0``;
Hopper ``--action-noise 0.1 0.3 0.5 --logged-epsilon 0 0.25 0.5``). ``--report FILE`` prints a results file's tables.
Results: ``benchmarks/results/ope_control_<env>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from common import machine, save_json

from hybridrl.data.collect import collect
from hybridrl.loops.evaluate import evaluate_policy
from hybridrl.loops.train import train
from hybridrl.nn import load_policy
from hybridrl.ope import ESTIMATORS, evaluate_ope, select

GAMMA = 0.99


def _cell(est: dict, truth: float) -> str:
    """An estimate with its relative error, or why it is not usable (the result's own flags)."""
    why = []
    d = est["diagnostics"]
    labels = {"effective sample": lambda: f"ESS {d['ess']:.1f}",
              "weights average": lambda: f"mean w {d['mean_weight']:.2g}",
              "lies outside": lambda: "out of range", "overflow": lambda: "overflow"}
    for r in est["degenerate_reasons"]:
        why.append(next((f() for k, f in labels.items() if k in r), "not finite"))
    if d.get("fqe_converged", 1.0) != 1.0:
        why.append("FQE not converged")
    if d.get("weights_ok", 1.0) != 1.0:
        why.append("weights not ok")
    rel = (est["estimate"] - truth) / abs(truth)
    text = f"{est['estimate']:.4g} ({rel:+.1%})" if abs(rel) < 10 else f"{est['estimate']:.3g}"
    return text if not why else f"{text}, **flagged**: {', '.join(dict.fromkeys(why))}"


def report(path: str) -> str:
    """Markdown tables of a results JSON: per dataset, candidates x estimators, then rank correlation/regret@1."""
    import json

    r = json.load(open(path))
    truth, out = r["truth"], []
    for dname in ("logged", "unlogged"):
        if dname not in r:
            continue
        res = r[dname]
        per, names = res["per_estimator"], list(truth)
        out += [f"**{dname}** ({res['episodes']} episodes, {res['steps']} steps; OPE {res['ope_s']:.0f} s)", "",
                "| candidate | truth (± s.e.) | " + " | ".join(per) + " |", "| --- | ---: |" + " ---: |" * len(per)]
        for n in names:
            t = truth[n]["discounted_mean"]
            se = truth[n]["discounted_std"] / r["args"]["truth_episodes"] ** 0.5
            out.append(f"| {n} | {t:.2f} ± {se:.2f} | " + " | ".join(_cell(p["estimates"][n], t) for p in per.values())
                       + " |")
        out.append("| rank corr. / regret@1 | | " + " | ".join(
            f"{p['rank_correlation']:.2f} / {p['regret_at_1']:.1f}" + ("" if p["usable"] else " (not all usable)")
            for p in per.values()) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    if sys.argv[1:2] == ["--report"]:
        print(report(sys.argv[2]))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " (--report FILE: its tables in Markdown)")
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--behavior-steps", type=int, default=100_000)
    p.add_argument("--ppo-steps", type=int, nargs=2, default=[10_000, 30_000])
    p.add_argument("--bc-steps", type=int, default=5_000)
    p.add_argument("--bc-short", type=int, default=100)
    p.add_argument("--data-steps", type=int, default=50_000)
    p.add_argument("--epsilon", type=float, nargs="+", default=[0.3])
    p.add_argument("--logged-epsilon", type=float, nargs="+", default=[0.0])
    p.add_argument("--action-noise", type=float, nargs="+", default=[0.3])
    p.add_argument("--truth-episodes", type=int, default=50)
    p.add_argument("--fqe-steps", type=int, default=None, help="FQE budget (default: horizon-fitted, early stop)")
    p.add_argument("--datasets", default="logged,unlogged")
    p.add_argument("--estimators", default=",".join(ESTIMATORS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="runs/ope_control")
    p.add_argument("--out", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse", action="store_true", help="reuse trained policies and datasets found under --work")
    p.add_argument("--weight-steps", type=int, default=2000, help="DualDICE/MWL/MQL gradient steps (marginal ones)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = a.out or f"benchmarks/results/ope_control_{a.env.split('-')[0].lower()}.json"
    work = os.path.join(a.work, a.env)
    t0 = time.perf_counter()
    results = {"machine": machine(a.threads), "args": vars(a), "gamma": GAMMA}

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.0f} s] {msg}", file=sys.stderr, flush=True)

    from hybridrl.data.dataset import Dataset

    dirs: dict[str, str] = {}  # candidate -> its directory under work (the key of its cached truth)

    def run_or_reuse(name: str, algo: str, steps: int, **kw):
        on = os.path.basename(kw.get("dataset", "unlogged-v0"))  # BC: one directory per training dataset
        path = os.path.join(work, name if on == "unlogged-v0" else f"{name}-on-{on}")
        if not (a.reuse and os.path.exists(os.path.join(path, "policy", "policy.json"))):
            log(f"{name}: {algo} for {steps} steps")
            train(algo, path, steps, env_id=a.env, eval_episodes=0, progress=False, overwrite=True, **kw)
        dirs[name] = os.path.basename(path)
        return load_policy(os.path.join(path, "policy"), a.env)

    def data_or_reuse(name: str, policy, seed: int, key: str, levels: list[float]) -> Dataset:
        """``a.data_steps`` steps split equally over the noise ``levels`` (one collection each), cached by name."""
        default = levels == [0.0] or (name == "unlogged" and levels == [0.3])
        tag = "_".join(f"{lvl:g}".replace(".", "p") for lvl in levels)  # a valid Minari id
        path = os.path.join(work, f"{name}-v0" if default else f"{name}-{key}{tag}-v0")
        if not (a.reuse and os.path.exists(path)):
            log(f"dataset {os.path.basename(path)}: {a.data_steps} steps, {key} {levels}")
            parts = [collect(a.env, policy, a.data_steps // len(levels), seed=seed + 100 * i, progress=False,
                             **({key: lvl} if lvl > 0 else {})) for i, lvl in enumerate(levels)]
            Dataset.concatenate(parts).save(path, overwrite=True)
        return Dataset.load(path)

    behavior = run_or_reuse("behavior", "ppo", a.behavior_steps, seed=a.seed)
    discrete = not hasattr(behavior, "mean")
    key, levels = ("epsilon", a.epsilon) if discrete else ("action_noise", a.action_noise)
    data = {"logged": data_or_reuse("logged", behavior, a.seed + 1, "epsilon", a.logged_epsilon),
            "unlogged": data_or_reuse("unlogged", behavior, a.seed + 2, key, levels)}
    data["unlogged"].behavior_log_prob = None  # OPE must estimate the behaviour policy
    cands = {"ppo-behavior": behavior}
    dirs["ppo-behavior"] = dirs.pop("behavior")
    for steps in a.ppo_steps:
        cands[f"ppo-{steps}"] = run_or_reuse(f"ppo-{steps}", "ppo", steps, seed=a.seed + 1)
    for name, steps in (("bc", a.bc_steps), ("bc-short", a.bc_short)):
        cands[name] = run_or_reuse(name, "bc", steps, dataset=str(data["unlogged"].path), seed=a.seed)
    log(f"truths: {a.truth_episodes} online episodes per candidate (stochastic policies)")
    truth = {}
    truth_path = os.path.join(work, f"truth_{a.truth_episodes}.json")
    if a.reuse and os.path.exists(truth_path):
        import json

        truth = json.load(open(truth_path))
    for n, pol in cands.items():
        if dirs[n] in truth:
            continue
        ev = evaluate_policy(pol, a.env, a.truth_episodes, seed=90_000, deterministic=False, gamma=GAMMA)
        truth[dirs[n]] = {"discounted_mean": ev["discounted_mean"], "discounted_std": ev["discounted_std"],
                          "return_mean": ev["mean"]}
        log(f"  {n}: discounted {ev['discounted_mean']:.2f} ± {ev['discounted_std']:.2f} (return {ev['mean']:.1f})")
    save_json(truth, truth_path)
    truth = {n: truth[dirs[n]] for n in cands}
    results["truth"] = truth
    results["setup_s"] = time.perf_counter() - t0
    ests = a.estimators.split(",")
    if discrete:  # kernel IS is for continuous actions only
        ests = [e for e in ests if e not in ("kis", "ksnis", "kdr", "ksndr")]
    true_j = {n: truth[n]["discounted_mean"] for n in cands}
    for dname in a.datasets.split(","):
        ds = data[dname]
        log(f"OPE on {dname} ({ds.n_episodes} episodes, {len(ds)} steps): {', '.join(ests)}")
        t1 = time.perf_counter()
        from hybridrl.ope.weights import WeightConfig

        res = evaluate_ope(ds, cands, estimators=ests, gamma=GAMMA, fqe_steps=a.fqe_steps, seed=a.seed,
                           progress=True, weight_config=WeightConfig(steps=a.weight_steps))
        per = {}
        for e in ests:
            rel = {n: abs(res[n][e].estimate - true_j[n]) / abs(true_j[n]) for n in cands}
            sel = select({n: res[n][e] for n in cands}, 1, true_j)
            per[e] = {"estimates": {n: res[n][e].to_dict() for n in cands}, "relative_error": rel,
                      "max_relative_error": max(rel.values()), "rank_correlation": sel.rank_correlation,
                      "regret_at_1": sel.regret_at_k, "degenerate": [n for n in cands if res[n][e].degenerate],
                      "usable": all(res[n][e].usable for n in cands)}
            log(f"  {e:7s} max rel. err {per[e]['max_relative_error']:.3g}  rank corr {sel.rank_correlation:.2f}  "
                f"regret@1 {sel.regret_at_k:.2f}  degenerate {per[e]['degenerate']}")
        results[dname] = {"episodes": ds.n_episodes, "steps": len(ds), "ope_s": time.perf_counter() - t1,
                          "per_estimator": per}
        save_json(results, out)
    results["total_s"] = time.perf_counter() - t0
    save_json(results, out)
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
