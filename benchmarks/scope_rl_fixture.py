"""Write tests/fixtures/scope_rl_0_2_1.npz: logged arrays and SCOPE-RL 0.2.1's estimates on them (issue 10).

Runs ONLY in a benchmark virtualenv that has SCOPE-RL 0.2.1 (it is not a hybridrl dependency); the fixture it
writes is read by tests/test_ope_scope_parity.py with NumPy alone. Commands (docs/benchmarks.md, "Agreement with
SCOPE-RL 0.2.1"):

    python3.11 -m venv /tmp/scope
    /tmp/scope/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
    echo "torch==2.13.0+cpu" > /tmp/scope_constraints.txt
    /tmp/scope/bin/pip install -c /tmp/scope_constraints.txt scope-rl==0.2.1
    /tmp/scope/bin/python benchmarks/scope_rl_fixture.py [--out tests/fixtures/scope_rl_0_2_1.npz] [--overwrite]

Everything is float64 with a fixed seed. Cases (fixed-length episodes: SCOPE-RL takes [n * T] flat arrays):

* ``disc_*``: discrete actions (E=40 episodes, T=8 steps, 3 actions, gamma=0.95): behaviour pscore, evaluation
  action distribution, rewards, Qhat for all actions. SCOPE-RL discrete DM, TIS, PDIS, DR, SNTIS, SNPDIS, SNDR
  (estimate and per-trajectory values), and the t-test/Hoeffding/Bernstein intervals of PDIS.
* ``cont_*``: continuous 1-D actions, deterministic evaluation action, Gaussian behaviour density, Gaussian kernel
  with bandwidth 0.5, no action scaler: SCOPE-RL continuous DM, TIS, PDIS, DR, SNTIS, SNPDIS, SNDR.
* ``cont2_*``: 2-D actions: SCOPE-RL's Gaussian kernel values and kernel PDIS (its kernel is not a 2-D density).
* ``cd_*``: the discrete data with gamma=1 on a 41-point reward scale: CD-DM, CD-TIS, CD-TDR, CD-SNTIS, CD-SNTDR
  CDF, mean, variance, CVaR at alphas (0.1, 0.3) and quartiles (alpha=0.25); plus CD-TIS at gamma=0.95 and on a
  grid starting far below the smallest return (edge cases documented in docs/algorithms/ope.md).
* ``ccd_*``: the same CD estimators on the continuous data (kernel weights), gamma=1.
* ``marg_*``: given state-action / state marginal weights (n_step_pdis=0, gamma=0.95): SCOPE-RL SAM-IS, SAM-DR,
  SAM-SNIS, SAM-SNDR, SM-IS, SM-DR, SM-SNIS, SM-SNDR.
* ``ops_*``: 6 candidates with DM estimates, true values and a logged behaviour dataset: SCOPE-RL's top-k
  statistics, SharpeRatio@k (k = 1..6), MSE, rank correlation, regret@1 and @3, type I/II error rates.

``meta_json`` holds the SCOPE-RL/NumPy versions and, for every stored SCOPE-RL output, the exact call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")

SEED = 20260101
E, T, N_ACT = 40, 8, 3
GAMMA = 0.95
BANDWIDTH = 0.5
CD_ALPHAS = np.array([0.1, 0.3])
IQR_ALPHA = 0.25


def _discrete(rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = E * T
    pb = rng.dirichlet(np.ones(N_ACT) * 2.0, size=n)
    action = np.array([rng.choice(N_ACT, p=p) for p in pb], dtype=np.int64)
    pscore = pb[np.arange(n), action]
    pi = 0.6 * pb + 0.4 * rng.dirichlet(np.ones(N_ACT), size=n)
    pi = pi / pi.sum(1, keepdims=True)
    reward = rng.uniform(0.0, 1.0, size=n)
    q = rng.uniform(2.0, 6.0, size=(n, N_ACT))
    return {"action": action, "pscore": pscore, "pi": pi, "reward": reward, "q": q}


def _continuous(rng: np.random.Generator, d: int) -> dict[str, np.ndarray]:
    n = E * T
    mu_b = rng.uniform(-1.0, 1.0, size=(n, d))
    sigma = 0.5
    action = mu_b + sigma * rng.standard_normal((n, d))
    pscore = np.exp(-0.5 * ((action - mu_b) / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma)  # per-dimension density
    mu_e = mu_b + 0.2 * rng.standard_normal((n, d))
    reward = rng.uniform(0.0, 1.0, size=n)
    qv = np.stack([rng.uniform(3.0, 5.0, size=n), rng.uniform(3.0, 5.0, size=n)], axis=1)  # [Q(s, a), V(s)]
    return {"action": action, "pscore": pscore, "mu_e": mu_e, "reward": reward, "qv": qv}


def _cd_grid(returns: np.ndarray, v0: np.ndarray, k: int = 41) -> np.ndarray:
    """A grid whose first point lies just below every return and prediction and whose first bin holds the smallest
    return (SCOPE-RL's CD-(SN)TIS index a grid point below the smallest return wrongly; see the test)."""
    lo = min(returns.min(), v0.min()) - 1e-3
    hi = max(returns.max(), v0.max()) + 1e-3
    grid = np.linspace(lo, hi, k)
    assert returns.min() < grid[1], "pick another seed: the first grid bin must hold the smallest return"
    return grid


def _ops_case(rng: np.random.Generator, record, arrays: dict) -> None:
    """SCOPE-RL's OPS metrics: 6 candidates whose DM estimates are set through constant Qhat, known true values,
    a logged behaviour dataset (its mean discounted return is SCOPE-RL's J(pi_b))."""
    from scope_rl.ope import OffPolicyEvaluation, OffPolicySelection
    from scope_rl.ope.discrete import DirectMethod

    e, t, n_act, k_max = 10, 4, 3, 6
    n = e * t
    logged = {"n_trajectories": e, "action_type": "discrete", "n_actions": n_act, "action_dim": None,
              "state_dim": 2, "step_per_trajectory": t, "state": rng.standard_normal((n, 2)),
              "action": rng.integers(0, n_act, n), "reward": rng.uniform(0.0, 1.0, n),
              "pscore": np.full(n, 1.0 / n_act), "done": np.tile(np.eye(t)[-1], e), "terminal": np.zeros(n),
              "behavior_policy": "pi_b", "dataset_id": 0}
    q_const = rng.normal(3.0, 1.5, k_max)
    truth = q_const + rng.normal(0.0, 1.0, k_max)
    truth[np.argsort(q_const)[-2]] = truth.max() + 1.0  # the second by estimate is the best: regret@1 > 0
    inputs = {}
    for k in range(k_max):
        inputs[f"p{k}"] = {"evaluation_policy_action": None,
                           "evaluation_policy_action_dist": rng.dirichlet(np.ones(n_act), n),
                           "state_action_value_prediction": np.full((n, n_act), q_const[k]),
                           "initial_state_value_prediction": np.full(e, q_const[k]),
                           "state_action_marginal_importance_weight": None, "state_marginal_importance_weight": None,
                           "on_policy_policy_value": np.full(5, truth[k]), "gamma": GAMMA, "behavior_policy": "pi_b",
                           "evaluation_policy": f"p{k}", "dataset_id": 0}
    ope = OffPolicyEvaluation(logged_dataset=logged, ope_estimators=[DirectMethod()])
    ops = OffPolicySelection(ope=ope)
    threshold = 3.0  # gives type I != type II error rates on these values (asserted below)
    arrays["ops_reward"] = logged["reward"]
    arrays["ops_done"] = logged["done"]
    arrays["ops_truth"] = truth
    arrays["ops_steps"] = np.int64(t)
    arrays["ops_threshold"] = np.float64(threshold)
    est = ope.estimate_policy_value(inputs)
    record("scope_ops_estimates", [est[f"p{k}"]["dm"] for k in range(k_max)],
           "OffPolicyEvaluation(logged_dataset=ops_logged, ope_estimators=[DirectMethod()]).estimate_policy_value("
           "ops_inputs)[p]['dm'] for p in p0..p5 (ops_logged, ops_inputs: benchmarks/scope_rl_fixture.py _ops_case)")
    topk = ops.obtain_topk_policy_value_selected_by_standard_ope(inputs, return_safety_violation_rate=True,
                                                                  safety_threshold=threshold)["dm"]
    call = ("OffPolicySelection(ope=ope).obtain_topk_policy_value_selected_by_standard_ope(ops_inputs, "
            "return_safety_violation_rate=True, safety_threshold=ops_threshold)['dm']")
    for metric in ("best", "worst", "mean", "std", "safety_violation_rate", "sharpe_ratio"):
        record(f"scope_ops_topk_{metric}", np.asarray(topk[metric]).reshape(-1), f"{call}[{metric!r}] for k = 1..6")
    for k in (1, 3):
        res = ops.select_by_policy_value(inputs, return_metrics=True, top_k_in_eval_metrics=k,
                                         safety_threshold=threshold)["dm"]
        call = (f"OffPolicySelection(ope=ope).select_by_policy_value(ops_inputs, return_metrics=True, "
                f"top_k_in_eval_metrics={k}, safety_threshold=ops_threshold)['dm']")
        record(f"scope_ops_regret_at_{k}", res["regret"][0], f"{call}['regret'][0]")
        if k == 1:
            record("scope_ops_mse", res["mean_squared_error"], f"{call}['mean_squared_error']")
            record("scope_ops_rank_correlation", res["rank_correlation"][0], f"{call}['rank_correlation'][0]")
            record("scope_ops_type_i_error_rate", res["type_i_error_rate"], f"{call}['type_i_error_rate']")
            record("scope_ops_type_ii_error_rate", res["type_ii_error_rate"], f"{call}['type_ii_error_rate']")
            assert res["type_i_error_rate"] != res["type_ii_error_rate"], "choose another threshold"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="tests/fixtures/scope_rl_0_2_1.npz")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"{out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2

    import scope_rl
    from scope_rl.ope.continuous import basic_estimators as cbe
    from scope_rl.ope.continuous import cumulative_distribution_estimators as ccde
    from scope_rl.ope.discrete import basic_estimators as dbe
    from scope_rl.ope.discrete import cumulative_distribution_estimators as dcde
    from scope_rl.ope.discrete import marginal_estimators as dme
    from scope_rl.utils import gaussian_kernel

    rng = np.random.default_rng(SEED)
    arrays: dict[str, np.ndarray] = {}
    calls: dict[str, str] = {}

    def record(key: str, value, call: str) -> None:
        arrays[key] = np.asarray(value, dtype=np.float64)
        calls[key] = call

    # ------------------------------------------------------------------------------------------ discrete basic
    d = _discrete(rng)
    for k, v in d.items():
        arrays[f"disc_{k}"] = v
    kw = dict(step_per_trajectory=T, action=d["action"], reward=d["reward"], pscore=d["pscore"],
              evaluation_policy_action_dist=d["pi"], state_action_value_prediction=d["q"], gamma=GAMMA)
    kw_text = ("step_per_trajectory=T, action=disc_action, reward=disc_reward, pscore=disc_pscore, "
               "evaluation_policy_action_dist=disc_pi, state_action_value_prediction=disc_q, gamma=gamma")
    for key, cls in [("dm", dbe.DirectMethod), ("tis", dbe.TrajectoryWiseImportanceSampling),
                     ("pdis", dbe.PerDecisionImportanceSampling), ("dr", dbe.DoublyRobust),
                     ("sntis", dbe.SelfNormalizedTIS), ("snpdis", dbe.SelfNormalizedPDIS),
                     ("sndr", dbe.SelfNormalizedDR)]:
        est = cls()
        record(f"scope_disc_{key}", est.estimate_policy_value(**kw),
               f"scope_rl.ope.discrete.{cls.__name__}().estimate_policy_value({kw_text})")
        record(f"scope_disc_{key}_traj", est._estimate_trajectory_value(**kw),
               f"scope_rl.ope.discrete.{cls.__name__}()._estimate_trajectory_value({kw_text})")
    for ci in ("ttest", "hoeffding", "bernstein"):
        res = dbe.PerDecisionImportanceSampling().estimate_interval(**kw, alpha=0.05, ci=ci)
        lo, hi = (v for k, v in res.items() if "lower" in k), (v for k, v in res.items() if "upper" in k)
        call = (f"scope_rl.ope.discrete.PerDecisionImportanceSampling().estimate_interval({kw_text}, alpha=0.05, "
                f"ci={ci!r})")
        record(f"scope_ci_{ci}_lower", next(lo), call + "['95.0% CI (lower)']")
        record(f"scope_ci_{ci}_upper", next(hi), call + "['95.0% CI (upper)']")

    # ---------------------------------------------------------------------------------------- continuous basic
    c = _continuous(rng, 1)
    for k, v in c.items():
        arrays[f"cont_{k}"] = v
    ckw = dict(step_per_trajectory=T, action=c["action"], reward=c["reward"], pscore=c["pscore"],
               evaluation_policy_action=c["mu_e"], state_action_value_prediction=c["qv"], gamma=GAMMA,
               kernel="gaussian", bandwidth=BANDWIDTH, action_scaler=None)
    ckw_text = ("step_per_trajectory=T, action=cont_action, reward=cont_reward, pscore=cont_pscore, "
                "evaluation_policy_action=cont_mu_e, state_action_value_prediction=cont_qv, gamma=gamma, "
                "kernel='gaussian', bandwidth=bandwidth, action_scaler=None")
    for key, cls in [("dm", cbe.DirectMethod), ("tis", cbe.TrajectoryWiseImportanceSampling),
                     ("pdis", cbe.PerDecisionImportanceSampling), ("dr", cbe.DoublyRobust),
                     ("sntis", cbe.SelfNormalizedTIS), ("snpdis", cbe.SelfNormalizedPDIS),
                     ("sndr", cbe.SelfNormalizedDR)]:
        record(f"scope_cont_{key}", cls().estimate_policy_value(**ckw),
               f"scope_rl.ope.continuous.{cls.__name__}().estimate_policy_value({ckw_text})")
    c2 = _continuous(rng, 2)
    for k, v in c2.items():
        arrays[f"cont2_{k}"] = v
    record("scope_cont2_kernel", gaussian_kernel(c2["mu_e"], c2["action"], bandwidth=BANDWIDTH),
           "scope_rl.utils.gaussian_kernel(cont2_mu_e, cont2_action, bandwidth=bandwidth)")
    c2kw = dict(ckw, action=c2["action"], reward=c2["reward"], pscore=c2["pscore"], evaluation_policy_action=c2["mu_e"],
                state_action_value_prediction=c2["qv"])
    record("scope_cont2_pdis", cbe.PerDecisionImportanceSampling().estimate_policy_value(**c2kw),
           "scope_rl.ope.continuous.PerDecisionImportanceSampling().estimate_policy_value("
           + ckw_text.replace("cont_", "cont2_") + ")")

    # ------------------------------------------------------------------------------ cumulative distribution
    def cd_case(prefix: str, module, kwargs: dict, kwargs_text: str, returns: np.ndarray, v0: np.ndarray) -> None:
        grid = _cd_grid(returns, v0)
        arrays[f"{prefix}_grid"] = grid
        for key, cls in [("dm", module.CumulativeDistributionDM), ("tis", module.CumulativeDistributionTIS),
                         ("tdr", module.CumulativeDistributionTDR), ("sntis", module.CumulativeDistributionSNTIS),
                         ("sntdr", module.CumulativeDistributionSNTDR)]:
            est = cls()
            kk = dict(kwargs, reward_scale=grid, gamma=1.0)
            text = f"{kwargs_text}, reward_scale={prefix}_grid, gamma=1.0"
            name = f"scope_rl.ope.{module.__name__.split('.')[-2]}.{cls.__name__}()"
            record(f"scope_{prefix}_{key}_cdf", est.estimate_cumulative_distribution_function(**kk),
                   f"{name}.estimate_cumulative_distribution_function({text})")
            record(f"scope_{prefix}_{key}_mean", est.estimate_mean(**kk), f"{name}.estimate_mean({text})")
            record(f"scope_{prefix}_{key}_variance", est.estimate_variance(**kk), f"{name}.estimate_variance({text})")
            record(f"scope_{prefix}_{key}_cvar", est.estimate_conditional_value_at_risk(**kk, alphas=CD_ALPHAS),
                   f"{name}.estimate_conditional_value_at_risk({text}, alphas=cd_alphas)")
            iqr = est.estimate_interquartile_range(**kk, alpha=IQR_ALPHA)
            call = f"{name}.estimate_interquartile_range({text}, alpha=iqr_alpha)"
            for part in ("median", "lower", "upper"):
                val = next(v for k, v in iqr.items() if (part in k))
                record(f"scope_{prefix}_{key}_iqr_{part}", val, f"{call}[{part!r} key]")

    disc_ret = d["reward"].reshape(E, T).sum(1)
    disc_v0 = (d["q"] * d["pi"]).sum(1).reshape(E, T)[:, 0]
    cd_kw = {k: v for k, v in kw.items() if k != "gamma"}
    cd_case("cd", dcde, cd_kw, kw_text.replace(", gamma=gamma", ""), disc_ret, disc_v0)
    cont_ret = c["reward"].reshape(E, T).sum(1)
    ccd_kw = {k: v for k, v in ckw.items() if k != "gamma"}
    cd_case("ccd", ccde, ccd_kw, ckw_text.replace(", gamma=gamma", ""), cont_ret, c["qv"].reshape(E, T, 2)[:, 0, 1])
    tis = dcde.CumulativeDistributionTIS()
    disc_ret_g = (d["reward"].reshape(E, T) * GAMMA ** np.arange(T)).sum(1)
    arrays["cd_gamma_grid"] = _cd_grid(disc_ret_g * GAMMA, disc_v0)  # SCOPE-RL's discounted returns start at gamma^1
    record("scope_cd_gamma_tis_cdf", tis.estimate_cumulative_distribution_function(
        **dict(cd_kw, reward_scale=arrays["cd_gamma_grid"], gamma=GAMMA)),
        "scope_rl.ope.discrete.CumulativeDistributionTIS().estimate_cumulative_distribution_function("
        + kw_text.replace(", gamma=gamma", "") + ", reward_scale=cd_gamma_grid, gamma=gamma)")
    arrays["cd_wide_grid"] = np.linspace(disc_ret.min() - 2.0, disc_ret.max() + 0.1, 41)
    record("scope_cd_wide_tis_cdf", tis.estimate_cumulative_distribution_function(
        **dict(cd_kw, reward_scale=arrays["cd_wide_grid"], gamma=1.0)),
        "scope_rl.ope.discrete.CumulativeDistributionTIS().estimate_cumulative_distribution_function("
        + kw_text.replace(", gamma=gamma", "") + ", reward_scale=cd_wide_grid, gamma=1.0)")

    # ------------------------------------------------------------------------------------------------ marginal
    w_sa = rng.lognormal(0.0, 0.5, size=E * T)
    rho = rng.lognormal(0.0, 0.5, size=E * T)
    arrays["marg_w_sa"], arrays["marg_rho"], arrays["marg_v0"] = w_sa, rho, disc_v0
    mkw = dict(kw, n_step_pdis=0, initial_state_value_prediction=disc_v0)
    mkw_text = kw_text + ", n_step_pdis=0, initial_state_value_prediction=marg_v0"
    for key, cls, wname in [("sam_is", dme.StateActionMarginalIS, "state_action"),
                            ("sam_dr", dme.StateActionMarginalDR, "state_action"),
                            ("sam_snis", dme.StateActionMarginalSNIS, "state_action"),
                            ("sam_sndr", dme.StateActionMarginalSNDR, "state_action"),
                            ("sm_is", dme.StateMarginalIS, "state"), ("sm_dr", dme.StateMarginalDR, "state"),
                            ("sm_snis", dme.StateMarginalSNIS, "state"), ("sm_sndr", dme.StateMarginalSNDR, "state")]:
        wkw = {f"{wname}_marginal_importance_weight": w_sa if wname == "state_action" else rho}
        wtext = f"{wname}_marginal_importance_weight=" + ("marg_w_sa" if wname == "state_action" else "marg_rho")
        record(f"scope_marg_{key}", cls().estimate_policy_value(**mkw, **wkw),
               f"scope_rl.ope.discrete.{cls.__name__}().estimate_policy_value({mkw_text}, {wtext})")

    _ops_case(rng, record, arrays)

    arrays["gamma"] = np.float64(GAMMA)
    arrays["steps"] = np.int64(T)
    arrays["bandwidth"] = np.float64(BANDWIDTH)
    arrays["cd_alphas"] = CD_ALPHAS
    arrays["iqr_alpha"] = np.float64(IQR_ALPHA)
    import scipy

    meta = {"scope_rl_version": scope_rl.__version__, "numpy_version": np.__version__,
            "scipy_version": scipy.__version__, "python": platform.python_version(), "seed": SEED,
            "generator": "benchmarks/scope_rl_fixture.py", "calls": calls}
    arrays["meta_json"] = np.array(json.dumps(meta, indent=1, sort_keys=True))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".npz.tmp")
    os.close(fd)
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    print(f"wrote {out}: {len(arrays)} arrays, {len(calls)} SCOPE-RL outputs (scope-rl {scope_rl.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
