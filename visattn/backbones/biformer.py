"""BiFormer: Vision Transformer with Bi-Level Routing Attention (Zhu et al., CVPR 2023).

A four-stage pyramid (stride 4, 8, 16, 32). Each block is
    X = X + DWConv3x3(X);  X = X + BRA(LN(X));  X = X + MLP(LN(X)),
with bi-level routing attention (BRA) in stages 1-3 (n_win x n_win regions, top-k routed regions per
query region, head_dim 32) and global attention with LePE (8 heads) in stage 4. BatchNorm convolution
stem and downsampling, and a BatchNorm2d before the pooled classifier.

BiFormer-STL, the paper's Swin-Tiny-layout model, puts the same attention in Swin-T's frame: a 4x4 patch stem,
BatchNorm + 2x2 convolution patch merging, no DWConv3x3 term, depths 2-2-6-2, dims 96-768, MLP ratio 4.

Parameters, MACs and top-1 of each variant: README's model table (the one place they are written, checked by
tests/test_model_table.py).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp
from timm.models import generate_default_cfgs, register_model

from ..blocks import BiLevelRoutingAttention, ConvDownsample, LePEAttention
from ..contract import Inspectable
from ..weights import checkpoint_filter
from ._helpers import create_model, rename_keys
from ._pyramid import PyramidModel, pyramid_stages

__all__ = ["BiFormer"]


class BiFormerBlock(nn.Module):
    """X = X + DWConv3x3(X); X = X + DropPath(Attn(LN(X))); X = X + DropPath(MLP(LN(X))).

    ``topk=None`` selects global LePE attention with ``full_attn_heads`` heads (its LePE term on the attention's
    ``lepe_source``); otherwise routed attention. ``pos_embed=False`` drops the DWConv3x3 term (BiFormer-STL).
    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: int, num_heads: int, n_win: int, topk: int | None, mlp_ratio: float = 3.0,
                 drop_path: float = 0.0, full_attn_heads: int = 8, pos_embed: bool = True,
                 lepe_source: str = "input", device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd) if pos_embed else None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, **dd)
        if topk is None:
            self.attn = LePEAttention(dim, num_heads=full_attn_heads, lepe_source=lepe_source, **dd)
        else:
            self.attn = BiLevelRoutingAttention(dim, num_heads=num_heads, n_win=n_win, topk=topk, **dd)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_embed is not None:
            x = x + self.pos_embed(x)
        x = x.permute(0, 2, 3, 1)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.permute(0, 3, 1, 2)


