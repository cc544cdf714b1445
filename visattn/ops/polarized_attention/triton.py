"""Fused polarized gating in Triton: out = x (a_c + a_n) or x a_c a_n over a contiguous (B, C, N) map.

Forward: ``_gate_kernel`` is elementwise over (channel tile, position tile, batch) programs: it reads a tile of x
and the two float32 gate vectors and writes the tile of out.

Backward: ``_gate_backward_kernel`` runs one program per (position tile, batch) and walks all channel tiles: it
reads dout and x once, writes dx = dout G, the complete spatial-gate gradient da_n = sum_c dout x (a_c) of its
positions, and one row of per-tile partial channel-gate gradients sum_n dout x (a_n), which one torch sum folds
(deterministic, no atomics). Nothing of size C x N is kept between forward and backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import on_tensor_device

# Positions per tile (the contiguous axis) and channels per tile.
BLOCK_N = 128
BLOCK_C = 16


@triton.jit
def _gate_kernel(X, AC, AN, OUT, C, N, SEQUENTIAL: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    pn, pc, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    cols = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = pc * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok, col_ok = rows < C, cols < N
    a_c = tl.load(AC + b * C + rows, mask=row_ok, other=0.0)
    a_n = tl.load(AN + b * N + cols, mask=col_ok, other=0.0)
    offs = b.to(tl.int64) * C * N + rows[:, None].to(tl.int64) * N + cols[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    gate = a_c[:, None] * a_n[None, :] if SEQUENTIAL else a_c[:, None] + a_n[None, :]
    tl.store(OUT + offs, (x * gate).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _gate_backward_kernel(X, AC, AN, DOUT, DX, DAC_PARTS, DAN, C, N, SEQUENTIAL: tl.constexpr,
                          BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    pn, b = tl.program_id(0), tl.program_id(1)
    n_tiles = tl.num_programs(0)
    cols = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    a_n = tl.load(AN + b * N + cols, mask=col_ok, other=0.0)
    da_n = tl.zeros([BLOCK_N], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        rows = c0 + tl.arange(0, BLOCK_C)
        row_ok = rows < C
        a_c = tl.load(AC + b * C + rows, mask=row_ok, other=0.0)
        offs = b.to(tl.int64) * C * N + rows[:, None].to(tl.int64) * N + cols[None, :]
        mask = row_ok[:, None] & col_ok[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(DOUT + offs, mask=mask, other=0.0).to(tl.float32)
        gx = g * x
        if SEQUENTIAL:
            gate = a_c[:, None] * a_n[None, :]
            da_c = tl.sum(gx * a_n[None, :], axis=1)
            da_n += tl.sum(gx * a_c[:, None], axis=0)
        else:
            gate = a_c[:, None] + a_n[None, :]
            da_c = tl.sum(gx, axis=1)
            da_n += tl.sum(gx, axis=0)
        tl.store(DX + offs, (g * gate).to(DX.dtype.element_ty), mask=mask)
        tl.store(DAC_PARTS + (b * n_tiles + pn).to(tl.int64) * C + rows, da_c, mask=row_ok)
    tl.store(DAN + b * N + cols, da_n, mask=col_ok)


class Tiling:
    """Tiling of one call: channel and position tiles of a contiguous (B, C, N) map."""

    def __init__(self, x: torch.Tensor):
        self.B, self.C, self.N = x.shape
        self.block_c, self.block_n = BLOCK_C, min(BLOCK_N, max(16, triton.next_power_of_2(self.N)))
        self.n_tiles = triton.cdiv(self.N, self.block_n)
        self.c_tiles = triton.cdiv(self.C, self.block_c)

    def meta(self, sequential: bool) -> dict:
        return dict(SEQUENTIAL=sequential, BLOCK_C=self.block_c, BLOCK_N=self.block_n, num_warps=4)


@on_tensor_device
def forward(x, a_c, a_n, sequential):
    """x (B, C, N) contiguous, a_c (B, C) and a_n (B, N) float32 contiguous. Returns out, x's dtype and shape."""
    tiling = Tiling(x)
    out = torch.empty_like(x)
    _gate_kernel[(tiling.n_tiles, tiling.c_tiles, tiling.B)](x, a_c, a_n, out, tiling.C, tiling.N,
                                                            **tiling.meta(sequential))
    return out


@on_tensor_device
def backward(grad_out, x, a_c, a_n, sequential):
    """Returns (dx in x's dtype, da_c (B, C) float32, da_n (B, N) float32)."""
    tiling = Tiling(x)
    dx = torch.empty_like(x)
    parts = x.new_empty(tiling.B, tiling.n_tiles, tiling.C, dtype=torch.float32)
    da_n = x.new_empty(tiling.B, tiling.N, dtype=torch.float32)
    _gate_backward_kernel[(tiling.n_tiles, tiling.B)](x, a_c, a_n, grad_out, dx, parts, da_n, tiling.C, tiling.N,
                                                      **tiling.meta(sequential))
    return dx, parts.sum(1), da_n
