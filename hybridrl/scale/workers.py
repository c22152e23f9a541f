"""Ray rollout workers for the on-policy loop: ``hybridrl train ALGO --workers N --envs-per-worker M``.

:class:`RayVecEnv` stands where the single-process loop has its ``SyncVectorEnv`` of ``B = N * M`` envs. Worker ``w``
(a Ray actor, :class:`RolloutWorker`) steps envs ``w*M .. w*M+M-1`` in its own ``SyncVectorEnv`` (same-step
autoreset, true final observations kept); the learner stays in the driver and updates synchronously. Once per
rollout the driver puts the acting policy's weights into the object store (``ray.put`` once) and passes that one
reference to every worker's ``sample(weights, rng_seed, n_steps)``, which returns its block of the rollout with
behaviour log-probabilities and raw rewards.

Seeding (what makes ``--workers 2 --envs-per-worker 1`` give exactly the single-process ``Segments`` of 2 envs):

- sub-env ``i`` is made and reset with ``seed + i``, as :func:`hybridrl.envs.make_vec_env` does;
- the driver draws one number from ``torch``'s global RNG per rollout, as the single-process sampler does, and every
  worker seeds ``numpy.random.default_rng`` with it. A worker acts for all ``B`` rows and keeps its own
  (:class:`_RowsPolicy`), so env ``i``'s noise is the one the single-process loop gives env ``i``. This holds
  for policies whose ``sampler(rng)`` draws from ``rng`` (Gaussian, categorical, deterministic); a policy that
  samples with ``torch`` instead (the base :meth:`~hybridrl.nn.Policy.sampler`, e.g. ``GaussianMixturePolicy``) is
  seeded per worker: reproducible, but not the single-process stream;
- reward scaling (a running statistic over all ``B`` envs) and the episode statistics run in the driver over the
  gathered raw rewards, step by step in the single-process order.

Needs the optional extra ``hybridrl[ray]``; Ray is imported only when a :class:`RayVecEnv` is made.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from hybridrl.errors import ConfigError

SAMPLE_TIMEOUT_S = 3600.0
"""Seconds the driver waits for one rollout from its workers before :func:`hybridrl.scale.runtime.get` fails."""
START_TIMEOUT_S = 300.0
"""Seconds the driver waits for the workers to start (and reset their envs) before failing."""


class _RowsPolicy:
    """The policy as :func:`~hybridrl.loops.common.collect_block` uses it, acting for rows ``lo:hi`` of ``total``.

    Each step the worker's observations are written into rows ``lo:hi`` of a ``[total, ...]`` array (zeros elsewhere)
    and the policy acts on all ``total`` rows, with ``numpy.random.default_rng(rng_seed)``; the worker keeps its rows.
    So the noise stream and the floating-point path (the batched matrix products) are the single-process loop's,
    bit for bit (acting on the worker's rows only changes the last bits when ``M = 1``: NumPy then takes a
    matrix-vector product). The price is a forward pass over ``total`` rows per step, small for the MLPs here.
    """

    def __init__(self, policy, rng_seed: int, lo: int, hi: int, total: int):
        self.policy, self.discrete = policy, policy.discrete
        self.rng, self.lo, self.hi, self.total = np.random.default_rng(rng_seed), lo, hi, total

    def sampler(self):
        act, full = self.policy.sampler(self.rng), None

        def sample(obs: np.ndarray) -> np.ndarray:
            nonlocal full
            if full is None:
                full = np.zeros((self.total, *obs.shape[1:]), obs.dtype)
            full[self.lo:self.hi] = obs
            return act(full)[self.lo:self.hi]

        return sample

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.policy.log_prob(obs, action)


def _policy_spec(policy) -> tuple[str, dict]:
    """``(class name, constructor kwargs)`` of a registered policy class (what :func:`load_policy` rebuilds)."""
    from hybridrl.nn.policy_io import policy_class

    name = type(policy).__name__
    try:
        ok = policy_class(name) is type(policy)
    except Exception:  # noqa: BLE001 - PolicyError for an unknown name
        ok = False
    if not ok or not isinstance(getattr(policy, "kwargs", None), dict):
        raise ConfigError(f"--workers: the acting policy {name} is not a registered policy class with .kwargs "
                          "(hybridrl.nn.register_policy_class); rollout workers cannot rebuild it")
    return name, dict(policy.kwargs)


def _weights(policy) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in policy.state_dict().items()}


class RolloutWorker:
    """Envs ``lo .. lo + num_envs - 1`` of a ``total``-env rollout, stepped with the weights the driver sends.

    Made as a Ray actor by :class:`RayVecEnv` (a plain class here, so it is testable without Ray).

    Args:
        env_id: Gymnasium id. lo: index of this worker's first env in the whole rollout. num_envs: ``M``.
        total: ``B``, envs in the whole rollout. seed: the run seed (env ``i`` uses ``seed + i``).
        policy_spec: ``(class name, kwargs)`` of the acting policy.
    """

    def __init__(self, env_id: str, lo: int, num_envs: int, total: int, seed: int, policy_spec: tuple[str, dict]):
        from hybridrl.envs import make_vec_env
        from hybridrl.nn.policy_io import policy_class

        torch.set_num_threads(1)
        self.lo, self.hi, self.total = lo, lo + num_envs, total
        self.envs = make_vec_env(env_id, num_envs, seed=seed + lo)
        name, kwargs = policy_spec
        self.policy = policy_class(name)(**kwargs)
        self.obs: np.ndarray | None = None

    def node_id(self) -> str:
        """The Ray node this worker runs on (tests check placement)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def reset(self, seed: int) -> np.ndarray:
        """Reset env ``i`` with ``seed + i``; returns this worker's observations ``[M, *obs_shape]``."""
        self.obs, _ = self.envs.reset(seed=seed + self.lo)
        return self.obs

    def sample(self, weights: dict[str, np.ndarray], rng_seed: int, n_steps: int) -> dict[str, Any]:
        """Step ``n_steps`` times with ``weights``; the block of :func:`hybridrl.loops.common.collect_block`.

        Returns:
            ``[n_steps, M, ...]`` arrays ``obs, action, next_obs, terminated, truncated, behavior_log_prob`` (float32,
            int64 actions for discrete policies), ``reward`` (raw, float64: the driver scales), plus ``"last_obs"``
            (``[M, ...]``, where the next rollout continues) and ``"seconds"`` (time spent here).
        """
        from hybridrl.loops.common import EpisodeStats, collect_block
        from hybridrl.nn import Policy

        t0 = time.perf_counter()
        self.policy.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
        if type(self.policy).sampler is Policy.sampler:  # samples with torch: seeded per worker
            torch.manual_seed(rng_seed + self.lo)
        raw_rewards: list[np.ndarray] = []

        def keep_raw(reward, done):  # the driver scales: it sees every env's reward
            raw_rewards.append(np.asarray(reward, dtype=np.float64).copy())
            return reward

        acting = _RowsPolicy(self.policy, rng_seed, self.lo, self.hi, self.total)
        self.obs, block = collect_block(self.envs, acting, self.obs, n_steps, EpisodeStats(self.hi - self.lo),
                                        keep_raw, store_scaled_reward=False)
        block["reward"] = np.stack(raw_rewards)
        block["last_obs"] = self.obs
        block["seconds"] = time.perf_counter() - t0
        return block

    def close(self) -> None:
        self.envs.close()


