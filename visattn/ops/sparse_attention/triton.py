"""Fused per-query sparse attention in Triton: flash-attention style forward and backward over key tiles.

Query i attends key j when j < dense_keys or j is in its index list. The membership is never stored: the wrapper
sorts each query's indices and records where each key tile's entries start (``offsets``, see
:func:`.fused.plan_key_tiles`). For a (BLOCK_M queries x BLOCK_N keys) tile a kernel loads each query's entries of
that tile (at most BLOCK_N, deduplicated), ORs ``1 << (j - tile start)`` into one int64 word per query and tests
the bits. With ``normalize="attended"`` a tile that no query of the tile attends is skipped (the block-sparsity
win); with ``normalize="all"`` every key feeds the softmax normaliser and only attended keys feed P V. Backward
recomputes the probabilities from the saved log2-sum-exp: a dQ pass per query tile and a dK/dV pass per key tile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import LOG2E, cdiv, dot_precision, head_tile, on_tensor_device, strides

# Query rows per tile. With the 64 key columns of the plan, a tile's q, k, v and accumulators stay in registers for
# head widths up to 128 (fused.MAX_HEAD_DIM) with 4 warps.
BLOCK_M = 64


@triton.jit
def _bit_or(a, b):
    """Combine of the OR reduction of bit words (a sum would count a repeated bit twice)."""
    return a | b


@triton.jit
def _tile(X, b, h, s_b, s_h, s_n, rows, valid, D: tl.constexpr, BD: tl.constexpr):
    """Pointers and mask of the (rows x D) tile of head (b, h) of a (B, H, N, D) tensor with unit channel stride."""
    d = tl.arange(0, BD)
    ptrs = X + b * s_b + h * s_h + rows[:, None].to(tl.int64) * s_n + d[None, :]
    return ptrs, valid[:, None] & (d[None, :] < D)


@triton.jit
def _load(X, b, h, s_b, s_h, s_n, rows, valid, D: tl.constexpr, BD: tl.constexpr):
    """The (rows x D) tile of head (b, h), zero outside ``valid`` rows and the D channels."""
    ptrs, mask = _tile(X, b, h, s_b, s_h, s_n, rows, valid, D, BD)
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _plan_rows(IDX, OFF, b, h, si_b, si_h, sf_b, sf_h, rows, K, T1):
    """Pointers to the sorted indices and to the key-tile offsets of the query ``rows`` of head (b, h)."""
    r = rows.to(tl.int64)
    return IDX + b * si_b + h * si_h + r * K, OFF + b * sf_b + h * sf_h + r * T1


@triton.jit
def _tile_entries(off_rows, q_valid, t):
    """Start of key tile t's entries in each query's sorted list, and how many there are (0 for padded rows)."""
    start = tl.load(off_rows + t, mask=q_valid, other=0)
    return start, tl.load(off_rows + t + 1, mask=q_valid, other=0) - start


@triton.jit
def _masks(idx_rows, start, count, q_valid, n0, N_K, dense_keys, BLOCK_N: tl.constexpr, NORM_ALL: tl.constexpr):
    """(attended, counted) masks of the (queries x keys n0..n0+BLOCK_N) tile: the pairs that feed P V, and those that
    feed the softmax normaliser (every valid key for NORM_ALL, else the attended ones)."""
    c = tl.arange(0, BLOCK_N)
    listed = c[None, :] < count[:, None]
    entry = tl.load(idx_rows[:, None] + start[:, None] + c[None, :], mask=listed, other=0)
    shift = tl.where(listed, entry - n0, 0).to(tl.int64)
    bit = tl.where(listed, tl.full([1, BLOCK_N], 1, tl.int64) << shift, 0)
    bits = tl.reduce(bit, 1, _bit_or)
    keys = n0 + c
    valid = q_valid[:, None] & (keys < N_K)[None, :]
    listed_key = ((bits[:, None] >> c[None, :].to(tl.int64)) & 1) != 0
    attended = valid & (listed_key | (keys < dense_keys)[None, :])
    if NORM_ALL:
        counted = valid
    else:
        counted = attended
    return attended, counted


@triton.jit
def _key_tile(K, V, b, h, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, idx_rows, start, count, q_valid, n0, N_K, dense_keys,
              D: tl.constexpr, D_V: tl.constexpr, BD: tl.constexpr, BD_V: tl.constexpr, BLOCK_N: tl.constexpr,
              NORM_ALL: tl.constexpr):
    """The k and v tiles of keys n0..n0+BLOCK_N of head (b, h) and the (attended, counted) masks of the query rows
    against them (see :func:`_masks`)."""
    keys = n0 + tl.arange(0, BLOCK_N)
    k = _load(K, b, h, sk_b, sk_h, sk_n, keys, keys < N_K, D, BD)
    v = _load(V, b, h, sv_b, sv_h, sv_n, keys, keys < N_K, D_V, BD_V)
    attended, counted = _masks(idx_rows, start, count, q_valid, n0, N_K, dense_keys, BLOCK_N, NORM_ALL)
    return k, v, attended, counted


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE, IDX, OFF,
    sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, so_b, so_h, so_n, si_b, si_h, sf_b, sf_h,
    H, N_Q, N_K, TOPK, T1, n_k_tiles, dense_keys, visit_below, qk_scale_log2,
    D: tl.constexpr, D_V: tl.constexpr, BD: tl.constexpr, BD_V: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, NORM_ALL: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_bh = tl.program_id(1)
    b, h = (pid_bh // H).to(tl.int64), (pid_bh % H).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    q_valid = rows < N_Q
    q = _load(Q, b, h, sq_b, sq_h, sq_n, rows, q_valid, D, BD)
    idx_rows, off_rows = _plan_rows(IDX, OFF, b, h, si_b, si_h, sf_b, sf_h, rows, TOPK, T1)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BD_V], tl.float32)
    for t in range(0, n_k_tiles):
        n0 = t * BLOCK_N
        start, count = _tile_entries(off_rows, q_valid, t)
        if (n0 < visit_below) | (tl.max(count, 0) > 0):
            k, v, attended, counted = _key_tile(K, V, b, h, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, idx_rows, start,
                                                count, q_valid, n0, N_K, dense_keys, D, D_V, BD, BD_V, BLOCK_N,
                                                NORM_ALL)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale_log2
            s = tl.where(counted, s, -1.0e30)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.where(counted, tl.exp2(s - m_new[:, None]), 0.0)
            l_i = l_i * alpha + tl.sum(p, 1)
            p = tl.where(attended, p, 0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
    has_keys = l_i > 0
    norm = tl.where(has_keys, l_i, 1.0)
    out = tl.where(has_keys[:, None], acc / norm[:, None], 0.0)
    o_ptrs, o_mask = _tile(O, b, h, so_b, so_h, so_n, rows, q_valid, D_V, BD_V)
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=o_mask)
    lse = tl.where(has_keys, m_i + tl.log2(norm), float("inf"))
    tl.store(LSE + pid_bh.to(tl.int64) * N_Q + rows, lse, mask=q_valid)


@triton.jit
def _grad_scores(q, k, v, do, lse, delta, attended, counted, qk_scale_log2, NORM_ALL: tl.constexpr,
                 PRECISION: tl.constexpr):
    """P (zero off the attended pairs) and dS / scale of a (queries x keys) tile: "attended",
    dS = P (dP - delta) on the attended pairs; "all", P over every key and dS = P (m dP - delta)."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale_log2
    p = tl.where(counted, tl.exp2(s - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    if NORM_ALL:
        dp = tl.where(attended, dp, 0.0)
    ds = p * (dp - delta[:, None])
    return tl.where(attended, p, 0.0), ds


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA, IDX, OFF,
    sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sdo_b, sdo_h, sdo_n, sdq_b, sdq_h, sdq_n,
    si_b, si_h, sf_b, sf_h,
    H, N_Q, N_K, TOPK, T1, n_k_tiles, dense_keys, visit_below, qk_scale_log2, scale,
    D: tl.constexpr, D_V: tl.constexpr, BD: tl.constexpr, BD_V: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, NORM_ALL: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_bh = tl.program_id(1)
    b, h = (pid_bh // H).to(tl.int64), (pid_bh % H).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    q_valid = rows < N_Q
    q = _load(Q, b, h, sq_b, sq_h, sq_n, rows, q_valid, D, BD)
    do = _load(DO, b, h, sdo_b, sdo_h, sdo_n, rows, q_valid, D_V, BD_V)
    stats = pid_bh.to(tl.int64) * N_Q + rows
    lse = tl.load(LSE + stats, mask=q_valid, other=0.0)
    delta = tl.load(DELTA + stats, mask=q_valid, other=0.0)
    idx_rows, off_rows = _plan_rows(IDX, OFF, b, h, si_b, si_h, sf_b, sf_h, rows, TOPK, T1)
    dq = tl.zeros([BLOCK_M, BD], tl.float32)
    for t in range(0, n_k_tiles):
        n0 = t * BLOCK_N
        start, count = _tile_entries(off_rows, q_valid, t)
        if (n0 < visit_below) | (tl.max(count, 0) > 0):
            k, v, attended, counted = _key_tile(K, V, b, h, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, idx_rows, start,
                                                count, q_valid, n0, N_K, dense_keys, D, D_V, BD, BD_V, BLOCK_N,
                                                NORM_ALL)
            _, ds = _grad_scores(q, k, v, do, lse, delta, attended, counted, qk_scale_log2, NORM_ALL, PRECISION)
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    dq_ptrs, dq_mask = _tile(DQ, b, h, sdq_b, sdq_h, sdq_n, rows, q_valid, D, BD)
    tl.store(dq_ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=dq_mask)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, IDX, OFF,
    sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sdo_b, sdo_h, sdo_n, sdk_b, sdk_h, sdk_n,
    sdv_b, sdv_h, sdv_n, si_b, si_h, sf_b, sf_h,
    H, N_Q, N_K, TOPK, T1, n_q_tiles, dense_keys, visit_below, qk_scale_log2, scale,
    D: tl.constexpr, D_V: tl.constexpr, BD: tl.constexpr, BD_V: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, NORM_ALL: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_bh = tl.program_id(1)
    b, h = (pid_bh // H).to(tl.int64), (pid_bh % H).to(tl.int64)
    t = tl.program_id(0)
    n0 = t * BLOCK_N
    keys = n0 + tl.arange(0, BLOCK_N)
    k = _load(K, b, h, sk_b, sk_h, sk_n, keys, keys < N_K, D, BD)
    v = _load(V, b, h, sv_b, sv_h, sv_n, keys, keys < N_K, D_V, BD_V)
    dk = tl.zeros([BLOCK_N, BD], tl.float32)
    dv = tl.zeros([BLOCK_N, BD_V], tl.float32)
    for qt in range(0, n_q_tiles):
        rows = qt * BLOCK_M + tl.arange(0, BLOCK_M)
        q_valid = rows < N_Q
        idx_rows, off_rows = _plan_rows(IDX, OFF, b, h, si_b, si_h, sf_b, sf_h, rows, TOPK, T1)
        start, count = _tile_entries(off_rows, q_valid, t)
        if (n0 < visit_below) | (tl.max(count, 0) > 0):
            q = _load(Q, b, h, sq_b, sq_h, sq_n, rows, q_valid, D, BD)
            do = _load(DO, b, h, sdo_b, sdo_h, sdo_n, rows, q_valid, D_V, BD_V)
            stats = pid_bh.to(tl.int64) * N_Q + rows
            lse = tl.load(LSE + stats, mask=q_valid, other=0.0)
            delta = tl.load(DELTA + stats, mask=q_valid, other=0.0)
            attended, counted = _masks(idx_rows, start, count, q_valid, n0, N_K, dense_keys, BLOCK_N, NORM_ALL)
            p, ds = _grad_scores(q, k, v, do, lse, delta, attended, counted, qk_scale_log2, NORM_ALL, PRECISION)
            dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
            dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION)
    dk_ptrs, dk_mask = _tile(DK, b, h, sdk_b, sdk_h, sdk_n, keys, keys < N_K, D, BD)
    dv_ptrs, dv_mask = _tile(DV, b, h, sdv_b, sdv_h, sdv_n, keys, keys < N_K, D_V, BD_V)
    tl.store(dk_ptrs, (dk * scale).to(DK.dtype.element_ty), mask=dk_mask)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=dv_mask)


class Tiling:
    """Tiling of one call: BLOCK_M query rows (this module's choice) by the plan's ``block_n`` key columns (fixed
    when the offsets were made), head tiles, the grids of the query-tile and key-tile passes, and the plan's
    geometry (head stride 0 for indices shared by the heads)."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sorted_idx: torch.Tensor,
                 offsets: torch.Tensor, dense_keys: int, normalize: str, block_n: int):
        if block_n not in (16, 32, 64):
            raise ValueError(f"key tiles of 16, 32 or 64 columns (one int64 bit word per query), got {block_n}")
        self.batch, self.heads, self.n_q, self.d = q.shape
        self.n_k, self.d_v = k.shape[2], v.shape[-1]
        self.bd, self.bd_v = head_tile(self.d), head_tile(self.d_v)
        self.block_m, self.block_n = BLOCK_M, block_n
        self.n_q_tiles = cdiv(self.n_q, self.block_m)
        self.n_k_tiles = offsets.shape[-1] - 1
        self.norm_all = normalize == "all"
        # tiles below this key are visited whatever the indices: every tile for "all" (the normaliser), else the
        # tiles holding dense keys
        self.visit_below = self.n_k if self.norm_all else dense_keys
        self.precision = dot_precision(q.dtype)
        shared = sorted_idx.shape[1] == 1
        self.idx, self.offsets = sorted_idx.contiguous(), offsets.contiguous()
        topk, t1 = self.idx.shape[-1], self.offsets.shape[-1]
        self.plan_strides = (self.idx.stride(0), 0 if shared else self.idx.stride(1),
                             self.offsets.stride(0), 0 if shared else self.offsets.stride(1))
        self.plan_sizes = (topk, t1)

    def query_grid(self) -> tuple[int, int]:
        return (self.n_q_tiles, self.batch * self.heads)

    def key_grid(self) -> tuple[int, int]:
        return (self.n_k_tiles, self.batch * self.heads)

    def geometry(self) -> tuple:
        return (self.heads, self.n_q, self.n_k, *self.plan_sizes)

    def meta(self) -> dict:
        return dict(D=self.d, D_V=self.d_v, BD=self.bd, BD_V=self.bd_v, BLOCK_M=self.block_m, BLOCK_N=self.block_n,
                    NORM_ALL=self.norm_all, PRECISION=self.precision, num_warps=4)


@on_tensor_device
def forward(q, k, v, sorted_idx, offsets, dense_keys, normalize, scale, block_n):
    """Launch the forward kernel. Returns (out (B, H, N_q, D_v) in q's dtype, log2-sum-exp (B, H, N_q) fp32, +inf
    for a query with no attended key)."""
    tiling = Tiling(q, k, v, sorted_idx, offsets, dense_keys, normalize, block_n)
    out = q.new_empty(tiling.batch, tiling.heads, tiling.n_q, tiling.d_v)
    lse = q.new_empty(tiling.batch, tiling.heads, tiling.n_q, dtype=torch.float32)
    _fwd_kernel[tiling.query_grid()](
        q, k, v, out, lse, tiling.idx, tiling.offsets,
        *strides(q), *strides(k), *strides(v), *strides(out), *tiling.plan_strides,
        *tiling.geometry(), tiling.n_k_tiles, dense_keys, tiling.visit_below, scale * LOG2E.value,
        **tiling.meta(),
    )
    return out, lse


@on_tensor_device
def backward(q, k, v, out, lse, grad_out, sorted_idx, offsets, dense_keys, normalize, scale, block_n):
    """Launch the dQ and the dK/dV kernels after delta_i = dO_i . O_i. Returns (dq, dk, dv) shaped like q, k, v."""
    grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
    tiling = Tiling(q, k, v, sorted_idx, offsets, dense_keys, normalize, block_n)
    delta = (grad_out.float() * out.float()).sum(-1).contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    common = (tiling.idx, tiling.offsets)
    _bwd_dq_kernel[tiling.query_grid()](
        q, k, v, grad_out, dq, lse, delta, *common,
        *strides(q), *strides(k), *strides(v), *strides(grad_out), *strides(dq), *tiling.plan_strides,
        *tiling.geometry(), tiling.n_k_tiles, dense_keys, tiling.visit_below, scale * LOG2E.value, scale,
        **tiling.meta(),
    )
    _bwd_dkdv_kernel[tiling.key_grid()](
        q, k, v, grad_out, dk, dv, lse, delta, *common,
        *strides(q), *strides(k), *strides(v), *strides(grad_out), *strides(dk), *strides(dv), *tiling.plan_strides,
        *tiling.geometry(), tiling.n_q_tiles, dense_keys, tiling.visit_below, scale * LOG2E.value, scale,
        **tiling.meta(),
    )
    return dq, dk, dv
