"""HER-Seg (Xu et al., arXiv 2504.06205; official code xq141839/HER-Seg, Apache-2.0): high-resolution medical
image segmentation with a non-hierarchical gated linear-attention encoder and a prompt-free SAM-style decoder.

- Encoder: a 16 x 16 / 16 patch embedding to C = 96 channels, then four stages at 1/16 resolution and one width:
  2 MBConv blocks (expand 2, BN, GELU) and 2 / 6 / 2 dual-gated linear-attention blocks (6 / 12 / 24 heads,
  MLP ratio 2, drop path 0.1 across the 12 blocks).
- Neck: 1 x 1 conv C -> 256, LayerNorm2d, 3 x 3 conv, LayerNorm2d.
- Decoder: the prompt-free two-way transformer (depth 2, width 256, 8 heads) and 4x upsampling, then a bilinear
  resize to the input size: per-pixel logits (B, num_classes, H, W).

The encoder serves timm's feature API as timm's SAM ViT does: ``forward_features`` gives the neck embedding,
``features_only`` / ``forward_intermediates`` the four stage outputs (C channels, stride 16), the neck counting as
the final norm. Any input size works: the image is zero-padded to a multiple of 16 and the logits are cropped back.
The official model stores its 2-D RoPE angles for a 64 x 64 grid (1024 x 1024 inputs only); here they are computed
per map.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d, calculate_drop_path_rates
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ..blocks import DualGatedLinearAttentionBlock, PromptFreeMaskDecoder, maybe_checkpoint, pad_to_multiple
from ..blocks.dual_gated_attention import rope_2d_angles
from ..contract import Inspectable
from ..weights import PretrainedMixin, checkpoint_filter
from ._helpers import check_images, check_segmentation_classes, create_model, init_linear_weights

__all__ = ["HerSeg", "checkpoint_filter_fn"]

MODEL_KIND = "segmentation"
PATCH = 16
ROPE_BASE = 10000.0


class _ConvBN(nn.Sequential):
    """Conv2d without bias, then BatchNorm (keys ``c``, ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, groups: int = 1, bn_weight: float = 1.0, device=None,
                 dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.add_module("c", nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False, **dd))
        self.add_module("bn", nn.BatchNorm2d(cout, **dd))
        nn.init.constant_(self.bn.weight, bn_weight)


