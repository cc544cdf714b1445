"""Gated CNN block (MambaOut, Yu & Wang, CVPR 2025): Mamba's gated skeleton with a depthwise conv as token mixer."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import DropPath


class GatedCNNBlock(nn.Module):
    """Y = X + DropPath(W_3 (GELU(X' W_g) ⊙ [X' W_i, DWConv_{k x k}(X' W_c)])),  X' = LN(X).

    One Linear(C, 2h) gives the gate g (h channels), the identity part i (h - c_conv) and the conv part c
    (c_conv = conv_ratio * C); h = expansion_ratio * C (8/3 in MambaOut). Shapes: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, dim: int, expansion_ratio: float = 8 / 3, conv_ratio: float = 1.0, kernel_size: int = 7,
                 drop_path: float = 0.0):
        super().__init__()
        hidden = int(expansion_ratio * dim)
        conv_channels = int(conv_ratio * dim)
        if conv_channels > hidden:
            raise ValueError(f"conv_ratio * dim = {conv_channels} exceeds the hidden width {hidden}")
        self.split = (hidden, hidden - conv_channels, conv_channels)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.act = nn.GELU()
        self.conv = nn.Conv2d(conv_channels, conv_channels, kernel_size, padding=kernel_size // 2,
                              groups=conv_channels)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, i, c = self.fc1(self.norm(x)).split(self.split, dim=-1)
        c = self.conv(c.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.drop_path(self.fc2(self.act(g) * torch.cat((i, c), dim=-1)))
