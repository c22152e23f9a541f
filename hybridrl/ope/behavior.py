"""Estimate an unknown behaviour policy pi_0 by behaviour cloning, for importance sampling.

    pi_0_hat = argmax_theta E_{(s,a)~D}[ log pi_theta(a|s) ]          (:class:`hybridrl.algos.bc.BCLearner`)

Importance weights then use ``log pi_0_hat(a_t|s_t)`` in place of the unknown logged log-probabilities
("regression importance sampling", Hanna, Niekum & Stone 2019, which also shows that an estimated
pi_0 can lower the variance of IS). The estimate is only as good as the fit: IS-based results computed
with it carry a note saying so.
"""

from __future__ import annotations

import numpy as np
import torch

from hybridrl.algos.bc import BCConfig, BCLearner
from hybridrl.data.dataset import Dataset
from hybridrl.errors import ConfigError, DivergenceError

__all__ = ["estimate_behavior_log_prob", "fit_behavior_policy"]


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


def estimate_behavior_log_prob(dataset: Dataset, steps: int = 2000, seed: int = 0,
                               config: BCConfig | None = None) -> np.ndarray:
    """Log-probabilities ``log pi_0_hat(a_t | s_t)`` of every logged step under a BC fit of the data.

    Args:
        dataset: logged data (``observations [N, D]``, ``actions [N, ...]``).
        steps: BC gradient steps.
        seed: seeds the BC network and batch sampling.
        config: BC hyperparameters (default :class:`BCConfig`).
    Returns:
        ``[N]`` float64 natural-log probabilities (densities for continuous actions).
    Raises:
        ConfigError, DivergenceError: see :func:`fit_behavior_policy`.
    """
    policy = fit_behavior_policy(dataset, steps, seed, config).policy
    out = []
    with torch.no_grad():
        for i in range(0, len(dataset), 65536):
            obs = torch.as_tensor(np.asarray(dataset.observations[i:i + 65536], dtype=np.float32))
            act = torch.as_tensor(np.asarray(dataset.actions[i:i + 65536]))
            out.append(policy.log_prob(obs, act).double().numpy())
    return np.concatenate(out)
