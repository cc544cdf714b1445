"""Functional operators, each a PyTorch reference plus a fused Triton kernel, picked per call."""

from . import _flops  # noqa: F401  (registers the FLOP formulas torch.utils.flop_counter lacks)
from ._backend import BACKENDS, forced_backend, resolve_backend
from ._export import exported_crop

__all__ = ["BACKENDS", "exported_crop", "forced_backend", "resolve_backend"]
