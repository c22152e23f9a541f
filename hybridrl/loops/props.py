"""``train_props``: the PROPS entry point of the benchmarks, a thin wrapper of the on-policy loop.

PROPS runs in :func:`hybridrl.loops.on_policy.train_on_policy` through its learner hooks (it acts with its
behaviour policy, collects blocks of ``props_n_steps``, keeps the buffer, adapts pi_phi after each block; see
:mod:`hybridrl.algos.props`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from hybridrl.data.rollout import SegmentBuffer
from hybridrl.loops.on_policy import train_on_policy


def train_props(env_id: str, config, steps: int, *, freeze_target: bool = False,
                callback: Callable[[int, object, SegmentBuffer], dict | None] | None = None, algo: str = "props",
                **kwargs):
    """Train PROPS (a :class:`~hybridrl.algos.props.PROPSConfig`) with :func:`train_on_policy`.

    Arguments as :func:`train_on_policy`, plus:
        freeze_target: never update pi_theta nor its observation statistics (sets ``config.freeze_target``).
        callback: ``callback(step, learner, buffer)`` after the updates of every behaviour batch; a returned
            dict of floats is merged into the logged metrics.
    Returns: the learner.
    """
    if freeze_target:
        config = dataclasses.replace(config, freeze_target=True)
    cb = None if callback is None else (lambda step, learner: callback(step, learner, learner.buffer))
    return train_on_policy(env_id, config, steps, callback=cb, algo=algo, **kwargs)
