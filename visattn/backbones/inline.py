"""InLine: Bridging the Divide: Reconsidering Softmax and Linear Attention (Han et al., NeurIPS 2024).

Injective linear attention (:class:`visattn.blocks.InjectiveLinearAttention`) with its predicted local residual,
in two host architectures:

- ``inline_deit_*``: DeiT (timm's VisionTransformer: class token, learned position embedding, token pooling)
  with every block's attention replaced by InLine, over the class token and all patch tokens.
- ``inline_swin_*``: Swin, whose first n blocks of each stage are InLine over 56 x 56-token windows (global at
  224) and the rest Swin's 7 x 7 shifted-window softmax attention with a relative position bias. The official
  attention-type strings IIIS / IISS / IIMS2 are ``inline_depths`` (2, 2, 6, 0) / (2, 2, 0, 0) / (2, 2, 2, 0).
- ``inline_cswin_*``: CSWin, whose InLine stages (the official ``IISS``: stages 1-2) attend over their whole map
  and whose softmax stages attend within cross-shaped stripes (stage 3: half the heads in vertical stripes of 7
  columns, half in horizontal stripes of 7 rows; stage 4: the whole map), every branch with CSWin's LePE term
  (a 3x3 depthwise convolution of V inside its window) and the InLine branches with InLine's predicted residual,
  whose kernels come from the mean of the block's input (before its norm), as the official code.
- ``inline_pvt_*``: PVT (v1), every block InLine over all tokens of its stage (the official ``attn_type='IIII'``
  with no spatial reduction): per stage a PxP patch embedding with LayerNorm and a learned position table (resampled
  bilinearly for other grids), no final norm, token-mean pooling.

Any input size works: DeiT pads the image to a multiple of 16 and resamples its position embedding; PVT pads each
patch embedding's input to a multiple of its patch and resamples its position tables; Swin pads to a multiple of 4,
pads odd maps before patch merging, and splits maps larger than 56 tokens per side into 56 x 56
windows anchored at the top-left plus smaller edge windows, each attending over its real tokens only. Unlike the
official code, InLine windows are never shifted (it rolls them by 28 tokens in odd blocks of maps larger than
56 without masking, a case its released models never meet).

Parameters, MACs (InLine counted as 2 N d^2 per head, at each model's training size) and top-1: README's model
table (the one place they are written, checked by tests/test_model_table.py).

``drop_path_rate`` defaults to 0; the official recipes train with 0.1 (DeiT) and 0.2 / 0.3 / 0.5 (Swin-T/S/B).

Weights: LeapLabTHU/InLine (TsinghuaCloud links); that repository has no LICENSE file (its Swin- and
timm-derived files keep their MIT headers), so the weights' terms are unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, PatchEmbed, resample_abs_pos_embed
from timm.models import generate_default_cfgs, register_model
from timm.models.swin_transformer import PatchMerging

from ..blocks import InjectiveLinearAttention, PredictedLocalResidual, WindowAttention
from ..ops.linear_attention import linear_attention
from ..weights import checkpoint_filter
from ._helpers import create_model, pad_to_multiple, rename_keys
from ._pyramid import PyramidModel, pyramid_stages
from ._vit import GridViT

__all__ = ["InLineCSwin", "InLineDeiT", "InLinePVT", "InLineSwin"]


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


class InLineDeiT(GridViT):
    """InLine-DeiT: timm's VisionTransformer (through :class:`GridViT`) with InLine attention in every block."""

    block_fn = InLineViTBlock


def _split(length: int, window: int) -> list[tuple[int, int, int]]:
    """(start, stop, window side) of the full windows of a side and of its remainder, if any."""
    full = length // window * window
    spans = [(0, full, window)] if full else []
    return spans + [(full, length, length - full)] if length > full else spans


