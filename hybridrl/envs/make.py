"""Environment construction, reward scaling and reference scores.

* :func:`make_env` / :func:`make_vec_env` build Gymnasium environments with the wrappers every
  hybridrl loop expects (action clipping for ``Box`` actions, episode statistics).
* :func:`true_next_obs` recovers the pre-reset observation from a same-step-autoreset vector env.
* :class:`RewardScaler` divides rewards by the running std of the discounted return.
* :data:`REFERENCE_SCORES` and :func:`normalized_score` give D4RL-style normalised scores.
* :func:`check_env_matches` compares spaces (env vs dataset vs policy) with a readable error.

Only Gymnasium and NumPy are imported here; MuJoCo is loaded by Gymnasium when a MuJoCo env is made.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from hybridrl.errors import EnvError, ShapeError

__all__ = [
    "REFERENCE_SCORES",
    "RewardScaler",
    "check_env_matches",
    "make_env",
    "make_vec_env",
    "normalized_score",
    "true_next_obs",
]

#: ``env_id -> (random_score, expert_score)``: undiscounted episode returns used for
#: ``normalized_score = 100 * (R - random) / (expert - random)`` (D4RL's definition).
#:
#: Sources:
#:  * ``Hopper-v5``, ``HalfCheetah-v5``, ``Walker2d-v5``: D4RL ``REF_MIN_SCORE`` / ``REF_MAX_SCORE``
#:    (d4rl/infos.py). D4RL measured them on its ``-v2`` MuJoCo envs (mujoco-py); the v5 envs have the
#:    same reward functions and horizons, so the numbers are comparable but not re-measured.
#:  * ``CartPole-v1``: random = 22.4, mean return of the uniform random policy measured with
#:    hybridrl over 2000 episodes (Gymnasium 1.4, seed 0, standard error 0.26); expert = 500, the
#:    maximum return (episodes are truncated at 500 steps with reward 1 per step).
#:  * ``Pendulum-v1``: random = -1230, measured the same way over 300 episodes (standard error 17);
#:    expert = -176.33, the RL Zoo SAC agent (huggingface.co/sb3/sac-Pendulum-v1, mean over its eval).
REFERENCE_SCORES: dict[str, tuple[float, float]] = {
    "CartPole-v1": (22.4, 500.0),
    "Pendulum-v1": (-1230.0, -176.33),
    "Hopper-v5": (-20.272305754419153, 3234.3),
    "HalfCheetah-v5": (-280.178953, 12135.0),
    "Walker2d-v5": (1.629008, 4592.3),
}


def normalized_score(env_id: str | None, returns: Any) -> np.ndarray | float | None:
    """D4RL normalised score ``100 * (R - R_random) / (R_expert - R_random)``.

    Args:
        env_id: a key of :data:`REFERENCE_SCORES`.
        returns: undiscounted episode return(s), scalar or array of any shape.
    Returns:
        The scores (same shape as ``returns``; a float for a scalar), or ``None`` when ``env_id`` has
        no reference scores.
    """
    if env_id not in REFERENCE_SCORES:
        return None
    lo, hi = REFERENCE_SCORES[env_id]
    out = 100.0 * (np.asarray(returns, dtype=np.float64) - lo) / (hi - lo)
    return float(out) if out.ndim == 0 else out


class _ClipAction(gym.wrappers.ClipAction):
    """``gym.wrappers.ClipAction`` that keeps the env's bounded ``action_space``.

    Since Gymnasium 1.0 ``ClipAction`` advertises ``Box(-inf, inf)`` (any action is accepted). hybridrl
    builds policies from ``env.action_space`` and needs the real bounds, so they are restored here;
    actions outside them are still accepted and clipped.
    """

    def __init__(self, env: gym.Env):
        bounded = env.action_space
        super().__init__(env)
        self.action_space = bounded


def _unknown_env_message(env_id: str) -> str:
    ids = list(gym.registry.keys())
    close = difflib.get_close_matches(env_id, ids, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (f"unknown environment id {env_id!r}.{hint} "
            f"({len(ids)} ids are registered; list them with `gymnasium.pprint_registry()`.)")


def make_env(env_id: str, seed: int | None = None, clip_actions: bool = True, **kwargs: Any) -> gym.Env:
    """Make one Gymnasium environment with hybridrl's standard wrappers.

    Wrappers, inner to outer: ``ClipAction`` (``Box`` actions only, when ``clip_actions``; the
    advertised ``action_space`` keeps its bounds) then ``RecordEpisodeStatistics`` (``info["episode"]``
    with ``r`` return, ``l`` length, ``t`` time at the end of each episode).

    Args:
        env_id: a registered id, e.g. ``"Hopper-v5"``, ``"CartPole-v1"``, ``"hybridrl/Chain-v0"``.
        seed: if given, the env is reset once with ``seed`` and its action and observation spaces are
            seeded, so later ``reset()`` calls without a seed are reproducible.
        clip_actions: clip ``Box`` actions to the action bounds before they reach the env.
        **kwargs: passed to ``gym.make`` (e.g. ``max_episode_steps``).
    Raises:
        EnvError: unknown id (with close matches), or the env cannot be made (missing dependency, bad kwargs).
    """
    if env_id not in gym.registry:
        raise EnvError(_unknown_env_message(env_id))
    try:
        env = gym.make(env_id, **kwargs)
    except (gym.error.Error, TypeError, ImportError) as e:
        raise EnvError(f"environment {env_id!r} could not be made: {type(e).__name__}: {e}") from None
    if clip_actions and isinstance(env.action_space, gym.spaces.Box):
        env = _ClipAction(env)
    env = gym.wrappers.RecordEpisodeStatistics(env)
    if seed is not None:
        env.reset(seed=int(seed))
        env.action_space.seed(int(seed))
        env.observation_space.seed(int(seed))
    return env


VECTOR_KINDS = ("sync", "async")
"""``vector`` values of :func:`make_vec_env`: Gymnasium's ``SyncVectorEnv`` or ``AsyncVectorEnv``."""


