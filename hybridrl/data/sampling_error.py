"""Sampling error of a batch of data with respect to a target policy (the PROPS diagnostic).

Sampling error is how far the *empirical* action distribution of the data, pi_D(a|s), is from the target
policy pi_theta(a|s): ``KL(pi_D || pi_theta) = E_{(s,a) ~ D}[log pi_D(a|s) - log pi_theta(a|s)]``.

* Tabular states (:func:`tabular_sampling_error`): pi_D is the count estimate ``n(s, a) / n(s)``; exact.
* Continuous states (:func:`sampling_error`): counts per state do not exist (each state is seen once), so,
  following the PROPS paper and code (which follow ROS, Zhong et al. 2022), pi_D is the maximum-likelihood
  policy of the data: a copy of pi_theta whose hidden-layer weights are frozen and whose remaining parameters
  are fitted by Adam to maximise ``mean log pi_D(a|s)`` over D. The KL is then the sample mean of
  ``log pi_D - log pi_theta`` over D. Starting the fit at pi_theta makes the estimate 0 for data the model
  cannot tell apart from pi_theta; an incomplete fit underestimates the error.

Source: Corrado & Hanna (2023) arXiv:2311.08290 (sampling-error metric); PPOROS @a0c8708
``PROPS/ppo_props_continuous.py:413-472`` (``compute_se``) and ``ppo_props_discrete.py`` (its discrete twin).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from hybridrl.errors import ShapeError
from hybridrl.nn import GaussianPolicy, Policy


def tabular_sampling_error(states: np.ndarray, actions: np.ndarray, target_probs: np.ndarray) -> float:
    """Exact sampling error ``(1/N) sum_i log( n(s_i, a_i) / n(s_i) / pi(a_i|s_i) )`` for discrete states and actions.

    This equals ``sum_s (n(s)/N) KL(pi_D(.|s) || pi(.|s))`` with ``pi_D(a|s) = n(s, a) / n(s)``.

    Args:
        states: ``[N]`` int state indices in ``[0, S)``. actions: ``[N]`` int action indices in ``[0, K)``.
        target_probs: ``[S, K]`` target action probabilities (rows sum to 1).
    Returns: the KL in nats (0.0 for empty data).
    Raises: ShapeError on mismatched lengths, out-of-range indices, or zero target probability of a seen action.
    """
    s, a = np.asarray(states, dtype=np.int64).reshape(-1), np.asarray(actions, dtype=np.int64).reshape(-1)
    p = np.asarray(target_probs, dtype=np.float64)
    if s.shape != a.shape or p.ndim != 2:
        raise ShapeError(f"tabular_sampling_error: states {s.shape}, actions {a.shape} must match; "
                         f"target_probs must be [S, K], got {p.shape}")
    if s.size == 0:
        return 0.0
    if s.min() < 0 or s.max() >= p.shape[0] or a.min() < 0 or a.max() >= p.shape[1]:
        raise ShapeError(f"tabular_sampling_error: indices outside target_probs of shape {p.shape}")
    counts = np.zeros_like(p)
    np.add.at(counts, (s, a), 1.0)
    emp = counts[s, a] / counts[s].sum(1)
    target = p[s, a]
    if (target <= 0).any():
        raise ShapeError("tabular_sampling_error: the data contain an action with target probability 0 "
                         "(the KL is infinite)")
    return float(np.mean(np.log(emp) - np.log(target)))


def _bounded_log_std(policy: Policy, bounds: tuple[float, float] | None) -> Policy:
    if bounds is not None and isinstance(policy, GaussianPolicy):
        policy.log_std_min, policy.log_std_max = float(bounds[0]), float(bounds[1])
    return policy


def sampling_error(
    target: Policy,
    obs: torch.Tensor | np.ndarray,
    actions: torch.Tensor | np.ndarray,
    epochs: int = 250,
    lr: float = 1e-3,
    minibatch_size: int = 512,
    freeze_features: bool | None = None,
    log_std_bounds: tuple[float, float] | None = (-3.0, 1.0),
    max_grad_norm: float = 1.0,
    seed: int = 0,
) -> dict[str, float]:
    """Estimate ``KL(pi_D || pi_theta)`` of data ``(obs, actions)`` by fitting the maximum-likelihood policy pi_D.

    Args:
        target: pi_theta (not modified; copies are used).
        obs: ``[N, obs_dim]`` raw observations. actions: ``[N]`` int (discrete) or ``[N, act_dim]`` float.
        epochs: passes of Adam over the data (PPOROS ``se_epochs`` 250). lr: Adam step size (``se_lr`` 1e-3).
        minibatch_size: samples per Adam step (> 0).
        freeze_features: freeze the weights of every hidden ``Linear`` layer (all but the last), so pi_D differs from
            pi_theta only through the output layer, biases and log-std. ``None`` = PPOROS's choice: frozen for
            Gaussian policies (``compute_se`` freezes the first two actor weights), trainable for discrete ones (the
            freeze is commented out in ``ppo_props_discrete.py``).
        log_std_bounds: clamp the Gaussian log-std of pi_D *and* pi_theta to these bounds for the whole computation
            (PPOROS uses ``clamp=True``: [-3, 1]); ``None`` keeps each policy's own bounds.
        max_grad_norm: gradient-norm clip per step (PPOROS: 1). seed: seeds the minibatch shuffling only.
    Returns:
        ``{"kl": mean(log pi_D - log pi_theta), "nll_empirical": -mean log pi_D, "nll_target": -mean log pi_theta,
        "n": N}`` (nats; all 0 for N = 0).
    Raises: ShapeError if obs/actions lengths differ; ValueError for epochs < 0 or minibatch_size < 1.
    """
    obs = torch.as_tensor(np.asarray(obs) if not isinstance(obs, torch.Tensor) else obs, dtype=torch.float32)
    actions = torch.as_tensor(actions if isinstance(actions, torch.Tensor) else np.asarray(actions))
    actions = actions.long() if target.discrete else actions.float()
    if obs.shape[0] != actions.shape[0]:
        raise ShapeError(f"sampling_error: obs has {obs.shape[0]} rows, actions {actions.shape[0]}")
    if epochs < 0 or minibatch_size < 1:
        raise ValueError(f"sampling_error: need epochs >= 0 and minibatch_size >= 1, got {epochs}, {minibatch_size}")
    n = obs.shape[0]
    if n == 0:
        return {"kl": 0.0, "nll_empirical": 0.0, "nll_target": 0.0, "n": 0.0}
    reference = _bounded_log_std(copy.deepcopy(target), log_std_bounds)
    empirical = _bounded_log_std(copy.deepcopy(target), log_std_bounds)
    for p in reference.parameters():
        p.requires_grad_(False)
    if freeze_features is None:
        freeze_features = not target.discrete
    if freeze_features:
        linears = [m for m in empirical.modules() if isinstance(m, nn.Linear)]
        for layer in linears[:-1]:
            layer.weight.requires_grad_(False)
    params = [p for p in empirical.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, minibatch_size):
            idx = perm[start : start + minibatch_size]
            loss = -empirical.log_prob(obs[idx], actions[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
    with torch.no_grad():
        logp_emp = empirical.log_prob(obs, actions).double()
        logp_target = reference.log_prob(obs, actions).double()
    return {"kl": float((logp_emp - logp_target).mean()), "nll_empirical": float(-logp_emp.mean()),
            "nll_target": float(-logp_target.mean()), "n": float(n)}
