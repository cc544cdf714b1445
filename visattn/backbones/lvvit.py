"""LV-ViT: All Tokens Matter: Token Labeling for Training Better Vision Transformers (Jiang et al., NeurIPS 2021).

A ViT (class token, learned position embedding) with LV-ViT's three choices: a convolutional stem
(:class:`LVViTStem`, the official ``PatchEmbed4_2``: 7x7/2 and two 3x3 convolutions of 64 channels with BN and
ReLU, then an 8x8/8 projection), residual branches scaled down by ``skip_lam`` (X = X + F(X) / lambda, lambda = 2
for S and M) with MLP ratio 3 and no qkv bias, and the token-labelling head ``aux_head``, a classifier of every
patch token trained against the token labels.

Output, as the official ``forward``: in evaluation the class-token logits plus half the per-class maximum over the
patch tokens' ``aux_head`` logits, y = W_h x_cls + 0.5 max_i W_a x_i; in training the class-token logits alone (what
the official classification loss reads). ``forward_train`` (the model-training contract, :mod:`visattn.contract`)
gives those logits and the per-token ``aux_head`` logits (B, H*W, classes) as the extras ``token_logits`` (what
token labelling scores) and ``tokens`` (what token distillation matches: Sparsifiner's LV-ViT recipe distils these
logits of its dense teacher).

Token labelling proper needs the dense label maps (NFNet-F6 scores per 14x14 cell of each ImageNet image) that the
official repository distributes separately; visattn ships none and its classification task reads class folders
only, so it scores every token's logits against its image's label (the ``token_label`` loss), which is what the
official loss does when it is given no maps. MixToken (the official training-time patch mixing) is not
implemented. Any input size works: the image is padded to a multiple of 16 and the position embedding resampled.

Weights: the TokenLabeling release checkpoints (zihangJiang/TokenLabeling, Apache-2.0) load as they are
(timm training checkpoints, ``state_dict`` inside). Parameters and MACs: README's model table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention, Mlp, resample_abs_pos_embed, to_2tuple
from timm.models import generate_default_cfgs, register_model

from ..contract import TrainOutput
from ..weights import checkpoint_filter
from ._helpers import create_model
from ._vit import GridViT, ScaledResidualBlock

__all__ = ["LVViT", "LVViTBlock", "LVViTStem"]

TOKEN_LABELING_URL = "https://github.com/zihangJiang/TokenLabeling/releases/download/1.0/"


class LVViTStem(nn.Module):
    """LV-ViT's patch embedding (``PatchEmbed4_2``): (B, C_in, H, W) -> (B, H/p, W/p, D) (NHWC, timm's
    ``output_fmt``; or (B, D, H/p, W/p)), p the patch size (16).

        X -> ReLU(BN(Conv7x7/2(X))) -> ReLU(BN(Conv3x3(.))) -> ReLU(BN(Conv3x3(.))) -> Conv(p/2 x p/2, stride p/2)

    the convolutions with ``stem_chs`` (64) channels and no bias. Takes timm's ``embed_layer`` arguments; with
    ``dynamic_img_pad`` the image is padded to a multiple of p on the bottom and right first.
    """

    def __init__(self, img_size: int | tuple[int, int] | None = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 384, stem_chs: int = 64, bias: bool = True, output_fmt: str | None = None,
                 strict_img_size: bool = True, dynamic_img_pad: bool = False, device=None, dtype=None):
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        if any(p % 2 for p in self.patch_size):
            raise ValueError(f"patch_size={patch_size}: LV-ViT's stem halves the image first, use an even size")
        self.img_size = None if img_size is None else to_2tuple(img_size)
        self.grid_size = None if img_size is None else tuple(
            s // p for s, p in zip(self.img_size, self.patch_size, strict=True))
        self.num_patches = None if img_size is None else self.grid_size[0] * self.grid_size[1]
        self.output_fmt = output_fmt or "NCHW"
        if self.output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt={output_fmt!r}; LV-ViT's stem gives 'NCHW' or 'NHWC'")
        self.strict_img_size, self.dynamic_img_pad = strict_img_size, dynamic_img_pad
        dd = dict(device=device, dtype=dtype)
        self.conv1 = nn.Conv2d(in_chans, stem_chs, 7, stride=2, padding=3, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(stem_chs, **dd)
        self.conv2 = nn.Conv2d(stem_chs, stem_chs, 3, padding=1, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(stem_chs, **dd)
        self.conv3 = nn.Conv2d(stem_chs, stem_chs, 3, padding=1, bias=False, **dd)
        self.bn3 = nn.BatchNorm2d(stem_chs, **dd)
        half = tuple(p // 2 for p in self.patch_size)
        self.proj = nn.Conv2d(stem_chs, embed_dim, half, stride=half, bias=bias, **dd)

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        return max(self.patch_size) if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """The token grid of an ``img_size`` image."""
        (h, w), (ph, pw) = img_size, self.patch_size
        return (math.ceil(h / ph), math.ceil(w / pw)) if self.dynamic_img_pad else (h // ph, w // pw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.strict_img_size and self.img_size is not None and (h, w) != self.img_size:
            raise ValueError(f"input {h}x{w} is not the model's {self.img_size[0]}x{self.img_size[1]}")
        if self.dynamic_img_pad:
            x = F.pad(x, (0, -w % self.patch_size[1], 0, -h % self.patch_size[0]))
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.proj(F.relu(self.bn3(self.conv3(x))))
        return x.permute(0, 2, 3, 1) if self.output_fmt == "NHWC" else x


class LVViTBlock(ScaledResidualBlock):
    """X = X + DropPath(Attn(LN(X))) / lambda; X = X + DropPath(MLP(LN(X))) / lambda (lambda = ``skip_lam``).

    Shapes: (B, 1 + H*W, C) -> same (``size`` = (H, W) is taken for the :class:`GridViT` loop). Takes timm's
    ``block_fn`` arguments; the options LV-ViT lacks (qk norm, layer scale, ...) are errors.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 3.0, qkv_bias: bool = False,
                 proj_bias: bool = True, proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 norm_layer: Callable = nn.LayerNorm, act_layer: Callable = nn.GELU, mlp_layer: Callable = Mlp,
                 skip_lam: float = 1.0, device=None, dtype=None, **kwargs):
        attn = partial(Attention, dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, attn_drop=attn_drop,
                       proj_drop=proj_drop)
        super().__init__("LV-ViT", dim, attn, mlp_ratio, proj_bias, proj_drop, drop_path, norm_layer, act_layer,
                         mlp_layer, skip_lam, ("qk_norm", "scale_attn_norm", "scale_mlp_norm", "init_values"), kwargs,
                         device, dtype)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.residual(x, self.attn(self.norm1(x)))
        return self.residual(x, self.mlp(self.norm2(x)))


