"""Dataset binding of the marginal, kernel and distributional estimators (used by :func:`estimate_value`).

Estimator names (each also in ``hybridrl ope --estimators``; equations in the modules named):

* marginal (:mod:`hybridrl.ope.marginal`, weights from :mod:`hybridrl.ope.weights`; behaviour-agnostic: no
  behaviour probabilities needed): ``mis_dualdice``, ``mis_mwl`` (state-action marginal IS), ``mdr_dualdice``,
  ``mdr_mwl`` (marginal DR with the FQE critic), ``dm_mql`` (``E_{s0} q(s0, pi)`` with the MQL Q-function) and
  ``mdr_mql`` (marginal DR with MWL weights and the MQL Q-function, Uehara et al. 2020 Sec. 6); state-marginal
  ``smis_mwl`` / ``smdr_mwl`` (SM-IS / SM-DR with the FQE critic: state weights rho(s) from state-marginal MWL times
  the per-step ratio pi/pi_0, so these need behaviour probabilities, logged or estimated).
* kernel (:mod:`hybridrl.ope.kernel`; continuous actions, the target's deterministic action ``policy.mode(s)``):
  ``kis`` (kernel PDIS), ``ksnis`` (kernel SNPDIS), ``kdr``, ``ksndr`` (with the FQE critic,
  ``Vhat(s) = Qhat(s, mu(s))``).
* distributional (:mod:`hybridrl.ope.distributional`): ``cd_dm``, ``cd_is``, ``cd_dr``, ``cd_snis``, ``cd_sndr``;
  the result's ``estimate`` is the mean of the estimated return distribution and ``distribution`` holds the CDF on
  its grid with variance, CVaR and quantiles.
"""

from __future__ import annotations

import numpy as np
import torch

from hybridrl.data.dataset import Dataset
from hybridrl.errors import ConfigError, DatasetError
from hybridrl.nn import Policy
from hybridrl.ope import core, distributional, kernel, marginal
from hybridrl.ope.weights import WeightConfig, WeightFit, fit_weights

__all__ = ["EXTENDED", "KERNEL", "MARGINAL", "NEEDS_BEHAVIOR", "NEEDS_FQE", "SELF_NORMALISED", "estimate"]

MARGINAL = ("mis_dualdice", "mis_mwl", "mdr_dualdice", "mdr_mwl", "dm_mql", "mdr_mql", "smis_mwl", "smdr_mwl")
KERNEL = ("kis", "ksnis", "kdr", "ksndr")
EXTENDED = (*MARGINAL, *KERNEL, *distributional.CD_ESTIMATORS)
NEEDS_BEHAVIOR = (*KERNEL, "cd_is", "cd_dr", "cd_snis", "cd_sndr", "smis_mwl", "smdr_mwl")
NEEDS_FQE = ("mdr_dualdice", "mdr_mwl", "kdr", "ksndr", "cd_dm", "cd_dr", "cd_sndr", "smdr_mwl")
SELF_NORMALISED = ("ksnis", "ksndr", "cd_snis", "cd_sndr")
DEFAULT_BANDWIDTH = 0.2  # kernel bandwidth as a fraction of the action box half-width


@torch.no_grad()
def _rows(fn, dataset: Dataset, obs: np.ndarray | None = None, chunk: int = 65536) -> np.ndarray:
    x = np.asarray(dataset.observations if obs is None else obs, dtype=np.float32)
    out = [fn(torch.as_tensor(x[i:i + chunk])).double().numpy() for i in range(0, len(x), chunk)]
    return np.concatenate(out) if out else np.zeros(0)


def _fit(cache: dict, method: str, dataset, policy, gamma, config, seed, progress, blp=None) -> WeightFit:
    if method not in cache:
        log_ratio = None
        if method == "mwl_state":
            from hybridrl.ope.estimators import importance_weights

            log_ratio = importance_weights(dataset, policy, blp, cache)
        cache[method] = fit_weights(dataset, policy, gamma, method, config, seed, progress, log_ratio)
    return cache[method]