class Stem(nn.Module):
    """Two Conv3x3 stride 2 with BatchNorm and a GELU between: (B, 3, H, W) -> (B, C, H/4, W/4)."""

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv1 = nn.Conv2d(in_chs, out_chs // 2, 3, stride=2, padding=1, **dd)
        self.norm1 = nn.BatchNorm2d(out_chs // 2, **dd)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(out_chs // 2, out_chs, 3, stride=2, padding=1, **dd)
        self.norm2 = nn.BatchNorm2d(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


# layout -> (stem, downsampler, DWConv3x3 position term), each module built as f(in_chs, out_chs, device, dtype)
_LAYOUTS = {
    "biformer": (Stem, functools.partial(ConvDownsample, kernel=3, stride=2, padding=1), True),  # conv3x3/2 + BN
    "swin": (functools.partial(ConvDownsample, kernel=4, stride=4, pad_multiple=4),  # conv4x4/4 + BN
             functools.partial(ConvDownsample, kernel=2, stride=2, norm_first=True, pad_multiple=2),  # BN + conv2x2/2
             False),
}


class BiFormer(Inspectable, PyramidModel):
    """BiFormer classifier and backbone.

    Args:
        depths, dims: blocks and channels per stage.
        topks: routed regions per stage; ``None`` for global attention (the official stage 4).
        head_dim: channels per head in routed stages (heads = dim // head_dim).
        n_win: regions per side in routed stages; inputs of any size are padded per block.
        full_attn_heads: heads of the global-attention stages (8 in the official code).
        layout: ``'biformer'`` (overlapping 3x3 convolution stem and downsampling, a DWConv3x3 term in every
            block) or ``'swin'`` (BiFormer-STL: 4x4 patch stem, BatchNorm + 2x2 convolution merging, no DWConv3x3).
        lepe_source: what the global-attention stages' LePE convolves: ``'input'`` (the attention input, as the
            official models) or ``'value'`` (V, as the official BiFormer-STL-nchw).
    """

    def __init__(self, depths: Sequence[int] = (2, 2, 8, 2), dims: Sequence[int] = (64, 128, 256, 512),
                 topks: Sequence[int | None] = (1, 4, 16, None), head_dim: int = 32, n_win: int = 7,
                 mlp_ratio: float = 3.0, full_attn_heads: int = 8, layout: str = "biformer",
                 lepe_source: str = "input", in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, device=None, dtype=None):
        if not len(depths) == len(dims) == len(topks):
            raise ValueError(f"depths, dims and topks need one entry per stage, got {depths}, {dims}, {topks}")
        if any(dim % head_dim for dim, topk in zip(dims, topks, strict=True) if topk is not None):
            raise ValueError(f"dims {tuple(dims)} of routed stages must be multiples of head_dim={head_dim}")
        if layout not in _LAYOUTS:
            raise ValueError(f"layout={layout!r} is not one of {sorted(_LAYOUTS)}")
        stem_cls, downsample_cls, pos_embed = _LAYOUTS[layout]
        dd = dict(device=device, dtype=dtype)
        stem = stem_cls(in_chans, dims[0], **dd)
        stages = pyramid_stages(
            depths, drop_path_rate, lambda i: downsample_cls(dims[i - 1], dims[i], **dd),
            lambda i, j, dpr: BiFormerBlock(dims[i], dims[i] // head_dim, n_win, topks[i], mlp_ratio, dpr,
                                            full_attn_heads, pos_embed, lepe_source, **dd))
        super().__init__(stem, stages, nn.BatchNorm2d(dims[-1], **dd), dims, in_chans, num_classes, global_pool,
                         drop_rate, **dd)


# Official layout -> ours, first match wins.
_OFFICIAL_RENAMES = [
    (r"^downsample_layers\.0\.0\.", "stem.conv1."),
    (r"^downsample_layers\.0\.1\.", "stem.norm1."),
    (r"^downsample_layers\.0\.3\.", "stem.conv2."),
    (r"^downsample_layers\.0\.4\.", "stem.norm2."),
    (r"^downsample_layers\.(\d+)\.0\.", r"stages.\1.downsample.conv."),
    (r"^downsample_layers\.(\d+)\.1\.", r"stages.\1.downsample.norm."),
    (r"^stages\.(\d+)\.(\d+)\.attn\.qkv\.qkv\.", r"stages.\1.blocks.\2.attn.qkv."),
    (r"^stages\.(\d+)\.(\d+)\.attn\.wo\.", r"stages.\1.blocks.\2.attn.proj."),
    (r"^stages\.(\d+)\.(\d+)\.mlp\.0\.", r"stages.\1.blocks.\2.mlp.fc1."),
    (r"^stages\.(\d+)\.(\d+)\.mlp\.3\.", r"stages.\1.blocks.\2.mlp.fc2."),
    (r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"^head\.", "head.fc."),
]
# BiFormer-STL (``biformer_stl.py`` and ``biformer_stl_nchw.py``, whose 1x1 convolutions are our linears) -> ours.
_OFFICIAL_STL_RENAMES = [
    (r"^downsample_layers\.0\.0\.", "stem.conv."),
    (r"^downsample_layers\.0\.1\.", "stem.norm."),
    (r"^downsample_layers\.(\d+)\.0\.", r"stages.\1.downsample.norm."),
    (r"^downsample_layers\.(\d+)\.1\.", r"stages.\1.downsample.conv."),
    (r"\.attn\.(qkv\.qkv|qkv_linear)\.", ".attn.qkv."),
    (r"\.attn\.(wo|output_linear)\.", ".attn.proj."),
    (r"\.mlp\.0\.", ".mlp.fc1."),
    (r"\.mlp\.2\.", ".mlp.fc2."),
    (r"^head\.", "head.fc."),
]


@checkpoint_filter(BiFormer)
def checkpoint_filter_fn(state_dict: dict, model: BiFormer) -> dict:
    """Map an official BiFormer or BiFormer-STL checkpoint (weights under ``model`` or a raw state dict) onto
    visattn keys; 1x1 convolution weights of the nchw layout become linear weights.

    A state dict already in visattn's layout is returned unchanged.
    """
    state_dict = state_dict.get("model", state_dict)
    if "downsample_layers.0.0.weight" not in state_dict:
        return state_dict
    if isinstance(model.stem, Stem):
        return rename_keys(state_dict, _OFFICIAL_RENAMES)
    targets = model.state_dict()
    renamed = rename_keys(state_dict, _OFFICIAL_STL_RENAMES)
    return {k: v.flatten(1) if v.dim() == 4 and k in targets and targets[k].dim() == 2 else v
            for k, v in renamed.items()}


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1", "classifier": "head.fc", "license": "mit",
        "paper_ids": "arXiv:2303.08810", "paper_name": "BiFormer: Vision Transformer with Bi-Level Routing Attention",
        "origin_url": "https://github.com/rayleizhu/BiFormer", **kwargs,
    }


_ONEDRIVE = "https://api.onedrive.com/v1.0/shares/{}/root/content"

default_cfgs = generate_default_cfgs({
    "biformer_tiny.in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChHEOoGkgwgQzEDlM")),
    "biformer_small.in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChHDyM-x9KWRBZ832")),
    "biformer_base.in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChHI_XPhoadjaNxtO")),
    "biformer_stl.in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChSf-m7ujkvx9lIQ1"), first_conv="stem.conv"),
    "biformer_stl_nchw.in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChWYrKbWbMgqd2Ai0"), first_conv="stem.conv"),
    "test_biformer": _cfg(input_size=(3, 64, 64), pool_size=(2, 2)),
    "test_biformer_stl": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), first_conv="stem.conv"),
})


