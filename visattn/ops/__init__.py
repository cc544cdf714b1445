"""Functional operators, each a PyTorch reference plus a fused Triton kernel, picked per call."""

from . import _flops  # noqa: F401  (registers the FLOP formulas torch.utils.flop_counter lacks)
from ._backend import BACKENDS, resolve_backend

__all__ = ["BACKENDS", "resolve_backend"]
