"""Fused (shifted) window attention in Triton: forward, and flash-attention style backward.

Each program owns one tile of ``BLOCK`` token rows: ``G = BLOCK // ws**2`` whole windows (one 7 x 7 or 8 x 8
window per 64-row tile, smaller windows packed several to a tile). Queries and keys of a window live in the
same tile, so one ``BLOCK x BLOCK`` logit tile holds every score of its windows: the softmax is exact in one
pass, with a same-window, same-shift-region, real-key mask. Token addresses are computed from the window
index straight into the channels-last maps: the zero padding, the cyclic shift and the window partition are
folded into the address arithmetic and never materialised. Relative position bias entries are loaded from the
table by index. Backward recomputes the probabilities from the saved log-sum-exp and produces dQ, dK and dV
of a tile in one program; when the bias table needs a gradient, each program walks several tiles of one
(batch, head), sums dS over them in registers and adds the sum to a float32 (heads, ws**2, ws**2) buffer with
``tl.atomic_add``, folded into the table's (dy, dx) entries afterwards.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import (
    LOG2E,
    WARP_STAGE_CONFIGS,
    autotune,
    dot_precision,
    head_tile,
    on_tensor_device,
    strides,
)
from .reference import relative_position_index

# Token rows per tile: a whole 7 x 7 (49 tokens) or 8 x 8 window, or several smaller windows.
BLOCK = 64
# When the bias table needs a gradient: tiles of one (batch, head) per backward program, dS summed over them.
BIAS_TILES_PER_PROGRAM = 8


@triton.jit
def _tile_tokens(t, H, W, Hp, Wp, n_win_w, n_windows, shift, WS: tl.constexpr, G: tl.constexpr,
                 BLOCK: tl.constexpr):
    """Rows of tile ``t``: window, in-window token, place (y, x) in the unpadded unrolled map, real, shift region.

    Window ``win`` token ``tok`` sits at (yr, xr) of the padded map rolled by (-shift, -shift), which holds the
    padded map's token ((yr + shift) % Hp, (xr + shift) % Wp); it is real if that lies inside H x W. Its shift
    region (2 * [yr >= Hp - shift] + [xr >= Wp - shift]) splits a window exactly as Swin's 3 x 3 regions do.
    """
    i = tl.arange(0, BLOCK)
    win = t * G + i // (WS * WS)
    tok = i % (WS * WS)
    yr = (win // n_win_w) * WS + tok // WS
    xr = (win % n_win_w) * WS + tok % WS
    y = (yr + shift) % Hp
    x = (xr + shift) % Wp
    real = (i < G * WS * WS) & (win < n_windows) & (y < H) & (x < W)
    region = (yr >= Hp - shift).to(tl.int32) * 2 + (xr >= Wp - shift).to(tl.int32)
    return win, tok, y, x, real, region


@triton.jit
def _rel_index(tok, WS: tl.constexpr):
    """Bias-table index of every (query row, key column) token pair: (dy + WS - 1) * (2 WS - 1) + dx + WS - 1."""
    ty = tok // WS
    tx = tok % WS
    return (ty[:, None] - ty[None, :] + WS - 1) * (2 * WS - 1) + (tx[:, None] - tx[None, :] + WS - 1)


@triton.jit
def _tile_ptrs(X, b, s_b, s_h, s_w, y, x, c0, c):
    """Pointers to channels c0 + c of the tile's tokens (y, x) in a channels-last map."""
    return X + b * s_b + (y * s_h + x * s_w)[:, None] + c0 + c[None, :]


