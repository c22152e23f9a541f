"""Marginal importance sampling: state-action (and state) marginal IS and DR on padded episode arrays.

Pure NumPy functions (no datasets, no torch); the weights come from :mod:`hybridrl.ope.weights` (DualDICE, MWL)
or from anywhere else (e.g. an exact tabular ratio in a test). Arrays are ``[E, T]`` with a ``mask`` as in
:mod:`hybridrl.ope.core`. Quantity: the *infinite-horizon* discounted value ``J(pi) = E[sum_t gamma^t r_t]`` from
the dataset's initial states (like FQE/DM: transitions are the data, time-limit truncation does not bias it).

Definitions (Uehara, Huang & Jiang 2020, "Minimax Weight and Q-Function Learning for Off-Policy Evaluation",
Sec. 2 and 4; Kallus & Uehara 2020 for the DR form). ``d^D`` is the distribution of the logged steps (s, a, r, s')
drawn uniformly from the N logged steps, ``d^pi_gamma(s, a) = (1 - gamma) sum_t gamma^t Pr_pi(s_t = s, a_t = a)`` the
normalised discounted occupancy of pi, and the marginal ratio

    w(s, a) = d^pi_gamma(s, a) / d^D(s, a)                                   (state-action marginal weight)

Then ``J = E_{d^D}[w(s, a) r] / (1 - gamma)`` and, with a critic ``Qhat`` and ``Vhat(s) = E_{a~pi} Qhat(s, a)``,

    MIS (SAM-IS):  J = 1/(1-gamma) (1/N) sum_{i,t} w(s^i_t, a^i_t) r^i_t
    MDR (SAM-DR):  J = (1/n) sum_i Vhat(s^i_0)
                       + 1/(1-gamma) (1/N) sum_{i,t} w(s^i_t, a^i_t) delta^i_t,
                   delta^i_t = r^i_t + gamma (1 - d^i_t) Vhat(s^i_{t+1}) - Qhat(s^i_t, a^i_t)
    SM-IS:         MIS with w(s, a) = rho(s) pi(a|s) / pi_0(a|s), rho(s) = d^pi_gamma(s) / d^D(s)    (state marginal)

``d^i_t`` is the termination flag of step t (truncation bootstraps). MIS is unbiased (consistent: a ratio of means)
when w is the true ratio; MDR is consistent when either w or Qhat is right (double robustness). N = number of logged
steps, n = number of episodes. SCOPE-RL 0.2.1 writes SAM-IS/DR as ``(1/n) sum_i sum_t gamma^t w r`` over
fixed-length trajectories of T steps; on the same data the two give the same number exactly when
``w_ours[i, t] = T (1 - gamma) gamma^t w_scope[i, t]`` (tests/test_ope_scope_parity.py). Ours is unbiased for
episodes of any length. SCOPE-RL's SAM-DR builds ``Vhat(s_{t+1})`` with ``np.insert(v, -1, 0, axis=1)[:, 1:]``,
i.e. ``[v_1, ..., v_{T-2}, 0, v_{T-1}]`` (0 at step T-2, the state's own value at the last step); we use
``Vhat(s_{t+1}) = E_{a ~ pi(.|s_{t+1})} Qhat(s_{t+1}, a)``.

Per-episode terms (for intervals): ``n/(N (1-gamma)) sum_t w r`` (plus ``Vhat(s_0)`` for MDR); their mean is the
estimate, and a bootstrap resample recomputes the ratio ``(sum_i c_i A_i) / (sum_i c_i L_i)`` with the resampled
episode counts c (A_i the episode's weighted sum, L_i its length).

Self-normalisation (:func:`normalise_weights`): the true ratio satisfies the flow identity with the constant test
function, ``E_{d^D}[w (1 - gamma (1 - d))] = 1 - gamma`` (Uehara et al. 2020, MWL's moment with f = 1); learned
weights are rescaled to satisfy it, and the scale factor is reported (about 1 when the weights are right). Without
terminations this is ``mean w = 1``, SCOPE-RL's constraint.
"""

from __future__ import annotations

import numpy as np

from hybridrl.errors import ConfigError, ShapeError
from hybridrl.ope.core import Estimate, _check

__all__ = ["mdr", "mis", "normalise_weights", "sm_weights", "weight_summary"]


def _check_weights(weights: np.ndarray, mask: np.ndarray) -> np.ndarray:
    w = np.where(mask, np.asarray(weights, dtype=np.float64), 0.0)
    if not np.isfinite(w).all():
        raise ShapeError("marginal weights must be finite on the logged steps")
    if (w < 0).any():
        raise ConfigError("marginal weights must be >= 0 (they are ratios of distributions)")
    return w