class TokenLabelingHead:
    """LV-ViT's classifier (a mixin before :class:`GridViT`): the class-token ``head`` and the token-labelling
    ``aux_head`` over the patch tokens (absent with ``num_classes=0``)."""

    aux_head: nn.Module | None
    # trained by the token losses only (token labels, token distillation): no gradient from the training logits
    aux_loss_keys = r"^aux_head\."

    def _make_aux_head(self, num_classes: int) -> None:
        dd = dict(device=self.cls_token.device, dtype=self.cls_token.dtype)
        self.aux_head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else None
        if self.aux_head is not None:
            self.aux_head.train(self.training)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        self._make_aux_head(num_classes)

    def token_logits(self, x: torch.Tensor) -> torch.Tensor | None:
        """Normed tokens (B, 1 + H*W, C) -> the patch tokens' ``aux_head`` logits (B, H*W, classes), or None."""
        # the head on every token, then the patch rows: a linear layer on the strided slice would make a traced
        # program guard on the batch being other than 1
        return None if self.aux_head is None else self.aux_head(x)[:, self.num_prefix_tokens:]

    def train_extras(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The token extras of ``forward_train``: ``token_logits``, the per-token ``aux_head`` logits
        (B, H*W, classes) token labelling scores, and ``tokens`` (what token distillation matches) the same logits,
        or the normed patch tokens (B, H*W, C) without a classifier."""
        logits = self.token_logits(x)
        if logits is None:
            return {"tokens": x[:, self.num_prefix_tokens:]}
        return {"tokens": logits, "token_logits": logits}

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Normed tokens (B, 1 + H*W, C) -> logits (B, classes): the class token's, plus in evaluation half the
        per-class maximum of the patch tokens' ``aux_head`` logits (the official output)."""
        logits = super().forward_head(x, pre_logits)
        if pre_logits or self.training or self.aux_head is None:
            return logits
        return logits + 0.5 * self.token_logits(x).amax(dim=1)


class LVViT(TokenLabelingHead, GridViT):
    """LV-ViT on timm's VisionTransformer (through :class:`GridViT`): :class:`LVViTStem`, :class:`LVViTBlock`
    blocks and the token-labelling ``aux_head``.

    Args:
        skip_lam: lambda, the residual branches' divisor (2 for S and M).
        stem_chs: the stem's convolution channels (64).
        **kwargs: timm's VisionTransformer arguments (``mlp_ratio`` 3 and no qkv bias by default); exactly one
            prefix token (the class token), class-token pooling.
    """

    block_fn = LVViTBlock

    def __init__(self, skip_lam: float = 1.0, stem_chs: int = 64, **kwargs):
        one_token = kwargs.get("class_token", True) and not kwargs.get("reg_tokens")
        if not one_token or kwargs.get("global_pool", "token") != "token":
            raise ValueError("LV-ViT needs exactly one prefix token, the class token, and class-token pooling")
        kwargs.setdefault("mlp_ratio", 3.0)
        kwargs.setdefault("qkv_bias", False)
        kwargs.setdefault("norm_layer", nn.LayerNorm)  # eps 1e-5, the official (timm's ViT default is 1e-6)
        kwargs.setdefault("block_fn", partial(self.block_fn, skip_lam=skip_lam))
        kwargs.setdefault("embed_layer", partial(LVViTStem, stem_chs=stem_chs))
        super().__init__(**kwargs)
        self._make_aux_head(self.num_classes)
        if self.aux_head is not None:
            nn.init.trunc_normal_(self.aux_head.weight, std=0.02)
            nn.init.zeros_(self.aux_head.bias)

    def forward_train(self, x: torch.Tensor) -> TrainOutput:
        """``forward``'s logits and the token extras (:meth:`train_extras`)."""
        x = self.forward_features(x)
        return TrainOutput(self.forward_head(x), extras=self.train_extras(x))


@checkpoint_filter(LVViT)
def checkpoint_filter_fn(state_dict: dict, model: LVViT) -> dict:
    """Map a TokenLabeling LV-ViT checkpoint (its keys are already ours) onto the model: the position embedding is
    resampled when the checkpoint's token grid differs from the model's."""
    grid = model.patch_embed.grid_size
    out = dict(state_dict)
    pos = out.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape:
        out["pos_embed"] = resample_abs_pos_embed(pos, new_size=grid, num_prefix_tokens=1)
    return out


def lvvit_cfg(url: str = "", **kwargs) -> dict:
    """A pretrained cfg of LV-ViT's layout (``first_conv`` the stem's, both classifiers)."""
    return {"url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.9,
            "crop_mode": "center", "interpolation": "bicubic", "fixed_input_size": False,
            "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "first_conv": "patch_embed.conv1",
            "classifier": ("head", "aux_head"), "license": "apache-2.0", "paper_ids": "arXiv:2104.10858",
            "paper_name": "All Tokens Matter: Token Labeling for Training Better Vision Transformers",
            "origin_url": "https://github.com/zihangJiang/TokenLabeling", **kwargs}


default_cfgs = generate_default_cfgs({
    "lvvit_small.in1k": lvvit_cfg(TOKEN_LABELING_URL + "lvvit_s-26M-224-83.3.pth.tar"),
    "lvvit_medium.in1k": lvvit_cfg(TOKEN_LABELING_URL + "lvvit_m-56M-224-84.0.pth.tar", crop_pct=1.0),
    "test_lvvit": lvvit_cfg(input_size=(3, 64, 64)),
})

SMALL = dict(img_size=224, patch_size=16, embed_dim=384, depth=16, num_heads=6, mlp_ratio=3.0, skip_lam=2.0)
MEDIUM = dict(img_size=224, patch_size=16, embed_dim=512, depth=20, num_heads=8, mlp_ratio=3.0, skip_lam=2.0)
TINY = dict(img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=2, mlp_ratio=3.0, skip_lam=2.0,
            stem_chs=8)


@register_model
def lvvit_small(pretrained: bool = False, **kwargs) -> LVViT:
    """LV-ViT-S @224: 384 dims, 6 heads, 16 blocks, MLP ratio 3, lambda 2 (26.2 M parameters)."""
    return create_model(LVViT, "lvvit_small", pretrained, dict(dict(SMALL, out_indices=3), **kwargs))


@register_model
def lvvit_medium(pretrained: bool = False, **kwargs) -> LVViT:
    """LV-ViT-M @224: 512 dims, 8 heads, 20 blocks, MLP ratio 3, lambda 2 (55.8 M parameters)."""
    return create_model(LVViT, "lvvit_medium", pretrained, dict(dict(MEDIUM, out_indices=3), **kwargs))


@register_model
def test_lvvit(pretrained: bool = False, **kwargs) -> LVViT:
    """Tiny LV-ViT for tests: 4 blocks of 32 dims and 2 heads, an 8-channel stem, on a 4x4 patch grid (64x64)."""
    return create_model(LVViT, "test_lvvit", pretrained, dict(dict(TINY, out_indices=3), **kwargs), tag="")