def _create_biformer(variant: str, pretrained: bool = False, **kwargs) -> BiFormer:
    return create_model(BiFormer, variant, pretrained, kwargs)


@register_model
def biformer_tiny(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-T: depths 2-2-8-2, dims 64-512."""
    args = dict(depths=(2, 2, 8, 2), dims=(64, 128, 256, 512), topks=(1, 4, 16, None))
    return _create_biformer("biformer_tiny", pretrained, **dict(args, **kwargs))


@register_model
def biformer_small(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-S: depths 4-4-18-4, dims 64-512."""
    args = dict(depths=(4, 4, 18, 4), dims=(64, 128, 256, 512), topks=(1, 4, 16, None))
    return _create_biformer("biformer_small", pretrained, **dict(args, **kwargs))


@register_model
def biformer_base(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-B: depths 4-4-18-4, dims 96-768."""
    args = dict(depths=(4, 4, 18, 4), dims=(96, 192, 384, 768), topks=(1, 4, 16, None))
    return _create_biformer("biformer_base", pretrained, **dict(args, **kwargs))


_STL = dict(depths=(2, 2, 6, 2), dims=(96, 192, 384, 768), topks=(1, 4, 16, None), mlp_ratio=4.0, layout="swin")


@register_model
def biformer_stl(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-STL: BRA in Swin-T's layout, depths 2-2-6-2, dims 96-768."""
    return _create_biformer("biformer_stl", pretrained, **dict(_STL, **kwargs))


@register_model
def biformer_stl_nchw(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-STL-nchw: BiFormer-STL whose stage-4 LePE convolves V (the official refactored model)."""
    return _create_biformer("biformer_stl_nchw", pretrained, **dict(_STL, lepe_source="value", **kwargs))


_TEST = dict(depths=(1, 1, 1, 1), dims=(16, 32, 32, 64), topks=(1, 2, 4, None), head_dim=16, n_win=2,
             full_attn_heads=2)


@register_model
def test_biformer(pretrained: bool = False, **kwargs) -> BiFormer:
    """Tiny BiFormer for tests: one block per stage, dims 16-64; routed attention over 2x2 regions (top-1, 2, 4; one
    and two heads) in stages 1-3, global LePE attention in stage 4."""
    return _create_biformer("test_biformer", pretrained, **dict(_TEST, **kwargs))


@register_model
def test_biformer_stl(pretrained: bool = False, **kwargs) -> BiFormer:
    """Tiny BiFormer-STL for tests: :func:`test_biformer` in the Swin layout (patch stem, patch merging, no
    DWConv3x3), its stage-4 LePE on V (the nchw model's)."""
    return _create_biformer("test_biformer_stl", pretrained,
                            **dict(_TEST, mlp_ratio=4.0, layout="swin", lepe_source="value", **kwargs))
