"""Shared test settings: one torch thread per test process (pytest-xdist runs one process per core)."""

import os

import matplotlib
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)
os.environ.setdefault("MUJOCO_GL", "egl")
