"""Independent, deliberately naive definitions that the package's code is tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def region_of(h: int, w: int, n_win: int) -> torch.Tensor:
    """(h*w,) region id of each token of an h x w map (h, w divisible by n_win), row-major regions."""
    rows = torch.arange(h)[:, None] // (h // n_win)
    cols = torch.arange(w)[None, :] // (w // n_win)
    return (rows * n_win + cols).reshape(-1)


def dense_routed_attention(q, k, v, num_heads, n_win, topk, scale):
    """Bi-level routing attention as dense masked attention over the whole (padded) map.

    q, k: (B, H, W, Cqk), v: (B, H, W, Cv). Routing uses avg-pooled region descriptors.
    """
    b, h, w, _ = q.shape
    ph, pw = -h % n_win, -w % n_win
    q, k, v = (F.pad(t, (0, 0, 0, pw, 0, ph)) for t in (q, k, v))
    hp, wp = h + ph, w + pw

    def pool(t):
        return F.avg_pool2d(t.permute(0, 3, 1, 2), (hp // n_win, wp // n_win)).flatten(2).transpose(1, 2)

    with torch.no_grad():
        logits = (pool(q) * scale) @ pool(k).transpose(1, 2)
        idx = logits.topk(topk, dim=-1).indices  # (B, R, topk)
    region = region_of(hp, wp, n_win)
    allowed = torch.zeros(b, n_win * n_win, n_win * n_win, dtype=torch.bool)
    allowed.scatter_(2, idx, True)
    mask = allowed[:, region][:, :, region]  # (B, N, N): query token i may see key token j

    def heads(t):
        return t.reshape(b, hp * wp, num_heads, -1).transpose(1, 2)

    logits = (heads(q) @ heads(k).transpose(-2, -1)) * scale
    logits = logits.masked_fill(~mask[:, None], float("-inf"))
    out = logits.softmax(-1) @ heads(v)
    out = out.transpose(1, 2).reshape(b, hp, wp, -1)
    return out[:, :h, :w]