@autotune(WARP_STAGE_CONFIGS, ["WS", "G", "D_QK", "D_V", "HAS_BIAS"])
@triton.jit
def _fwd_kernel(
    Q, K, V, BIAS, O, LSE,
    sq_b, sq_h, sq_w, sk_b, sk_h, sk_w, sv_b, sv_h, sv_w, so_b, so_h, so_w,
    H, W, Hp, Wp, n_win_w, n_windows, shift, num_heads, qk_scale_log2,
    D_QK: tl.constexpr, D_V: tl.constexpr, BD_QK: tl.constexpr, BD_V: tl.constexpr, WS: tl.constexpr,
    G: tl.constexpr, BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
):
    t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // num_heads).to(tl.int64)
    h = pid_bh % num_heads
    win, tok, y, x, real, region = _tile_tokens(t, H, W, Hp, Wp, n_win_w, n_windows, shift, WS, G, BLOCK)
    dqk = tl.arange(0, BD_QK)
    dv = tl.arange(0, BD_V)
    qk_mask = real[:, None] & (dqk[None, :] < D_QK)
    v_mask = real[:, None] & (dv[None, :] < D_V)
    q = tl.load(_tile_ptrs(Q, b, sq_b, sq_h, sq_w, y, x, h * D_QK, dqk), mask=qk_mask, other=0.0)
    k = tl.load(_tile_ptrs(K, b, sk_b, sk_h, sk_w, y, x, h * D_QK, dqk), mask=qk_mask, other=0.0)
    allowed = (win[:, None] == win[None, :]) & (region[:, None] == region[None, :]) & real[None, :]
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale_log2
    if HAS_BIAS:
        bias = tl.load(BIAS + h * (2 * WS - 1) * (2 * WS - 1) + _rel_index(tok, WS), mask=allowed, other=0.0)
        s += bias.to(tl.float32) * LOG2E
    s = tl.where(allowed, s, -1.0e30)
    m = tl.max(s, 1)
    p = tl.exp2(s - m[:, None])
    l = tl.sum(p, 1)
    v = tl.load(_tile_ptrs(V, b, sv_b, sv_h, sv_w, y, x, h * D_V, dv), mask=v_mask, other=0.0)
    out = tl.dot(p.to(v.dtype), v, input_precision=PRECISION) / l[:, None]
    tl.store(_tile_ptrs(O, b, so_b, so_h, so_w, y, x, h * D_V, dv), out.to(O.dtype.element_ty), mask=v_mask)
    tl.store(LSE + pid_bh.to(tl.int64) * H * W + y * W + x, m + tl.log2(l), mask=real)


@triton.jit
def _bwd_kernel(
    Q, K, V, O, DO, LSE, BIAS, DQ, DK, DV, DBIAS,
    sq_b, sq_h, sq_w, sk_b, sk_h, sk_w, sv_b, sv_h, sv_w, so_b, so_h, so_w, sdo_b, sdo_h, sdo_w,
    sdq_b, sdq_h, sdq_w, sdk_b, sdk_h, sdk_w, sdv_b, sdv_h, sdv_w,
    H, W, Hp, Wp, n_win_w, n_windows, shift, num_heads, n_tiles, qk_scale_log2, scale,
    D_QK: tl.constexpr, D_V: tl.constexpr, BD_QK: tl.constexpr, BD_V: tl.constexpr, WS: tl.constexpr,
    G: tl.constexpr, BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_GRAD: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_bh = tl.program_id(1)
    b = (pid_bh // num_heads).to(tl.int64)
    h = pid_bh % num_heads
    dqk = tl.arange(0, BD_QK)
    dv = tl.arange(0, BD_V)
    dbias = tl.zeros([BLOCK, BLOCK], tl.float32)
    for t in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        win, tok, y, x, real, region = _tile_tokens(t, H, W, Hp, Wp, n_win_w, n_windows, shift, WS, G, BLOCK)
        qk_mask = real[:, None] & (dqk[None, :] < D_QK)
        v_mask = real[:, None] & (dv[None, :] < D_V)
        q = tl.load(_tile_ptrs(Q, b, sq_b, sq_h, sq_w, y, x, h * D_QK, dqk), mask=qk_mask, other=0.0)
        k = tl.load(_tile_ptrs(K, b, sk_b, sk_h, sk_w, y, x, h * D_QK, dqk), mask=qk_mask, other=0.0)
        v = tl.load(_tile_ptrs(V, b, sv_b, sv_h, sv_w, y, x, h * D_V, dv), mask=v_mask, other=0.0)
        o = tl.load(_tile_ptrs(O, b, so_b, so_h, so_w, y, x, h * D_V, dv), mask=v_mask, other=0.0)
        do = tl.load(_tile_ptrs(DO, b, sdo_b, sdo_h, sdo_w, y, x, h * D_V, dv), mask=v_mask, other=0.0)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
        lse = tl.load(LSE + pid_bh.to(tl.int64) * H * W + y * W + x, mask=real, other=0.0)
        allowed = (win[:, None] == win[None, :]) & (region[:, None] == region[None, :])
        allowed = allowed & real[:, None] & real[None, :]
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale_log2
        if HAS_BIAS:
            bias = tl.load(BIAS + h * (2 * WS - 1) * (2 * WS - 1) + _rel_index(tok, WS), mask=allowed, other=0.0)
            s += bias.to(tl.float32) * LOG2E
        p = tl.where(allowed, tl.exp2(s - lse[:, None]), 0.0)
        dvt = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, input_precision=PRECISION) * scale
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION) * scale
        tl.store(_tile_ptrs(DQ, b, sdq_b, sdq_h, sdq_w, y, x, h * D_QK, dqk), dq.to(DQ.dtype.element_ty), mask=qk_mask)
        tl.store(_tile_ptrs(DK, b, sdk_b, sdk_h, sdk_w, y, x, h * D_QK, dqk), dk.to(DK.dtype.element_ty), mask=qk_mask)
        tl.store(_tile_ptrs(DV, b, sdv_b, sdv_h, sdv_w, y, x, h * D_V, dv), dvt.to(DV.dtype.element_ty), mask=v_mask)
        if BIAS_GRAD:
            dbias += ds
    if BIAS_GRAD:
        # every tile lays its windows out alike, so row i / column j is the same token pair in all of them
        i = tl.arange(0, BLOCK)
        slot = i // (WS * WS)
        tok = i % (WS * WS)
        pair = (slot[:, None] == slot[None, :]) & (i[:, None] < G * WS * WS) & (i[None, :] < G * WS * WS)
        tl.atomic_add(DBIAS + h * WS * WS * WS * WS + tok[:, None] * WS * WS + tok[None, :], dbias, mask=pair)


