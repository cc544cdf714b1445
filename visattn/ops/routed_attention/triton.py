"""Fused bi-level routing attention in Triton: forward, and flash-attention style backward.

Each program owns a tile of query tokens: ``G = BLOCK // R`` whole regions of ``R`` tokens (small
regions are packed so the tensor cores see full tiles) or one ``BLOCK``-row slice of a large region.
It walks a list of key regions — the query region's top-k, or for packed tiles the union of the
packed regions' top-k with a per-row region-adjacency mask — loading key and value tokens straight
from the channels-last maps by index. Several small key regions share one key tile. Nothing of size
topk x K/V is ever materialised; backward recomputes the probabilities from the saved log-sum-exp.
The region partition and the bottom/right zero padding are folded into the address arithmetic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import LOG2E, dot_precision, head_tile, on_tensor_device, strides

# Query rows and key columns per tile. 64 x 64 keeps a tile's q, k, v and accumulators in registers for
# head_dim up to 128 with 4 warps; regions smaller than BLOCK_M are packed BLOCK_M // R to a tile.
BLOCK_M = 64
BLOCK_N = 64


@triton.jit
def _token_pos(reg, tok, n_win, rh, rw, H, W):
    """Region ``reg``, token ``tok`` (row-major inside the region) -> (inside the unpadded map, y * W + x)."""
    y = (reg // n_win) * rh + tok // rw
    x = (reg % n_win) * rw + tok % rw
    return (y < H) & (x < W), y * W + x


@triton.jit
def _tile(X, b, s_b, s_h, s_w, reg, tok, rows, h, n_win, rh, rw, D: tl.constexpr, BD: tl.constexpr):
    """Pointers and mask of the (tokens x channels of head h) tile of a channels-last map; ``rows`` masks tokens."""
    y = (reg // n_win) * rh + tok // rw
    x = (reg % n_win) * rw + tok % rw
    d = tl.arange(0, BD)
    ptrs = X + b * s_b + (y * s_h + x * s_w)[:, None] + h * D + d[None, :]
    return ptrs, rows[:, None] & (d[None, :] < D)


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
def _region_list(LISTS, COUNTS, b, t, n_tiles, list_len):
    """Tile ``t``'s list of regions to walk (a pointer) and its length."""
    return LISTS + (b * n_tiles + t) * list_len, tl.load(COUNTS + b * n_tiles + t)


