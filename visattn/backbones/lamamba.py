"""LaMamba: a hierarchical classifier built from LaMamba-Diff's block (Fu et al., arXiv 2408.02615).

LaMamba-Diff publishes a diffusion U-Net, not a classifier. This family is **visattn's adaptation**: its block
without the diffusion conditioning (adaLN), in a four-stage pyramid:

    X = X + DropPath(SS2D(LN(X)))              selective scan in 4 directions (VMamba style), d_state 1
    X = X + DropPath(WindowAttn(LN(X)))        7x7 windows, relative position bias, shifted every other block
    X = X + DropPath(MLP(LN(X)))               ratio 4

Stem conv4x4/4 + LN; conv3x3/2 + LN between stages; LN → GAP → Linear head. Heads = dim / 32. The scan
directions are VMamba's row/column/reversed scans rather than LaMamba-Diff's boustrophedon paths.
SS2D uses ssm_ratio 1 and d_state 1 (VMamba v2's small-state setting). Depths and widths are chosen to land
near Swin-T/S/B's cost at 224: depths 2-2-3-2 / 2-2-12-2 / 2-2-12-2, dims 96..768 / 96..768 / 128..1024.
Parameters and MACs (counted on the meta device through the fused ops, scan and window attention included): README's
model table (the one place they are written, checked by tests/test_model_table.py).

No pretrained weights exist.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp
from timm.models import generate_default_cfgs, register_model

from ..blocks import SS2D, ConvDownsample, WindowAttention
from ._helpers import create_model
from ._pyramid import PyramidModel, pyramid_stages

__all__ = ["LaMamba"]


class LaMambaBlock(nn.Module):
    """SS2D, window attention and MLP, each pre-norm residual. Shapes: (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: bool, mlp_ratio: float = 4.0,
                 d_state: int = 1, ssm_ratio: float = 1.0, drop_path: float = 0.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.ssm = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, **dd)
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.attn = WindowAttention(dim, num_heads, window_size, shift, **dd)
        self.norm3 = nn.LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ssm(self.norm1(x)))
        x = x + self.drop_path(self.attn(self.norm2(x)))
        return x + self.drop_path(self.mlp(self.norm3(x)))


class LaMamba(PyramidModel):
    """LaMamba classifier and backbone (visattn's adaptation of LaMamba-Diff's block)."""

    channels_last = True
    # the reference selective scan runs one token at a time: a GPU benchmark times only the fused path
    benchmark_fused_only = True
    # visattn-export traces it at one input size (see visattn.export.capture)
    export_fixed_size = ("its window attention computes a stage map that fits in one window as that one window, "
                         "unshifted, so the traced graph holds for the traced size")

    def __init__(self, depths: Sequence[int] = (2, 2, 3, 2), dims: Sequence[int] = (96, 192, 384, 768),
                 head_dim: int = 32, window_size: int = 7, mlp_ratio: float = 4.0, d_state: int = 1,
                 ssm_ratio: float = 1.0, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, device=None, dtype=None):
        if len(depths) != len(dims) or any(dim % head_dim for dim in dims):
            raise ValueError(f"need one depth per stage and dims divisible by head_dim={head_dim}: {depths}, {dims}")
        dd = dict(device=device, dtype=dtype)
        stem = ConvDownsample(in_chans, dims[0], 4, 4, norm_layer=nn.LayerNorm, pad_multiple=4, output_fmt="NHWC",
                              **dd)
        stages = pyramid_stages(
            depths, drop_path_rate,
            lambda i: ConvDownsample(dims[i - 1], dims[i], 3, 2, 1, norm_layer=nn.LayerNorm, input_fmt="NHWC",
                                     output_fmt="NHWC", **dd),
            lambda i, j, dpr: LaMambaBlock(dims[i], dims[i] // head_dim, window_size, shift=j % 2 == 1,
                                           mlp_ratio=mlp_ratio, d_state=d_state, ssm_ratio=ssm_ratio, drop_path=dpr,
                                           **dd))
        super().__init__(stem, stages, nn.LayerNorm(dims[-1], **dd), dims, in_chans, num_classes, global_pool,
                         drop_rate, **dd)


def _cfg(**kwargs) -> dict:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.9,
        "interpolation": "bicubic", "fixed_input_size": False, "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD, "first_conv": "stem.conv", "classifier": "head.fc", "license": "mit",
        "paper_ids": "arXiv:2408.02615",
        "paper_name": "LaMamba-Diff: Linear-Time High-Fidelity Diffusion Models Based on Local Attention and Mamba",
        "origin_url": "https://github.com/yunxiangfu2001/LaMamba-Diff", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    **{f"lamamba_{v}": _cfg() for v in ("tiny", "small", "base")},
    "test_lamamba": _cfg(input_size=(3, 32, 32), pool_size=(1, 1)),
})


def _create_lamamba(variant: str, pretrained: bool = False, **kwargs) -> LaMamba:
    return create_model(LaMamba, variant, pretrained, kwargs)


@register_model
def lamamba_tiny(pretrained: bool = False, **kwargs) -> LaMamba:
    """LaMamba-T (visattn's adaptation): depths 2-2-3-2, dims 96-768, near Swin-T's cost."""
    return _create_lamamba("lamamba_tiny", pretrained, **dict(dict(depths=(2, 2, 3, 2), dims=(96, 192, 384, 768)),
                                                              **kwargs))


@register_model
def lamamba_small(pretrained: bool = False, **kwargs) -> LaMamba:
    """LaMamba-S (visattn's adaptation): depths 2-2-12-2, dims 96-768, near Swin-S's cost."""
    return _create_lamamba("lamamba_small", pretrained,
                           **dict(dict(depths=(2, 2, 12, 2), dims=(96, 192, 384, 768)), **kwargs))


@register_model
def lamamba_base(pretrained: bool = False, **kwargs) -> LaMamba:
    """LaMamba-B (visattn's adaptation): depths 2-2-12-2, dims 128-1024, near Swin-B's cost."""
    return _create_lamamba("lamamba_base", pretrained,
                           **dict(dict(depths=(2, 2, 12, 2), dims=(128, 256, 512, 1024)), **kwargs))


@register_model
def test_lamamba(pretrained: bool = False, **kwargs) -> LaMamba:
    """Tiny LaMamba for tests: depths 1-2-1-1 (a plain and a shifted window block in stage 2), dims 16-32, one or two
    heads, 3x3 windows (padded maps at every stage of a 32x32 input)."""
    return _create_lamamba("test_lamamba", pretrained,
                           **dict(dict(depths=(1, 2, 1, 1), dims=(16, 16, 32, 32), head_dim=16, window_size=3),
                                  **kwargs))
