"""Backend dispatch shared by every op: Triton for CUDA tensors, the PyTorch reference otherwise."""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence

import torch

BACKENDS = ("torch", "triton")
ENV_VAR = "VISATTN_BACKEND"
# What the Triton kernels compute in (float64 runs only under the interpreter, which the op tests use).
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def resolve_backend(backend: str | None, tensor: torch.Tensor) -> str:
    """Pick the backend for an op call.

    Order: the explicit ``backend`` argument, then ``$VISATTN_BACKEND``, then ``"triton"`` for CUDA
    tensors and ``"torch"`` for everything else.
    """
    choice = backend or os.environ.get(ENV_VAR) or ("triton" if tensor.is_cuda else "torch")
    if choice not in BACKENDS:
        raise ValueError(f"unknown backend {choice!r}; use one of {', '.join(BACKENDS)} (argument or ${ENV_VAR})")
    return choice


def environment_problem() -> str | None:
    """What makes ``$VISATTN_BACKEND`` unusable in this process (None when nothing does): a value that is no
    backend, or ``triton`` with no CUDA device and no ``TRITON_INTERPRET=1`` (the kernels could run nowhere)."""
    value = os.environ.get(ENV_VAR)
    if value is None or value == "torch":
        return None
    if value not in BACKENDS:
        return f"${ENV_VAR}={value} is no backend: use one of {', '.join(BACKENDS)}, or unset it"
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        return (f"${ENV_VAR}=triton forces the Triton kernels, which need a CUDA device (none is available): unset "
                "it, or set TRITON_INTERPRET=1 to run them in Triton's interpreter (slow)")
    return None


@contextlib.contextmanager
def forced_backend(backend: str) -> Iterator[None]:
    """Run the body with ``$VISATTN_BACKEND`` set to ``backend`` (``"torch"`` or ``"triton"``), then restore it."""
    previous = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = backend
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous


def pick(backend: str | None, tensor: torch.Tensor, reference: Callable, fused: Callable,
         unsupported: str | None = None, out_shape: Sequence[int] | None = None,
         out_dtype: torch.dtype | None = None, empty: Callable | None = None) -> Callable:
    """The implementation of an op for this call: ``fused`` (Triton) or ``reference`` (PyTorch).

    ``unsupported`` says why the fused kernels cannot take this call (None when they can). Then forcing the kernels
    (``backend="triton"``, or ``$VISATTN_BACKEND=triton`` with no argument) is a one-line error, and the automatic
    choice (Triton for CUDA tensors) falls back to the reference.

    ``out_shape`` is the shape of the op's output (``out_dtype`` its dtype, default ``tensor``'s). When it has no
    elements, on any backend, the call runs ``empty`` instead: by default :func:`empty_output`, which computes
    nothing (no kernel launch on an empty grid, no reshape of an empty tensor). An op whose reference takes empty
    inputs and has to run anyway passes it as ``empty`` (polarized attention: its callables must still give the
    weights they close over their zero gradients).
    """
    choice = resolve_backend(backend, tensor)
    if out_shape is not None and math.prod(out_shape) == 0:
        return empty or functools.partial(empty_output, tuple(out_shape), out_dtype or tensor.dtype, tensor.device)
    if choice != "triton":
        return reference
    if unsupported:
        if backend == "triton":
            raise ValueError(f"{unsupported}; use backend='torch'")
        if backend is None and os.environ.get(ENV_VAR) == "triton":
            raise ValueError(f"{unsupported}; ${ENV_VAR}=triton forces the kernels: unset it or set it to torch")
        return reference
    return fused


def dtype_reason(*tensors: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot take these tensors' dtypes (None when they can): an ``unsupported_reason``
    part every op shares."""
    bad = [t.dtype for t in tensors if t.dtype not in KERNEL_DTYPES]
    return f"the triton backend takes float32, float16 or bfloat16, got {bad[0]}" if bad else None


def empty_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, *args, **kwargs) -> torch.Tensor:
    """The zero-element output of an op called with ``args`` and ``kwargs``, in the autograd graph of each tensor
    among them that requires grad: their gradients are zeros of their own shape and dtype."""
    out = torch.zeros(shape, dtype=dtype, device=device)
    for t in (*args, *kwargs.values()):
        if isinstance(t, torch.Tensor) and t.requires_grad:
            out = out + t[None][:0].sum()  # a zero-element view of t: adds nothing, passes back zeros
    return out


def check_qkv_maps(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> None:
    """One-line errors for attention inputs that are not (B, H, W, C_qk), (B, H, W, C_qk), (B, H, W, C_v) maps
    of one dtype and device with C_qk >= 1 and channels divisible by ``num_heads``."""
    if q.dim() != 4 or q.shape != k.shape or q.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"expected q, k of shape (B, H, W, C_qk) and v of shape (B, H, W, C_v), "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not q.dtype == k.dtype == v.dtype or not q.device == k.device == v.device:
        raise ValueError(f"q, k, v must share dtype and device, got {q.dtype}/{k.dtype}/{v.dtype} "
                         f"on {q.device}/{k.device}/{v.device}")
    if q.shape[-1] < 1:
        raise ValueError(f"q and k need at least one channel, got C_qk={q.shape[-1]}")
    if num_heads < 1 or q.shape[-1] % num_heads or v.shape[-1] % num_heads:
        raise ValueError(
            f"channels {q.shape[-1]} (qk) and {v.shape[-1]} (v) must be divisible by num_heads={num_heads}"
        )
