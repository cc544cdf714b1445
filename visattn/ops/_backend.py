"""Backend dispatch shared by every op: Triton for CUDA tensors, the PyTorch reference otherwise."""

from __future__ import annotations

import importlib
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


class OpDispatcher:
    """Routes one op to its reference or its Triton implementation.

    The Triton module is imported on first use only, so ``import visattn`` never loads a kernel. An op
    whose Triton module does not exist yet runs its reference when the backend is picked
    automatically and raises when Triton is asked for explicitly.
    """

    def __init__(self, name: str, reference: Callable, triton_module: str, triton_attr: str):
        self.name = name
        self.reference = reference
        self._triton_module = triton_module
        self._triton_attr = triton_attr
        self._triton_impl: Callable | None = None

    def _load_triton(self) -> Callable | None:
        if self._triton_impl is None:
            try:
                module = importlib.import_module(self._triton_module)
            except ModuleNotFoundError as err:
                if err.name != self._triton_module:
                    raise
                return None
            self._triton_impl = getattr(module, self._triton_attr)
        return self._triton_impl

    def __call__(self, backend: str | None, tensor: torch.Tensor) -> Callable:
        explicit = backend or os.environ.get(ENV_VAR)
        if resolve_backend(backend, tensor) == "torch":
            return self.reference
        impl = self._load_triton()
        if impl is None:
            if explicit:
                raise RuntimeError(f"{self.name} has no Triton kernel yet; use backend='torch'")
            return self.reference
        return impl
