"""InLine-CSwin: CSWin with injective linear attention in its early stages (InLine; Han et al., NeurIPS 2024).

The InLine stages (the official ``IISS``: stages 1-2) attend over their whole map; the softmax stages attend within
cross-shaped stripes (stage 3: half the heads in vertical stripes of 7 columns, half in horizontal stripes of 7
rows; stage 4: the whole map), every branch (:class:`visattn.blocks.StripeAttention`) with CSWin's LePE term (a
3x3 depthwise convolution of V inside its window) and the InLine branches with InLine's predicted residual, whose
kernels come from the mean of the block's input (before its norm), as the official code. Any input size works: the
stem pads the image to a multiple of 4 and stripes pad their split side (the padding is no key).

Parameters, MACs and top-1: README's model table (the official code's models, whose checkpoints this loads).
Weights and their terms: :mod:`visattn.backbones._inline`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp, register_notrace_module
from timm.models import generate_default_cfgs, register_model

from ..blocks import ConvDownsample, StripeAttention
from ..contract import Inspectable, InspectionMap, query_cell
from ..weights import checkpoint_filter
from ._helpers import rename_keys
from ._inline import TSINGHUA_URL, create_inline, inline_cfg, inline_query_map
from ._pyramid import PyramidModel, pyramid_stages

__all__ = ["InLineCSwin"]


@register_notrace_module
class InLineCSwinBlock(nn.Module):
    """X = X + DropPath(W_o [branches](LN(X) W_qkv)); X = X + DropPath(MLP(LN(X))) on (B, H, W, C) maps.

    One branch over the whole map (``stripes=False``) or two over half the channels and heads each, in vertical and
    horizontal stripes of ``split`` tokens (CSWin's cross-shaped windows); see :class:`StripeAttention`.
    """

    def __init__(self, dim: int, num_heads: int, inline: bool, stripes: bool, split: int = 7,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.qkv = nn.Linear(dim, 3 * dim, **dd)
        modes = ("vertical", "horizontal") if stripes else ("global",)
        width, heads = dim // len(modes), num_heads // len(modes)
        self.attns = nn.ModuleList(StripeAttention(width, heads, mode, split, inline, **dd) for mode in modes)
        self.proj = nn.Linear(dim, dim, **dd)
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_mean = x.mean(dim=(1, 2))
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        parts = zip(*(t.chunk(len(self.attns), dim=-1) for t in (q, k, v, x_mean)), strict=True)
        y = torch.cat([attn(*part) for attn, part in zip(self.attns, parts, strict=True)], dim=-1)
        x = x + self.drop_path(self.proj(y))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def inspect_forward(self, x: torch.Tensor, *, query: tuple[float, float]) -> InspectionMap | None:
        """An InLine block's ``query_attention`` map (its one branch over the whole map): the query's weights and
        its predicted residual's share; None for a softmax stripe block."""
        attn = self.attns[0]
        if not attn.inline:
            return None
        h, w = x.shape[1:3]
        cell = query_cell(query, (h, w))
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        rows, share = attn.query_attention(q, k, v, x.mean(dim=(1, 2)), cell[0] * w + cell[1])
        return inline_query_map(rows, share, (h, w), cell)


class InLineCSwin(Inspectable, PyramidModel):
    """InLine-CSwin classifier and backbone.

    Args:
        depths, num_heads: per stage; dims are ``embed_dim * 2**i``.
        attn_types: per stage, ``'I'`` (InLine over the whole map) or ``'S'`` (CSWin softmax attention: stripes of
            ``split`` tokens, except over the whole map in the last stage), the official ``ATTN_TYPE`` string.
    """

    channels_last = True

    def __init__(self, depths: Sequence[int] = (2, 4, 18, 1), num_heads: Sequence[int] = (2, 4, 8, 16),
                 embed_dim: int = 64, attn_types: str = "IISS", split: int = 7, mlp_ratio: float = 4.0,
                 in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg", drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, device=None, dtype=None):
        if not len(depths) == len(num_heads) == len(attn_types) or set(attn_types) - {"I", "S"}:
            raise ValueError(f"depths, num_heads and attn_types (of 'I' and 'S') need one entry per stage, got "
                             f"{depths}, {num_heads}, {attn_types!r}")
        dd = dict(device=device, dtype=dtype)
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        last = len(depths) - 1
        # conv7x7/4 (padding 2) + LN on sides padded to a multiple of 4 (the official stem drops a remainder)
        stem = ConvDownsample(in_chans, dims[0], 7, 4, 2, norm_layer=nn.LayerNorm, pad_multiple=4, output_fmt="NHWC",
                              **dd)
        stages = pyramid_stages(
            depths, drop_path_rate,
            lambda i: ConvDownsample(dims[i - 1], dims[i], 3, 2, 1, norm_layer=nn.LayerNorm, input_fmt="NHWC",
                                     output_fmt="NHWC", **dd),
            lambda i, j, dpr: InLineCSwinBlock(dims[i], num_heads[i], inline=attn_types[i] == "I",
                                               stripes=attn_types[i] == "S" and i != last, split=split,
                                               mlp_ratio=mlp_ratio, drop_path=dpr, **dd))
        super().__init__(stem, stages, nn.LayerNorm(dims[-1], **dd), dims, in_chans, num_classes, global_pool,
                         drop_rate, **dd)


# Official CSWin layout -> ours, first match wins (block and branch keys are ours already).
_CSWIN_RENAMES = [
    (r"^stage1_conv_embed\.0\.", "stem.conv."),
    (r"^stage1_conv_embed\.2\.", "stem.norm."),
    (r"^merge(\d)\.", r"stages.\1.downsample."),
    (r"^stage(\d)\.(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."),
    (r"^head\.", "head.fc."),
]


@checkpoint_filter(InLineCSwin)
def checkpoint_filter_fn(state_dict: dict, model: InLineCSwin) -> dict:
    """An official InLine-CSwin checkpoint (weights under ``model`` or a raw state dict) in visattn's keys: stem,
    merging and stage prefixes renamed. A state dict already in visattn's layout passes through."""
    state_dict = state_dict.get("model", state_dict)
    return rename_keys(state_dict, _CSWIN_RENAMES) if "stage1_conv_embed.0.weight" in state_dict else state_dict


def _cfg(url: str) -> dict:
    return inline_cfg(url, first_conv="stem.conv")


default_cfgs = generate_default_cfgs({
    "inline_cswin_tiny.in1k": _cfg(TSINGHUA_URL.format("49fa2ecc543647c4b970")),
    "inline_cswin_small.in1k": _cfg(TSINGHUA_URL.format("59f4e65f776f4052b93c")),
    "inline_cswin_base.in1k": _cfg(TSINGHUA_URL.format("91e17121df284ae38521")),
    "test_inline_cswin": inline_cfg(first_conv="stem.conv", input_size=(3, 64, 64), pool_size=(2, 2)),
})


@register_model
def inline_cswin_tiny(pretrained: bool = False, **kwargs) -> InLineCSwin:
    """InLine-CSwin-T (IISS): depths 2-4-18-1, dims 64-512."""
    return create_inline(InLineCSwin, "inline_cswin_tiny", pretrained, dict(depths=(2, 4, 18, 1)), kwargs)


@register_model
def inline_cswin_small(pretrained: bool = False, **kwargs) -> InLineCSwin:
    """InLine-CSwin-S (IISS): depths 3-6-29-2, dims 64-512."""
    return create_inline(InLineCSwin, "inline_cswin_small", pretrained, dict(depths=(3, 6, 29, 2)), kwargs)


@register_model
def inline_cswin_base(pretrained: bool = False, **kwargs) -> InLineCSwin:
    """InLine-CSwin-B (IISS): depths 3-6-29-2, dims 96-768."""
    args = dict(depths=(3, 6, 29, 2), num_heads=(4, 8, 16, 32), embed_dim=96)
    return create_inline(InLineCSwin, "inline_cswin_base", pretrained, args, kwargs)


@register_model
def test_inline_cswin(pretrained: bool = False, **kwargs) -> InLineCSwin:
    """Tiny InLine-CSwin for tests: one block per stage, dims 8-64 (IISS): InLine over the map in stages 1-2,
    stripes of 3 (padded at 64x64) in stage 3, global attention in stage 4."""
    args = dict(depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), embed_dim=8, split=3)
    return create_inline(InLineCSwin, "test_inline_cswin", pretrained, args, kwargs)
