"""InLine-PVT: PVT (v1) with injective linear attention in every block (InLine; Han et al., NeurIPS 2024).

Every block is InLine over all tokens of its stage (the official ``attn_type='IIII'`` with no spatial reduction):
per stage a PxP patch embedding with LayerNorm and a learned position table (resampled bilinearly for other grids),
no final norm, token-mean pooling. Any input size works: each patch embedding's input is padded to a multiple of
its patch and the position tables are resampled.

Parameters, MACs and top-1: README's model table (the official InLine-PVT-L code, which its checkpoint was trained
with, has 51.15 M parameters, not its README's 50.2 M). Weights and their terms: :mod:`visattn.backbones._inline`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, resample_abs_pos_embed
from timm.models import generate_default_cfgs, register_model

from ..blocks import pad_to_multiple
from ..contract import Inspectable
from ..weights import checkpoint_filter
from ._helpers import rename_keys
from ._inline import TSINGHUA_URL, InLineMapBlock, create_inline, inline_cfg
from ._pyramid import PyramidModel, pyramid_stages

__all__ = ["InLinePVT"]


@register_notrace_module
class PVTPatchEmbed(nn.Module):
    """PVT's patch embedding and its stage's position table: ConvPxP stride P, LayerNorm, + pos_embed.

    The table (1, H0*W0, C) belongs to the ``grid`` (H0, W0) of the model's input size and is resampled bilinearly
    (as the official code) for other grids; inputs whose sides P does not divide are zero-padded first.
    Shapes: (B, C_in, H, W), or (B, H, W, C_in) when ``channels_last_in`` -> (B, ceil(H/P), ceil(W/P), C).
    """

    def __init__(self, in_chs: int, out_chs: int, patch: int, grid: tuple[int, int], channels_last_in: bool,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.patch, self.grid, self.channels_last_in = patch, tuple(grid), channels_last_in
        self.proj = nn.Conv2d(in_chs, out_chs, patch, stride=patch, **dd)
        self.norm = nn.LayerNorm(out_chs, **dd)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], out_chs, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last_in:
            x = x.permute(0, 3, 1, 2)
        x = self.norm(self.proj(pad_to_multiple(x, self.patch)).permute(0, 2, 3, 1))
        h, w = x.shape[1:3]
        pos = self.pos_embed.view(1, *self.grid, -1)
        if torch.compiler.is_exporting() or (h, w) != self.grid:  # exported: resampled, at the grid an identity
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(h, w), mode="bilinear").permute(0, 2, 3, 1)
        return x + pos


class InLinePVT(Inspectable, PyramidModel):
    """InLine-PVT classifier and backbone: PVT v1 with InLine attention over each stage's whole map.

    Args:
        depths, dims, num_heads, mlp_ratios: per stage.
        img_size: the input size the position tables are laid out for (224; other sizes resample them).
    """

    channels_last = True

    def __init__(self, depths: Sequence[int] = (2, 2, 2, 2), dims: Sequence[int] = (64, 128, 320, 512),
                 num_heads: Sequence[int] = (2, 4, 10, 16), mlp_ratios: Sequence[float] = (8, 8, 4, 4),
                 img_size: int | tuple[int, int] = 224, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", drop_rate: float = 0.0, drop_path_rate: float = 0.0, device=None,
                 dtype=None):
        if not len(depths) == len(dims) == len(num_heads) == len(mlp_ratios):
            raise ValueError(f"depths, dims, num_heads and mlp_ratios need one entry per stage, got {depths}, "
                             f"{dims}, {num_heads}, {mlp_ratios}")
        dd = dict(device=device, dtype=dtype)
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)

        def grid(stride: int) -> tuple[int, int]:
            return -(-size[0] // stride), -(-size[1] // stride)

        stem = PVTPatchEmbed(in_chans, dims[0], 4, grid(4), channels_last_in=False, **dd)
        stages = pyramid_stages(
            depths, drop_path_rate,
            lambda i: PVTPatchEmbed(dims[i - 1], dims[i], 2, grid(4 * 2 ** i), channels_last_in=True, **dd),
            lambda i, j, dpr: InLineMapBlock(dims[i], num_heads[i], inline=True, inline_window=None,
                                             mlp_ratio=mlp_ratios[i], drop_path=dpr, eps=1e-6, **dd))
        super().__init__(stem, stages, nn.Identity(), dims, in_chans, num_classes, global_pool, drop_rate, **dd)
        for embed in [stem] + [stage.downsample for stage in self.stages[1:]]:
            nn.init.trunc_normal_(embed.pos_embed, std=0.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The position tables."""
        return {name for name, _ in self.named_parameters() if name.endswith("pos_embed")}


