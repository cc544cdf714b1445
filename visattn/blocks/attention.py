"""Global multi-head self-attention with a locally-enhanced positional term (LePE)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LePEAttention(nn.Module):
    """O = W_o (softmax(Q K^T / sqrt(d)) V + DWConv_{k x k}(X)), over all H*W tokens.

    The positional term convolves the attention *input* X (BiFormer's stage-4 ``AttentionLePE``).
    Shapes: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, lepe_kernel: int = 5, device=None,
                 dtype=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        dd = dict(device=device, dtype=dtype)
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.lepe = nn.Conv2d(dim, dim, lepe_kernel, padding=lepe_kernel // 2, groups=dim, **dd)
        self.proj = nn.Linear(dim, dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        qkv = self.qkv(x).view(b, h * w, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        out = out.transpose(1, 2).reshape(b, h, w, c)
        out = out + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj(out)