def make_vec_env(env_id: str, num_envs: int, seed: int = 0, clip_actions: bool = True,
                 vector: str = "sync") -> gym.vector.VectorEnv:
    """``num_envs`` copies of :func:`make_env` in a ``SyncVectorEnv`` (or ``AsyncVectorEnv``) with same-step autoreset.

    ``vector="async"`` steps each sub-env in its own process (Gymnasium's ``AsyncVectorEnv``, shared memory); the
    returned arrays, the autoreset and the seeding are the same as with ``"sync"``, so a rollout is identical.

    With ``autoreset_mode=AutoresetMode.SAME_STEP`` (Gymnasium >= 1.1, checked on 1.4) a sub-env whose
    episode ends at step t is reset inside that same ``step`` call, so:

    * the returned ``obs[i]`` is already the first observation of the next episode;
    * ``infos["final_obs"]`` is an object array ``[num_envs]`` holding the true final observation
      where ``infos["_final_obs"][i]`` is true (``None`` elsewhere); use :func:`true_next_obs`;
    * ``infos["final_info"]`` holds the final step's info (``final_info["episode"]`` from
      ``RecordEpisodeStatistics``, masked by ``final_info["_episode"]``).

    Sub-env ``i`` is seeded with ``seed + i`` (reset and action space); the vector action space with ``seed``.

    Raises:
        EnvError: unknown id, ``num_envs < 1`` or an unknown ``vector``.
    """
    if vector not in VECTOR_KINDS:
        raise EnvError(f"vector={vector!r}; expected one of {VECTOR_KINDS}")
    if num_envs < 1:
        raise EnvError(f"num_envs must be >= 1, got {num_envs}")
    if env_id not in gym.registry:
        raise EnvError(_unknown_env_message(env_id))

    def thunk(i: int):
        return lambda: make_env(env_id, seed=seed + i, clip_actions=clip_actions)

    kind = gym.vector.SyncVectorEnv if vector == "sync" else gym.vector.AsyncVectorEnv
    envs = kind([thunk(i) for i in range(num_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    envs.action_space.seed(seed)
    return envs


def true_next_obs(obs: np.ndarray, infos: dict, done: np.ndarray) -> np.ndarray:
    """The true next observation of each sub-env after a same-step-autoreset vector ``step``.

    Args:
        obs: ``[N, *obs_shape]`` observations returned by ``step`` (reset observations where done).
        infos: the ``infos`` dict returned by the same ``step``.
        done: ``[N]`` bool, ``terminated | truncated``.
    Returns:
        A copy of ``obs`` (float32 kept as is) where row ``i`` is ``infos["final_obs"][i]`` when ``done[i]``.
    Raises:
        ShapeError: ``done`` is not ``[N]``, or ``infos`` lacks ``final_obs`` for a done sub-env
            (the vector env was not made with same-step autoreset).
    """
    obs = np.asarray(obs)
    done = np.asarray(done, dtype=bool)
    if done.shape != obs.shape[:1]:
        raise ShapeError(f"done has shape {done.shape}; expected [N]={obs.shape[:1]}")
    out = obs.copy()
    if not done.any():
        return out
    final = infos.get("final_obs")
    mask = infos.get("_final_obs")
    if final is None or mask is None:
        raise ShapeError("infos has no 'final_obs' although a sub-env is done; make the vector env with "
                         "autoreset_mode=AutoresetMode.SAME_STEP (see make_vec_env)")
    for i in np.flatnonzero(done):
        if not mask[i]:
            raise ShapeError(f"sub-env {i} is done but infos['_final_obs'][{i}] is false")
        out[i] = final[i]
    return out


class RewardScaler:
    """Divide rewards by the running std of the discounted return (reward scaling for PPO).

    Per sub-env ``i`` it keeps ``G_i <- gamma * G_i + r_i``; every call merges the ``N`` values ``G``
    into one running mean/variance (the parallel Chan et al. update) and returns
    ``clip(r / sqrt(var + epsilon), -clip, clip)``. ``G_i`` is reset to 0 after a step with ``done[i]``.
    This is gym 0.21's ``NormalizeReward`` + ``TransformReward(clip)`` as used by CleanRL's
    ``ppo_continuous_action.py``. (Gymnasium 1.x's wrapper instead multiplies the previous ``G`` by
    ``1 - terminated`` of the current step, so the terminal reward seeds the next episode's ``G``.)

    Args:
        gamma: discount of the return whose scale is estimated, in [0, 1].
        clip: bound on the scaled reward (``None`` or ``inf`` for no clipping).
        epsilon: added to the variance, > 0.
    Raises:
        ValueError: gamma outside [0, 1] or epsilon <= 0.
    """

    def __init__(self, gamma: float, clip: float | None = 10.0, epsilon: float = 1e-8):
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        self.gamma, self.clip, self.epsilon = float(gamma), clip, float(epsilon)
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4
        self.returns: np.ndarray | None = None

    def __call__(self, reward: np.ndarray | Sequence[float] | float,
                 done: np.ndarray | Sequence[bool] | bool) -> np.ndarray:
        """Scale rewards ``[N]`` (float64 out); ``done [N]`` is ``terminated | truncated`` of this step.

        Raises:
            ShapeError: ``done`` and ``reward`` differ in shape, or ``N`` changed since the last call.
        """
        r = np.atleast_1d(np.asarray(reward, dtype=np.float64))
        d = np.atleast_1d(np.asarray(done, dtype=bool))
        if r.ndim != 1 or d.shape != r.shape:
            raise ShapeError(f"reward {r.shape} and done {d.shape} must both be [N]")
        if self.returns is None:
            self.returns = np.zeros_like(r)
        if self.returns.shape != r.shape:
            raise ShapeError(f"RewardScaler was used with {self.returns.shape[0]} envs, now {r.shape[0]}")
        self.returns = self.returns * self.gamma + r
        self._update(self.returns)
        scaled = r / math.sqrt(self.var + self.epsilon)
        if self.clip is not None:
            scaled = np.minimum(np.maximum(scaled, -self.clip), self.clip)
        self.returns[d] = 0.0
        return scaled

    def _update(self, x: np.ndarray) -> None:
        n = x.shape[0]
        # n == 1: skip NumPy reductions
        b_mean, b_var = (float(x[0]), 0.0) if n == 1 else (float(x.mean()), float(x.var()))
        delta = b_mean - self.mean
        tot = self.count + n
        m2 = self.var * self.count + b_var * n + delta * delta * self.count * n / tot
        self.mean, self.var, self.count = self.mean + delta * n / tot, m2 / tot, tot

    @property
    def std(self) -> float:
        """Current divisor ``sqrt(var + epsilon)``."""
        return float(np.sqrt(self.var + self.epsilon))

    def state_dict(self) -> dict:
        """JSON-able state: floats and a list (the per-env returns, or ``None`` before the first call)."""
        return {"gamma": self.gamma, "clip": self.clip, "epsilon": self.epsilon, "mean": self.mean,
                "var": self.var, "count": self.count,
                "returns": None if self.returns is None else [float(v) for v in self.returns]}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.gamma, self.clip, self.epsilon = float(state["gamma"]), state["clip"], float(state["epsilon"])
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])
        ret = state.get("returns")
        self.returns = None if ret is None else np.asarray(ret, dtype=np.float64)


def _describe(space: gym.Space) -> str:
    return repr(space).replace("\n", " ")


def check_env_matches(env_or_spaces: gym.Env | tuple[gym.Space, gym.Space], observation_space: gym.Space,
                      action_space: gym.Space, what: str) -> None:
    """Check that an env (or an ``(observation_space, action_space)`` pair) matches expected spaces.

    Args:
        env_or_spaces: the environment, or its ``(observation_space, action_space)``.
        observation_space, action_space: the spaces ``what`` was made for.
        what: names the other side in the message, e.g. ``"dataset /data/hopper-v0"``.
    Raises:
        ShapeError: observation or action shapes differ.
        EnvError: space types differ (Discrete vs Box), Discrete sizes differ, or Box bounds differ.
    """
    if isinstance(env_or_spaces, tuple):
        env_obs, env_act = env_or_spaces
    else:
        env_obs, env_act = env_or_spaces.observation_space, env_or_spaces.action_space
    for kind, got, want in (("observation", env_obs, observation_space), ("action", env_act, action_space)):
        if type(got) is not type(want):
            raise EnvError(f"{what}: {kind} space is {_describe(want)} but the env has {_describe(got)}")
        if isinstance(want, gym.spaces.Discrete):
            if int(got.n) != int(want.n) or int(got.start) != int(want.start):
                raise EnvError(f"{what}: {kind} space is {_describe(want)} but the env has {_describe(got)}")
            continue
        if got.shape != want.shape:
            raise ShapeError(f"{what}: {kind} shape is {want.shape} but the env's is {got.shape} "
                             f"({_describe(want)} vs {_describe(got)})")
        if isinstance(want, gym.spaces.Box) and not (
            np.allclose(got.low, want.low, equal_nan=True) and np.allclose(got.high, want.high, equal_nan=True)
        ):
            raise EnvError(f"{what}: {kind} bounds are [{want.low}, {want.high}] but the env's are "
                           f"[{got.low}, {got.high}]")
