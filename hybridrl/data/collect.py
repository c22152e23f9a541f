"""Collect a :class:`~hybridrl.data.dataset.Dataset` by running a behaviour policy in one environment.

The behaviour policy ``pi_b`` and the exact natural-log probability of every stored action under it
(``behavior_log_prob``) are recorded, which importance-sampling OPE and off-policy corrections need:

=====================  ===========================================  =============================================
behaviour              action                                       ``log pi_b(a|s)``
=====================  ===========================================  =============================================
random (``None``)      uniform over the space                       ``-sum(log(high-low))`` (Box), ``-log n`` (Discrete)
policy                 sample of ``policy.distribution(s)``         ``policy.log_prob(s, a)``
policy + noise sigma   ``policy.mode(s) + sigma * N(0, I)`` (Box)   ``log N(a; mode(s), sigma^2 I)``
epsilon e (any of      with prob. e uniform, else the above         ``log((1 - e) p(a) + e u(a))``
the above)
=====================  ===========================================  =============================================

Box actions are clipped to the action bounds and the **clipped** action is stored; its log-prob is
the density of the unclipped behaviour evaluated at the clipped point. That is exact for actions
inside the box and an approximation on the boundary, where the true behaviour distribution of the
clipped action has a point mass (the density understates it). For random and epsilon-uniform
actions no clipping happens.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch.distributions import Categorical, Independent, Normal

from hybridrl.data.dataset import Dataset
from hybridrl.envs.make import REFERENCE_SCORES, make_env
from hybridrl.errors import ConfigError, EnvError, Interrupted, PolicyError
from hybridrl.nn import Policy, load_policy, policy_matches_spaces


def policy_hash(policy: Policy) -> str:
    """SHA-256 (hex) of a policy's parameters and buffers (names, dtypes, shapes and bytes, sorted by name)."""
    h = hashlib.sha256()
    for name, t in sorted(policy.state_dict().items()):
        arr = t.detach().cpu().contiguous().numpy()
        h.update(f"{name}:{arr.dtype}:{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _uniform_log_prob(space: gym.Space) -> float:
    if isinstance(space, gym.spaces.Discrete):
        return -math.log(int(space.n))
    return -float(np.sum(np.log(space.high.astype(np.float64) - space.low.astype(np.float64))))


def _check_space(space: gym.Space, uniform_needed: bool, env_id: str) -> None:
    if isinstance(space, gym.spaces.Discrete):
        if int(space.start) != 0:
            raise EnvError(f"{env_id}: Discrete action spaces with start={space.start} are not supported")
        return
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise EnvError(f"{env_id}: action space {space} is not supported; expected Discrete or a 1-D Box")
    if uniform_needed and not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise EnvError(f"{env_id}: uniform random actions need a bounded action space, got {space}")


def collect(env_id: str, policy: Policy | str | Path | None, n_steps: int, seed: int = 0,
            action_noise: float | None = None, epsilon: float = 0.0, progress: bool = True) -> Dataset:
    """Run a behaviour policy in ``env_id`` and return the recorded :class:`Dataset`.

    Whole episodes only: collection stops at the end of the episode during which the step count
    reaches ``n_steps``, so the dataset holds at least ``n_steps`` steps (at most ``n_steps`` plus one
    episode's length minus one). Time-limit truncations are stored as ``truncations``.

    Args:
        env_id: Gymnasium id (made with :func:`make_env`, ``clip_actions=False``; actions are clipped here).
        policy: ``None``/``"random"`` for uniform random actions, a :class:`~hybridrl.nn.Policy`, or a
            policy directory (loaded with :func:`~hybridrl.nn.load_policy`).
        n_steps: minimum number of steps, >= 1.
        seed: seeds the env's first reset and the NumPy generator used for every random choice (actions are
            sampled in NumPy from the policy's distribution parameters, so the global torch RNG is untouched).
        action_noise: sigma > 0 for a Box env: act with ``policy.mode(s) + N(0, sigma^2 I)`` (needs a policy).
        epsilon: probability in [0, 1] of a uniform random action instead of the policy's.
        progress: show a rich progress bar on stderr.
    Returns:
        The dataset, with ``behavior_log_prob`` ``[N]`` float64 and ``metadata["behavior_policy"]``
        (``kind``, ``description``, ``policy_dir``, ``policy_class``, ``policy_sha256``, ``action_noise``,
        ``epsilon``, ``seed``).
    Raises:
        EnvError: unknown env, unsupported or unbounded action space (for uniform actions), or a policy
            whose spaces do not match the env.
        PolicyError: the policy directory cannot be loaded, or the policy's distribution is not
            Categorical / diagonal Normal.
        ConfigError: ``n_steps < 1``, ``epsilon`` outside [0, 1], ``action_noise`` <= 0, on a Discrete
            env, or without a policy.
        Interrupted: a KeyboardInterrupt arrived during collection; ``step`` = environment steps taken. No
            partial dataset is returned (the caller writes nothing); the env is closed.
    """
    if int(n_steps) < 1:
        raise ConfigError(f"n_steps must be >= 1, got {n_steps}")
    if not 0.0 <= float(epsilon) <= 1.0:
        raise ConfigError(f"epsilon must be in [0, 1], got {epsilon}")
    policy_dir = None
    if isinstance(policy, (str, Path)) and str(policy) != "random":
        policy_dir = str(Path(policy).expanduser().absolute())
        policy = load_policy(policy_dir, env_id=env_id)
    elif isinstance(policy, str) or policy is None:
        policy = None
    elif not isinstance(policy, Policy):
        raise PolicyError(f"policy must be None, 'random', a policy directory or a hybridrl Policy, got {type(policy)}")

    env = make_env(env_id, clip_actions=False)
    space = env.action_space
    discrete = isinstance(space, gym.spaces.Discrete)
    if action_noise is not None:
        if policy is None:
            raise ConfigError("action_noise needs a policy (its mode is the noise mean)")
        if discrete:
            raise ConfigError(f"action_noise is for Box action spaces; {env_id} has {space}")
        if not float(action_noise) > 0:
            raise ConfigError(f"action_noise must be > 0, got {action_noise}")
    uniform_needed = policy is None or epsilon > 0
    _check_space(space, uniform_needed, env_id)
    if policy is not None:
        reason = policy_matches_spaces(policy, env.observation_space, space)
        if reason is not None:
            raise EnvError(f"policy does not fit {env_id}: {reason}")
        policy.eval()
    log_u = _uniform_log_prob(space) if uniform_needed else -math.inf
    low = None if discrete else space.low.astype(np.float32)
    high = None if discrete else space.high.astype(np.float32)

    rng = np.random.default_rng(seed)
    env.action_space.seed(seed)

    def uniform() -> np.ndarray:
        if discrete:
            return np.asarray(rng.integers(int(space.n)), dtype=np.int64)
        return rng.uniform(low, high).astype(np.float32)

    def policy_action(obs: np.ndarray) -> tuple[np.ndarray, Any]:
        """Sample from the (noisy) policy; returns the action and a log-density function of an action."""
        o = torch.as_tensor(obs, dtype=torch.float32)[None]
        with torch.no_grad():
            if action_noise is not None:
                mu = policy.mode(o)[0].double().numpy()
                sigma = np.full_like(mu, float(action_noise))
            else:
                dist = policy.distribution(o)
                if isinstance(dist, Categorical):
                    p = dist.probs[0].double().numpy()
                    p = p / p.sum()
                    a = np.asarray(rng.choice(len(p), p=p), dtype=np.int64)
                    return a, lambda act: math.log(p[int(act)]) if p[int(act)] > 0 else -math.inf
                base = dist.base_dist if isinstance(dist, Independent) else dist
                if not isinstance(base, Normal):  # e.g. tanh-Gaussian or mixture: the policy's own sampler and density
                    a_t = policy.sample(o)[0][0]
                    return a_t.numpy().astype(np.float32), lambda act: float(
                        policy.log_prob(o, torch.as_tensor(np.asarray(act, dtype=np.float32))[None])[0].detach())
                mu, sigma = base.loc[0].double().numpy(), base.scale[0].double().numpy()
        a = mu + sigma * rng.standard_normal(mu.shape)

        def log_density(act: np.ndarray) -> float:
            z = (np.asarray(act, dtype=np.float64) - mu) / sigma
            return float(np.sum(-0.5 * z * z - np.log(sigma) - 0.5 * math.log(2 * math.pi)))

        return a.astype(np.float32), log_density

    episodes: list[dict[str, Any]] = []
    total = 0
    bar = _progress(progress, env_id, int(n_steps))
    fork = torch.random.fork_rng()  # policies that sample with torch draw from a seeded, private stream
    fork.__enter__()
    try:
        torch.manual_seed(int(seed))
        obs, _ = env.reset(seed=int(seed))
        while total < n_steps:
            ep: dict[str, list] = {k: [] for k in ("observations", "actions", "rewards", "terminations",
                                                    "truncations", "behavior_log_prob")}
            ep["observations"].append(np.asarray(obs))
            done = False
            while not done:
                if policy is None:
                    action, logp = uniform(), log_u
                else:
                    explore = epsilon > 0 and rng.random() < epsilon
                    pa, log_density = policy_action(obs)
                    action = uniform() if explore else (pa if discrete else np.clip(pa, low, high))
                    lp = log_density(action)
                    logp = lp if epsilon == 0 else float(np.logaddexp(
                        math.log1p(-epsilon) + lp if epsilon < 1 else -math.inf, math.log(epsilon) + log_u))
                obs, reward, terminated, truncated, _ = env.step(action)
                done = terminated or truncated
                for k, v in (("observations", np.asarray(obs)), ("actions", action), ("rewards", float(reward)),
                             ("terminations", bool(terminated)), ("truncations", bool(truncated)),
                             ("behavior_log_prob", float(logp))):
                    ep[k].append(v)
                total += 1
                if bar is not None and (total % 100 == 0 or done):
                    bar[0].update(bar[1], completed=min(total, n_steps))
            episodes.append({k: np.asarray(v) for k, v in ep.items()})
            obs, _ = env.reset()
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM turned into it by the CLI): keep nothing, say where
        raise Interrupted(total) from None
    finally:
        fork.__exit__(None, None, None)
        env.close()
        if bar is not None:
            bar[0].stop()

    behavior = _describe(policy, policy_dir, action_noise, epsilon, seed)
    metadata: dict[str, Any] = {"behavior_policy": behavior, "collect": {"n_steps": int(n_steps), "seed": int(seed)}}
    if env_id in REFERENCE_SCORES:
        metadata["ref_min_score"], metadata["ref_max_score"] = REFERENCE_SCORES[env_id]
    return Dataset.from_episodes(episodes, env.observation_space, space, env_id=env_id, metadata=metadata,
                                 source=f"collect({env_id})")


def _describe(policy: Policy | None, policy_dir: str | None, action_noise: float | None, epsilon: float,
              seed: int) -> dict[str, Any]:
    if policy is None:
        kind, desc = "random", "uniform random"
    else:
        kind = "policy"
        desc = f"{type(policy).__name__}" + (f" from {policy_dir}" if policy_dir else "")
        desc += f" mode + N(0, {action_noise}^2)" if action_noise is not None else " (stochastic)"
        if epsilon > 0:
            desc += f", epsilon={epsilon} uniform"
    return {"kind": kind, "description": desc, "policy_dir": policy_dir,
            "policy_class": None if policy is None else type(policy).__name__,
            "policy_sha256": None if policy is None else policy_hash(policy),
            "action_noise": None if action_noise is None else float(action_noise),
            "epsilon": float(epsilon), "seed": int(seed)}


def _progress(enabled: bool, env_id: str, n_steps: int):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(f"collect {env_id}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=False)
    task = bar.add_task("collect", total=n_steps)
    bar.start()
    return bar, task