def _marginal(name, dataset, policy, gamma, fqe, cache, config, seed, progress, arrays, blp):
    from hybridrl.ope.estimators import episode_arrays

    rewards, mask = arrays
    method = {"mis_dualdice": "dualdice", "mdr_dualdice": "dualdice", "mis_mwl": "mwl", "mdr_mwl": "mwl",
              "dm_mql": "mql", "mdr_mql": "mwl", "smis_mwl": "mwl_state", "smdr_mwl": "mwl_state"}[name]
    fits = [_fit(cache, method, dataset, policy, gamma, config, seed, progress, blp)]
    if name == "dm_mql":
        fit = fits[0]
        est = core.mean_estimate(fit.v0, {"v0_std": float(fit.v0.std())},
                                 ["the interval covers only the spread of q(s_0, pi) over episodes, not the MQL "
                                  "fitting error"])
    else:
        w = episode_arrays(dataset, fits[0].weights)[0]
        if name.startswith(("mis_", "smis_")):
            est = marginal.mis(w, rewards, mask, gamma)
        else:
            if name == "mdr_mql":
                fits.append(_fit(cache, "mql", dataset, policy, gamma, config, seed, progress))
                q, v_next, v0 = fits[1].q, fits[1].v_next, fits[1].v0
            else:
                q = _rows_q(fqe, dataset)
                term = np.asarray(dataset.terminations, dtype=np.float64)
                v_next = (1.0 - term) * _rows(fqe.value, dataset, dataset.next_observations)
                v0 = _rows(fqe.value, dataset, np.asarray(dataset.observations)[dataset.episode_starts[:-1]])
            est = marginal.mdr(w, rewards, mask, gamma, episode_arrays(dataset, q)[0],
                               episode_arrays(dataset, v_next)[0], v0)
    diag, notes = {}, []
    for fit in fits:
        diag.update({(k if len(fits) == 1 else f"{fit.method}_{k}"): v for k, v in fit.diagnostics().items()})
        notes += fit.notes()
    diag["weights_converged"] = float(all(f.converged for f in fits))
    diag["weights_ok"] = float(all(f.ok for f in fits))
    return est, diag, notes


@torch.no_grad()
def _rows_q(fqe, dataset: Dataset, actions: np.ndarray | None = None, chunk: int = 65536) -> np.ndarray:
    obs = np.asarray(dataset.observations, dtype=np.float32)
    act = np.asarray(dataset.actions if actions is None else actions)
    out = [fqe.q(torch.as_tensor(obs[i:i + chunk]), torch.as_tensor(act[i:i + chunk])).double().numpy()
           for i in range(0, len(obs), chunk)]
    return np.concatenate(out) if out else np.zeros(0)


def _kernel(name, dataset, policy, gamma, fqe, blp, bandwidth, clip, arrays):
    from hybridrl.ope.estimators import episode_arrays

    if getattr(policy, "discrete", False):
        raise ConfigError(f"{name} (kernel IS) is for continuous actions; use pdis/snpdis/dr for discrete ones")
    blp = dataset.behavior_log_prob if blp is None else blp
    if blp is None:
        raise DatasetError(f"{name} needs behaviour log-densities: dataset.behavior_log_prob is missing; pass "
                           "behavior_log_prob= or use evaluate_ope, which estimates them")
    space = dataset.action_space
    half = (np.asarray(space.high, np.float64) - np.asarray(space.low, np.float64)).reshape(-1) / 2
    h = float(bandwidth) * np.where(np.isfinite(half), half, 1.0)
    mu = _rows(policy.mode, dataset).reshape(len(dataset), -1)
    act = np.asarray(dataset.actions, dtype=np.float64).reshape(len(dataset), -1)
    lr = kernel.log_kernel_ratio(mu, act, blp, h)
    rewards, mask = arrays
    log_ratio = episode_arrays(dataset, lr)[0]
    if name in ("kis", "ksnis"):
        est = (core.pdis if name == "kis" else core.snpdis)(log_ratio, rewards, mask, gamma, clip)
    else:
        q = episode_arrays(dataset, _rows_q(fqe, dataset))[0]
        v = episode_arrays(dataset, _rows_q(fqe, dataset, mu.astype(np.float32).reshape(dataset.actions.shape)))[0]
        est = (core.dr if name == "kdr" else core.sndr)(log_ratio, rewards, mask, gamma, q, v, clip)
    note = (f"kernel-smoothed weights (Gaussian, bandwidth {bandwidth:g} of the action half-width): the estimate is "
            f"of the smoothed policy N(mu(s), h^2), biased by O(h^2) for J(mu)")
    return est, {"bandwidth": float(bandwidth)}, [note]


