"""InLine-Swin: Swin with injective linear attention in its early blocks (InLine; Han et al., NeurIPS 2024).

The first n blocks of each stage are InLine over 56 x 56-token windows (global at 224), the rest Swin's 7 x 7
shifted-window softmax attention with a relative position bias. The official attention-type strings IIIS / IISS /
IIMS2 are ``inline_depths`` (2, 2, 6, 0) / (2, 2, 0, 0) / (2, 2, 2, 0).

Any input size works: the image is padded to a multiple of 4, odd maps are padded before patch merging, and maps
larger than 56 tokens per side are split into 56 x 56 windows anchored at the top-left plus smaller edge windows,
each attending over its real tokens only. Unlike the official code, InLine windows are never shifted (it rolls them
by 28 tokens in odd blocks of maps larger than 56 without masking, a case its released models never meet).

Parameters, MACs and top-1: README's model table. ``drop_path_rate`` defaults to 0; the official recipes train with
0.2 / 0.3 / 0.5 (T/S/B). Weights and their terms: :mod:`visattn.backbones._inline`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models import generate_default_cfgs, register_model
from timm.models.swin_transformer import PatchMerging

from ..contract import Inspectable
from ..weights import checkpoint_filter
from ._helpers import rename_keys
from ._inline import TSINGHUA_URL, InLineMapBlock, create_inline, inline_cfg
from ._pyramid import PyramidModel, pyramid_stages

__all__ = ["InLineSwin"]


class InLineSwin(Inspectable, PyramidModel):
    """InLine-Swin classifier and backbone.

    Args:
        depths, num_heads: blocks and heads per stage; dims are ``embed_dim * 2**i``.
        inline_depths: how many leading blocks of each stage are InLine (the rest are softmax window attention).
        window_size: softmax window side (7); ``inline_window``: InLine window side (56).
    """

    channels_last = True

    def __init__(self, depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 inline_depths: Sequence[int] = (2, 2, 6, 0), embed_dim: int = 96, window_size: int = 7,
                 inline_window: int = 56, mlp_ratio: float = 4.0, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", drop_rate: float = 0.0, drop_path_rate: float = 0.0, device=None,
                 dtype=None):
        if not len(depths) == len(num_heads) == len(inline_depths):
            raise ValueError(f"depths, num_heads and inline_depths need one entry per stage, got {depths}, "
                             f"{num_heads}, {inline_depths}")
        if any(not 0 <= n <= d for n, d in zip(inline_depths, depths, strict=True)):
            raise ValueError(f"inline_depths {tuple(inline_depths)} must lie between 0 and depths {tuple(depths)}")
        dd = dict(device=device, dtype=dtype)
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        stem = PatchEmbed(None, 4, in_chans, embed_dim, norm_layer=nn.LayerNorm, output_fmt="NHWC",
                          strict_img_size=False, dynamic_img_pad=True, **dd)
        stages = pyramid_stages(
            depths, drop_path_rate, lambda i: PatchMerging(dims[i - 1], dims[i], **dd),
            lambda i, j, dpr: InLineMapBlock(dims[i], num_heads[i], inline=j < inline_depths[i],
                                             window_size=window_size, shift=j % 2 == 1, inline_window=inline_window,
                                             mlp_ratio=mlp_ratio, drop_path=dpr, **dd))
        super().__init__(stem, stages, nn.LayerNorm(dims[-1], **dd), dims, in_chans, num_classes, global_pool,
                         drop_rate, **dd)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Relative position bias tables, as the official recipe (``no_weight_decay_keywords``)."""
        return {name for name, _ in self.named_parameters() if name.endswith("relative_position_bias_table")}


# Official Swin layout -> ours, first match wins.
_SWIN_RENAMES = [
    (r"^patch_embed\.", "stem."),
    (r"^layers\.(\d+)\.downsample\.", lambda m: f"stages.{int(m.group(1)) + 1}.downsample."),
    (r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks."),
    (r"^head\.", "head.fc."),
]


@checkpoint_filter(InLineSwin)
def checkpoint_filter_fn(state_dict: dict, model: InLineSwin) -> dict:
    """An official InLine-Swin checkpoint (weights under ``model`` or a raw state dict) in visattn's keys: stages
    renamed, patch merging moved to the start of the next stage, relative position bias tables transposed to
    (heads, (2 ws - 1)**2), and the ``relative_position_index`` / ``attn_mask`` buffers dropped (ours are built per
    call). A state dict already in visattn's layout passes through."""
    state_dict = state_dict.get("model", state_dict)
    if "patch_embed.proj.weight" not in state_dict:
        return state_dict
    kept = {k: v for k, v in state_dict.items() if not k.endswith(("relative_position_index", "attn_mask"))}
    renamed = rename_keys(kept, _SWIN_RENAMES)
    return {k: v.t() if k.endswith("relative_position_bias_table") else v for k, v in renamed.items()}


default_cfgs = generate_default_cfgs({
    "inline_swin_tiny.in1k": inline_cfg(TSINGHUA_URL.format("32810869fcc34410966b")),
    "inline_swin_small.in1k": inline_cfg(TSINGHUA_URL.format("e9657fd247c04c7cb1a1")),
    "inline_swin_base.in1k": inline_cfg(TSINGHUA_URL.format("bf23564bb64c420aafe1")),
    "test_inline_swin": inline_cfg(input_size=(3, 64, 64), pool_size=(2, 2)),
})


@register_model
def inline_swin_tiny(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-T (IIIS): depths 2-2-6-2, dims 96-768."""
    args = dict(depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), inline_depths=(2, 2, 6, 0))
    return create_inline(InLineSwin, "inline_swin_tiny", pretrained, args, kwargs)


@register_model
def inline_swin_small(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-S (IISS): depths 2-2-18-2, dims 96-768."""
    args = dict(depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), inline_depths=(2, 2, 0, 0))
    return create_inline(InLineSwin, "inline_swin_small", pretrained, args, kwargs)


@register_model
def inline_swin_base(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-B (IIMS2): depths 2-2-18-2, dims 128-1024."""
    args = dict(depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), inline_depths=(2, 2, 2, 0), embed_dim=128)
    return create_inline(InLineSwin, "inline_swin_base", pretrained, args, kwargs)


@register_model
def test_inline_swin(pretrained: bool = False, **kwargs) -> InLineSwin:
    """Tiny InLine-Swin for tests: depths 2-1-1-1, dims 8-64 of 8-channel heads; InLine then shifted softmax
    windows in stage 1, InLine in stages 2-3, softmax windows in stage 4; windows of 3 (InLine's leave remainders,
    the softmax ones pad, at 64x64)."""
    args = dict(depths=(2, 1, 1, 1), num_heads=(1, 2, 4, 8), inline_depths=(1, 1, 1, 0), embed_dim=8, window_size=3,
                inline_window=3)
    return create_inline(InLineSwin, "test_inline_swin", pretrained, args, kwargs)
