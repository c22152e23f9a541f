"""Distributed off-policy evaluation: ``hybridrl ope ... --workers N`` fits the candidates as Ray tasks.

One task per candidate policy runs everything :func:`hybridrl.ope.evaluate_ope` does for it (one FQE fit shared by
the critic-based estimators, then every estimator; the behaviour model, if one is needed, is fitted once in the
driver and shipped with the job). The dataset is put into the object store once and every task reads that one copy.
A candidate's random streams depend only on ``(seed, candidate index, estimator index)`` and every task runs with the
driver's number of torch threads, so the estimates equal the sequential ones (``tests/test_scale_ope.py``).
"""

from __future__ import annotations

from typing import Any

from hybridrl.errors import ConfigError, HybridRLError

TASK_TIMEOUT_S = 24 * 3600.0
"""Seconds the driver waits for all candidates before giving up with a ConfigError."""


def _run(job, dataset, p_idx: int, pname: str, policy, threads: int):
    import torch

    torch.set_num_threads(threads)
    return job(dataset, p_idx, pname, policy)


def evaluate_parallel(dataset, policies: dict[str, Any], job, workers: int, address: str | None = None,
                      timeout_s: float = TASK_TIMEOUT_S) -> dict[str, dict[str, Any]]:
    """``{policy name: job(dataset, index, name, policy)}`` with at most ``workers`` candidates in flight.

    Args:
        dataset: a :class:`~hybridrl.data.dataset.Dataset` (``ray.put`` once). policies: name -> policy.
        job: the per-candidate callable of :func:`hybridrl.ope.evaluate_ope` (``ray.put`` once).
        workers: ``N >= 1`` concurrent tasks (a local runtime gets ``N`` CPUs). address: None (local) or a cluster.
    Raises:
        ConfigError: ``workers < 1``, Ray missing or unreachable, a task failing (its first line) or the timeout.
    """
    import torch

    from hybridrl.scale import runtime

    if workers < 1:
        raise ConfigError(f"--workers {workers}: expected >= 1")
    ray = runtime.connect(address, num_cpus=workers)
    task = ray.remote(num_cpus=1, max_retries=0)(_run)
    ds_ref, job_ref = ray.put(dataset), ray.put(job)
    threads = torch.get_num_threads()
    pending = list(enumerate(policies.items()))
    running: dict[Any, str] = {}
    out: dict[str, Any] = {}
    try:
        while pending or running:
            while pending and len(running) < workers:
                p_idx, (name, policy) = pending.pop(0)
                running[task.remote(job_ref, ds_ref, p_idx, name, policy, threads)] = name
            done, _ = ray.wait(list(running), num_returns=1, timeout=timeout_s)
            if not done:
                raise ConfigError(f"OPE tasks did not finish within {timeout_s:.0f} s")
            for ref in done:
                name = running.pop(ref)
                try:
                    out[name] = runtime.get(ref, timeout_s=60, what=f"OPE of {name}")
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.as_instanceof_cause()
                    if isinstance(cause, HybridRLError):  # the sequential run's error, raised the same way
                        raise cause from None
                    raise ConfigError(f"OPE of candidate {name} failed: {str(exc).strip().splitlines()[0]}") from exc
    finally:
        for ref in running:
            ray.cancel(ref, force=True)
    return {name: out[name] for name in policies}