class RayVecEnv:
    """``workers`` Ray actors with ``envs_per_worker`` envs each, used by the on-policy loop like a vector env.

    Offers ``single_observation_space``, ``single_action_space``, ``num_envs``, ``reset(seed)``, ``close()`` and
    :meth:`collect_block` (the signature of :func:`hybridrl.loops.common.collect_block` without ``envs``).

    Args:
        env_id: Gymnasium id. workers: ``N >= 1``. envs_per_worker: ``M >= 1``. seed: the run seed.
        policy: the acting policy (its class and kwargs are sent once; weights every rollout).
        address: None starts a local runtime on 127.0.0.1; ``"auto"`` / ``"HOST:PORT"`` joins a cluster.
        num_cpus: CPUs of a local runtime (default ``workers``). timeout_s: per rollout.
        resources: optional Ray custom resources per worker, e.g. ``[{"node_a": 0.5}, {"node_b": 0.5}]`` to pin
            workers to nodes that declare them (``ray start --resources``).
    Raises:
        ConfigError: bad counts, Ray missing, an unreachable address, a worker failing or timing out.
    """

    def __init__(self, env_id: str, workers: int, envs_per_worker: int, seed: int, policy, *,
                 address: str | None = None, num_cpus: int | None = None, timeout_s: float = SAMPLE_TIMEOUT_S,
                 resources: list[dict] | None = None):
        from hybridrl.envs import make_env
        from hybridrl.scale import runtime

        if workers < 1 or envs_per_worker < 1:
            raise ConfigError(f"--workers {workers} --envs-per-worker {envs_per_worker}: both must be >= 1")
        self.num_envs, self.timeout_s = workers * envs_per_worker, timeout_s
        probe = make_env(env_id)
        self.single_observation_space, self.single_action_space = probe.observation_space, probe.action_space
        probe.close()
        spec = _policy_spec(policy)
        ray = runtime.connect(address, num_cpus=num_cpus or workers)
        self._ray = ray
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < workers:
            raise ConfigError(f"--workers {workers}: each rollout worker needs 1 CPU, but the Ray runtime has {cpus:g}")
        actor = ray.remote(num_cpus=1)(RolloutWorker)
        self.workers = []
        for w in range(workers):
            options = {"resources": resources[w]} if resources else {}
            self.workers.append(actor.options(**options).remote(env_id, w * envs_per_worker, envs_per_worker,
                                                                self.num_envs, seed, spec))
        self.last_timing: dict[str, float] = {}

    def _get(self, refs, what: str, timeout_s: float | None = None):
        from hybridrl.scale import runtime

        try:
            return runtime.get(refs, timeout_s=timeout_s or self.timeout_s, what=what)
        except self._ray.exceptions.RayError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{what} failed: {first}") from exc

    def node_ids(self) -> list[str]:
        """The Ray node id of each worker, in worker order."""
        return self._get([w.node_id.remote() for w in self.workers], "rollout workers (node ids)")

    def reset(self, seed: int) -> tuple[np.ndarray, dict]:
        """Reset env ``i`` with ``seed + i``; returns ``(obs [B, ...], {})``."""
        obs = self._get([w.reset.remote(seed) for w in self.workers], "rollout workers (start and reset)",
                        START_TIMEOUT_S)
        return np.concatenate(obs), {}

    def collect_block(self, policy, obs: np.ndarray, n_steps: int, episodes, scaler=None,
                      store_scaled_reward: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One rollout from every worker, as :func:`hybridrl.loops.common.collect_block` returns it for ``B`` envs.

        ``obs`` is ignored (each worker continues from its own envs). One ``torch`` random number is drawn here, as
        the single-process sampler draws it; the weights go into the object store once. Timings of the last call
        (``sample_s``: the slowest worker's own time, ``total_s``: wall time here) are in :attr:`last_timing`.
        """
        t0 = time.perf_counter()
        rng_seed = int(torch.randint(2**62, (1,)))
        ref = self._ray.put(_weights(policy))
        parts = self._get([w.sample.remote(ref, rng_seed, n_steps) for w in self.workers], "rollout workers (sample)")
        t1 = time.perf_counter()
        block = {k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]
                 if k not in ("last_obs", "seconds")}
        raw = block["reward"]
        done = block["terminated"] | block["truncated"]
        rewards = np.empty(raw.shape, np.float32)
        for t in range(raw.shape[0]):  # the single-process order: scale, then record the episode statistics
            scaled = scaler(raw[t], done[t]) if scaler is not None else raw[t]
            rewards[t] = scaled if store_scaled_reward else raw[t]
            episodes.add(raw[t], done[t])
        block["reward"] = rewards
        last = np.concatenate([p["last_obs"] for p in parts])
        self.last_timing = {"sample_s": max(p["seconds"] for p in parts), "wait_s": t1 - t0,
                            "total_s": time.perf_counter() - t0}
        return last, block

    def close(self) -> None:
        """Close the workers' envs and end the actors (the runtime stays up for the rest of the process)."""
        try:
            self._get([w.close.remote() for w in self.workers], "rollout workers (close)")
        finally:
            for w in self.workers:
                self._ray.kill(w)
            self.workers = []
