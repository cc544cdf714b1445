"""Fused bi-level routing attention in Triton: routing, planning, forward, and flash-attention style backward.

Five kernels, none of which syncs with the host:

- ``_region_means_kernel``: the region means Q^r, K^r, one program per (batch, region, channel block).
- ``_route_kernel``: per tile of query regions, the routing logits, the top-k regions (lowest index first among
  ties) and the forward plan: the union of the tile's routed key regions, in region order, with for each listed
  region a bit mask of the tile's query regions that route to it.
- ``_fwd_kernel`` and ``_bwd_dq_kernel`` walk that plan; ``_key_plan_kernel`` builds the transposed plan (per tile
  of key regions, the query regions routing to any of them, with their bit masks) that ``_bwd_dkdv_kernel`` walks.

Each attention program owns a tile of tokens: ``G = BLOCK_M // R`` whole regions of ``R`` tokens (small regions are
packed so the tensor cores see full tiles) or one ``BLOCK_M``-row slice of a large region. It loads the listed
regions' tokens straight from the channels-last maps by index, several small regions per key tile; in a packed tile
a (row, column) pair attends when the column's bit for the row's region is set. Nothing of size topk x K/V is ever
materialised; backward recomputes the probabilities from the saved log-sum-exp. The forward plan is computed once
and reused by backward. The region partition and the bottom/right zero padding are folded into the address
arithmetic. Warps and pipeline stages are autotuned per shape on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import (
    LOG2E,
    WARP_STAGE_CONFIGS,
    autotune,
    cdiv,
    dot_precision,
    head_tile,
    next_power_of_2,
    on_tensor_device,
    strides,
)

# Query rows per tile (the plan depends on it: regions smaller than BLOCK_M are packed BLOCK_M // R to a tile, at most
# 64 so a tile's regions fit the bits of an int64) and key columns per step. 64 x 64 keeps a tile's q, k, v and
# accumulators in registers for head_dim up to 128.
BLOCK_M = 64
BLOCK_N = 64
# Tokens and channels per step of the region means.
MEANS_BLOCK_T = 32
MEANS_BLOCK_C = 64

ATTENTION_KEY = ["R", "G", "D_QK", "D_V", "PACKED"]


@triton.jit
def _token_yx(reg, tok, n_win, rh, rw):
    """Region ``reg``, token ``tok`` (row-major inside the region) -> its (y, x) in the padded map."""
    return (reg // n_win) * rh + tok // rw, (reg % n_win) * rw + tok % rw


@triton.jit
def _token_pos(reg, tok, n_win, rh, rw, H, W):
    """Region ``reg``, token ``tok`` -> (inside the unpadded map, y * W + x)."""
    y, x = _token_yx(reg, tok, n_win, rh, rw)
    return (y < H) & (x < W), y * W + x


@triton.jit
def _token_offsets(reg, tok, n_win, rh, rw, s_h, s_w):
    """Offsets of region ``reg``'s tokens ``tok`` in a channels-last map with row and column strides s_h, s_w."""
    y, x = _token_yx(reg, tok, n_win, rh, rw)
    return y * s_h + x * s_w


@triton.jit
def _tile(X, b, s_b, s_h, s_w, reg, tok, rows, h, n_win, rh, rw, D: tl.constexpr, BD: tl.constexpr):
    """Pointers and mask of the (tokens x channels of head h) tile of a channels-last map; ``rows`` masks tokens."""
    d = tl.arange(0, BD)
    ptrs = X + b * s_b + _token_offsets(reg, tok, n_win, rh, rw, s_h, s_w)[:, None] + h * D + d[None, :]
    return ptrs, rows[:, None] & (d[None, :] < D)


