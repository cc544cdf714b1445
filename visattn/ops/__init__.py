"""Functional operators, each a PyTorch reference plus a fused Triton kernel, picked per call."""

from . import _flops  # noqa: F401  (registers the FLOP formulas torch.utils.flop_counter lacks)
from ._backend import BACKENDS, environment_problem, forced_backend, resolve_backend
from ._export import exported_crop

__all__ = ["BACKENDS", "environment_problem", "exported_crop", "forced_backend", "resolve_backend"]
