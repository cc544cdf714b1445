"""Fused attention-guided filter in Triton: three forward kernels and one backward kernel plus a low-res backward.

All maps are contiguous (B, C, h, w) (low-res) or (B, C, H, W) (high-res). Every sum is taken in float32, and every
box sum is a direct sum over the window's pixels (no cumulative sums), clipped at the borders.

Forward:
    ``_coefficients_kernel``, one program per (low-res tile, b, c): the six window sums of a, a x, a y, a^2 x y,
    a^2 x^2, a^2 x around each pixel, then the slope A and offset b of the pixel (float32, low-res).
    ``_box_mean_kernel``, same grid: the box means of A and b (float32, low-res) - the only tensors kept for
    backward besides the inputs.
    ``_apply_kernel``, one program per (high-res tile, b, c): bilinear (align_corners=True) interpolation of the
    two means and ``A F + b``, written once in the inputs' dtype.

Backward:
    ``_apply_backward_kernel``, one program per (high-res tile, b, guide channel): dF = sum_c dout up(mean A) (summed
    over the channels in registers when one guide channel serves them all), and the transposed interpolation of
    dout F and dout into float32 low-res gradients of the two means with ``tl.atomic_add``.
    The low-res rest (two box means, the line fit, six box sums, the products) is :func:`coefficients_backward`:
    plain torch ops in float32 on (B, C, h, w) maps, written out by hand, from the saved inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import cdiv, next_power_of_2, on_tensor_device
from .reference import WEIGHT_FLOOR, box_mean, output_dtype, window_count

FLOOR = tl.constexpr(WEIGHT_FLOOR)
# Largest tile sides, low-res and high-res maps (rows x columns; columns are the contiguous axis).
BLOCK_H = 16
BLOCK_W = 64


@triton.jit
def _shifted(rows, cols, dy, dx, H, W):
    """Offsets (row-major, row width W) of the tile's pixels shifted by (dy, dx), and which of them are in the map."""
    r = rows + dy
    c = cols + dx
    return r[:, None] * W + c[None, :], ((r >= 0) & (r < H))[:, None] & ((c >= 0) & (c < W))[None, :]


@triton.jit
def _window_sums(Xb, Yb, Ab, rows, cols, H, W, RY: tl.constexpr, RX: tl.constexpr):
    """Sums over each clipped (2 RY + 1) x (2 RX + 1) window of a, a x, a y, a^2 x y, a^2 x^2, a^2 x (float32)."""
    zero = tl.zeros([rows.shape[0], cols.shape[0]], dtype=tl.float32)
    s_a, s_ax, s_ay, s_a2xy, s_a2x2, s_a2x = zero, zero, zero, zero, zero, zero
    for dy in range(-RY, RY + 1):
        for dx in range(-RX, RX + 1):
            offs, m = _shifted(rows, cols, dy, dx, H, W)
            x = tl.load(Xb + offs, mask=m, other=0.0).to(tl.float32)
            y = tl.load(Yb + offs, mask=m, other=0.0).to(tl.float32)
            a = tl.where(m, tl.abs(tl.load(Ab + offs, mask=m, other=0.0).to(tl.float32)) + FLOOR, 0.0)
            ax = a * x
            ay = a * y
            s_a += a
            s_ax += ax
            s_ay += ay
            s_a2xy += ax * ay
            s_a2x2 += ax * ax
            s_a2x += ax * a
    return s_a, s_ax, s_ay, s_a2xy, s_a2x2, s_a2x


@triton.jit
def _window_count(rows, cols, H, W, RY: tl.constexpr, RX: tl.constexpr):
    """Pixel count of each clipped window (float32)."""
    n_y = (tl.minimum(rows + RY, H - 1) - tl.maximum(rows - RY, 0) + 1).to(tl.float32)
    n_x = (tl.minimum(cols + RX, W - 1) - tl.maximum(cols - RX, 0) + 1).to(tl.float32)
    return tl.maximum(n_y[:, None] * n_x[None, :], 1.0)  # 1 outside the map (masked lanes divide safely)