def normalise_weights(weights: np.ndarray, mask: np.ndarray, gamma: float,
                      terminals: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Rescale ``weights [E, T]`` so that ``mean_D[w (1 - gamma (1 - d))] = 1 - gamma`` (module docstring).

    Returns ``(weights * c, c)``; ``c`` near 1 means the learned weights already satisfied the moment.
    Raises ConfigError when gamma >= 1 or the weights are all zero.
    """
    if not gamma < 1.0:
        raise ConfigError(f"marginal weights need gamma < 1; got {gamma}")
    mask = np.asarray(mask, dtype=bool)
    w = _check_weights(weights, mask)
    d = np.zeros_like(w) if terminals is None else np.where(mask, np.asarray(terminals, dtype=np.float64), 0.0)
    moment = float((w * (1.0 - gamma * (1.0 - d)))[mask].mean())
    if not moment > 0:
        raise ConfigError(f"cannot self-normalise marginal weights: E[w (1 - gamma (1 - d))] = {moment:.3g}; "
                          "the weights are all zero")
    c = (1.0 - gamma) / moment
    return w * c, float(c)


def sm_weights(state_weights: np.ndarray, log_ratio: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """State-marginal step weights ``rho(s_t) w_t`` with ``w_t = exp(log_ratio)`` (per-step ratio), ``[E, T]``."""
    with np.errstate(over="ignore"):
        return np.where(mask, np.asarray(state_weights, np.float64) * np.exp(np.asarray(log_ratio, np.float64)), 0.0)


def weight_summary(w: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """``ess`` (Kong's ESS of the per-episode weight sums, in episodes), ``step_ess`` (over steps), ``max_weight``,
    ``mean_weight`` (over logged steps; 1 when nothing terminates and the weights are right)."""
    per_ep = w.sum(1)
    sw, sw2 = per_ep.sum(), (per_ep ** 2).sum()
    steps = w[mask]
    return {"ess": float(sw ** 2 / sw2) if sw2 > 0 else 0.0,
            "ess_fraction": float(sw ** 2 / sw2) / len(per_ep) if sw2 > 0 else 0.0,
            "step_ess": float(steps.sum() ** 2 / (steps ** 2).sum()) if (steps ** 2).sum() > 0 else 0.0,
            "max_weight": float(steps.max()), "mean_weight": float(steps.mean())}


def _ratio_estimate(a: np.ndarray, lengths: np.ndarray, gamma: float, base: np.ndarray | None,
                    diag: dict[str, float]) -> Estimate:
    """Mean over episodes of ``base_i + n A_i / (N (1 - gamma))`` with a ratio-recomputing resample."""
    n, big_n = len(a), float(lengths.sum())
    b = np.zeros(n) if base is None else base
    per_ep = b + n * a / (big_n * (1.0 - gamma))

    def resample(c: np.ndarray) -> np.ndarray:
        return (c @ b) / c.sum(1) + (c @ a) / (c @ lengths) / (1.0 - gamma)

    return Estimate(float(per_ep.mean()), per_ep, resample, diag, [])


def mis(weights: np.ndarray, rewards: np.ndarray, mask: np.ndarray, gamma: float) -> Estimate:
    """State-action marginal IS: ``J = 1/(1-gamma) (1/N) sum_{i,t} w(s_t, a_t) r_t`` (module docstring).

    Args: ``weights [E, T]`` = w(s_t, a_t) >= 0 (e.g. self-normalised by :func:`normalise_weights`), ``rewards``,
    ``mask [E, T]`` as in :mod:`hybridrl.ope.core`, ``gamma`` in [0, 1).
    Returns: :class:`~hybridrl.ope.core.Estimate` with per-episode terms and :func:`weight_summary` diagnostics.
    Raises: ShapeError (shapes, non-finite weights), ConfigError (gamma = 1, negative weights).
    Source: Uehara, Huang & Jiang 2020, Sec. 4 (R_w[w]); SCOPE-RL's SAM-IS with k = 0.
    """
    if not gamma < 1.0:
        raise ConfigError(f"marginal IS needs gamma < 1 (the occupancy d^pi_gamma is normalised by 1 - gamma); got "
                          f"{gamma}")
    mask, arr = _check(gamma, mask, weights=weights, rewards=rewards)
    w = _check_weights(arr["weights"], mask)
    a = (w * np.where(mask, arr["rewards"], 0.0)).sum(1)
    return _ratio_estimate(a, mask.sum(1).astype(np.float64), gamma, None, weight_summary(w, mask))


def mdr(weights: np.ndarray, rewards: np.ndarray, mask: np.ndarray, gamma: float, q_hat: np.ndarray,
        v_next: np.ndarray, v0: np.ndarray) -> Estimate:
    """State-action marginal DR (module docstring).

    Args: as :func:`mis`, plus ``q_hat [E, T]`` = Qhat(s_t, a_t), ``v_next [E, T]`` = ``(1 - d_t) Vhat(s_{t+1})``
    (0 after a termination) and ``v0 [E]`` = Vhat(s_0) of each episode.
    Returns/raises as :func:`mis`. Consistent if either the weights or the critic is right
    (Kallus & Uehara 2020, "Double Reinforcement Learning"; Uehara et al. 2020, Sec. 6; SCOPE-RL's SAM-DR, k = 0).
    """
    if not gamma < 1.0:
        raise ConfigError(f"marginal DR needs gamma < 1; got {gamma}")
    mask, arr = _check(gamma, mask, weights=weights, rewards=rewards, q_hat=q_hat, v_next=v_next)
    v0 = np.asarray(v0, dtype=np.float64)
    if v0.shape != (mask.shape[0],):
        raise ShapeError(f"v0 has shape {v0.shape}; expected [E] = ({mask.shape[0]},)")
    w = _check_weights(arr["weights"], mask)
    td = np.where(mask, arr["rewards"] + gamma * arr["v_next"] - arr["q_hat"], 0.0)
    return _ratio_estimate((w * td).sum(1), mask.sum(1).astype(np.float64), gamma, v0, weight_summary(w, mask))
