"""Scaling past one process on Ray (optional extra ``hybridrl[ray]``).

Nothing here imports Ray at module import time: a one-machine install without Ray keeps working, and only the commands
that ask for workers, sweeps or distributed OPE reach :func:`hybridrl.scale.runtime.connect`.
"""
