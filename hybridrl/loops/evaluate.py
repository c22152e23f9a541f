"""Online evaluation of a policy: undiscounted and discounted returns over full episodes."""

from __future__ import annotations

import numpy as np

from hybridrl.envs import make_env, normalized_score
from hybridrl.errors import PolicyError
from hybridrl.nn import Policy, policy_matches_spaces


def evaluate_policy(policy: Policy, env_id: str, episodes: int = 10, seed: int = 0, deterministic: bool = True,
                    gamma: float = 0.99, max_steps: int | None = None) -> dict:
    """Run ``episodes`` full episodes of ``policy`` in a fresh ``env_id`` and summarise them.

    Args:
        policy: the policy to act with (Box actions are clipped to the action space by the env).
        env_id: Gymnasium id.
        episodes: number of episodes (> 0); episode i is reset with seed ``seed + i``.
        deterministic: act with the mode (mean/argmax) instead of sampling. OPE estimates the value
            of the stochastic policy, so compare them with ``deterministic=False``.
        gamma: discount for the reported discounted return (what OPE estimates).
        max_steps: optional cap on steps per episode (the env's own time limit applies anyway).
    Returns:
        dict with ``mean, std, min, max`` (undiscounted return), ``discounted_mean``, ``discounted_std``,
        ``returns``, ``discounted_returns``, ``lengths``, ``episodes``, ``deterministic`` and
        ``normalized_score`` (D4RL convention, None without reference scores).
    Raises:
        PolicyError: if the policy does not fit the env's spaces. EnvError: unknown ``env_id``.
    """
    env = make_env(env_id)
    reason = policy_matches_spaces(policy, env.observation_space, env.action_space)
    if reason:
        env.close()
        raise PolicyError(f"policy cannot act in {env_id}: {reason}")
    act = policy.sampler(deterministic=deterministic)
    returns, disc_returns, lengths = [], [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, disc, discount, t, done = 0.0, 0.0, 1.0, 0, False
        while not done:
            action = act(obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            disc += discount * float(reward)
            discount *= gamma
            t += 1
            done = terminated or truncated or (max_steps is not None and t >= max_steps)
        returns.append(total)
        disc_returns.append(disc)
        lengths.append(t)
    env.close()
    r, d = np.asarray(returns), np.asarray(disc_returns)
    score = normalized_score(env_id, r)
    return {
        "env_id": env_id, "episodes": episodes, "deterministic": deterministic, "gamma": gamma,
        "mean": float(r.mean()), "std": float(r.std()), "min": float(r.min()), "max": float(r.max()),
        "discounted_mean": float(d.mean()), "discounted_std": float(d.std()),
        "normalized_score": None if score is None else float(np.mean(score)),
        "returns": r.tolist(), "discounted_returns": d.tolist(), "lengths": lengths,
    }
