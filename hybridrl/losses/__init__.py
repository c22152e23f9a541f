"""Losses: pure functions, one per objective, each returning ``(loss, metrics)``.

``core`` holds the shared policy-gradient, value and offline terms; algorithm families add a module each.
"""

from hybridrl.losses.core import *  # noqa: F401,F403
from hybridrl.losses.core import __all__ as _core_all
from hybridrl.losses.npg import *  # noqa: F401,F403

__all__ = list(_core_all)
from hybridrl.losses.sac import *  # noqa: F401,F403
