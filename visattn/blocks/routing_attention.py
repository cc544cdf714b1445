"""Bi-level routing attention module (BiFormer, CVPR 2023)."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import register_notrace_module

from ..contract import InspectionMap, query_cell
from ..ops import exported_crop
from ..ops.routed_attention import check_routing_args, route_regions, routed_attention
from .spatial import pad_to_multiple


@register_notrace_module
class BiLevelRoutingAttention(nn.Module):
    """BRA with a local context enhancement (LCE) term, on channels-last maps.

    [Q | K | V] = X W_qkv;  O = W_o (BRA(Q, K, V) + DWConv_{k x k}(V)),
    with BRA the routed attention of :func:`visattn.ops.routed_attention.routed_attention` and the
    logit scale qk_dim ** -0.5 of the official code. An input whose sides are not multiples of
    ``n_win`` is zero-padded before the projection and cropped after it, as the official ``auto_pad``.

    Shapes: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, dim: int, num_heads: int, n_win: int, topk: int, qk_dim: int | None = None,
                 lce_kernel: int = 5, backend: str | None = None, device=None, dtype=None):
        super().__init__()
        check_routing_args(n_win, topk)
        self.qk_dim = qk_dim or dim
        if num_heads < 1 or self.qk_dim % num_heads or dim % num_heads:
            raise ValueError(f"dim={dim} and qk_dim={self.qk_dim} must be divisible by num_heads={num_heads}")
        self.dim, self.num_heads, self.n_win, self.topk = dim, num_heads, n_win, topk
        self.scale = self.qk_dim ** -0.5
        self.backend = backend
        dd = dict(device=device, dtype=dtype)
        self.qkv = nn.Linear(dim, 2 * self.qk_dim + dim, **dd)
        self.lepe = nn.Conv2d(dim, dim, lce_kernel, padding=lce_kernel // 2, groups=dim, **dd)
        self.proj = nn.Linear(dim, dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        x = pad_to_multiple(x, self.n_win, channels_last=True)
        q, k, v = self.qkv(x).split([self.qk_dim, self.qk_dim, self.dim], dim=-1)
        out = routed_attention(q, k, v, self.num_heads, self.n_win, self.topk, self.scale, self.backend)
        out = out + self.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        out = self.proj(out)
        if torch.compiler.is_exporting():  # the exported graph crops any size
            return exported_crop(out, h, w)
        if out.shape[1:3] != (h, w):
            out = out[:, :h, :w].contiguous()
        return out

    def inspect_forward(self, x: torch.Tensor, *, query: tuple[float, float]) -> InspectionMap:
        """The contract's ``routing`` map: the key regions every query region routes to in :meth:`forward` on ``x``
        (the same region-level top-k, :func:`~visattn.ops.routed_attention.route_regions`), and the query's region."""
        h, w = x.shape[1:3]
        x = pad_to_multiple(x, self.n_win, channels_last=True)
        q, k, _ = self.qkv(x).split([self.qk_dim, self.qk_dim, self.dim], dim=-1)
        regions = route_regions(q, k, self.n_win, self.topk, self.scale)
        size = (x.shape[1] // self.n_win, x.shape[2] // self.n_win)
        cell = query_cell(query, (h, w))
        region = cell[0] // size[0] * self.n_win + cell[1] // size[1]
        return InspectionMap("routing", {"regions": regions, "query_region": region, "n_win": self.n_win,
                                         "region_size": size}, (h, w), cell)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, n_win={self.n_win}, topk={self.topk}"
