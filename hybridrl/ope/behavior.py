"""Estimate an unknown behaviour policy pi_0 by behaviour cloning, calibrated on held-out episodes.

    pi_bc = argmax_theta E_{(s,a)~D_train}[ log pi_theta(a|s) ]          (:class:`hybridrl.algos.bc.BCLearner`)

Importance weights then use ``log pi_0_hat(a_t|s_t)`` in place of the unknown logged log-probabilities
("regression importance sampling", Hanna, Niekum & Stone 2019, which also shows that an estimated
pi_0 can lower the variance of IS). The estimate is only as good as the fit, so it is checked:

* The episodes are split (``heldout_fraction``, default 20%) into a training part for BC and a held-out part.
* Calibration on the held-out part. BC trained to convergence on near-deterministic data is a peaked softmax, which
  gives the random actions of epsilon-greedy data almost no probability (and those steps huge weights). So the
  model is a mixture with a uniform floor and a temperature,
  ``pi_0_hat(a|s) = (1 - eps) softmax(logits(s) / T)_a + eps / |A|``  (discrete actions), or a Gaussian whose
  standard deviation is scaled by T (continuous actions), with ``(eps, T)`` chosen on a small grid to maximise the
  held-out log-likelihood.
* Diagnostics: ``heldout_loglik`` (mean log pi_0_hat(a|s) per held-out step, nats; its two calibration parameters
  were chosen on the same episodes, so it is slightly optimistic) and, per evaluated policy pi,
  ``heldout_mean_weight`` = mean over held-out steps of pi(a|s) / pi_0_hat(a|s), which is 1 in expectation when
  pi_0_hat is the true behaviour policy (E_{a~pi_0}[pi(a|s)/pi_0(a|s)] = 1); far from 1 means the model is off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hybridrl.algos.bc import BCConfig, BCLearner
from hybridrl.data.dataset import Dataset
from hybridrl.errors import ConfigError, DivergenceError

__all__ = ["BehaviorModel", "estimate_behavior_log_prob", "fit_behavior_model", "fit_behavior_policy"]

EPSILONS = (0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)  # uniform-floor weights tried (discrete)
TEMPERATURES = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)  # softmax temperatures / std scales tried
_CHUNK = 65536


def fit_behavior_policy(dataset: Dataset, steps: int = 2000, seed: int = 0,
                        config: BCConfig | None = None) -> BCLearner:
    """Fit a BC policy to the dataset's ``(s, a)`` pairs for ``steps`` Adam steps of ``config.batch_size``.

    The policy's observation normaliser is set to the dataset's mean/variance first.
    Raises: ConfigError on ``steps < 1``; DivergenceError if the loss becomes non-finite.
    """
    if steps < 1:
        raise ConfigError(f"behaviour cloning needs steps >= 1, got {steps}")
    config = config or BCConfig()
    learner = BCLearner(config, dataset.observation_space, dataset.action_space, seed=seed)
    mean, var = dataset.obs_stats()
    learner.policy.obs_norm.set_stats(mean, var, len(dataset))
    rng = np.random.default_rng(seed)
    for i in range(steps):
        metrics = learner.update(dataset.sample(config.batch_size, rng))
        if not np.isfinite(metrics["bc_loss"]):
            raise DivergenceError(f"behaviour cloning loss became {metrics['bc_loss']} at step {i + 1}")
    return learner


@torch.no_grad()
def _calibrated_log_prob(policy, dataset: Dataset, rows: np.ndarray, eps: float, temp: float) -> np.ndarray:
    """``log pi_0_hat(a|s)`` float64 for the given rows under the (eps, T) calibration (module docstring)."""
    out = []
    for i in range(0, len(rows), _CHUNK):
        r = rows[i:i + _CHUNK]
        obs = torch.as_tensor(np.asarray(dataset.observations[r], dtype=np.float32))
        act = torch.as_tensor(np.asarray(dataset.actions[r]))
        dist = policy.distribution(obs)
        if hasattr(dist, "logits"):
            logp = torch.log_softmax(dist.logits.double() / temp, -1).gather(-1, act.long().view(-1, 1))[:, 0]
            n_act = dist.logits.shape[-1]
            if eps > 0:
                logp = torch.logaddexp(logp + np.log1p(-eps), torch.full_like(logp, np.log(eps / n_act)))
        else:
            mu, std = dist.mean.double(), dist.stddev.double() * temp
            z = (act.double() - mu) / std
            logp = (-0.5 * z**2 - torch.log(std) - 0.5 * np.log(2 * np.pi)).sum(-1)
        out.append(logp.numpy())
    return np.concatenate(out) if out else np.zeros(0)


@dataclass
class BehaviorModel:
    """A fitted, calibrated behaviour model (module docstring).

    Attributes:
        log_prob: ``[N]`` float64 log pi_0_hat(a_t|s_t) of every logged step (natural log; densities if continuous).
        heldout: ``[N]`` bool, True on the held-out episodes' steps (all False when there was one episode).
        heldout_loglik: mean log pi_0_hat per held-out step (nats; NaN without held-out steps).
        epsilon: uniform-floor weight chosen (0 for continuous actions).
        temperature: softmax temperature / std scale chosen.
        steps: BC gradient steps.
        policy: the fitted BC policy (uncalibrated).
    """

    log_prob: np.ndarray
    heldout: np.ndarray
    heldout_loglik: float
    epsilon: float
    temperature: float
    steps: int
    policy: object

    def heldout_mean_weight(self, target_log_prob: np.ndarray) -> float:
        """Mean of ``pi(a|s) / pi_0_hat(a|s)`` over held-out steps (``target_log_prob [N]``); ~1 when calibrated."""
        if not self.heldout.any():
            return float("nan")
        with np.errstate(over="ignore"):
            return float(np.mean(np.exp(np.asarray(target_log_prob)[self.heldout] - self.log_prob[self.heldout])))

    def diagnostics(self, target_log_prob: np.ndarray | None = None) -> dict[str, float]:
        d = {"behavior_heldout_loglik": self.heldout_loglik, "behavior_epsilon": self.epsilon,
             "behavior_temperature": self.temperature, "behavior_heldout_steps": float(self.heldout.sum())}
        if target_log_prob is not None:
            d["behavior_heldout_mean_weight"] = self.heldout_mean_weight(target_log_prob)
        return d

    def describe(self) -> str:
        return (f"behaviour log-probabilities estimated by behaviour cloning ({self.steps} steps; calibrated on "
                f"held-out episodes: uniform floor {self.epsilon:g}, temperature {self.temperature:g}, held-out "
                f"log-likelihood {self.heldout_loglik:.3f} nats/step)")


def fit_behavior_model(dataset: Dataset, steps: int = 2000, seed: int = 0, config: BCConfig | None = None,
                       heldout_fraction: float = 0.2) -> BehaviorModel:
    """Fit BC on a random ``1 - heldout_fraction`` of the episodes, calibrate ``(eps, T)`` on the rest.

    With a single episode there is no held-out part: the calibration then uses the training steps (optimistic).
    Raises: ConfigError (``steps < 1``, ``heldout_fraction`` outside [0, 1)); DivergenceError (BC loss non-finite).
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ConfigError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    n_ep = dataset.n_episodes
    rng = np.random.default_rng([seed, 17])
    n_held = min(max(int(round(heldout_fraction * n_ep)), 1 if heldout_fraction > 0 else 0), n_ep - 1)
    held_ep = np.sort(rng.permutation(n_ep)[:n_held])
    train = dataset.select_episodes(np.setdiff1d(np.arange(n_ep), held_ep)) if n_held else dataset
    policy = fit_behavior_policy(train, steps, seed, config).policy
    starts = np.asarray(dataset.episode_starts)
    heldout = np.zeros(len(dataset), dtype=bool)
    for e in held_ep:
        heldout[starts[e]:starts[e + 1]] = True
    cal_rows = np.flatnonzero(heldout) if n_held else np.arange(len(dataset))
    cal_rows = cal_rows[:200_000]
    discrete = hasattr(policy, "probs")
    grid = [(e, t) for e in (EPSILONS if discrete else (0.0,)) for t in TEMPERATURES]
    scores = [float(np.mean(_calibrated_log_prob(policy, dataset, cal_rows, e, t))) for e, t in grid]
    best = int(np.nanargmax(scores))
    eps, temp = grid[best]
    log_prob = _calibrated_log_prob(policy, dataset, np.arange(len(dataset)), eps, temp)
    held_ll = float(log_prob[heldout].mean()) if n_held else float("nan")
    return BehaviorModel(log_prob, heldout, held_ll, float(eps), float(temp), int(steps), policy)


def estimate_behavior_log_prob(dataset: Dataset, steps: int = 2000, seed: int = 0,
                               config: BCConfig | None = None) -> np.ndarray:
    """Log-probabilities ``log pi_0_hat(a_t | s_t)`` ``[N]`` float64 of every logged step under the calibrated BC
    model (:func:`fit_behavior_model`; use that function to get the held-out diagnostics too).

    Raises: ConfigError, DivergenceError: see :func:`fit_behavior_policy`.
    """
    return fit_behavior_model(dataset, steps, seed, config).log_prob