class Tiling:
    """Tiling of one call: padded map, window grid, windows per tile, head tile widths."""

    def __init__(self, q: torch.Tensor, v: torch.Tensor, num_heads: int, window_size: int, shift: int):
        _, h, w, c_qk = q.shape
        ws = window_size
        self.H, self.W, self.ws, self.shift, self.num_heads = h, w, ws, shift, num_heads
        self.Hp, self.Wp = h + (-h % ws), w + (-w % ws)
        self.n_win_w = self.Wp // ws
        self.n_windows = (self.Hp // ws) * self.n_win_w
        self.G = BLOCK // (ws * ws)
        self.n_tiles = -(-self.n_windows // self.G)
        self.d_qk, self.d_v = c_qk // num_heads, v.shape[-1] // num_heads
        self.bd_qk, self.bd_v = head_tile(self.d_qk), head_tile(self.d_v)
        self.precision = dot_precision(q.dtype)

    def args(self) -> tuple:
        return (self.H, self.W, self.Hp, self.Wp, self.n_win_w, self.n_windows, self.shift, self.num_heads)

    def meta(self, has_bias: bool) -> dict:
        return dict(D_QK=self.d_qk, D_V=self.d_v, BD_QK=self.bd_qk, BD_V=self.bd_v, WS=self.ws, G=self.G,
                    BLOCK=BLOCK, HAS_BIAS=has_bias, PRECISION=self.precision)

    def backward_warps(self) -> int:
        return 4 if max(self.bd_qk, self.bd_v) <= 64 else 8


@on_tensor_device
def forward(q, k, v, rel_pos_bias, num_heads, window_size, shift, scale):
    """Launch the forward kernel. Returns (out (B, H, W, C_v), log2-sum-exp (B, heads, H, W) fp32)."""
    tiling = Tiling(q, v, num_heads, window_size, shift)
    b, h, w, _ = q.shape
    out = torch.empty(b, h, w, v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.empty(b, num_heads, h, w, dtype=torch.float32, device=q.device)
    bias = q if rel_pos_bias is None else rel_pos_bias.contiguous()
    _fwd_kernel[(tiling.n_tiles, b * num_heads)](
        q, k, v, bias, out, lse,
        *strides(q), *strides(k), *strides(v), *strides(out),
        *tiling.args(), scale * LOG2E.value,
        **tiling.meta(has_bias=rel_pos_bias is not None),
    )
    return out, lse


@on_tensor_device
def backward(q, k, v, out, lse, grad_out, rel_pos_bias, num_heads, window_size, shift, scale, bias_grad):
    """Launch the backward kernel. Returns (dq, dk, dv, d_rel_pos_bias), the last empty unless ``bias_grad``."""
    tiling = Tiling(q, v, num_heads, window_size, shift)
    b = q.shape[0]
    grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    bias = q if rel_pos_bias is None else rel_pos_bias.contiguous()
    tokens = window_size * window_size
    if bias_grad:
        dbias = torch.zeros(num_heads, tokens, tokens, dtype=torch.float32, device=q.device)
        n_programs = -(-tiling.n_tiles // BIAS_TILES_PER_PROGRAM)
    else:
        dbias = q
        n_programs = tiling.n_tiles
    _bwd_kernel[(n_programs, b * num_heads)](
        q, k, v, out, grad_out, lse, bias, dq, dk, dv, dbias,
        *strides(q), *strides(k), *strides(v), *strides(out), *strides(grad_out),
        *strides(dq), *strides(dk), *strides(dv),
        *tiling.args(), tiling.n_tiles, scale * LOG2E.value, scale,
        **tiling.meta(has_bias=rel_pos_bias is not None), BIAS_GRAD=bias_grad, num_warps=tiling.backward_warps(),
    )
    if not bias_grad:
        return dq, dk, dv, q.new_empty(0)
    index = relative_position_index(window_size, q.device).reshape(-1)
    table = torch.zeros(rel_pos_bias.shape, dtype=torch.float32, device=q.device)
    table.index_add_(1, index, dbias.view(num_heads, -1))
    return dq, dk, dv, table.to(rel_pos_bias.dtype)