@triton.jit
def _tile(pt, H, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    n_tw = tl.cdiv(W, BLOCK_W)
    rows = (pt // n_tw) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = (pt % n_tw) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = (rows < H)[:, None] & (cols < W)[None, :]
    return rows, cols, rows[:, None] * W + cols[None, :], mask


@triton.jit
def _coefficients_kernel(X, Y, A, TOTAL, COEF_A, COEF_B, C, H, W, sx_b, sx_c, sa_b, sa_c, eps,
                         RY: tl.constexpr, RX: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pt, bc = tl.program_id(0), tl.program_id(1)
    b, c = bc // C, bc % C
    rows, cols, offs, mask = _tile(pt, H, W, BLOCK_H, BLOCK_W)
    s_a, s_ax, s_ay, s_a2xy, s_a2x2, s_a2x = _window_sums(
        X + b.to(tl.int64) * sx_b + c * sx_c, Y + bc.to(tl.int64) * H * W, A + b.to(tl.int64) * sa_b + c * sa_c,
        rows, cols, H, W, RY, RX)
    n = _window_count(rows, cols, H, W, RY, RX)
    mean_a, mean_ax, mean_ay = tl.where(mask, s_a / n, 1.0), s_ax / n, s_ay / n
    sum_tax = s_a2x / tl.load(TOTAL + b)  # the window sum of t a x, t = a / (the sample's total weight)
    slope = (s_a2xy / n - sum_tax * mean_ay) / (tl.abs(s_a2x2 / n - sum_tax * mean_ax) + eps)
    offset = (mean_ay - slope * mean_ax) / mean_a
    out = bc.to(tl.int64) * H * W + offs
    tl.store(COEF_A + out, slope, mask=mask)
    tl.store(COEF_B + out, offset, mask=mask)


@triton.jit
def _box_mean_kernel(SRC_A, SRC_B, DST_A, DST_B, H, W, RY: tl.constexpr, RX: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pt, bc = tl.program_id(0), tl.program_id(1)
    rows, cols, offs, mask = _tile(pt, H, W, BLOCK_H, BLOCK_W)
    base = bc.to(tl.int64) * H * W
    s_a = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    s_b = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    for dy in range(-RY, RY + 1):
        for dx in range(-RX, RX + 1):
            src, m = _shifted(rows, cols, dy, dx, H, W)
            s_a += tl.load(SRC_A + base + src, mask=m, other=0.0)
            s_b += tl.load(SRC_B + base + src, mask=m, other=0.0)
    n = _window_count(rows, cols, H, W, RY, RX)
    tl.store(DST_A + base + offs, s_a / n, mask=mask)
    tl.store(DST_B + base + offs, s_b / n, mask=mask)


@triton.jit
def _source(dst, size, scale):
    """torch's bilinear align_corners=True source of output indices ``dst``: index0, index1, lambda1."""
    src = dst.to(tl.float32) * scale
    i0 = tl.minimum(tl.floor(src).to(tl.int32), size - 1)
    lam = tl.minimum(tl.maximum(src - i0.to(tl.float32), 0.0), 1.0)
    i1 = i0 + (i0 < size - 1).to(tl.int32)
    return i0, i1, lam


@triton.jit
def _bilinear(base, i0, i1, ly, j0, j1, lx, w, mask):
    """Interpolated values of the low-res map at ``base`` (row width w), in torch's order of operations."""
    v00 = tl.load(base + i0[:, None] * w + j0[None, :], mask=mask, other=0.0)
    v01 = tl.load(base + i0[:, None] * w + j1[None, :], mask=mask, other=0.0)
    v10 = tl.load(base + i1[:, None] * w + j0[None, :], mask=mask, other=0.0)
    v11 = tl.load(base + i1[:, None] * w + j1[None, :], mask=mask, other=0.0)
    wx0, wx1 = (1.0 - lx)[None, :], lx[None, :]
    return (1.0 - ly)[:, None] * (wx0 * v00 + wx1 * v01) + ly[:, None] * (wx0 * v10 + wx1 * v11)


@triton.jit
def _apply_kernel(MA, MB, F, OUT, C, h, w, H, W, sf_b, sf_c, scale_y, scale_x,
                  BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pt, bc = tl.program_id(0), tl.program_id(1)
    b, c = bc // C, bc % C
    rows, cols, offs, mask = _tile(pt, H, W, BLOCK_H, BLOCK_W)
    i0, i1, ly = _source(rows, h, scale_y)
    j0, j1, lx = _source(cols, w, scale_x)
    low = bc.to(tl.int64) * h * w
    up_a = _bilinear(MA + low, i0, i1, ly, j0, j1, lx, w, mask)
    up_b = _bilinear(MB + low, i0, i1, ly, j0, j1, lx, w, mask)
    f = tl.load(F + b.to(tl.int64) * sf_b + c * sf_c + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + bc.to(tl.int64) * H * W + offs, (up_a * f + up_b).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _scatter(base, i0, i1, ly, j0, j1, lx, w, value, mask):
    """Add ``value`` to the four corners it was interpolated from, with the interpolation weights (the transpose
    of :func:`_bilinear`)."""
    top, bottom = value * (1.0 - ly)[:, None], value * ly[:, None]
    wx0, wx1 = (1.0 - lx)[None, :], lx[None, :]
    tl.atomic_add(base + i0[:, None] * w + j0[None, :], top * wx0, mask=mask, sem="relaxed")
    tl.atomic_add(base + i0[:, None] * w + j1[None, :], top * wx1, mask=mask, sem="relaxed")
    tl.atomic_add(base + i1[:, None] * w + j0[None, :], bottom * wx0, mask=mask, sem="relaxed")
    tl.atomic_add(base + i1[:, None] * w + j1[None, :], bottom * wx1, mask=mask, sem="relaxed")


@triton.jit
def _apply_backward_kernel(MA, F, DOUT, DF, DMA, DMB, C, CX, h, w, H, W, scale_y, scale_x,
                           BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pt, bx = tl.program_id(0), tl.program_id(1)
    b, cx = bx // CX, bx % CX
    per_guide = C // CX  # target channels each guide channel serves: 1, or all C for a one-channel guide
    rows, cols, offs, mask = _tile(pt, H, W, BLOCK_H, BLOCK_W)
    i0, i1, ly = _source(rows, h, scale_y)
    j0, j1, lx = _source(cols, w, scale_x)
    f = tl.load(F + bx.to(tl.int64) * H * W + offs, mask=mask, other=0.0).to(tl.float32)
    df = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    for k in range(0, per_guide):
        bc = b * C + cx * per_guide + k
        low = bc.to(tl.int64) * h * w
        g = tl.load(DOUT + bc.to(tl.int64) * H * W + offs, mask=mask, other=0.0).to(tl.float32)
        df += g * _bilinear(MA + low, i0, i1, ly, j0, j1, lx, w, mask)
        _scatter(DMA + low, i0, i1, ly, j0, j1, lx, w, g * f, mask)
        _scatter(DMB + low, i0, i1, ly, j0, j1, lx, w, g, mask)
    tl.store(DF + bx.to(tl.int64) * H * W + offs, df.to(DF.dtype.element_ty), mask=mask)


class Tiling:
    """Tiling of one call: 2-D tiles of the low-res (h, w) and high-res (H, W) maps, clipped window radii and the
    interpolation scales."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, radius: int):
        self.B, self.CX, self.h, self.w = x.shape
        self.C = y.shape[1]
        self.H, self.W = f.shape[-2:]
        # a window larger than the map is the whole map
        self.ry, self.rx = min(radius, self.h - 1), min(radius, self.w - 1)
        self.low = self._blocks(self.h, self.w)
        self.high = self._blocks(self.H, self.W)
        # torch's align_corners=True scale: (in - 1) / (out - 1), 0 for a one-pixel output
        self.scale_y = (self.h - 1) / (self.H - 1) if self.H > 1 else 0.0
        self.scale_x = (self.w - 1) / (self.W - 1) if self.W > 1 else 0.0

    @staticmethod
    def _blocks(h: int, w: int) -> tuple[int, int, int]:
        bw = min(BLOCK_W, next_power_of_2(w))
        bh = min(max(1, BLOCK_H * BLOCK_W // 4 // bw), next_power_of_2(h))
        return bh, bw, cdiv(h, bh) * cdiv(w, bw)

    def meta(self, high: bool) -> dict:
        bh, bw, _ = self.high if high else self.low
        return dict(BLOCK_H=bh, BLOCK_W=bw, num_warps=4)

    def grid(self, high: bool, planes: int) -> tuple[int, int]:
        return (self.high if high else self.low)[2], planes


def _channel_strides(t: torch.Tensor) -> tuple[int, int]:
    """(sample, channel) strides of a contiguous map, the channel stride 0 for one channel broadcast to all."""
    return t.stride(0), (t.stride(1) if t.shape[1] > 1 else 0)


@on_tensor_device
def forward(x, y, a, f, radius, eps):
    """x (B, C_x, h, w), y (B, C, h, w), a (B, C_a, h, w) raw weights, f (B, C_x, H, W), contiguous, each
    float32, float16 or bfloat16 (read in its own dtype).

    Returns out (B, C, H, W) in the inputs' (promoted) dtype and the box means of A and b, (B, C, h, w) float32.
    """
    t = Tiling(x, y, f, radius)
    total = (a.float().abs() + WEIGHT_FLOOR).sum(dim=(1, 2, 3))  # (B,) the per-sample weight total
    coef_a, coef_b, mean_a, mean_b = (y.new_empty(y.shape, dtype=torch.float32) for _ in range(4))
    _coefficients_kernel[t.grid(False, t.B * t.C)](x, y, a, total, coef_a, coef_b, t.C, t.h, t.w,
                                                    *_channel_strides(x), *_channel_strides(a), float(eps),
                                                    RY=t.ry, RX=t.rx, **t.meta(False))
    _box_mean_kernel[t.grid(False, t.B * t.C)](coef_a, coef_b, mean_a, mean_b, t.h, t.w, RY=t.ry, RX=t.rx,
                                                **t.meta(False))
    out = y.new_empty(t.B, t.C, t.H, t.W, dtype=output_dtype(x, y, a, f))
    _apply_kernel[t.grid(True, t.B * t.C)](mean_a, mean_b, f, out, t.C, t.h, t.w, t.H, t.W, *_channel_strides(f),
                                           t.scale_y, t.scale_x, **t.meta(True))
    return out, mean_a, mean_b


def coefficients_backward(x, y, a, g_mean_a, g_mean_b, radius, eps):
    """Gradients of x, y and the raw weights a from those of the box means of A and b: the low-res part of the
    backward, in float32 torch ops (box sums as in the reference, so the sign of |.| is the reference's)."""
    dtypes = x.dtype, y.dtype, a.dtype
    x, y, w_raw = x.float(), y.float(), a.float()
    a = w_raw.abs() + WEIGHT_FLOOR
    total = a.sum(dim=(1, 2, 3), keepdim=True)
    n = window_count(*x.shape[-2:], radius, x)

    def box(v):  # the window sum, its own transpose
        return box_mean(v, radius) * n

    ax, ay = a * x, a * y
    mean_a, mean_ax, mean_ay = box(a) / n, box(ax) / n, box(ay) / n
    sum_tax = box(ax * a) / total
    num = box(ax * ay) / n - sum_tax * mean_ay
    inner = box(ax * ax) / n - sum_tax * mean_ax
    den = inner.abs() + eps
    slope = num / den
    offset = (mean_ay - slope * mean_ax) / mean_a

    g_offset = box(g_mean_b / n)
    g_slope = box(g_mean_a / n) - g_offset * mean_ax / mean_a
    g_mean_ay = g_offset / mean_a
    g_mean_ax = -g_offset * slope / mean_a
    g_mean_a_ = -g_offset * offset / mean_a
    g_num = g_slope / den
    g_inner = -g_slope * slope / den * inner.sign()
    g_sum_tax = -g_num * mean_ay - g_inner * mean_ax
    g_mean_ay = g_mean_ay - g_num * sum_tax
    g_mean_ax = g_mean_ax - g_inner * sum_tax
    # per-pixel gradients of the six products a, a x, a y, a^2 x y, a^2 x^2, a^2 x / total
    p_a, p_ax, p_ay = box(g_mean_a_ / n), box(g_mean_ax / n), box(g_mean_ay / n)
    p_a2xy, p_a2x2, p_tax = box(g_num / n), box(g_inner / n), box(g_sum_tax) / total
    g_a = p_a + p_ax * x + p_ay * y + 2 * p_a2xy * ax * y + 2 * p_a2x2 * ax * x + 2 * p_tax * ax
    g_x = p_ax * a + p_a2xy * a * ay + 2 * p_a2x2 * a * ax + p_tax * a * a
    g_y = p_ay * a + p_a2xy * a * ax
    g_total = -(p_tax * ax * a).sum(dim=(1, 2, 3), keepdim=True) / total
    g_a = _sum_to(g_a, w_raw.shape) + g_total
    grads = _sum_to(g_x, x.shape), g_y, g_a * w_raw.sign()
    return tuple(g.to(dtype) for g, dtype in zip(grads, dtypes, strict=True))


def _sum_to(t: torch.Tensor, shape) -> torch.Tensor:
    return t.sum(dim=1, keepdim=True) if shape[1] != t.shape[1] else t


@on_tensor_device
def backward(grad_out, x, y, a, f, mean_a, mean_b, radius, eps):
    """Gradients (dx, dy, da, df) in the inputs' dtype from dout (B, C, H, W) contiguous and the saved inputs and
    box means."""
    t = Tiling(x, y, f, radius)
    g_mean_a = torch.zeros_like(mean_a)
    g_mean_b = torch.zeros_like(mean_b)
    df = torch.empty_like(f)
    _apply_backward_kernel[t.grid(True, t.B * t.CX)](mean_a, f, grad_out, df, g_mean_a, g_mean_b, t.C, t.CX, t.h,
                                                     t.w, t.H, t.W, t.scale_y, t.scale_x, **t.meta(True))
    dx, dy, da = coefficients_backward(x, y, a, g_mean_a, g_mean_b, radius, eps)
    return dx, dy, da, df
