"""Polarized self-attention's hot path in Triton, over a contiguous (B, C, N) map x.

Channel pooling (``pool_forward`` / ``pool_backward``): one program per (position tile, batch) reads its C x
BLOCK_N tile of x to form the logits l = w_q x and the tile's softmax statistics, and (from cache) the partial sums
sum_n x e^{l - m} and sum_n x; one torch combine over the tiles gives the pooled vector, GAP and the log-sum-exp.
Backward rebuilds l and dp = dpooled . x per tile, then writes dx and per-tile partials of dw_q (no atomics).

Spatial logits of the official sequential form (``spatial_forward`` / ``spatial_backward``),
s[n] = sum_j q[j] softmax_n(V)[j, n] with V = W_a x: the V tiles are products W_a x recomputed with ``tl.dot`` as
in flash attention. Forward: row statistics of V (max and sum of exponentials per chunk of positions, combined in
torch), then s per position tile. Backward: D[j] = sum_n P[j, n] ds[n] the same way, then the logit gradient
dV = q P (ds - D) per tile; dx = W_a^T dV and dW_a = dV x^T are two batched products. Nothing of size J x N exists
between forward and backward.

Gating (``forward`` / ``backward``): out = x (a_c + a_n) or x a_c a_n elementwise; backward walks the channels of
each position tile once, writing dx, the complete da_n of its positions and per-tile partials of da_c.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import cdiv, dot_precision, next_power_of_2, on_tensor_device

BLOCK_N = 128  # positions per tile (the contiguous axis) in the pooling and gating kernels
BLOCK_C = 16  # channels per tile there
DOT_BLOCK_N = 64  # positions per tile in the spatial-logit kernels
DOT_BLOCK_J = 32  # rows of W_a per tile
DOT_BLOCK_C = 32  # channels per tl.dot step
CHUNK_TILES = 16  # position tiles per program in the row-statistics kernels


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


@triton.jit
def _pool_kernel(X, WQ, POOL_PARTS, SUM_PARTS, MAX_PARTS, EXP_PARTS, C, N, BLOCK_C: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    pn, b = tl.program_id(0), tl.program_id(1)
    part = b * tl.num_programs(0) + pn
    cols = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    base = X + b.to(tl.int64) * C * N
    logit = tl.zeros([BLOCK_N], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        rows = c0 + tl.arange(0, BLOCK_C)
        row_ok = rows < C
        x = tl.load(base + rows[:, None].to(tl.int64) * N + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                    other=0.0).to(tl.float32)
        w_q = tl.load(WQ + rows, mask=row_ok, other=0.0).to(tl.float32)
        logit += tl.sum(x * w_q[:, None], axis=0)
    logit = tl.where(col_ok, logit, float("-inf"))
    m = tl.max(logit, axis=0)
    e = tl.where(col_ok, tl.exp(logit - m), 0.0)
    tl.store(MAX_PARTS + part, m)
    tl.store(EXP_PARTS + part, tl.sum(e, axis=0))
    for c0 in range(0, C, BLOCK_C):
        rows = c0 + tl.arange(0, BLOCK_C)
        row_ok = rows < C
        x = tl.load(base + rows[:, None].to(tl.int64) * N + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                    other=0.0).to(tl.float32)
        tl.store(POOL_PARTS + part.to(tl.int64) * C + rows, tl.sum(x * e[None, :], axis=1), mask=row_ok)
        tl.store(SUM_PARTS + part.to(tl.int64) * C + rows, tl.sum(x, axis=1), mask=row_ok)


@triton.jit
def _pool_backward_kernel(X, WQ, LSE, RHO, DPOOL, DMEAN, DX, DW_PARTS, C, N, BLOCK_C: tl.constexpr,
                          BLOCK_N: tl.constexpr):
    pn, b = tl.program_id(0), tl.program_id(1)
    part = b * tl.num_programs(0) + pn
    cols = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    offs_b = b.to(tl.int64) * C * N
    logit = tl.zeros([BLOCK_N], dtype=tl.float32)
    dp = tl.zeros([BLOCK_N], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        rows = c0 + tl.arange(0, BLOCK_C)
        row_ok = rows < C
        x = tl.load(X + offs_b + rows[:, None].to(tl.int64) * N + cols[None, :],
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        w_q = tl.load(WQ + rows, mask=row_ok, other=0.0).to(tl.float32)
        d_pool = tl.load(DPOOL + b * C + rows, mask=row_ok, other=0.0)
        logit += tl.sum(x * w_q[:, None], axis=0)
        dp += tl.sum(x * d_pool[:, None], axis=0)
    p = tl.where(col_ok, tl.exp(logit - tl.load(LSE + b)), 0.0)
    dl = p * (dp - tl.load(RHO + b))
    for c0 in range(0, C, BLOCK_C):
        rows = c0 + tl.arange(0, BLOCK_C)
        row_ok = rows < C
        offs = offs_b + rows[:, None].to(tl.int64) * N + cols[None, :]
        mask = row_ok[:, None] & col_ok[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        w_q = tl.load(WQ + rows, mask=row_ok, other=0.0).to(tl.float32)
        d_pool = tl.load(DPOOL + b * C + rows, mask=row_ok, other=0.0)
        d_mean = tl.load(DMEAN + b * C + rows, mask=row_ok, other=0.0)
        dx = d_pool[:, None] * p[None, :] + d_mean[:, None] + w_q[:, None] * dl[None, :]
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        tl.store(DW_PARTS + part.to(tl.int64) * C + rows, tl.sum(x * dl[None, :], axis=1), mask=row_ok)


@triton.jit
def _value_logits(X, WA, rows, row_ok, cols, col_ok, C, N, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr,
                  BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """V[rows, cols] = W_a[rows, :] x[:, cols] of one batch item, (BLOCK_J, BLOCK_N) float32."""
    acc = tl.zeros([BLOCK_J, BLOCK_N], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        chans = c0 + tl.arange(0, BLOCK_C)
        chan_ok = chans < C
        w = tl.load(WA + rows[:, None] * C + chans[None, :], mask=row_ok[:, None] & chan_ok[None, :], other=0.0)
        x = tl.load(X + chans[:, None].to(tl.int64) * N + cols[None, :], mask=chan_ok[:, None] & col_ok[None, :],
                    other=0.0)
        acc = tl.dot(w, x, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _row_stats_kernel(X, WA, LSE, DS, MAX_PARTS, SUM_PARTS, C, N, J, CHUNK, GRADIENT: tl.constexpr,
                      BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
                      PRECISION: tl.constexpr):
    """Per chunk of positions: the running max and sum of exp(V - max) of each row (forward), or
    D[j] = sum_n P[j, n] ds[n] with P = exp(V - lse) (GRADIENT)."""
    pj, pk, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    part = (b * tl.num_programs(1) + pk).to(tl.int64) * J
    rows = pj * BLOCK_J + tl.arange(0, BLOCK_J)
    row_ok = rows < J
    x_b, w_b = X + b.to(tl.int64) * C * N, WA + b.to(tl.int64) * J * C
    m = tl.full([BLOCK_J], float("-inf"), dtype=tl.float32)
    acc = tl.zeros([BLOCK_J], dtype=tl.float32)
    lse = tl.load(LSE + b * J + rows, mask=row_ok, other=0.0) if GRADIENT else m
    for n0 in range(pk * CHUNK, tl.minimum(pk * CHUNK + CHUNK, N), BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        v = _value_logits(x_b, w_b, rows, row_ok, cols, col_ok, C, N, BLOCK_J, BLOCK_C, BLOCK_N, PRECISION)
        if GRADIENT:
            ds = tl.load(DS + b * N + cols, mask=col_ok, other=0.0)
            acc += tl.sum(tl.exp(v - lse[:, None]) * ds[None, :], axis=1)
        else:
            v = tl.where(col_ok[None, :], v, float("-inf"))
            m_new = tl.maximum(m, tl.max(v, axis=1))
            acc = acc * tl.exp(m - m_new) + tl.sum(tl.exp(v - m_new[:, None]), axis=1)
            m = m_new
    if not GRADIENT:
        tl.store(MAX_PARTS + part + rows, m, mask=row_ok)
    tl.store(SUM_PARTS + part + rows, acc, mask=row_ok)


@triton.jit
def _spatial_kernel(X, WA, Q, LSE, S, C, N, J, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
                    PRECISION: tl.constexpr):
    """s[n] = sum_j q[j] exp(V[j, n] - lse[j]) for one position tile."""
    pn, b = tl.program_id(0), tl.program_id(1)
    cols = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    x_b, w_b = X + b.to(tl.int64) * C * N, WA + b.to(tl.int64) * J * C
    s = tl.zeros([BLOCK_N], dtype=tl.float32)
    for j0 in range(0, J, BLOCK_J):
        rows = j0 + tl.arange(0, BLOCK_J)
        row_ok = rows < J
        v = _value_logits(x_b, w_b, rows, row_ok, cols, col_ok, C, N, BLOCK_J, BLOCK_C, BLOCK_N, PRECISION)
        lse = tl.load(LSE + b * J + rows, mask=row_ok, other=0.0)
        q = tl.load(Q + b * J + rows, mask=row_ok, other=0.0)
        s += tl.sum(tl.exp(v - lse[:, None]) * q[:, None], axis=0)
    tl.store(S + b * N + cols, s, mask=col_ok)


@triton.jit
def _value_grad_kernel(X, WA, Q, LSE, D, DS, DV, C, N, J, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr,
                       BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """dV[j, n] = q[j] P[j, n] (ds[n] - D[j]) for one (row tile, position tile)."""
    pn, pj, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    cols = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = pj * BLOCK_J + tl.arange(0, BLOCK_J)
    col_ok, row_ok = cols < N, rows < J
    v = _value_logits(X + b.to(tl.int64) * C * N, WA + b.to(tl.int64) * J * C, rows, row_ok, cols, col_ok, C, N,
                      BLOCK_J, BLOCK_C, BLOCK_N, PRECISION)
    lse = tl.load(LSE + b * J + rows, mask=row_ok, other=0.0)
    q = tl.load(Q + b * J + rows, mask=row_ok, other=0.0)
    d = tl.load(D + b * J + rows, mask=row_ok, other=0.0)
    ds = tl.load(DS + b * N + cols, mask=col_ok, other=0.0)
    dv = q[:, None] * tl.exp(v - lse[:, None]) * (ds[None, :] - d[:, None])
    offs = b.to(tl.int64) * J * N + rows[:, None].to(tl.int64) * N + cols[None, :]
    tl.store(DV + offs, dv.to(DV.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


class Tiling:
    """Tiling of one call over a contiguous (B, C, N) map: channel and position tiles of the pooling and gating
    kernels; row, channel and position tiles and position chunks of the spatial-logit kernels (J rows)."""

    def __init__(self, x: torch.Tensor, rows: int = 0):
        self.B, self.C, self.N = x.shape
        self.J = rows
        self.block_c, self.block_n = BLOCK_C, min(BLOCK_N, max(16, next_power_of_2(self.N)))
        self.n_tiles = cdiv(self.N, self.block_n)
        self.c_tiles = cdiv(self.C, self.block_c)
        self.dot_n = DOT_BLOCK_N
        self.chunk = CHUNK_TILES * DOT_BLOCK_N
        self.dot_n_tiles, self.n_chunks = cdiv(self.N, self.dot_n), cdiv(self.N, self.chunk)
        self.j_tiles = cdiv(max(rows, 1), DOT_BLOCK_J)
        self.precision = dot_precision(x.dtype)

    def meta(self, sequential: bool) -> dict:
        return dict(SEQUENTIAL=sequential, BLOCK_C=self.block_c, BLOCK_N=self.block_n, num_warps=4)

    def pool_meta(self) -> dict:
        return dict(BLOCK_C=self.block_c, BLOCK_N=self.block_n, num_warps=4)

    def dot_meta(self) -> dict:
        return dict(BLOCK_J=DOT_BLOCK_J, BLOCK_C=DOT_BLOCK_C, BLOCK_N=self.dot_n, PRECISION=self.precision,
                    num_warps=4)


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


@on_tensor_device
def pool_forward(x, w_q):
    """x (B, C, N) contiguous, w_q (C,). Returns float32 (pooled (B, C), mean (B, C), lse (B,)) with
    pooled = x softmax_N(w_q x) and lse the log-sum-exp of the logits."""
    tiling = Tiling(x)
    b, t, c = tiling.B, tiling.n_tiles, tiling.C
    pool_parts = x.new_empty(b, t, c, dtype=torch.float32)
    sum_parts = torch.empty_like(pool_parts)
    max_parts = x.new_empty(b, t, dtype=torch.float32)
    exp_parts = torch.empty_like(max_parts)
    _pool_kernel[(t, b)](x, w_q, pool_parts, sum_parts, max_parts, exp_parts, c, tiling.N, **tiling.pool_meta())
    peak = max_parts.amax(1, keepdim=True)
    scale = torch.exp(max_parts - peak)
    denom = (scale * exp_parts).sum(1)
    pooled = (pool_parts * scale[..., None]).sum(1) / denom[:, None]
    return pooled, sum_parts.sum(1) / tiling.N, peak.squeeze(1) + denom.log()


@on_tensor_device
def pool_backward(x, w_q, lse, pooled, d_pooled, d_mean):
    """Gradients (dx in x's dtype, dw_q float32 (C,)) of :func:`pool_forward` for float32 d_pooled, d_mean."""
    tiling = Tiling(x)
    dx = torch.empty_like(x)
    parts = x.new_empty(tiling.B, tiling.n_tiles, tiling.C, dtype=torch.float32)
    rho = (d_pooled * pooled).sum(1)
    _pool_backward_kernel[(tiling.n_tiles, tiling.B)](x, w_q, lse, rho, d_pooled, (d_mean / tiling.N).contiguous(),
                                                      dx, parts, tiling.C, tiling.N, **tiling.pool_meta())
    return dx, parts.sum((0, 1))


@on_tensor_device
def _row_sums(x, w_a, lse, ds, tiling):
    """(max, sum) per row and chunk (forward, lse None) or D summed over the chunks (gradient)."""
    gradient = lse is not None
    shape = (tiling.B, tiling.n_chunks, tiling.J)
    sums = x.new_empty(shape, dtype=torch.float32)
    maxima = sums if gradient else torch.empty_like(sums)
    _row_stats_kernel[(tiling.j_tiles, tiling.n_chunks, tiling.B)](
        x, w_a, lse if gradient else sums, ds if gradient else sums, maxima, sums, tiling.C, tiling.N, tiling.J,
        tiling.chunk, GRADIENT=gradient, **tiling.dot_meta())
    if gradient:
        return sums.sum(1)
    peak = maxima.amax(1, keepdim=True)
    return peak.squeeze(1) + (sums * torch.exp(maxima - peak)).sum(1).log()


@on_tensor_device
def spatial_forward(x, w_a, q):
    """x (B, C, N), w_a (B, J, C) in x's dtype, q (B, J) float32, all contiguous. Returns float32
    (s (B, N), lse (B, J)) with s = q softmax_N(w_a x)."""
    tiling = Tiling(x, w_a.shape[1])
    lse = _row_sums(x, w_a, None, None, tiling)
    s = x.new_empty(tiling.B, tiling.N, dtype=torch.float32)
    _spatial_kernel[(tiling.dot_n_tiles, tiling.B)](x, w_a, q, lse, s, tiling.C, tiling.N, tiling.J,
                                                    **tiling.dot_meta())
    return s, lse


@on_tensor_device
def spatial_backward(x, w_a, q, lse, ds):
    """Gradients (dx in x's dtype, dw_a in w_a's dtype, dq float32) of :func:`spatial_forward` for float32 ds."""
    tiling = Tiling(x, w_a.shape[1])
    d = _row_sums(x, w_a, lse, ds, tiling)
    dv = x.new_empty(tiling.B, tiling.J, tiling.N)
    _value_grad_kernel[(tiling.dot_n_tiles, tiling.j_tiles, tiling.B)](x, w_a, q, lse, d, ds, dv, tiling.C, tiling.N,
                                                                      tiling.J, **tiling.dot_meta())
    return torch.bmm(w_a.transpose(1, 2), dv), torch.bmm(dv, x.transpose(1, 2)), d
