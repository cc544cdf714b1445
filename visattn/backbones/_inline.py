"""What the InLine families (``inline_deit``, ``inline_swin``, ``inline_pvt``, ``inline_cswin``) share: the block
on (B, H, W, C) maps of InLine-Swin and InLine-PVT, the pretrained cfg and the variant factory.

InLine: Bridging the Divide: Reconsidering Softmax and Linear Attention (Han et al., NeurIPS 2024). Weights:
LeapLabTHU/InLine (TsinghuaCloud links); that repository has no LICENSE file (its Swin- and timm-derived files
keep their MIT headers), so the weights' terms are unknown.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, register_notrace_module

from ..blocks import InjectiveLinearAttention, WindowAttention, window_apply, window_span
from ..contract import InspectionMap, query_cell
from ._helpers import create_model

TSINGHUA_URL = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"


def inline_query_map(rows: torch.Tensor, share: torch.Tensor, grid: tuple[int, int], cell: tuple[int, int],
                     prefix: int = 0, window: tuple[tuple[int, int], tuple[int, int]] | None = None) -> InspectionMap:
    """The contract's ``query_attention`` map of an InLine query: ``rows`` (B, heads, P + n) its weights over the P
    prefix tokens and the n tokens of its ``window`` ((row start, stop), (column start, stop); the whole ``grid``
    when None), ``share`` (B,) its local residual's share."""
    b, heads = rows.shape[:2]
    (r0, r1), (c0, c1) = window or ((0, grid[0]), (0, grid[1]))
    weights = rows.new_zeros(b, heads, *grid)
    weights[:, :, r0:r1, c0:c1] = rows[:, :, prefix:].reshape(b, heads, r1 - r0, c1 - c0)
    return InspectionMap("query_attention", {"weights": weights, "prefix_weights": rows[:, :, :prefix],
                                             "local_share": share}, tuple(grid), cell)


@register_notrace_module
class InLineMapBlock(nn.Module):
    """X = X + DropPath(Attn(LN(X))); X = X + DropPath(MLP(LN(X))) on (B, H, W, C) maps.

    Attn is InLine inside ``inline_window``-sided windows (:func:`visattn.blocks.window_apply`; over the whole map
    when None) when ``inline``, else Swin's (shifted) window softmax attention with a relative position bias in
    ``window_size`` windows.
    """

    def __init__(self, dim: int, num_heads: int, inline: bool, window_size: int = 7, shift: bool = False,
                 inline_window: int | None = 56, mlp_ratio: float = 4.0, drop_path: float = 0.0, eps: float = 1e-5,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.inline_window = inline_window
        self.norm1 = nn.LayerNorm(dim, eps=eps, **dd)
        if inline:
            self.attn = InjectiveLinearAttention(dim, num_heads, **dd)
        else:
            self.attn = WindowAttention(dim, num_heads, window_size, shift, **dd)
        self.norm2 = nn.LayerNorm(dim, eps=eps, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _inline(self, tiles: torch.Tensor) -> torch.Tensor:
        n, h, w, c = tiles.shape
        return self.attn(tiles.reshape(n, h * w, c), (h, w)).reshape(n, h, w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if isinstance(self.attn, InjectiveLinearAttention) and self.inline_window is None:
            y = self._inline(y)
        elif isinstance(self.attn, InjectiveLinearAttention):
            y = window_apply(y, self.inline_window, self._inline)
        else:
            y = self.attn(y)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def inspect_forward(self, x: torch.Tensor, *, query: tuple[float, float]) -> InspectionMap | None:
        """An InLine block's ``query_attention`` map: the query's weights over its InLine window (0 elsewhere) and
        its local residual's share; None for a softmax window block."""
        if not isinstance(self.attn, InjectiveLinearAttention):
            return None
        b, h, w, c = x.shape
        cell = query_cell(query, (h, w))
        if self.inline_window is None:
            window = ((0, h), (0, w))
        else:
            window = tuple(window_span(p, n, self.inline_window) for p, n in zip(cell, (h, w), strict=True))
        (r0, r1), (c0, c1) = window
        tile = self.norm1(x)[:, r0:r1, c0:c1].reshape(b, -1, c)
        rows, share = self.attn.query_attention(tile, (r1 - r0, c1 - c0), (cell[0] - r0) * (c1 - c0) + cell[1] - c0)
        return inline_query_map(rows, share, (h, w), cell, window=window)


def inline_cfg(url: str = "", **kwargs) -> dict:
    """The pretrained cfg of an InLine variant (a pyramid model's unless ``kwargs`` say otherwise)."""
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "crop_mode": "squash", "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "first_conv": "stem.proj",
        "classifier": "head.fc", "license": "unknown: LeapLabTHU/InLine has no LICENSE file",
        "paper_ids": "arXiv:2412.06590",
        "paper_name": "Bridging the Divide: Reconsidering Softmax and Linear Attention",
        "origin_url": "https://github.com/LeapLabTHU/InLine", **kwargs,
    }


def create_inline(model_cls: type, variant: str, pretrained: bool, args: dict, kwargs: dict) -> nn.Module:
    """``variant`` of ``model_cls`` with its architecture ``args``, which the caller's ``kwargs`` override."""
    return create_model(model_cls, variant, pretrained, dict(args, **kwargs))