# Official PVT layout -> ours (q and kv are joined into qkv by the filter), first match wins.
_PVT_RENAMES = [
    (r"^patch_embed1\.", "stem."),
    (r"^pos_embed1$", "stem.pos_embed"),
    (r"^patch_embed(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}.downsample."),
    (r"^pos_embed(\d)$", lambda m: f"stages.{int(m.group(1)) - 1}.downsample.pos_embed"),
    (r"^block(\d)\.(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."),
    (r"^head\.", "head.fc."),
]


@checkpoint_filter(InLinePVT)
def checkpoint_filter_fn(state_dict: dict, model: InLinePVT) -> dict:
    """An official InLine-PVT checkpoint (weights under ``model`` or a raw state dict) in visattn's keys: stages
    renamed, each attention's q and kv linears joined into one qkv linear ([q; k; v] rows), and position tables laid
    out for another input size resampled to the model's. A state dict already in visattn's layout passes through."""
    state_dict = state_dict.get("model", state_dict)
    if "patch_embed1.proj.weight" not in state_dict:
        return state_dict
    renamed = rename_keys(state_dict, _PVT_RENAMES)
    out = {}
    for key, value in renamed.items():
        if ".attn.kv." in key:
            continue
        if ".attn.q." in key:
            key, value = key.replace(".attn.q.", ".attn.qkv."), torch.cat([value, renamed[key.replace(".q.", ".kv.")]])
        out[key] = value
    embeds = {"stem.pos_embed": model.stem}
    embeds.update({f"stages.{i}.downsample.pos_embed": s.downsample for i, s in enumerate(model.stages) if i})
    for key, embed in embeds.items():
        pos = out.get(key)
        if pos is not None and pos.shape != embed.pos_embed.shape:
            out[key] = resample_abs_pos_embed(pos, new_size=embed.grid, num_prefix_tokens=0, interpolation="bilinear",
                                              antialias=False)
    return out


default_cfgs = generate_default_cfgs({
    "inline_pvt_tiny.in1k": inline_cfg(TSINGHUA_URL.format("90ac52b1555b401eb5e6")),
    "inline_pvt_small.in1k": inline_cfg(TSINGHUA_URL.format("1ab953b2479d433080a3")),
    "inline_pvt_medium.in1k": inline_cfg(TSINGHUA_URL.format("a72aec31e6084bc0a280")),
    "inline_pvt_large.in1k": inline_cfg(TSINGHUA_URL.format("efd91318ba964f01b288")),
    "test_inline_pvt": inline_cfg(input_size=(3, 64, 64), pool_size=(2, 2)),
})


@register_model
def inline_pvt_tiny(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-T: depths 2-2-2-2, dims 64-512."""
    return create_inline(InLinePVT, "inline_pvt_tiny", pretrained, dict(depths=(2, 2, 2, 2)), kwargs)


@register_model
def inline_pvt_small(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-S: depths 3-4-6-3, dims 64-512."""
    return create_inline(InLinePVT, "inline_pvt_small", pretrained, dict(depths=(3, 4, 6, 3)), kwargs)


@register_model
def inline_pvt_medium(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-M: depths 3-4-18-3, dims 64-512."""
    return create_inline(InLinePVT, "inline_pvt_medium", pretrained, dict(depths=(3, 4, 18, 3)), kwargs)


@register_model
def inline_pvt_large(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-L: depths 3-8-27-3, dims 64-512."""
    return create_inline(InLinePVT, "inline_pvt_large", pretrained, dict(depths=(3, 8, 27, 3)), kwargs)


@register_model
def test_inline_pvt(pretrained: bool = False, **kwargs) -> InLinePVT:
    """Tiny InLine-PVT for tests: one block per stage, dims 16-64, MLP ratio 2, position tables for 64x64."""
    args = dict(depths=(1, 1, 1, 1), dims=(16, 32, 32, 64), num_heads=(1, 2, 2, 4), mlp_ratios=(2, 2, 2, 2),
                img_size=64)
    return create_inline(InLinePVT, "test_inline_pvt", pretrained, args, kwargs)