@triton.jit
def _region_means_kernel(Q, K, QM, KM, sq_b, sq_h, sq_w, sk_b, sk_h, sk_w, H, W, C, n_win, rh, rw, R, S2,
                         BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """QM, KM (B, S2, C) in the maps' dtype: the means of q and k over each region, zero padding counted."""
    pid = tl.program_id(0)
    b = (pid // S2).to(tl.int64)
    reg = pid % S2
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    q_sum = tl.zeros([BLOCK_C], tl.float32)
    k_sum = tl.zeros([BLOCK_C], tl.float32)
    for t0 in range(0, R, BLOCK_T):
        tok = t0 + tl.arange(0, BLOCK_T)
        inside, _ = _token_pos(reg, tok, n_win, rh, rw, H, W)
        mask = ((tok < R) & inside)[:, None] & c_ok[None, :]
        q_off = _token_offsets(reg, tok, n_win, rh, rw, sq_h, sq_w)
        k_off = _token_offsets(reg, tok, n_win, rh, rw, sk_h, sk_w)
        q_sum += tl.sum(tl.load(Q + b * sq_b + q_off[:, None] + c[None, :], mask=mask, other=0.0).to(tl.float32), 0)
        k_sum += tl.sum(tl.load(K + b * sk_b + k_off[:, None] + c[None, :], mask=mask, other=0.0).to(tl.float32), 0)
    tl.store(QM + pid.to(tl.int64) * C + c, (q_sum / R).to(QM.dtype.element_ty), mask=c_ok)
    tl.store(KM + pid.to(tl.int64) * C + c, (k_sum / R).to(KM.dtype.element_ty), mask=c_ok)


@triton.jit
def _store_plan(LISTS, BITS, COUNTS, b, t, S2, items, bits):
    """Compact the items (regions) whose bit mask is non-zero into row t of batch b's plan, in region order."""
    present = (bits != 0).to(tl.int32)
    pos = tl.cumsum(present, 0) - 1
    row = (b * S2 + t) * S2
    tl.store(LISTS + row + pos, items, mask=present != 0)
    tl.store(BITS + row + pos, bits, mask=present != 0)
    tl.store(COUNTS + b * S2 + t, tl.sum(present, 0))


@triton.jit
def _route_kernel(QM, KM, IDX, LISTS, BITS, COUNTS, C, S2, topk, G, scale,
                  GP: tl.constexpr, S2P: tl.constexpr, BLOCK_C: tl.constexpr):
    """For query regions t*G .. t*G+G-1: I^r = topk((s Q^r)(K^r)^T) into IDX (B, S2, topk), lowest index first
    among ties, and the forward plan of tile t (the routed key regions, each with the bits of the tile's regions
    that route to it)."""
    t = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    g = tl.arange(0, GP)
    rows = t * G + g
    row_ok = (g < G) & (rows < S2)
    cols = tl.arange(0, S2P)
    col_ok = cols < S2
    logits = tl.zeros([GP, S2P], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        qm = tl.load(QM + (b * S2 + rows)[:, None] * C + c[None, :], mask=row_ok[:, None] & c_ok[None, :], other=0.0)
        km = tl.load(KM + (b * S2 + cols)[:, None] * C + c[None, :], mask=col_ok[:, None] & c_ok[None, :], other=0.0)
        logits += tl.dot(qm.to(tl.float32) * scale, tl.trans(km.to(tl.float32)), input_precision="ieee")
    logits = tl.where(col_ok[None, :], logits, float("-inf"))
    bits = tl.zeros([S2P], tl.int64)
    row_bit = tl.where(row_ok, tl.full([GP], 1, tl.int64) << g.to(tl.int64), 0)
    for i in range(topk):
        best = tl.argmax(logits, axis=1, tie_break_left=True)
        tl.store(IDX + (b * S2 + rows) * topk + i, best.to(tl.int64), mask=row_ok)
        hit = cols[None, :] == best[:, None]
        bits = bits | tl.sum(tl.where(hit, row_bit[:, None], 0), 0)
        logits = tl.where(hit, float("-inf"), logits)
    _store_plan(LISTS, BITS, COUNTS, b, t, S2, cols, bits)


@triton.jit
def _key_plan_kernel(IDX, LISTS, BITS, COUNTS, S2, topk, G, TP: tl.constexpr, S2P: tl.constexpr):
    """The transposed plan of key tile t (key regions t*G .. t*G+G-1): the query regions routing to any of them, each
    with the bits of the tile's key regions it routes to."""
    t = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, S2P)
    i = tl.arange(0, TP)
    mask = (rows < S2)[:, None] & (i < topk)[None, :]
    local = tl.load(IDX + (b * S2 + rows)[:, None] * topk + i[None, :], mask=mask, other=-1) - t * G
    in_tile = mask & (local >= 0) & (local < G)
    one = tl.full([S2P, TP], 1, tl.int64)
    bits = tl.sum(tl.where(in_tile, one << tl.where(in_tile, local, 0), 0), 1)
    _store_plan(LISTS, BITS, COUNTS, b, t, S2, rows, bits)


@triton.jit
def _program_tile(num_heads, n_sub, G: tl.constexpr, R, S2, BLOCK: tl.constexpr):
    """This program's (batch * heads + head) index, batch, head and tile t, and the region, in-region token and
    validity of each row of the tile (G regions, or one slice of one region)."""
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    t = pid_t // n_sub
    i = tl.arange(0, BLOCK)
    reg = t * G + i // R
    tok = (pid_t % n_sub) * BLOCK + i % R
    valid = (i < G * R) & (tok < R) & (reg < S2)
    return pid_bh, (pid_bh // num_heads).to(tl.int64), pid_bh % num_heads, t, reg, tok, valid


@triton.jit
def _plan_row(LISTS, BITS, COUNTS, b, t, S2):
    """Tile ``t``'s list of regions to walk, their bit masks (pointers) and the list's length."""
    row = (b * S2 + t) * S2
    return LISTS + row, BITS + row, tl.load(COUNTS + b * S2 + t)


@triton.jit
def _list_cols(lst, bits_lst, n0, n_items, R, BLOCK: tl.constexpr, PACKED: tl.constexpr):
    """Region, token, validity and region bit mask (packed tiles only) of columns n0..n0+BLOCK of a region list
    walked token by token."""
    j = n0 + tl.arange(0, BLOCK)
    valid = j < n_items * R
    reg = tl.load(lst + j // R, mask=valid, other=0)
    if PACKED:
        bits = tl.load(bits_lst + j // R, mask=valid, other=0)
    else:
        bits = tl.zeros([BLOCK], tl.int64)
    return reg, j % R, valid, bits


@triton.jit
def _attends(row_local, row_ok, col_bits, col_ok, PACKED: tl.constexpr):
    """Mask of the (row, column) pairs that attend: a real row and a listed column and, in a packed tile, the
    column's bit for the row's region (its index inside the tile) set."""
    allowed = row_ok[:, None] & col_ok[None, :]
    if PACKED:
        allowed = allowed & (((col_bits[None, :] >> row_local.to(tl.int64)[:, None]) & 1) != 0)
    return allowed


@triton.jit
def _load_pair(X, Y, b, sx_b, sx_h, sx_w, sy_b, sy_h, sy_w, reg, tok, valid, h, n_win, rh, rw, H, W,
               D_X: tl.constexpr, BD_X: tl.constexpr, D_Y: tl.constexpr, BD_Y: tl.constexpr):
    """Head ``h``'s tiles of two maps at the same tokens (q and dO, or k and v): (x, y, rows inside the unpadded
    map, y * W + x)."""
    inside, lin = _token_pos(reg, tok, n_win, rh, rw, H, W)
    rows = valid & inside
    x_ptrs, x_mask = _tile(X, b, sx_b, sx_h, sx_w, reg, tok, rows, h, n_win, rh, rw, D_X, BD_X)
    y_ptrs, y_mask = _tile(Y, b, sy_b, sy_h, sy_w, reg, tok, rows, h, n_win, rh, rw, D_Y, BD_Y)
    return tl.load(x_ptrs, mask=x_mask, other=0.0), tl.load(y_ptrs, mask=y_mask, other=0.0), rows, lin


@triton.jit
def _key_block(q, q_local, q_rows, K, V, lst, bits_lst, n0, n_items, b, h, sk_b, sk_h, sk_w, sv_b, sv_h, sv_w,
               H, W, n_win, rh, rw, R, qk_scale_log2, D_QK: tl.constexpr, D_V: tl.constexpr,
               BD_QK: tl.constexpr, BD_V: tl.constexpr, BLOCK_N: tl.constexpr, PACKED: tl.constexpr,
               PRECISION: tl.constexpr):
    """Key columns n0..n0+BLOCK_N of the tile's region list, for the query rows q: (k, v, s = log2(e) x scaled
    logits q k^T, mask of the pairs that attend)."""
    k_reg, k_tok, k_valid, k_bits = _list_cols(lst, bits_lst, n0, n_items, R, BLOCK_N, PACKED)
    k, v, _, _ = _load_pair(K, V, b, sk_b, sk_h, sk_w, sv_b, sv_h, sv_w, k_reg, k_tok, k_valid, h, n_win, rh, rw,
                            H, W, D_QK, BD_QK, D_V, BD_V)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale_log2
    return k, v, s, _attends(q_local, q_rows, k_bits, k_valid, PACKED)


@autotune(WARP_STAGE_CONFIGS, ATTENTION_KEY)
@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE, LISTS, BITS, COUNTS,
    sq_b, sq_h, sq_w, sk_b, sk_h, sk_w, sv_b, sv_h, sv_w, so_b, so_h, so_w,
    H, W, n_win, rh, rw, R, S2, num_heads, n_sub, qk_scale_log2,
    D_QK: tl.constexpr, D_V: tl.constexpr, BD_QK: tl.constexpr, BD_V: tl.constexpr,
    G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PACKED: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_bh, b, h, t, q_reg, q_tok, q_valid = _program_tile(num_heads, n_sub, G, R, S2, BLOCK_M)
    q_inside, q_lin = _token_pos(q_reg, q_tok, n_win, rh, rw, H, W)
    q_rows = q_valid & q_inside
    q_ptrs, q_mask = _tile(Q, b, sq_b, sq_h, sq_w, q_reg, q_tok, q_rows, h, n_win, rh, rw, D_QK, BD_QK)
    q = tl.load(q_ptrs, mask=q_mask, other=0.0)
    lst, bits_lst, n_items = _plan_row(LISTS, BITS, COUNTS, b, t, S2)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BD_V], tl.float32)
    for n0 in range(0, n_items * R, BLOCK_N):
        k, v, s, allowed = _key_block(q, q_reg - t * G, q_rows, K, V, lst, bits_lst, n0, n_items, b, h, sk_b, sk_h,
                                      sk_w, sv_b, sv_h, sv_w, H, W, n_win, rh, rw, R, qk_scale_log2, D_QK, D_V,
                                      BD_QK, BD_V, BLOCK_N, PACKED, PRECISION)
        s = tl.where(allowed, s, -1.0e30)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    o_ptrs, o_mask = _tile(O, b, so_b, so_h, so_w, q_reg, q_tok, q_rows, h, n_win, rh, rw, D_V, BD_V)
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=o_mask)
    tl.store(LSE + pid_bh.to(tl.int64) * H * W + q_lin, m_i + tl.log2(l_i), mask=q_rows)


@autotune(WARP_STAGE_CONFIGS, ATTENTION_KEY)
@triton.jit
def _bwd_dq_kernel(
    Q, K, V, O, DO, DQ, LSE, DELTA, LISTS, BITS, COUNTS,
    sq_b, sq_h, sq_w, sk_b, sk_h, sk_w, sv_b, sv_h, sv_w, so_b, so_h, so_w, sdo_b, sdo_h, sdo_w,
    sdq_b, sdq_h, sdq_w,
    H, W, n_win, rh, rw, R, S2, num_heads, n_sub, qk_scale_log2, scale,
    D_QK: tl.constexpr, D_V: tl.constexpr, BD_QK: tl.constexpr, BD_V: tl.constexpr,
    G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PACKED: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dQ = s dS K with dS = P (dP - delta), and delta = rowsum(dO * O) per head, stored for the dK/dV kernel."""
    pid_bh, b, h, t, q_reg, q_tok, q_valid = _program_tile(num_heads, n_sub, G, R, S2, BLOCK_M)
    q, do, q_rows, q_lin = _load_pair(Q, DO, b, sq_b, sq_h, sq_w, sdo_b, sdo_h, sdo_w, q_reg, q_tok, q_valid, h,
                                      n_win, rh, rw, H, W, D_QK, BD_QK, D_V, BD_V)
    o_ptrs, o_mask = _tile(O, b, so_b, so_h, so_w, q_reg, q_tok, q_rows, h, n_win, rh, rw, D_V, BD_V)
    o = tl.load(o_ptrs, mask=o_mask, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    stats = pid_bh.to(tl.int64) * H * W + q_lin
    tl.store(DELTA + stats, delta, mask=q_rows)
    lse = tl.load(LSE + stats, mask=q_rows, other=0.0)
    lst, bits_lst, n_items = _plan_row(LISTS, BITS, COUNTS, b, t, S2)
    dq = tl.zeros([BLOCK_M, BD_QK], tl.float32)
    for n0 in range(0, n_items * R, BLOCK_N):
        k, v, s, allowed = _key_block(q, q_reg - t * G, q_rows, K, V, lst, bits_lst, n0, n_items, b, h, sk_b, sk_h,
                                      sk_w, sv_b, sv_h, sv_w, H, W, n_win, rh, rw, R, qk_scale_log2, D_QK, D_V,
                                      BD_QK, BD_V, BLOCK_N, PACKED, PRECISION)
        p = tl.where(allowed, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    dq_ptrs, dq_mask = _tile(DQ, b, sdq_b, sdq_h, sdq_w, q_reg, q_tok, q_rows, h, n_win, rh, rw, D_QK, BD_QK)
    tl.store(dq_ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=dq_mask)


@autotune(WARP_STAGE_CONFIGS, ATTENTION_KEY)
@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, LISTS, BITS, COUNTS,
    sq_b, sq_h, sq_w, sk_b, sk_h, sk_w, sv_b, sv_h, sv_w, sdo_b, sdo_h, sdo_w,
    sdk_b, sdk_h, sdk_w, sdv_b, sdv_h, sdv_w,
    H, W, n_win, rh, rw, R, S2, num_heads, n_sub, qk_scale_log2, scale,
    D_QK: tl.constexpr, D_V: tl.constexpr, BD_QK: tl.constexpr, BD_V: tl.constexpr,
    G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PACKED: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dV = P^T dO and dK = s dS^T Q for a tile of key tokens, walking the query regions that route to it."""
    pid_bh, b, h, t, k_reg, k_tok, k_valid = _program_tile(num_heads, n_sub, G, R, S2, BLOCK_M)
    k, v, k_rows, _ = _load_pair(K, V, b, sk_b, sk_h, sk_w, sv_b, sv_h, sv_w, k_reg, k_tok, k_valid, h, n_win, rh,
                                 rw, H, W, D_QK, BD_QK, D_V, BD_V)
    lst, bits_lst, n_items = _plan_row(LISTS, BITS, COUNTS, b, t, S2)
    dk = tl.zeros([BLOCK_M, BD_QK], tl.float32)
    dv = tl.zeros([BLOCK_M, BD_V], tl.float32)
    for n0 in range(0, n_items * R, BLOCK_N):
        q_reg, q_tok, q_valid, q_bits = _list_cols(lst, bits_lst, n0, n_items, R, BLOCK_N, PACKED)
        q, do, q_rows, q_lin = _load_pair(Q, DO, b, sq_b, sq_h, sq_w, sdo_b, sdo_h, sdo_w, q_reg, q_tok, q_valid,
                                          h, n_win, rh, rw, H, W, D_QK, BD_QK, D_V, BD_V)
        stats = pid_bh.to(tl.int64) * H * W + q_lin
        lse = tl.load(LSE + stats, mask=q_rows, other=0.0)
        delta = tl.load(DELTA + stats, mask=q_rows, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale_log2
        allowed = _attends(k_reg - t * G, k_rows, q_bits, q_rows, PACKED)
        p_t = tl.where(allowed, tl.exp2(s_t - lse[None, :]), 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    dk_ptrs, dk_mask = _tile(DK, b, sdk_b, sdk_h, sdk_w, k_reg, k_tok, k_rows, h, n_win, rh, rw, D_QK, BD_QK)
    dv_ptrs, dv_mask = _tile(DV, b, sdv_b, sdv_h, sdv_w, k_reg, k_tok, k_rows, h, n_win, rh, rw, D_V, BD_V)
    tl.store(dk_ptrs, (dk * scale).to(DK.dtype.element_ty), mask=dk_mask)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=dv_mask)


class Tiling:
    """Tiling of one call: region geometry and tile sizes."""

    def __init__(self, q: torch.Tensor, v: torch.Tensor, num_heads: int, n_win: int):
        b, h, w, c_qk = q.shape
        self.B, self.H, self.W, self.n_win = b, h, w, n_win
        self.rh, self.rw = cdiv(h, n_win), cdiv(w, n_win)
        self.R = self.rh * self.rw
        self.S2 = n_win * n_win
        self.num_heads = num_heads
        self.d_qk, self.d_v = c_qk // num_heads, v.shape[-1] // num_heads
        self.bd_qk, self.bd_v = head_tile(self.d_qk), head_tile(self.d_v)
        self.block_m, self.block_n = BLOCK_M, BLOCK_N
        self.G = max(1, self.block_m // self.R)
        self.n_sub = 1 if self.G > 1 else cdiv(self.R, self.block_m)
        self.n_tiles = cdiv(self.S2, self.G)
        self.precision = dot_precision(q.dtype)

    def empty_plan(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Buffers of a plan, (lists (B, S2, S2) int32, bits (B, S2, S2) int64, counts (B, S2) int32): row t < n_tiles
        holds tile t's list, its first counts[t] entries valid."""
        shape = (self.B, self.S2, self.S2)
        return (torch.empty(shape, dtype=torch.int32, device=device), torch.empty(shape, dtype=torch.int64,
                device=device), torch.empty(shape[:2], dtype=torch.int32, device=device))

    def attention_grid(self) -> tuple[int, int]:
        return (self.n_tiles * self.n_sub, self.B * self.num_heads)

    def geometry(self) -> tuple:
        return (self.H, self.W, self.n_win, self.rh, self.rw, self.R, self.S2, self.num_heads, self.n_sub)

    def meta(self, packed: bool) -> dict:
        return dict(D_QK=self.d_qk, D_V=self.d_v, BD_QK=self.bd_qk, BD_V=self.bd_v, G=self.G,
                    BLOCK_M=self.block_m, BLOCK_N=self.block_n, PACKED=packed, PRECISION=self.precision)


@on_tensor_device
def _route(q: torch.Tensor, k: torch.Tensor, tiling: Tiling, topk: int, scale: float) -> tuple:
    """Launch the region means and the routing kernels: (region_idx (B, S2, topk) int64, lists, bits, counts)."""
    b, c = q.shape[0], q.shape[-1]
    means_q = torch.empty(b, tiling.S2, c, dtype=q.dtype, device=q.device)
    means_k = torch.empty_like(means_q)
    _region_means_kernel[(b * tiling.S2, cdiv(c, MEANS_BLOCK_C))](
        q, k, means_q, means_k, *strides(q), *strides(k), tiling.H, tiling.W, c, tiling.n_win, tiling.rh,
        tiling.rw, tiling.R, tiling.S2, BLOCK_T=MEANS_BLOCK_T, BLOCK_C=MEANS_BLOCK_C,
    )
    region_idx = torch.empty(b, tiling.S2, topk, dtype=torch.int64, device=q.device)
    lists, bits, counts = tiling.empty_plan(q.device)
    _route_kernel[(tiling.n_tiles, b)](
        means_q, means_k, region_idx, lists, bits, counts, c, tiling.S2, topk, tiling.G, scale,
        GP=max(16, next_power_of_2(tiling.G)), S2P=max(16, next_power_of_2(tiling.S2)),
        BLOCK_C=min(64, head_tile(c)),
    )
    return region_idx, lists, bits, counts


@on_tensor_device
def _key_plan(region_idx: torch.Tensor, tiling: Tiling) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the key plan kernel: the transposed plan (lists, bits, counts) the dK/dV kernel walks."""
    topk = region_idx.shape[-1]
    lists, bits, counts = tiling.empty_plan(region_idx.device)
    _key_plan_kernel[(tiling.n_tiles, tiling.B)](
        region_idx, lists, bits, counts, tiling.S2, topk, tiling.G,
        TP=next_power_of_2(topk), S2P=max(16, next_power_of_2(tiling.S2)),
    )
    return lists, bits, counts


@on_tensor_device
def route(q, k, n_win, topk, scale):
    """Region routing on the GPU: (region_idx (B, n_win**2, topk) int64, the forward plan's lists, bits, counts)."""
    return _route(q, k, Tiling(q, k, 1, n_win), topk, scale)


@on_tensor_device
def forward(q, k, v, num_heads, n_win, topk, scale):
    """Route, plan and attend. Returns (out (B, H, W, C_v), log2-sum-exp (B, heads, H, W) fp32, region_idx, and the
    forward plan's lists, bits and counts, which backward reuses)."""
    tiling = Tiling(q, v, num_heads, n_win)
    region_idx, lists, bits, counts = _route(q, k, tiling, topk, scale)
    b, h, w, _ = q.shape
    out = torch.empty(b, h, w, v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.empty(b, num_heads, h, w, dtype=torch.float32, device=q.device)
    _fwd_kernel[tiling.attention_grid()](
        q, k, v, out, lse, lists, bits, counts,
        *strides(q), *strides(k), *strides(v), *strides(out),
        *tiling.geometry(), scale * LOG2E.value,
        **tiling.meta(packed=tiling.G > 1),
    )
    return out, lse, region_idx, lists, bits, counts


@on_tensor_device
def backward(q, k, v, out, lse, grad_out, region_idx, lists, bits, counts, num_heads, n_win, scale):
    """Launch the key plan, the dQ (with delta) and the dK/dV kernels. Returns (dq, dk, dv) shaped like q, k, v."""
    tiling = Tiling(q, v, num_heads, n_win)
    grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
    key_lists, key_bits, key_counts = _key_plan(region_idx, tiling)
    delta = torch.empty_like(lse)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _bwd_dq_kernel[tiling.attention_grid()](
        q, k, v, out, grad_out, dq, lse, delta, lists, bits, counts,
        *strides(q), *strides(k), *strides(v), *strides(out), *strides(grad_out), *strides(dq),
        *tiling.geometry(), scale * LOG2E.value, scale,
        **tiling.meta(packed=tiling.G > 1),
    )
    _bwd_dkdv_kernel[tiling.attention_grid()](
        q, k, v, grad_out, dk, dv, lse, delta, key_lists, key_bits, key_counts,
        *strides(q), *strides(k), *strides(v), *strides(grad_out), *strides(dk), *strides(dv),
        *tiling.geometry(), scale * LOG2E.value, scale,
        **tiling.meta(packed=tiling.G > 1),
    )
    return dq, dk, dv