def _cd(name, dataset, policy, gamma, fqe, blp, alpha, arrays, cache):
    from hybridrl.ope.estimators import episode_arrays, importance_weights

    rewards, mask = arrays
    ret = distributional.episode_returns(rewards, mask, gamma)
    lw, g_hat, v0 = None, None, None
    if name != "cd_dm":
        lr = episode_arrays(dataset, importance_weights(dataset, policy, blp, cache))[0]
        lw = core.log_weights(lr, mask)[:, -1]
    if name in ("cd_dm", "cd_dr", "cd_sndr"):
        v0 = _rows(fqe.value, dataset, np.asarray(dataset.observations)[dataset.episode_starts[:-1]])
    grid = distributional.default_grid(ret if v0 is None else np.concatenate([ret, v0]))
    if v0 is not None:
        g_hat = distributional.step_cdf(v0, grid)
    c = distributional.cdf_estimate(name, ret, grid, lw, g_hat, alpha)
    e = len(ret)
    per_ep = c.per_episode
    est = core.Estimate(c.mean, per_ep, lambda cnt: cnt @ per_ep / e, dict(c.diagnostics), list(c.notes))
    diag = {"variance": c.variance, "cvar": c.cvar, "cvar_alpha": c.alpha, "iqr": c.iqr,
            "median": c.quantiles[0.5]}
    return est, diag, [], c


def estimate(name: str, dataset: Dataset, policy: Policy, gamma: float, fqe, blp: np.ndarray | None,
             cache: dict | None = None, weight_config: WeightConfig | None = None,
             bandwidth: float = DEFAULT_BANDWIDTH, cvar_alpha: float = 0.1, clip: float | None = None,
             seed: int = 0, progress: bool = False):
    """``(Estimate, diagnostics, notes, CDFEstimate | None)`` of one estimator in :data:`EXTENDED`.

    ``cache`` (a dict per policy) keeps weight/MQL fits between estimators; ``blp`` is ``[N]`` log pi_0 (kernel and
    CD-IS/DR forms). Raises ConfigError (gamma = 1 for the marginal ones, a discrete policy for the kernel ones).
    """
    from hybridrl.ope.estimators import episode_arrays

    arrays = episode_arrays(dataset, dataset.rewards)
    if name in MARGINAL:
        if not gamma < 1.0:
            raise ConfigError(f"{name} needs gamma < 1 (discounted occupancy ratios); got {gamma}")
        return (*_marginal(name, dataset, policy, gamma, fqe, {} if cache is None else cache, weight_config, seed,
                           progress, arrays, blp), None)
    if name in KERNEL:
        return (*_kernel(name, dataset, policy, gamma, fqe, blp, bandwidth, clip, arrays), None)
    if name in distributional.CD_ESTIMATORS:
        return _cd(name, dataset, policy, gamma, fqe, blp, cvar_alpha, arrays, cache)
    raise ConfigError(f"unknown extended estimator {name!r}; expected one of {list(EXTENDED)}")
