"""HER-Seg (Xu et al., arXiv 2504.06205; official code xq141839/HER-Seg, Apache-2.0): high-resolution medical
image segmentation with a non-hierarchical gated linear-attention encoder and a prompt-free SAM-style decoder.

- Encoder: a 16 x 16 / 16 patch embedding to C = 96 channels, then four stages at 1/16 resolution and one width:
  2 MBConv blocks (expand 2, BN, GELU) and 2 / 6 / 2 dual-gated linear-attention blocks (6 / 12 / 24 heads,
  MLP ratio 2, drop path 0.1 across the 12 blocks).
- Neck: 1 x 1 conv C -> 256, LayerNorm2d, 3 x 3 conv, LayerNorm2d.
- Decoder: the prompt-free two-way transformer (depth 2, width 256, 8 heads) and 4x upsampling, then a bilinear
  resize to the input size: per-pixel logits (B, num_classes, H, W).

Any input size works: the image is zero-padded to a multiple of 16 and the logits are cropped back. The official
model stores its 2-D RoPE angles for a 64 x 64 grid (1024 x 1024 inputs only); here they are computed per map.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.models import generate_default_cfgs, register_model

from ..blocks.dual_gated_attention import DualGatedLinearAttentionBlock
from ..blocks.mask_decoder import PromptFreeMaskDecoder
from ._helpers import create_model, init_linear_weights

__all__ = ["HerSeg", "checkpoint_filter_fn"]

TASK = "segmentation"
PATCH = 16


class _ConvBN(nn.Sequential):
    """Conv2d without bias, then BatchNorm (keys ``c``, ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, groups: int = 1, bn_weight: float = 1.0):
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))
        nn.init.constant_(self.bn.weight, bn_weight)


class MBConv(nn.Module):
    """Inverted residual: GELU(x + BN(1x1(GELU(BN(dw3x3(GELU(BN(1x1 x)))))))); (B, C, H, W) -> same."""

    def __init__(self, dim: int, expand_ratio: float = 2.0):
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = _ConvBN(dim, hidden)
        self.conv2 = _ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = _ConvBN(hidden, dim, bn_weight=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(x + self.conv3(y))


class _Stage(nn.Module):
    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class HerSeg(nn.Module):
    """HER-Seg: (B, in_chans, H, W) images -> (B, num_classes, H, W) per-pixel logits."""

    def __init__(self, num_classes: int = 1, in_chans: int = 3, embed_dim: int = 96,
                 depths: tuple[int, ...] = (2, 2, 6, 2), num_heads: tuple[int, ...] = (3, 6, 12, 24),
                 mlp_ratio: float = 2.0, drop_path_rate: float = 0.1, decoder_dim: int = 256,
                 decoder_depth: int = 2, decoder_heads: int = 8, num_mask_tokens: int = 3, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"HerSeg got unexpected arguments: {', '.join(sorted(kwargs))}")
        self.num_classes = num_classes
        self.num_features = embed_dim
        self.grad_checkpointing = False
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, PATCH, PATCH)
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear in depth, from 0
        layers = [_Stage([MBConv(embed_dim, mlp_ratio) for _ in range(depths[0])])]
        for i in range(1, len(depths)):
            start = sum(depths[:i])
            layers.append(_Stage([DualGatedLinearAttentionBlock(embed_dim, num_heads[i], mlp_ratio, rates[start + j])
                                  for j in range(depths[i])]))
        self.layers = nn.ModuleList(layers)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, decoder_dim, 1, bias=False), LayerNorm2d(decoder_dim, eps=1e-6),
            nn.Conv2d(decoder_dim, decoder_dim, 3, padding=1, bias=False), LayerNorm2d(decoder_dim, eps=1e-6),
        )
        self.mask_decoder = PromptFreeMaskDecoder(decoder_dim, num_classes, num_mask_tokens, decoder_depth,
                                                  decoder_heads, mlp_dim=decoder_dim)
        self.apply(init_linear_weights)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^patch_embed", blocks=r"^layers\.(\d+)" if coarse else r"^layers\.(\d+)\.blocks\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        self.mask_decoder.transformer.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.mask_decoder.output_hypernetworks_mlps

    def reset_classifier(self, num_classes: int) -> None:
        """New per-class hypernetwork MLPs for ``num_classes`` output channels (at least 1)."""
        if num_classes < 1:
            raise ValueError(f"a segmentation model needs num_classes >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.mask_decoder.reset_classes(num_classes)
        self.mask_decoder.output_hypernetworks_mlps.apply(init_linear_weights)

    def _run(self, block: nn.Module, *args) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W), H and W multiples of 16 -> neck embedding (B, decoder_dim, H / 16, W / 16)."""
        x = self.patch_embed.proj(x)
        b, c, h, w = x.shape
        for block in self.layers[0].blocks:
            x = self._run(block, x)
        x = x.flatten(2).transpose(1, 2)
        for stage in self.layers[1:]:
            for block in stage.blocks:
                x = self._run(block, x, h, w)
        return self.neck(x.transpose(1, 2).reshape(b, c, h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"HerSeg expects (B, C, H, W) images, got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % PATCH, -width % PATCH
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        masks = self.mask_decoder(self.forward_features(x))
        masks = F.interpolate(masks, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return masks[..., :height, :width]


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


default_cfgs = generate_default_cfgs({"herseg.untrained": _cfg()})


@register_model
def herseg(pretrained: bool = False, **kwargs) -> HerSeg:
    """HER-Seg as released (dim 96, stages 2 / 2 / 6 / 2), 8.2 GMACs at 1024 x 1024. ``pretrained=True`` loads
    an official-layout or visattn checkpoint given as ``pretrained_cfg_overlay=dict(file=PATH)`` (no weights are
    published for download)."""
    if kwargs.get("features_only"):
        raise ValueError("herseg is a segmentation network: features_only is not supported; use forward_features")
    return create_model(HerSeg, "herseg", pretrained, kwargs, filter_fn=checkpoint_filter_fn, tag="untrained")
