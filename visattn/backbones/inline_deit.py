"""InLine-DeiT: DeiT with injective linear attention in every block (InLine; Han et al., NeurIPS 2024).

timm's VisionTransformer (class token, learned position embedding, token pooling) with every block's attention
replaced by InLine (:class:`visattn.blocks.InjectiveLinearAttention` with its predicted local residual), over the
class token and all patch tokens. Any input size works: the image is padded to a multiple of 16 and the position
embedding resampled. The small model is 320 wide with 10 heads; sizes are counted at the training resolutions
224 / 288 / 448.

Parameters, MACs (InLine counted as 2 N d^2 per head) and top-1: README's model table. ``drop_path_rate`` defaults to
0; the official recipe trains with 0.1. Weights and their terms: :mod:`visattn.backbones._inline`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp, resample_abs_pos_embed
from timm.models import generate_default_cfgs, register_model

from ..blocks import InjectiveLinearAttention
from ..contract import Inspectable, InspectionMap, query_cell
from ..weights import checkpoint_filter
from ._inline import TSINGHUA_URL, create_inline, inline_cfg, inline_query_map
from ._vit import GridViT

__all__ = ["InLineDeiT"]


class InLineViTBlock(nn.Module):
    """X = X + DropPath(InLine(LN(X), grid)); X = X + DropPath(MLP(LN(X))). Shapes: (B, P + H*W, C) -> same.

    Takes timm's ``block_fn`` arguments; the options InLine-DeiT lacks (qk norm, layer scale, ...) are errors.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_bias: bool = True, proj_drop: float = 0.0, drop_path: float = 0.0,
                 norm_layer: Callable = nn.LayerNorm, act_layer: Callable = nn.GELU, mlp_layer: Callable = Mlp,
                 device=None, dtype=None, **kwargs):
        super().__init__()
        unsupported = [name for name in ("qk_norm", "scale_attn_norm", "scale_mlp_norm", "init_values")
                       if kwargs.get(name)] + ([] if proj_bias else ["proj_bias=False"])
        if unsupported:
            raise ValueError(f"InLine-DeiT blocks do not support {', '.join(unsupported)}")
        dd = dict(device=device, dtype=dtype)
        self.norm1 = norm_layer(dim, **dd)
        self.attn = InjectiveLinearAttention(dim, num_heads, qkv_bias=qkv_bias, **dd)
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = mlp_layer(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer,
                             drop=proj_drop, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), size))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def inspect_forward(self, x: torch.Tensor, size: tuple[int, int], *,
                        query: tuple[float, float]) -> InspectionMap:
        """The ``query_attention`` map of the query's patch token: its weights over the class token and the grid,
        and its local residual's share."""
        cell = query_cell(query, size)
        prefix = x.shape[1] - size[0] * size[1]
        rows, share = self.attn.query_attention(self.norm1(x), size, prefix + cell[0] * size[1] + cell[1])
        return inline_query_map(rows, share, tuple(size), cell, prefix)


class InLineDeiT(Inspectable, GridViT):
    """InLine-DeiT: timm's VisionTransformer (through :class:`GridViT`) with InLine attention in every block."""

    block_fn = InLineViTBlock


@checkpoint_filter(InLineDeiT)
def checkpoint_filter_fn(state_dict: dict, model: InLineDeiT) -> dict:
    """An official InLine-DeiT checkpoint (weights under ``model`` or a raw state dict) in visattn's keys: they are
    ours already (timm ViT keys plus ``blocks.j.attn.residual.*``); only the position embedding is resampled when
    the model's grid differs."""
    state_dict = state_dict.get("model", state_dict)
    pos = state_dict.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape:
        state_dict = dict(state_dict, pos_embed=resample_abs_pos_embed(
            pos, new_size=model.patch_embed.grid_size, num_prefix_tokens=model.num_prefix_tokens))
    return state_dict


def _cfg(url: str, size: int) -> dict:
    return inline_cfg(url, input_size=(3, size, size), pool_size=None, first_conv="patch_embed.proj",
                      classifier="head")


default_cfgs = generate_default_cfgs({
    "inline_deit_tiny.in1k": _cfg(TSINGHUA_URL.format("1d6b8191ad6d4114b291"), 224),
    "inline_deit_small.in1k": _cfg(TSINGHUA_URL.format("2f3898b07e9247f3beb3"), 288),
    "inline_deit_base.in1k": _cfg(TSINGHUA_URL.format("10bdd726d4b0435eb34e"), 448),
    "test_inline_deit": _cfg("", 64),
})


def _create(variant: str, pretrained: bool, img_size: int, kwargs: dict) -> InLineDeiT:
    return create_inline(InLineDeiT, variant, pretrained,
                         dict(img_size=img_size, patch_size=16, depth=12, out_indices=3), kwargs)


@register_model
def inline_deit_tiny(pretrained: bool = False, **kwargs) -> InLineDeiT:
    """InLine-DeiT-T @224: 192 dims, 6 heads, 12 blocks."""
    return _create("inline_deit_tiny", pretrained, 224, dict(dict(embed_dim=192, num_heads=6), **kwargs))


@register_model
def inline_deit_small(pretrained: bool = False, **kwargs) -> InLineDeiT:
    """InLine-DeiT-S @288: 320 dims, 10 heads, 12 blocks."""
    return _create("inline_deit_small", pretrained, 288, dict(dict(embed_dim=320, num_heads=10), **kwargs))


@register_model
def inline_deit_base(pretrained: bool = False, **kwargs) -> InLineDeiT:
    """InLine-DeiT-B @448: 384 dims, 12 heads, 12 blocks."""
    return _create("inline_deit_base", pretrained, 448, dict(dict(embed_dim=384, num_heads=12), **kwargs))


@register_model
def test_inline_deit(pretrained: bool = False, **kwargs) -> InLineDeiT:
    """Tiny InLine-DeiT for tests: 4 blocks of 32 dims and 2 heads on a 4x4 patch grid (64x64)."""
    return _create("test_inline_deit", pretrained, 64, dict(dict(embed_dim=32, num_heads=2, depth=4), **kwargs))
