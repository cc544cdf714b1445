"""Plain-PyTorch (shifted) window attention: the definition of correct for every backend."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._export import exported_crop


def relative_position_index(window_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(ws*ws, ws*ws) int64 index into a ((2*ws-1)**2)-entry bias table for every (query, key) pair of a window.

    Tokens are row-major inside the window; for query (y_i, x_i) and key (y_j, x_j) the index is
    (y_i - y_j + ws - 1) * (2*ws - 1) + (x_i - x_j + ws - 1).
    """
    ws = window_size
    ty, tx = (c.reshape(-1) for c in torch.meshgrid(torch.arange(ws, device=device), torch.arange(ws, device=device),
                                                    indexing="ij"))
    return (ty[:, None] - ty[None, :] + ws - 1) * (2 * ws - 1) + (tx[:, None] - tx[None, :] + ws - 1)


def window_mask(h: int, w: int, window_size: int, shift: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(num_windows, ws*ws, ws*ws) bool: query i of a window may attend to key j of the same window.

    For an h x w map zero-padded to hp x wp (multiples of ws) and rolled by (-shift, -shift): key j is a real
    token (not padding) and, with shift > 0, lies in the same region as query i, the regions being the 3 x 3
    split of the rolled map by the slices [0, hp - ws), [hp - ws, hp - shift), [hp - shift, hp) per axis.
    """
    ws = window_size
    hp, wp = h + (-h % ws), w + (-w % ws)

    def regions(n: int) -> torch.Tensor:
        pos = torch.arange(n, device=device)
        return (pos >= n - ws).long() + (pos >= n - shift).long() if shift else torch.zeros_like(pos)

    label = regions(hp)[:, None] * 3 + regions(wp)[None, :]
    real = torch.zeros(hp, wp, dtype=torch.bool, device=device)
    real[:h, :w] = True
    real = torch.roll(real, (-shift, -shift), (0, 1))
    label, real = (to_windows(t[None, :, :, None], ws).reshape(-1, ws * ws) for t in (label, real))
    return (label[:, :, None] == label[:, None, :]) & real[:, None, :]


def to_windows(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, num_windows, ws*ws, C), H and W multiples of ws; windows and tokens row-major."""
    b, h, w, c = x.shape
    ws = window_size
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // ws) * (w // ws), ws * ws, c)


def from_windows(x: torch.Tensor, window_size: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`to_windows`: (B, num_windows, ws*ws, C) -> (B, h, w, C)."""
    b, _, _, c = x.shape
    ws = window_size
    x = x.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def window_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos_bias: torch.Tensor | None, num_heads: int,
    window_size: int, shift: int, scale: float,
) -> torch.Tensor:
    """Pad, roll, partition, masked softmax attention per window and head, merge, roll back, crop.

    q, k: (B, H, W, C_qk); v: (B, H, W, C_v); rel_pos_bias: (heads, (2*ws-1)**2) or None.
    Returns (B, H, W, C_v): O_i = softmax_j(s q_i k_j^T + bias[rel(i, j)], masked by :func:`window_mask`) V.
    """
    h, w = q.shape[1:3]
    ws = window_size
    pad_h, pad_w = -h % ws, -w % ws
    exporting = torch.compiler.is_exporting()  # the exported graph pads (maybe by 0) and crops any size
    padded = exporting or bool(pad_h or pad_w)
    if padded:
        q, k, v = (F.pad(t, (0, 0, 0, pad_w, 0, pad_h)) for t in (q, k, v))
    if shift:
        q, k, v = (torch.roll(t, (-shift, -shift), (1, 2)) for t in (q, k, v))
    b, hp, wp, c_v = v.shape

    def heads(t: torch.Tensor) -> torch.Tensor:  # (B, nW, heads, ws*ws, d)
        windows = to_windows(t, ws)
        return windows.view(*windows.shape[:3], num_heads, -1).transpose(2, 3)

    logits = (heads(q) @ heads(k).transpose(-2, -1)) * scale
    if rel_pos_bias is not None:
        logits = logits + rel_pos_bias[:, relative_position_index(ws, q.device)]
    allowed = window_mask(h, w, ws, shift, q.device)[:, None]
    logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
    attn = logits.softmax(-1).to(v.dtype)
    out = (attn @ heads(v)).transpose(2, 3).reshape(b, -1, ws * ws, c_v)
    out = from_windows(out, ws, hp, wp)
    if shift:
        out = torch.roll(out, (shift, shift), (1, 2))
    if exporting:
        return exported_crop(out, h, w)
    return out[:, :h, :w].contiguous() if padded else out
