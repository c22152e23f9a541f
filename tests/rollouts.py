"""Test helper: roll out a policy for whole episodes in lockstep into a Dataset (with log-probabilities)."""

from __future__ import annotations

import numpy as np
import torch

from hybridrl.data.dataset import Dataset


def collect(make_env, policy, n_episodes: int, seed: int = 0, log_prob: bool = True) -> Dataset:
    """Roll out ``policy`` (all envs in lockstep) into a Dataset, with behaviour log-probabilities if asked."""
    torch.manual_seed(seed)
    envs = [make_env() for _ in range(n_episodes)]
    eps = [dict(observations=[env.reset(seed=seed + i)[0]], actions=[], rewards=[], terminations=[], truncations=[],
                behavior_log_prob=[]) for i, env in enumerate(envs)]
    active = list(range(n_episodes))
    while active:
        actions, logp = policy.act(np.stack([eps[i]["observations"][-1] for i in active]))
        still = []
        for i, a, lp in zip(active, actions, logp):
            o, r, term, trunc, _ = envs[i].step(a)
            keys = ("observations", "actions", "rewards", "terminations", "truncations", "behavior_log_prob")
            for key, val in zip(keys, (o, a, r, term, trunc, lp)):
                eps[i][key].append(val)
            if not (term or trunc):
                still.append(i)
        active = still
    drop = () if log_prob else ("behavior_log_prob",)
    return Dataset.from_episodes([{k: np.asarray(v) for k, v in ep.items() if k not in drop} for ep in eps],
                                 envs[0].observation_space, envs[0].action_space)