def window_apply(x: torch.Tensor, window: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply ``fn`` to (B * n, wh, ww, C) batches of the window x window tiles of a (B, H, W, C) map, tiled from
    the top-left; bottom and right remainders form smaller windows, so every window holds real tokens only."""
    b, h, w, c = x.shape
    if h <= window and w <= window:
        return fn(x)
    rows = []
    for r0, r1, wh in _split(h, window):
        cols = []
        for c0, c1, ww in _split(w, window):
            nh, nw = (r1 - r0) // wh, (c1 - c0) // ww
            tiles = x[:, r0:r1, c0:c1].reshape(b, nh, wh, nw, ww, c).transpose(2, 3).reshape(-1, wh, ww, c)
            out = fn(tiles).reshape(b, nh, nw, wh, ww, c).transpose(2, 3).reshape(b, r1 - r0, c1 - c0, c)
            cols.append(out)
        rows.append(torch.cat(cols, dim=2))
    return torch.cat(rows, dim=1)


class InLineSwinBlock(nn.Module):
    """X = X + DropPath(Attn(LN(X))); X = X + DropPath(MLP(LN(X))) on (B, H, W, C) maps.

    Attn is InLine inside ``inline_window``-sided windows (over the whole map when None) when ``inline``, else
    Swin's (shifted) window softmax attention with a relative position bias in ``window_size`` windows.
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


class InLineSwin(PyramidModel):
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
            lambda i, j, dpr: InLineSwinBlock(dims[i], num_heads[i], inline=j < inline_depths[i],
                                              window_size=window_size, shift=j % 2 == 1, inline_window=inline_window,
                                              mlp_ratio=mlp_ratio, drop_path=dpr, **dd))
        super().__init__(stem, stages, nn.LayerNorm(dims[-1], **dd), dims, in_chans, num_classes, global_pool,
                         drop_rate, **dd)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Relative position bias tables, as the official recipe (``no_weight_decay_keywords``)."""
        return {name for name, _ in self.named_parameters() if name.endswith("relative_position_bias_table")}


def _stripes(x: torch.Tensor, mode: str, split: int) -> tuple[torch.Tensor, tuple]:
    """(B, H, W, C) -> (B * n, wh, ww, C) windows: the whole map (``'global'``), or vertical stripes H x ``split``
    (``'vertical'``) or horizontal ones ``split`` x W (``'horizontal'``), the split side zero-padded to a multiple
    of ``split``. Returns the windows and what :func:`_unstripe` needs."""
    b, h, w, c = x.shape
    if mode == "global":
        return x, (b, h, w, 1, 1)
    if mode == "vertical":
        x = F.pad(x, (0, 0, 0, -w % split))
        n = x.shape[2] // split
        return x.reshape(b, h, n, split, c).transpose(1, 2).reshape(b * n, h, split, c), (b, h, w, 1, n)
    x = F.pad(x, (0, 0, 0, 0, 0, -h % split))
    n = x.shape[1] // split
    return x.reshape(b * n, split, w, c), (b, h, w, n, 1)


def _unstripe(windows: torch.Tensor, layout: tuple) -> torch.Tensor:
    """Inverse of :func:`_stripes`: the (B, H, W, C) map, padding dropped."""
    b, h, w, n_rows, n_cols = layout
    _, wh, ww, c = windows.shape
    x = windows.reshape(b, n_rows, n_cols, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, n_rows * wh, n_cols * ww, c)
    return x[:, :h, :w]


class CSwinBranch(nn.Module):
    """One attention branch of a CSWin block on (B, H, W, C) q, k, v maps of its channels, in ``mode`` windows.

    Per window (N tokens): O = Attn(Q, K, V) + DWConv3x3(V), the LePE convolution zero outside the window. Attn is
    softmax(Q K^T / sqrt(d)) V over the window's real tokens, or, with ``inline``, InLine's injective linear
    attention plus its residual DWConv3x3_w(V) with kernels w predicted from ``x_mean`` (B, C), the mean of the
    block's input (InLine windows are the whole map).
    """

    def __init__(self, dim: int, num_heads: int, mode: str, split: int, inline: bool, device=None, dtype=None):
        super().__init__()
        if inline and mode != "global":
            raise ValueError("InLine branches attend over the whole map (mode='global')")
        dd = dict(device=device, dtype=dtype)
        self.num_heads, self.mode, self.split, self.inline = num_heads, mode, split, inline
        self.scale = (dim // num_heads) ** -0.5
        self.get_v = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        if inline:
            self.residual = PredictedLocalResidual(dim, num_heads, **dd)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape
        return x.reshape(n, h * w, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, x_mean: torch.Tensor) -> torch.Tensor:
        b, h, w, c = q.shape
        (q, layout), (k, _), (v, _) = (_stripes(t, self.mode, self.split) for t in (q, k, v))
        n, wh, ww, _ = q.shape
        v_map = v.permute(0, 3, 1, 2)
        lepe = self.get_v(v_map).permute(0, 2, 3, 1)
        if self.inline:
            out = linear_attention(self._heads(q), self._heads(k), self._heads(v), self.scale / (wh * ww),
                                   injective=True)
            out = out.transpose(1, 2).reshape(n, wh, ww, c)
            out = out + self.residual(v_map, x_mean).permute(0, 2, 3, 1)
        else:
            mask = None
            if (layout[3] * wh, layout[4] * ww) != (h, w):  # padded stripes: their padding is no key
                rows = torch.arange(layout[3] * wh, device=q.device).view(layout[3], wh, 1) < h
                cols = torch.arange(layout[4] * ww, device=q.device).view(layout[4], 1, ww) < w
                valid = (rows[:, None] & cols[None]).reshape(-1, wh * ww)
                mask = valid.repeat(b, 1)[:, None, None, :]
            out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v), attn_mask=mask)
            out = out.transpose(1, 2).reshape(n, wh, ww, c)
        return _unstripe(out + lepe, layout)


class InLineCSwinBlock(nn.Module):
    """X = X + DropPath(W_o [branches](LN(X) W_qkv)); X = X + DropPath(MLP(LN(X))) on (B, H, W, C) maps.

    One branch over the whole map (``stripes=False``) or two over half the channels and heads each, in vertical and
    horizontal stripes of ``split`` tokens (CSWin's cross-shaped windows); see :class:`CSwinBranch`.
    """

    def __init__(self, dim: int, num_heads: int, inline: bool, stripes: bool, split: int = 7,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.qkv = nn.Linear(dim, 3 * dim, **dd)
        modes = ("vertical", "horizontal") if stripes else ("global",)
        width, heads = dim // len(modes), num_heads // len(modes)
        self.attns = nn.ModuleList(CSwinBranch(width, heads, mode, split, inline, **dd) for mode in modes)
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


class ConvLNEmbed(nn.Module):
    """Conv k x k stride s (padding k // 2 - 1 for the stem, 1 for merging) + LayerNorm: (B, C_in, H, W) or
    (B, H, W, C_in) -> (B, ceil(H/s), ceil(W/s), C). The stem pads sides to a multiple of 4 first (the official stem
    drops a remainder)."""

    def __init__(self, in_chs: int, out_chs: int, stem: bool, device=None, dtype=None):
        super().__init__()
        self.stem = stem
        kernel, stride, padding = (7, 4, 2) if stem else (3, 2, 1)
        self.conv = nn.Conv2d(in_chs, out_chs, kernel, stride, padding, device=device, dtype=dtype)
        self.norm = nn.LayerNorm(out_chs, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_multiple(x, 4) if self.stem else x.permute(0, 3, 1, 2)
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


class InLineCSwin(PyramidModel):
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
        stem = ConvLNEmbed(in_chans, dims[0], stem=True, **dd)
        stages = pyramid_stages(
            depths, drop_path_rate, lambda i: ConvLNEmbed(dims[i - 1], dims[i], stem=False, **dd),
            lambda i, j, dpr: InLineCSwinBlock(dims[i], num_heads[i], inline=attn_types[i] == "I",
                                               stripes=attn_types[i] == "S" and i != last, split=split,
                                               mlp_ratio=mlp_ratio, drop_path=dpr, **dd))
        super().__init__(stem, stages, nn.LayerNorm(dims[-1], **dd), dims, in_chans, num_classes, global_pool,
                         drop_rate, **dd)


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
        if (h, w) != self.grid:
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(h, w), mode="bilinear").permute(0, 2, 3, 1)
        return x + pos


class InLinePVT(PyramidModel):
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
            lambda i, j, dpr: InLineSwinBlock(dims[i], num_heads[i], inline=True, inline_window=None,
                                              mlp_ratio=mlp_ratios[i], drop_path=dpr, eps=1e-6, **dd))
        super().__init__(stem, stages, nn.Identity(), dims, in_chans, num_classes, global_pool, drop_rate, **dd)
        for embed in [stem] + [stage.downsample for stage in self.stages[1:]]:
            nn.init.trunc_normal_(embed.pos_embed, std=0.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The position tables."""
        return {name for name, _ in self.named_parameters() if name.endswith("pos_embed")}


# Official Swin layout -> ours, first match wins.
_SWIN_RENAMES = [
    (r"^patch_embed\.", "stem."),
    (r"^layers\.(\d+)\.downsample\.", lambda m: f"stages.{int(m.group(1)) + 1}.downsample."),
    (r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks."),
    (r"^head\.", "head.fc."),
]


# Official PVT layout -> ours (q and kv are joined into qkv by the filter), first match wins.
_PVT_RENAMES = [
    (r"^patch_embed1\.", "stem."),
    (r"^pos_embed1$", "stem.pos_embed"),
    (r"^patch_embed(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}.downsample."),
    (r"^pos_embed(\d)$", lambda m: f"stages.{int(m.group(1)) - 1}.downsample.pos_embed"),
    (r"^block(\d)\.(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."),
    (r"^head\.", "head.fc."),
]


def _pvt_filter(state_dict: dict, model: InLinePVT) -> dict:
    """Official InLine-PVT keys -> ours: each attention's q and kv linears become one qkv linear ([q; k; v] rows),
    and position tables laid out for another input size are resampled to the model's."""
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


# Official CSWin layout -> ours, first match wins (block and branch keys are ours already).
_CSWIN_RENAMES = [
    (r"^stage1_conv_embed\.0\.", "stem.conv."),
    (r"^stage1_conv_embed\.2\.", "stem.norm."),
    (r"^merge(\d)\.", r"stages.\1.downsample."),
    (r"^stage(\d)\.(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."),
    (r"^head\.", "head.fc."),
]


@checkpoint_filter(InLineDeiT, InLineSwin, InLinePVT, InLineCSwin)
def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Map an official InLine checkpoint (weights under ``model`` or a raw state dict) onto visattn keys.

    DeiT keys are already ours: only the position embedding is resampled when the grid differs. PVT: see
    :func:`_pvt_filter`. CSWin: stem, merging and stage prefixes renamed. Swin: stages
    renamed, patch merging moved to the start of the next stage, relative position bias tables transposed to
    (heads, (2 ws - 1)**2), and the ``relative_position_index`` / ``attn_mask`` buffers dropped (ours are built
    per call). A state dict already in visattn's layout passes through.
    """
    state_dict = state_dict.get("model", state_dict)
    if isinstance(model, InLineDeiT):
        pos = state_dict.get("pos_embed")
        if pos is not None and pos.shape != model.pos_embed.shape:
            state_dict = dict(state_dict, pos_embed=resample_abs_pos_embed(
                pos, new_size=model.patch_embed.grid_size, num_prefix_tokens=model.num_prefix_tokens))
        return state_dict
    if isinstance(model, InLinePVT):
        return _pvt_filter(state_dict, model) if "patch_embed1.proj.weight" in state_dict else state_dict
    if isinstance(model, InLineCSwin):
        return rename_keys(state_dict, _CSWIN_RENAMES) if "stage1_conv_embed.0.weight" in state_dict else state_dict
    if "patch_embed.proj.weight" not in state_dict:
        return state_dict
    kept = {k: v for k, v in state_dict.items() if not k.endswith(("relative_position_index", "attn_mask"))}
    renamed = rename_keys(kept, _SWIN_RENAMES)
    return {k: v.t() if k.endswith("relative_position_bias_table") else v for k, v in renamed.items()}


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "crop_mode": "squash", "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "first_conv": "stem.proj",
        "classifier": "head.fc", "license": "unknown: LeapLabTHU/InLine has no LICENSE file",
        "paper_ids": "arXiv:2412.06590",
        "paper_name": "Bridging the Divide: Reconsidering Softmax and Linear Attention",
        "origin_url": "https://github.com/LeapLabTHU/InLine", **kwargs,
    }


def _deit_cfg(url: str, size: int) -> dict:
    return _cfg(url, input_size=(3, size, size), pool_size=None, first_conv="patch_embed.proj", classifier="head")


_TSINGHUA = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"

default_cfgs = generate_default_cfgs({
    "inline_deit_tiny.in1k": _deit_cfg(_TSINGHUA.format("1d6b8191ad6d4114b291"), 224),
    "inline_deit_small.in1k": _deit_cfg(_TSINGHUA.format("2f3898b07e9247f3beb3"), 288),
    "inline_deit_base.in1k": _deit_cfg(_TSINGHUA.format("10bdd726d4b0435eb34e"), 448),
    "inline_swin_tiny.in1k": _cfg(_TSINGHUA.format("32810869fcc34410966b")),
    "inline_swin_small.in1k": _cfg(_TSINGHUA.format("e9657fd247c04c7cb1a1")),
    "inline_swin_base.in1k": _cfg(_TSINGHUA.format("bf23564bb64c420aafe1")),
    "inline_cswin_tiny.in1k": _cfg(_TSINGHUA.format("49fa2ecc543647c4b970"), first_conv="stem.conv"),
    "inline_cswin_small.in1k": _cfg(_TSINGHUA.format("59f4e65f776f4052b93c"), first_conv="stem.conv"),
    "inline_cswin_base.in1k": _cfg(_TSINGHUA.format("91e17121df284ae38521"), first_conv="stem.conv"),
    "inline_pvt_tiny.in1k": _cfg(_TSINGHUA.format("90ac52b1555b401eb5e6")),
    "inline_pvt_small.in1k": _cfg(_TSINGHUA.format("1ab953b2479d433080a3")),
    "inline_pvt_medium.in1k": _cfg(_TSINGHUA.format("a72aec31e6084bc0a280")),
    "inline_pvt_large.in1k": _cfg(_TSINGHUA.format("efd91318ba964f01b288")),
})


def _create(model_cls: type, variant: str, pretrained: bool, args: dict, kwargs: dict) -> nn.Module:
    """``variant`` of ``model_cls`` with its architecture ``args``, which the caller's ``kwargs`` override."""
    return create_model(model_cls, variant, pretrained, dict(args, **kwargs))


def _create_deit(variant: str, pretrained: bool, img_size: int, kwargs: dict) -> InLineDeiT:
    return _create(InLineDeiT, variant, pretrained, dict(img_size=img_size, patch_size=16, depth=12, out_indices=3),
                   kwargs)


@register_model
def inline_deit_tiny(pretrained: bool = False, **kwargs) -> InLineDeiT:
    """InLine-DeiT-T @224: 192 dims, 6 heads, 12 blocks."""
    return _create_deit("inline_deit_tiny", pretrained, 224, dict(dict(embed_dim=192, num_heads=6), **kwargs))


@register_model
def inline_deit_small(pretrained: bool = False, **kwargs) -> InLineDeiT:
    """InLine-DeiT-S @288: 320 dims, 10 heads, 12 blocks."""
    return _create_deit("inline_deit_small", pretrained, 288, dict(dict(embed_dim=320, num_heads=10), **kwargs))


@register_model
def inline_deit_base(pretrained: bool = False, **kwargs) -> InLineDeiT:
    """InLine-DeiT-B @448: 384 dims, 12 heads, 12 blocks."""
    return _create_deit("inline_deit_base", pretrained, 448, dict(dict(embed_dim=384, num_heads=12), **kwargs))


@register_model
def inline_swin_tiny(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-T (IIIS): depths 2-2-6-2, dims 96-768."""
    args = dict(depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), inline_depths=(2, 2, 6, 0))
    return _create(InLineSwin, "inline_swin_tiny", pretrained, args, kwargs)


@register_model
def inline_swin_small(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-S (IISS): depths 2-2-18-2, dims 96-768."""
    args = dict(depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), inline_depths=(2, 2, 0, 0))
    return _create(InLineSwin, "inline_swin_small", pretrained, args, kwargs)


@register_model
def inline_swin_base(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-B (IIMS2): depths 2-2-18-2, dims 128-1024."""
    args = dict(depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), inline_depths=(2, 2, 2, 0), embed_dim=128)
    return _create(InLineSwin, "inline_swin_base", pretrained, args, kwargs)


@register_model
def inline_pvt_tiny(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-T: depths 2-2-2-2, dims 64-512."""
    return _create(InLinePVT, "inline_pvt_tiny", pretrained, dict(depths=(2, 2, 2, 2)), kwargs)


@register_model
def inline_pvt_small(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-S: depths 3-4-6-3, dims 64-512."""
    return _create(InLinePVT, "inline_pvt_small", pretrained, dict(depths=(3, 4, 6, 3)), kwargs)


@register_model
def inline_pvt_medium(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-M: depths 3-4-18-3, dims 64-512."""
    return _create(InLinePVT, "inline_pvt_medium", pretrained, dict(depths=(3, 4, 18, 3)), kwargs)


@register_model
def inline_pvt_large(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-L: depths 3-8-27-3, dims 64-512."""
    return _create(InLinePVT, "inline_pvt_large", pretrained, dict(depths=(3, 8, 27, 3)), kwargs)


@register_model
def inline_cswin_tiny(pretrained: bool = False, **kwargs) -> InLineCSwin:
    """InLine-CSwin-T (IISS): depths 2-4-18-1, dims 64-512."""
    return _create(InLineCSwin, "inline_cswin_tiny", pretrained, dict(depths=(2, 4, 18, 1)), kwargs)


@register_model
def inline_cswin_small(pretrained: bool = False, **kwargs) -> InLineCSwin:
    """InLine-CSwin-S (IISS): depths 3-6-29-2, dims 64-512."""
    return _create(InLineCSwin, "inline_cswin_small", pretrained, dict(depths=(3, 6, 29, 2)), kwargs)


@register_model
def inline_cswin_base(pretrained: bool = False, **kwargs) -> InLineCSwin:
    """InLine-CSwin-B (IISS): depths 3-6-29-2, dims 96-768."""
    args = dict(depths=(3, 6, 29, 2), num_heads=(4, 8, 16, 32), embed_dim=96)
    return _create(InLineCSwin, "inline_cswin_base", pretrained, args, kwargs)