@triton.jit
def _list_cols(lst, n0, n_items, R, BLOCK: tl.constexpr):
    """Region and token of columns n0..n0+BLOCK of a region list walked token by token."""
    j = n0 + tl.arange(0, BLOCK)
    valid = j < n_items * R
    reg = tl.load(lst + j // R, mask=valid, other=0)
    return reg, j % R, valid


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
def _load_stats(LSE, DELTA, pid_bh, H, W, lin, rows):
    """Log2-sum-exp and delta = rowsum(dO * O) of the query tokens ``lin`` of (batch, head) ``pid_bh``."""
    stats = pid_bh.to(tl.int64) * H * W + lin
    return tl.load(LSE + stats, mask=rows, other=0.0), tl.load(DELTA + stats, mask=rows, other=0.0)


@triton.jit
def _allowed(ADJ, b, S2, q_reg, k_reg, q_valid, k_valid, q_rows, PACKED: tl.constexpr):
    """Mask of the (query, key) pairs that attend, from arguments broadcast to one 2-D shape: a real query row and
    a listed key, and for packed tiles, whose regions the adjacency links (query region routes to key region)."""
    allowed = q_rows & k_valid
    if PACKED:
        link = tl.load(ADJ + b * S2 * S2 + q_reg * S2 + k_reg, mask=q_valid & k_valid, other=0)
        allowed = allowed & (link != 0)
    return allowed


@triton.jit
def _key_block(q, q_reg, q_valid, q_rows, K, V, ADJ, lst, n0, n_items, b, h, sk_b, sk_h, sk_w, sv_b, sv_h, sv_w,
               H, W, n_win, rh, rw, R, S2, qk_scale_log2, D_QK: tl.constexpr, D_V: tl.constexpr,
               BD_QK: tl.constexpr, BD_V: tl.constexpr, BLOCK_N: tl.constexpr, PACKED: tl.constexpr,
               PRECISION: tl.constexpr):
    """Key columns n0..n0+BLOCK_N of the tile's region list, for the query rows q: (k, v, s = log2(e) x scaled
    logits q k^T, mask of the pairs that attend)."""
    k_reg, k_tok, k_valid = _list_cols(lst, n0, n_items, R, BLOCK_N)
    k, v, _, _ = _load_pair(K, V, b, sk_b, sk_h, sk_w, sv_b, sv_h, sv_w, k_reg, k_tok, k_valid, h, n_win, rh, rw,
                            H, W, D_QK, BD_QK, D_V, BD_V)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale_log2
    allowed = _allowed(ADJ, b, S2, q_reg[:, None], k_reg[None, :], q_valid[:, None], k_valid[None, :],
                       q_rows[:, None], PACKED)
    return k, v, s, allowed


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE, LISTS, COUNTS, ADJ,
    sq_b, sq_h, sq_w, sk_b, sk_h, sk_w, sv_b, sv_h, sv_w, so_b, so_h, so_w,
    H, W, n_win, rh, rw, R, S2, num_heads, n_tiles, n_sub, list_len, qk_scale_log2,
    D_QK: tl.constexpr, D_V: tl.constexpr, BD_QK: tl.constexpr, BD_V: tl.constexpr,
    G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PACKED: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_bh, b, h, t, q_reg, q_tok, q_valid = _program_tile(num_heads, n_sub, G, R, S2, BLOCK_M)
    q_inside, q_lin = _token_pos(q_reg, q_tok, n_win, rh, rw, H, W)
    q_rows = q_valid & q_inside
    q_ptrs, q_mask = _tile(Q, b, sq_b, sq_h, sq_w, q_reg, q_tok, q_rows, h, n_win, rh, rw, D_QK, BD_QK)
    q = tl.load(q_ptrs, mask=q_mask, other=0.0)
    lst, n_items = _region_list(LISTS, COUNTS, b, t, n_tiles, list_len)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BD_V], tl.float32)
    for n0 in range(0, n_items * R, BLOCK_N):
        k, v, s, allowed = _key_block(q, q_reg, q_valid, q_rows, K, V, ADJ, lst, n0, n_items, b, h, sk_b, sk_h,
                                      sk_w, sv_b, sv_h, sv_w, H, W, n_win, rh, rw, R, S2, qk_scale_log2, D_QK, D_V,
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


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA, LISTS, COUNTS, ADJ,
    sq_b, sq_h, sq_w, sk_b, sk_h, sk_w, sv_b, sv_h, sv_w, sdo_b, sdo_h, sdo_w, sdq_b, sdq_h, sdq_w,
    H, W, n_win, rh, rw, R, S2, num_heads, n_tiles, n_sub, list_len, qk_scale_log2, scale,
    D_QK: tl.constexpr, D_V: tl.constexpr, BD_QK: tl.constexpr, BD_V: tl.constexpr,
    G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PACKED: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_bh, b, h, t, q_reg, q_tok, q_valid = _program_tile(num_heads, n_sub, G, R, S2, BLOCK_M)
    q, do, q_rows, q_lin = _load_pair(Q, DO, b, sq_b, sq_h, sq_w, sdo_b, sdo_h, sdo_w, q_reg, q_tok, q_valid, h,
                                      n_win, rh, rw, H, W, D_QK, BD_QK, D_V, BD_V)
    lse, delta = _load_stats(LSE, DELTA, pid_bh, H, W, q_lin, q_rows)
    lst, n_items = _region_list(LISTS, COUNTS, b, t, n_tiles, list_len)
    dq = tl.zeros([BLOCK_M, BD_QK], tl.float32)
    for n0 in range(0, n_items * R, BLOCK_N):
        k, v, s, allowed = _key_block(q, q_reg, q_valid, q_rows, K, V, ADJ, lst, n0, n_items, b, h, sk_b, sk_h,
                                      sk_w, sv_b, sv_h, sv_w, H, W, n_win, rh, rw, R, S2, qk_scale_log2, D_QK, D_V,
                                      BD_QK, BD_V, BLOCK_N, PACKED, PRECISION)
        p = tl.where(allowed, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    dq_ptrs, dq_mask = _tile(DQ, b, sdq_b, sdq_h, sdq_w, q_reg, q_tok, q_rows, h, n_win, rh, rw, D_QK, BD_QK)
    tl.store(dq_ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=dq_mask)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, LISTS, COUNTS, ADJ,
    sq_b, sq_h, sq_w, sk_b, sk_h, sk_w, sv_b, sv_h, sv_w, sdo_b, sdo_h, sdo_w,
    sdk_b, sdk_h, sdk_w, sdv_b, sdv_h, sdv_w,
    H, W, n_win, rh, rw, R, S2, num_heads, n_tiles, n_sub, list_len, qk_scale_log2, scale,
    D_QK: tl.constexpr, D_V: tl.constexpr, BD_QK: tl.constexpr, BD_V: tl.constexpr,
    G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PACKED: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_bh, b, h, t, k_reg, k_tok, k_valid = _program_tile(num_heads, n_sub, G, R, S2, BLOCK_M)
    k, v, k_rows, _ = _load_pair(K, V, b, sk_b, sk_h, sk_w, sv_b, sv_h, sv_w, k_reg, k_tok, k_valid, h, n_win, rh,
                                 rw, H, W, D_QK, BD_QK, D_V, BD_V)
    lst, n_items = _region_list(LISTS, COUNTS, b, t, n_tiles, list_len)
    dk = tl.zeros([BLOCK_M, BD_QK], tl.float32)
    dv = tl.zeros([BLOCK_M, BD_V], tl.float32)
    for n0 in range(0, n_items * R, BLOCK_N):
        q_reg, q_tok, q_valid = _list_cols(lst, n0, n_items, R, BLOCK_N)
        q, do, q_rows, q_lin = _load_pair(Q, DO, b, sq_b, sq_h, sq_w, sdo_b, sdo_h, sdo_w, q_reg, q_tok, q_valid,
                                          h, n_win, rh, rw, H, W, D_QK, BD_QK, D_V, BD_V)
        lse, delta = _load_stats(LSE, DELTA, pid_bh, H, W, q_lin, q_rows)
        s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale_log2
        allowed = _allowed(ADJ, b, S2, q_reg[None, :], k_reg[:, None], q_valid[None, :], k_valid[:, None],
                           q_rows[None, :], PACKED)
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
    """Tiling of one call: region geometry, tile sizes and the per-tile region lists for both passes."""

    def __init__(self, q: torch.Tensor, v: torch.Tensor, region_idx: torch.Tensor, num_heads: int, n_win: int):
        b, h, w, c_qk = q.shape
        self.H, self.W, self.n_win = h, w, n_win
        self.rh, self.rw = -(-h // n_win), -(-w // n_win)
        self.R = self.rh * self.rw
        self.S2 = n_win * n_win
        self.num_heads = num_heads
        self.d_qk, self.d_v = c_qk // num_heads, v.shape[-1] // num_heads
        self.bd_qk, self.bd_v = head_tile(self.d_qk), head_tile(self.d_v)
        self.block_m, self.block_n = BLOCK_M, BLOCK_N
        self.G = max(1, self.block_m // self.R)
        self.n_sub = 1 if self.G > 1 else -(-self.R // self.block_m)
        self.n_tiles = -(-self.S2 // self.G)
        self.precision = dot_precision(q.dtype)
        adj = torch.zeros(b, self.S2, self.S2, dtype=torch.bool, device=q.device)
        adj.scatter_(2, region_idx, True)
        self.adj = adj.to(torch.uint8)
        if self.G == 1:  # each tile is one query region: its top-k list is the list
            topk = region_idx.shape[-1]
            self.fwd_lists = region_idx.to(torch.int32).contiguous()
            self.fwd_counts = torch.full((b, self.S2), topk, dtype=torch.int32, device=q.device)
        else:
            self.fwd_lists, self.fwd_counts = self._union_lists(adj)

    def key_tile_lists(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For the dK/dV pass: per tile of key regions, the query regions that route to any of them."""
        return self._union_lists(self.adj.bool().transpose(1, 2))

    def _union_lists(self, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each tile of G consecutive row regions: the regions any of them is linked to, first, and how many."""
        b = adj.shape[0]
        pad = self.n_tiles * self.G - self.S2
        if pad:
            adj = torch.cat([adj, adj.new_zeros(b, pad, self.S2)], dim=1)
        present = adj.reshape(b, self.n_tiles, self.G, self.S2).any(dim=2)
        counts = present.sum(dim=-1, dtype=torch.int32)
        lists = present.to(torch.uint8).argsort(dim=-1, descending=True, stable=True).to(torch.int32)
        return lists.contiguous(), counts.contiguous()

    def grid(self, batch: int) -> tuple[int, int]:
        return (self.n_tiles * self.n_sub, batch * self.num_heads)

    def geometry(self) -> tuple:
        return (self.H, self.W, self.n_win, self.rh, self.rw, self.R, self.S2, self.num_heads)

    def meta(self, packed: bool) -> dict:
        return dict(D_QK=self.d_qk, D_V=self.d_v, BD_QK=self.bd_qk, BD_V=self.bd_v, G=self.G,
                    BLOCK_M=self.block_m, BLOCK_N=self.block_n, PACKED=packed, PRECISION=self.precision,
                    num_warps=4)


@on_tensor_device
def forward(q, k, v, region_idx, num_heads, n_win, scale):
    """Launch the forward kernel. Returns (out (B, H, W, C_v), log2-sum-exp (B, heads, H, W) fp32)."""
    tiling = Tiling(q, v, region_idx, num_heads, n_win)
    b, h, w, _ = q.shape
    out = torch.empty(b, h, w, v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.empty(b, num_heads, h, w, dtype=torch.float32, device=q.device)
    list_len = tiling.fwd_lists.shape[-1]
    _fwd_kernel[tiling.grid(b)](
        q, k, v, out, lse, tiling.fwd_lists, tiling.fwd_counts, tiling.adj,
        *strides(q), *strides(k), *strides(v), *strides(out),
        *tiling.geometry(), tiling.n_tiles, tiling.n_sub, list_len, scale * LOG2E.value,
        **tiling.meta(packed=tiling.G > 1),
    )
    return out, lse


@on_tensor_device
def backward(q, k, v, out, lse, grad_out, region_idx, num_heads, n_win, scale):
    """Launch the dQ and the dK/dV kernels. Returns (dq, dk, dv) shaped like q, k, v."""
    tiling = Tiling(q, v, region_idx, num_heads, n_win)
    b = q.shape[0]
    grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
    delta = (grad_out.float() * out.float()).unflatten(-1, (tiling.num_heads, tiling.d_v)).sum(-1)
    delta = delta.permute(0, 3, 1, 2).contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    key_lists, key_counts = tiling.key_tile_lists()
    common = (*tiling.geometry(), tiling.n_tiles, tiling.n_sub)
    _bwd_dq_kernel[tiling.grid(b)](
        q, k, v, grad_out, dq, lse, delta, tiling.fwd_lists, tiling.fwd_counts, tiling.adj,
        *strides(q), *strides(k), *strides(v), *strides(grad_out), *strides(dq),
        *common, tiling.fwd_lists.shape[-1], scale * LOG2E.value, scale,
        **tiling.meta(packed=tiling.G > 1),
    )
    _bwd_dkdv_kernel[tiling.grid(b)](
        q, k, v, grad_out, dk, dv, lse, delta, key_lists, key_counts, tiling.adj,
        *strides(q), *strides(k), *strides(v), *strides(grad_out), *strides(dk), *strides(dv),
        *common, key_lists.shape[-1], scale * LOG2E.value, scale,
        **tiling.meta(packed=True),
    )
    return dq, dk, dv
