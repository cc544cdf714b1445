"""Global multi-head self-attention with a locally-enhanced positional term (LePE)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module


@register_notrace_module
class LePEAttention(nn.Module):
    """O = W_o (softmax(Q K^T / sqrt(d)) V + DWConv_{k x k}(S)), over all H*W tokens.

    The positional term convolves S = the attention input X (``lepe_source='input'``, BiFormer's stage-4
    ``AttentionLePE``) or S = V (``'value'``, BiFormer-STL-nchw's).
    Shapes: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, lepe_kernel: int = 5,
                 lepe_source: str = "input", device=None, dtype=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        if lepe_source not in ("input", "value"):
            raise ValueError(f"lepe_source={lepe_source!r} is not 'input' or 'value'")
        dd = dict(device=device, dtype=dtype)
        self.num_heads, self.lepe_source = num_heads, lepe_source
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.lepe = nn.Conv2d(dim, dim, lepe_kernel, padding=lepe_kernel // 2, groups=dim, **dd)
        self.proj = nn.Linear(dim, dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        qkv = self.qkv(x)
        q, k, v = qkv.view(b, h * w, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h, w, c)
        source = x if self.lepe_source == "input" else qkv[..., 2 * c:]
        out = out + self.lepe(source.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj(out)
