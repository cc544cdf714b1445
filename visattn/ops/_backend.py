"""Backend dispatch shared by every op: Triton for CUDA tensors, the PyTorch reference otherwise."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

BACKENDS = ("torch", "triton")
ENV_VAR = "VISATTN_BACKEND"


def resolve_backend(backend: str | None, tensor: torch.Tensor) -> str:
    """Pick the backend for an op call.

    Order: the explicit ``backend`` argument, then ``$VISATTN_BACKEND``, then ``"triton"`` for CUDA
    tensors and ``"torch"`` for everything else.
    """
    choice = backend or os.environ.get(ENV_VAR) or ("triton" if tensor.is_cuda else "torch")
    if choice not in BACKENDS:
        raise ValueError(f"unknown backend {choice!r}; use one of {', '.join(BACKENDS)} (argument or ${ENV_VAR})")
    return choice


def pick(backend: str | None, tensor: torch.Tensor, reference: Callable, fused: Callable) -> Callable:
    """The implementation of an op for this call: ``fused`` (Triton) or ``reference`` (PyTorch)."""
    return fused if resolve_backend(backend, tensor) == "triton" else reference