class MBConv(nn.Module):
    """Inverted residual: GELU(x + BN(1x1(GELU(BN(dw3x3(GELU(BN(1x1 x)))))))); (B, C, H, W) -> same."""

    def __init__(self, dim: int, expand_ratio: float = 2.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden = int(dim * expand_ratio)
        self.conv1 = _ConvBN(dim, hidden, **dd)
        self.conv2 = _ConvBN(hidden, hidden, 3, groups=hidden, **dd)
        self.conv3 = _ConvBN(hidden, dim, bn_weight=0.0, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(x + self.conv3(y))


class _Stage(nn.Module):
    """Blocks on a (B, C, h, w) map -> same; ``tokens``: dual-gated attention blocks that run on its (B, h*w, C)
    tokens, the grid and the 2-D RoPE tables, computed once for all of them."""

    def __init__(self, blocks: list[nn.Module], tokens: bool):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.tokens = tokens
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        grid = (h, w, rope_2d_angles(h, w, c, ROPE_BASE, x.device)) if self.tokens else ()
        if self.tokens:
            x = x.flatten(2).transpose(1, 2)
        for block in self.blocks:
            x = maybe_checkpoint(block, x, *grid, enabled=self.grad_checkpointing)
        return x.transpose(1, 2).reshape(b, c, h, w) if self.tokens else x


class HerSeg(Inspectable, PretrainedMixin, nn.Module):
    """HER-Seg: (B, in_chans, H, W) images -> (B, num_classes, H, W) per-pixel logits."""

    def __init__(self, num_classes: int = 1, in_chans: int = 3, embed_dim: int = 96,
                 depths: tuple[int, ...] = (2, 2, 6, 2), num_heads: tuple[int, ...] = (3, 6, 12, 24),
                 mlp_ratio: float = 2.0, drop_path_rate: float = 0.1, decoder_dim: int = 256,
                 decoder_depth: int = 2, decoder_heads: int = 8, num_mask_tokens: int = 3, device=None, dtype=None):
        super().__init__()
        check_segmentation_classes(num_classes)
        dd = dict(device=device, dtype=dtype)
        self.num_classes, self.in_chans = num_classes, in_chans
        self.num_features = decoder_dim
        self.head_hidden_size = decoder_dim // 8  # the upscaled per-pixel embedding the class hypernetworks read
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, PATCH, PATCH, **dd)
        # linear in depth from 0 over all blocks, as the official code; the MBConv blocks take no drop path
        rates = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        layers = [_Stage([MBConv(embed_dim, mlp_ratio, **dd) for _ in range(depths[0])], tokens=False)]
        layers += [_Stage([DualGatedLinearAttentionBlock(embed_dim, num_heads[i], mlp_ratio, rates[i][j],
                                                         rope_base=ROPE_BASE, **dd)
                           for j in range(depths[i])], tokens=True) for i in range(1, len(depths))]
        self.layers = nn.ModuleList(layers)
        self.feature_info = [dict(num_chs=embed_dim, num_chs_norm=decoder_dim, reduction=PATCH, module=f"layers.{i}")
                             for i in range(len(depths))]
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, decoder_dim, 1, bias=False, **dd), LayerNorm2d(decoder_dim, eps=1e-6, **dd),
            nn.Conv2d(decoder_dim, decoder_dim, 3, padding=1, bias=False, **dd),
            LayerNorm2d(decoder_dim, eps=1e-6, **dd),
        )
        self.mask_decoder = PromptFreeMaskDecoder(decoder_dim, num_classes, num_mask_tokens, decoder_depth,
                                                  decoder_heads, mlp_dim=decoder_dim, **dd)
        self.apply(init_linear_weights)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^patch_embed", blocks=r"^layers\.(\d+)" if coarse else r"^layers\.(\d+)\.blocks\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.layers:
            stage.grad_checkpointing = enable
        if isinstance(self.mask_decoder, PromptFreeMaskDecoder):
            self.mask_decoder.transformer.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The per-class hypernetwork MLPs; an Identity once ``prune_intermediate_layers`` removed the decoder."""
        return getattr(self.mask_decoder, "output_hypernetworks_mlps", nn.Identity())

    def reset_classifier(self, num_classes: int) -> None:
        """New per-class hypernetwork MLPs for ``num_classes`` output channels (at least 1)."""
        check_segmentation_classes(num_classes)
        if not isinstance(self.mask_decoder, PromptFreeMaskDecoder):
            raise ValueError("the mask decoder was pruned (prune_intermediate_layers(prune_head=True)); build a new "
                             "model to classify pixels again")
        self.num_classes = num_classes
        self.mask_decoder.reset_classes(num_classes)
        self.mask_decoder.output_hypernetworks_mlps.apply(init_linear_weights)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W), zero-padded to multiples of 16 -> (B, embed_dim, ceil(H / 16), ceil(W / 16))."""
        check_images(self, x)
        return self.patch_embed.proj(pad_to_multiple(x, PATCH))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Encoder stage outputs in ``indices`` as (B, embed_dim, H / 16, W / 16) maps (through the neck when
        ``norm``), and the neck embedding of the last stage run unless ``intermediates_only``."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r} is not supported; features are 'NCHW'")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        layers = self.layers[: max_index + 1] if stop_early and not torch.jit.is_scripting() else self.layers
        x = self._embed(x)
        intermediates = []
        for i, stage in enumerate(layers):
            x = stage(x)
            if i in take_indices:
                intermediates.append(self.neck(x) if norm else x)
        return intermediates if intermediates_only else (self.neck(x), intermediates)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Keep the stages up to the last of ``indices``; ``prune_norm`` drops the neck, ``prune_head`` the mask
        decoder (``forward`` then returns the upsampled embedding)."""
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[: max_index + 1]
        if prune_norm:
            self.neck = nn.Identity()
            self.num_features = self.feature_info[0]["num_chs"]
            for info in self.feature_info:
                info["num_chs_norm"] = info["num_chs"]
        if prune_head:
            self.mask_decoder = nn.Identity()
            self.num_classes = 0
            self.head_hidden_size = self.num_features  # forward returns the upsampled embedding
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> neck embedding (B, decoder_dim, ceil(H / 16), ceil(W / 16))."""
        x = self._embed(x)
        for stage in self.layers:
            x = stage(x)
        return self.neck(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masks = self.mask_decoder(self.forward_features(x))
        height, width = x.shape[-2:]
        padded = (height + -height % PATCH, width + -width % PATCH)
        masks = F.interpolate(masks, size=padded, mode="bilinear", align_corners=False)
        return masks[..., :height, :width]


@checkpoint_filter(HerSeg)
def checkpoint_filter_fn(state_dict: dict, model: HerSeg) -> dict:
    """Map an official HER-Seg (``MHRMedSeg``) checkpoint onto :class:`HerSeg`.

    Renames ``image_encoder.*`` to the encoder's keys and ``prompt_encoder.{no_mask_embed,
    pe_layer.positional_encoding_gaussian_matrix}`` into the decoder; drops the stored RoPE angles (recomputed for
    every input size), the prompt encoder's point/box/mask embeddings (never used without prompts) and the
    hypernetwork MLPs beyond ``model.num_classes`` (the official forward keeps mask 0 only).
    """
    state_dict = state_dict.get("model", state_dict.get("state_dict", state_dict))
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith("image_encoder."):
            if key.endswith("attn.rope.rotations"):
                continue
            out[key.removeprefix("image_encoder.")] = value
        elif key == "prompt_encoder.no_mask_embed.weight":
            out["mask_decoder.no_mask_embed.weight"] = value
        elif key == "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix":
            out["mask_decoder.pe_gaussian"] = value
        elif key.startswith("mask_decoder.output_hypernetworks_mlps."):
            if int(key.split(".")[2]) < model.num_classes:
                out[key] = value
        elif not key.startswith("prompt_encoder."):
            out[key] = value
    return out


def _cfg(**kwargs) -> dict:
    return {
        "url": "", "num_classes": 1, "input_size": (3, 1024, 1024), "pool_size": None, "crop_pct": 1.0,
        "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "patch_embed.proj", "classifier": "mask_decoder.output_hypernetworks_mlps",
        "license": "apache-2.0", "paper_ids": "arXiv:2504.06205",
        "paper_name": "HER-Seg: Holistically Efficient Segmentation for High-Resolution Medical Images",
        "origin_url": "https://github.com/xq141839/HER-Seg", **kwargs,
    }


default_cfgs = generate_default_cfgs({"herseg.untrained": _cfg(), "test_herseg": _cfg(input_size=(3, 64, 64))})


@register_model
def herseg(pretrained: bool = False, **kwargs) -> HerSeg:
    """HER-Seg as released (dim 96, stages 2 / 2 / 6 / 2). ``pretrained=True`` loads
    an official-layout or visattn checkpoint given as ``pretrained_cfg_overlay=dict(file=PATH)`` (no weights are
    published for download)."""
    return create_model(HerSeg, "herseg", pretrained, kwargs, tag="untrained")


@register_model
def test_herseg(pretrained: bool = False, **kwargs) -> HerSeg:
    """Tiny HER-Seg for tests: dim 32, one block per stage (an MBConv stage, then three dual-gated linear attention
    stages of 2 heads), a one-layer mask decoder of 32 dims with 2 mask tokens."""
    args = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 2), decoder_dim=32, decoder_depth=1,
                decoder_heads=2, num_mask_tokens=2)
    return create_model(HerSeg, "test_herseg", pretrained, dict(args, **kwargs), tag="")
