"""(Shifted) window attention with a relative position bias (Swin; the attention half of LaMamba's block)."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import register_notrace_module, trunc_normal_

from ..ops.window_attention import window_attention


@register_notrace_module
class WindowAttention(nn.Module):
    """O = W_o softmax(Q K^T / sqrt(d) + B_rel + M_shift) V inside window_size x window_size windows.

    ``shift`` rolls the map by half a window (Swin's SW-MSA) when the map is larger than one window. Any H, W
    (padded tokens are masked). Shapes: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift: bool = False,
                 backend: str | None = None, device=None, dtype=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        dd = dict(device=device, dtype=dtype)
        self.num_heads, self.window_size, self.shift, self.backend = num_heads, window_size, shift, backend
        self.qkv = nn.Linear(dim, 3 * dim, **dd)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_heads, (2 * window_size - 1) ** 2, **dd))
        self.proj = nn.Linear(dim, dim, **dd)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        shift = self.window_size // 2 if self.shift and min(h, w) > self.window_size else 0
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        out = window_attention(q, k, v, self.num_heads, self.window_size, shift, self.relative_position_bias_table,
                               backend=self.backend)
        return self.proj(out)
