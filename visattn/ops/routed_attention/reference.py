"""Plain-PyTorch bi-level routing attention: the definition of correct for every backend."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._export import exported_crop


def region_means(x: torch.Tensor, n_win: int) -> torch.Tensor:
    """Mean of each of the n_win x n_win regions of a map zero-padded at the bottom/right to a multiple of n_win.

    x: (B, H, W, C), any H, W (an empty map is all padding: every mean is 0). Returns (B, n_win**2, C), regions in
    row-major order.
    """
    b, h, w, c = x.shape
    if h == 0 or w == 0:
        return x.new_zeros(b, n_win * n_win, c)
    rh, rw = -(-h // n_win), -(-w // n_win)
    if torch.compiler.is_exporting():  # a pooling window is no symbolic size: the same means as region sums
        x = F.pad(x, (0, 0, 0, n_win * rw - w, 0, n_win * rh - h))
        sums = x.view(b, n_win, rh, n_win, rw, c).sum(dim=(2, 4))
        return (sums / (rh * rw)).flatten(1, 2)
    means = F.avg_pool2d(x.permute(0, 3, 1, 2), (rh, rw), ceil_mode=True, divisor_override=rh * rw)
    means = F.pad(means, (0, n_win - means.shape[-1], 0, n_win - means.shape[-2]))
    return means.flatten(2).transpose(1, 2)


@torch.no_grad()
def route_regions(q: torch.Tensor, k: torch.Tensor, n_win: int, topk: int, scale: float) -> torch.Tensor:
    """Region-level routing: I^r = topk((s * Q^r) (K^r)^T), with Q^r, K^r the region means of q, k.

    q, k: (B, H, W, C_qk), any H, W (zero-padded regions). The means keep the maps' dtype; the scores are float32
    and equal scores are taken lowest region index first (a stable order, which the fused kernels share). Returns
    int64 indices (B, n_win**2, topk): for each query region, the key regions it attends to. No gradient flows
    through the routing, as in the official code.
    """
    q_r = region_means(q, n_win).float()
    k_r = region_means(k, n_win).float()
    logits = (q_r * scale) @ k_r.transpose(-2, -1)
    return logits.sort(dim=-1, descending=True, stable=True).indices[..., :topk]


def to_regions(x: torch.Tensor, n_win: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, n_win**2, H*W/n_win**2, C): tokens grouped by region, row-major in both. Always a copy
    (a reshape would be a view where a region is one token row, and torch.export would fix the size to keep it so)."""
    b, h, w, c = x.shape
    rh, rw = h // n_win, w // n_win
    x = x.view(b, n_win, rh, n_win, rw, c).permute(0, 1, 3, 2, 4, 5)
    return x.clone(memory_format=torch.contiguous_format).view(b, n_win * n_win, rh * rw, c)


def from_regions(x: torch.Tensor, n_win: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`to_regions`: (B, n_win**2, h*w/n_win**2, C) -> (B, h, w, C)."""
    b, _, _, c = x.shape
    rh, rw = h // n_win, w // n_win
    x = x.view(b, n_win, n_win, rh, rw, c).permute(0, 1, 3, 2, 4, 5)
    return x.clone(memory_format=torch.contiguous_format).view(b, h, w, c)


def routed_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, n_win: int,
                               topk: int, scale: float) -> torch.Tensor:
    """Bi-level routing attention: :func:`route_regions`, then :func:`attend_routed_regions`."""
    return attend_routed_regions(q, k, v, route_regions(q, k, n_win, topk, scale), num_heads, n_win, scale)


def attend_routed_regions(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, region_idx: torch.Tensor, num_heads: int, n_win: int,
    scale: float,
) -> torch.Tensor:
    """Token attention of each region's queries over the tokens of its routed regions.

    q, k: (B, H, W, C_qk); v: (B, H, W, C_v); region_idx: (B, n_win**2, topk). Maps whose sides are not
    multiples of n_win are zero-padded at the bottom/right (padded keys take part, with zero k and v)
    and the output is cropped back.
    Returns (B, H, W, C_v): O_i = softmax(s q_i K_g^T) V_g per head, K_g, V_g the gathered tokens.
    """
    h_in, w_in = q.shape[1:3]
    pad_h, pad_w = -h_in % n_win, -w_in % n_win
    exporting = torch.compiler.is_exporting()  # the exported graph pads (maybe by 0) and crops any size
    padded = exporting or bool(pad_h or pad_w)
    if padded:
        q, k, v = (F.pad(t, (0, 0, 0, pad_w, 0, pad_h)) for t in (q, k, v))
    b, h, w, c_qk = q.shape
    c_v = v.shape[-1]
    regions, topk = region_idx.shape[1:]
    q_r, k_r, v_r = (to_regions(t, n_win) for t in (q, k, v))
    tokens = q_r.shape[2]
    gather_idx = region_idx[..., None, None]

    def gather(t: torch.Tensor) -> torch.Tensor:
        c = t.shape[-1]
        picked = torch.gather(
            t[:, None].expand(-1, regions, -1, -1, -1), 2, gather_idx.expand(-1, -1, -1, tokens, c)
        )
        return picked.view(b * regions, topk * tokens, num_heads, c // num_heads).transpose(1, 2)

    q_h = q_r.reshape(b * regions, tokens, num_heads, c_qk // num_heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(q_h, gather(k_r), gather(v_r), scale=scale)
    out = out.transpose(1, 2).reshape(b, regions, tokens, c_v)
    out = from_regions(out, n_win, h, w)
    if exporting:
        return exported_crop(out, h_in, w_in)
    return out[:, :h_in, :w_in].contiguous() if padded else out
