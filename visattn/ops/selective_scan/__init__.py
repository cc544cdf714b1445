"""Selective scan (S6 of Mamba, Gu and Dao 2023), as VMamba's SS2D runs it over its scan directions.

Per channel c, with state h in R^n, h_0 = 0, and dt = softplus?(delta + delta_bias):

    h_t = exp(dt_t A_c) h_{t-1} + dt_t B_t u_t        (elementwise over the n states)
    y_t = sum_n C_t h_t + D_c u_t,    y = y silu(z)
"""

from __future__ import annotations

import torch

from .._backend import pick
from .fused import selective_scan_fused, unsupported_reason
from .reference import selective_scan_reference

__all__ = ["selective_scan"]


def check_selective_scan_args(u, delta, A, B, C, D, z, delta_bias) -> None:
    """Raise a one-line ValueError for shapes, groups, dtypes or devices that cannot work."""
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"expected u, delta of shape (batch, d, L), got {tuple(u.shape)}, {tuple(delta.shape)}")
    batch, d, length = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"expected A of shape (d, n) = ({d}, n), got {tuple(A.shape)}")
    n = A.shape[1]
    if B.dim() != 4 or B.shape != C.shape or B.shape[0] != batch or B.shape[2:] != (n, length):
        raise ValueError(f"expected B, C of shape (batch, g, n, L) = ({batch}, g, {n}, {length}), "
                         f"got {tuple(B.shape)}, {tuple(C.shape)}")
    if B.shape[1] < 1 or d % B.shape[1]:
        raise ValueError(f"groups g={B.shape[1]} of B, C must divide d={d}")
    for name, t, shape in (("D", D, (d,)), ("delta_bias", delta_bias, (d,)), ("z", z, tuple(u.shape))):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"expected {name} of shape {shape}, got {tuple(t.shape)}")
    given = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    given = {name: t for name, t in given.items() if t is not None}
    for name, t in given.items():
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.device != u.device:
            raise ValueError(f"{name} is on {t.device} but u is on {u.device}")
    for name in ("A", "D", "delta_bias"):
        if name in given and given[name].dtype != torch.float32:
            raise ValueError(f"{name} must be float32, got {given[name].dtype}")


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                   delta_softplus: bool = False, backend: str | None = None) -> torch.Tensor:
    """Selective scan over sequences of length L, every step computed in float32 (float64 u in float64 on the torch
    backend).

    Per channel c, with h_0 = 0 and dt = delta + delta_bias (softplus'd if ``delta_softplus``):
    h_t = exp(dt_t A_c) h_{t-1} + dt_t B_t u_t,  y_t = sum_n C_t h_t + D_c u_t,  then y = y silu(z).

    Args:
        u, delta: (batch, d, L) input and step size, floating (float32, float16 or bfloat16; every tensor on
            u's device).
        A: (d, n) float32 (real) state matrix, diagonal per channel; n up to 16 is the fused kernels' design size.
        B, C: (batch, g, n, L) input and output projections; g divides d and channel c reads group c // (d // g)
            (VMamba passes K scan directions as g = K with d = K * d_inner).
        D: (d,) float32 skip or None; z: (batch, d, L) gate or None; delta_bias: (d,) float32 or None.
        delta_softplus: apply softplus to delta + delta_bias.
        backend: ``"torch"``, ``"triton"`` or None (Triton for CUDA tensors; ``$VISATTN_BACKEND`` overrides).

    Returns:
        y: (batch, d, L), dtype of u.
    """
    check_selective_scan_args(u, delta, A, B, C, D, z, delta_bias)
    impl = pick(backend, u, selective_scan_reference, selective_scan_fused, unsupported_reason(u, A), out_shape=u.shape)
    return impl(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
