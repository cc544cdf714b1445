"""Spatial layout helpers shared by the blocks and the backbones: padding to a multiple, window tiling with edge
remainders, and CSWin's stripe partition."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

STRIPE_MODES = ("global", "vertical", "horizontal")


@register_notrace_function
def pad_to_multiple(x: torch.Tensor, multiple: int | tuple[int, int], channels_last: bool = False) -> torch.Tensor:
    """Zero-pad the bottom and right of a map to sides that are multiples of ``multiple`` (one int for both sides,
    or (height, width)). Shapes: (B, C, H, W), or (B, H, W, C) when ``channels_last`` -> the same with padded
    H, W; ``x`` itself when nothing is padded, except while ``torch.export`` traces: then the pad (maybe by 0) is
    always in the graph, which so takes any size."""
    mult_h, mult_w = (multiple, multiple) if isinstance(multiple, int) else multiple
    h, w = x.shape[1:3] if channels_last else x.shape[-2:]
    pad_h, pad_w = -h % mult_h, -w % mult_w
    if not (torch.compiler.is_exporting() or pad_h or pad_w):
        return x
    return F.pad(x, (0, 0, 0, pad_w, 0, pad_h) if channels_last else (0, pad_w, 0, pad_h))


def _spans(length: int, window: int) -> list[tuple[int, int, int]]:
    """(start, stop, window side) of the full windows of a side and of its remainder, if any."""
    full = length // window * window
    spans = [(0, full, window)] if full else []
    return spans + [(full, length, length - full)] if length > full else spans


def window_span(position: int, length: int, window: int) -> tuple[int, int]:
    """(start, stop) along a side of ``length`` of the :func:`window_apply` window that holds ``position``."""
    for start, stop, side in _spans(length, window):
        if position < stop:
            first = start + (position - start) // side * side
            return first, first + side
    raise ValueError(f"position {position} lies outside a side of {length}")


def window_apply(x: torch.Tensor, window: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply ``fn`` to (B * n, wh, ww, C) batches of the window x window tiles of a (B, H, W, C) map, tiled from
    the top-left; bottom and right remainders form smaller windows, so every window holds real tokens only.
    ``fn`` keeps its input's shape; the result is the (B, H, W, C) map of its outputs."""
    b, h, w, c = x.shape
    if h <= window and w <= window:
        return fn(x)
    rows = []
    for r0, r1, wh in _spans(h, window):
        cols = []
        for c0, c1, ww in _spans(w, window):
            nh, nw = (r1 - r0) // wh, (c1 - c0) // ww
            tiles = x[:, r0:r1, c0:c1].reshape(b, nh, wh, nw, ww, c).transpose(2, 3).reshape(-1, wh, ww, c)
            out = fn(tiles).reshape(b, nh, nw, wh, ww, c).transpose(2, 3).reshape(b, r1 - r0, c1 - c0, c)
            cols.append(out)
        rows.append(torch.cat(cols, dim=2))
    return torch.cat(rows, dim=1)


def stripe_partition(x: torch.Tensor, mode: str, split: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * n, wh, ww, C) windows, stripe-major per image: the whole map (``'global'``), vertical
    stripes H x ``split`` (``'vertical'``) or horizontal ones ``split`` x W (``'horizontal'``), the split side
    zero-padded to a multiple of ``split``. Returns the windows and the (rows, columns) of stripes per image."""
    b, h, w, c = x.shape
    if mode == "global":
        return x, (1, 1)
    if mode == "vertical":
        x = pad_to_multiple(x, (1, split), channels_last=True)
        n = x.shape[2] // split
        return x.reshape(b, h, n, split, c).transpose(1, 2).reshape(b * n, h, split, c), (1, n)
    x = pad_to_multiple(x, (split, 1), channels_last=True)
    n = x.shape[1] // split
    return x.reshape(b * n, split, w, c), (n, 1)


def stripe_reverse(windows: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`stripe_partition`: (B * n, wh, ww, C) windows on a (rows, columns) ``grid`` -> the
    (B, H, W, C) map of ``size`` (H, W), padding dropped."""
    n_rows, n_cols = grid
    _, wh, ww, c = windows.shape
    x = windows.reshape(-1, n_rows, n_cols, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, n_rows * wh, n_cols * ww, c)[:, :size[0], :size[1]]
