"""What the Triton kernels of every op share: strides, tile widths, dot precision, log2(e) and the device guard.

Imported by the ``triton.py`` modules only: it imports Triton.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Sequence

import torch
import triton
import triton.language as tl

# Kernels run under Triton's interpreter (CPU tensors, the tests): autotuning does not run there.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

# exp(x) = exp2(x log2(e)): kernels run their softmax in base 2. A constexpr, so kernels may read it;
# host code reads ``LOG2E.value``.
LOG2E = tl.constexpr(math.log2(math.e))


def strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(batch, row, column) strides of a channels-last (B, H, W, C) map, whose channel stride must be 1."""
    if t.stride(-1) != 1:
        raise ValueError(f"the triton kernels need channels-last maps with unit channel stride, got {t.stride()}")
    return t.stride(0), t.stride(1), t.stride(2)


def head_tile(width: int) -> int:
    """Channels of a head's tile: ``width`` rounded up to a power of two, at least 16 (``tl.dot``'s minimum).

    Host arithmetic of every launch is plain Python: Triton's ``next_power_of_2`` and ``cdiv`` are jit-aware
    wrappers that cost microseconds per call."""
    return max(16, next_power_of_2(width))


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), in plain Python (see :func:`head_tile`)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) of non-negative ints, in plain Python (see :func:`head_tile`)."""
    return -(-a // b)


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of ``tl.dot``: "tf32" for half inputs (their values are exact in tf32), else "ieee"."""
    return "tf32" if dtype in (torch.float16, torch.bfloat16) else "ieee"


def device_of(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """A context making ``t``'s GPU the current device (Triton launches there); nothing for CPU tensors, which
    run under ``TRITON_INTERPRET=1`` (a ValueError saying so where no Triton driver can take them)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    if not INTERPRETED:
        try:
            triton.runtime.driver.active.get_current_target()
        except RuntimeError:  # no GPU driver: Triton's "0 active drivers"
            raise ValueError(f"the triton backend runs on CUDA tensors, got a {t.device.type} tensor: use "
                             "backend='torch' (unset $VISATTN_BACKEND), or set TRITON_INTERPRET=1 before importing "
                             "visattn to run the kernels in Triton's interpreter") from None
    return contextlib.nullcontext()


def on_tensor_device(launcher: Callable) -> Callable:
    """Decorator of a kernel launcher: run it on the device of its first argument, not the current CUDA device.

    The wrapper has ``device_guarded = True``, which the tests check on every launcher.
    """

    @functools.wraps(launcher)
    def guarded(t, *args, **kwargs):
        with device_of(t):
            return launcher(t, *args, **kwargs)

    guarded.device_guarded = True
    return guarded


# Warps and pipeline stages tried by autotuned kernels whose tile sizes are fixed by their launcher (the first is the
# interpreter's).
WARP_STAGE_CONFIGS = tuple(triton.Config({}, num_warps=w, num_stages=s)
                           for w, s in ((4, 2), (4, 1), (4, 3), (8, 2), (8, 3)))


def autotune(configs: Sequence[triton.Config], key: Sequence[str]) -> Callable:
    """Decorator of a jitted kernel: ``triton.autotune`` over ``configs`` (warps, stages, constexpr tile sizes),
    benchmarked once per value of the ``key`` arguments; under the interpreter the first config, fixed.

    Launch the result as ``kernel[grid](*args, **meta)`` without the tuned parameters. Tuned kernels must be safe to
    run several times (they only write their outputs, no atomics), which the benchmarking does on the first call.
    """
    if not INTERPRETED:
        return triton.autotune(configs=list(configs), key=list(key))
    return functools.partial(_FixedConfig, config=configs[0])


class _FixedConfig(triton.runtime.KernelInterface):
    """A jitted kernel launched with one fixed config (what :func:`autotune` gives under the interpreter)."""

    def __init__(self, fn: triton.runtime.KernelInterface, config: triton.Config):
        self.fn, self.config = fn, config

    def run(self, *args, **kwargs):
        return self.fn.run(*args, **self.config.all_kwargs(), **kwargs)
