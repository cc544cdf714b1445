"""FSG-Net (Seo et al., "Full-scale Representation Guided Network for Retinal Vessel Segmentation", arXiv 2501.18921;
official code ZombaSY/FSG-Net-pytorch, no LICENSE file): a ConvNeXt-style U-Net whose decoder filters each deeper
feature with an attention-guided filter.

- Encoder (feature representation): four levels at strides 1, 2, 4, 8. Level 1 is M_Conv (k x k conv, BN, ReLU) and
  3 ConvNext blocks plus an M_Conv skip; levels 2-4 start with a 2 x 2 stride-2 conv, then 3 / 9 / 3 ConvNext blocks
  (depthwise k x k, BatchNorm, 1 x 1 to 4C, ReLU, 1 x 1, layer scale 1e-6, DropBlock(7, 0.5), residual). The input
  pyramid (x, x/2, x/4, bilinear) enters levels 1-3 through an M_Conv 3 x 3, concatenated: 2C, 4C, 8C channels. The
  deepest map (8C) goes through a CBAM-style spatial attention, sigmoid(conv7x7([mean_c; max_c])).
- Decoder (guided convolution blocks, levels 3, 2, 1): F = M_Conv1x1([skip; up(previous F)]), F_s = F at half size,
  the gate alpha = sigmoid(BN(psi(ReLU(theta(F_s) + phi(g))))) with g the deeper decoder output, the
  attention-guided filter (radius 2, eps 1e-2; :func:`visattn.ops.guided_filter.attention_guided_filter`) of g guided
  by F_s and applied to F, then a pre-activation residual conv block halving the channels (8C -> 4C -> 2C -> C).
- Heads: a 1 x 1 conv on each of the three decoder outputs, upsampled to the input size (deep supervision).

``forward`` returns per-pixel logits (B, num_classes, H, W) in eval mode and the three deep-supervision logits
(main first, then the 1/2 and 1/4 resolution decoder levels) in training; the official model applies a sigmoid.
Any input size works (at least 8 x 8; smaller inputs are zero-padded and cropped back): every level is the floor
half of the one above, as the official code computes it. ``fsgnet_nogrm`` is the paper's ablation without the
guided refinement: no spatial attention, no gates or filters, and a decoder of residual blocks on upsampled deeper
features only.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function, register_notrace_module
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ..blocks import maybe_checkpoint
from ..contract import TrainOutput
from ..ops.guided_filter import attention_guided_filter
from ..weights import PretrainedMixin, checkpoint_filter
from ._helpers import check_images, check_segmentation_classes, create_model

register_notrace_function(attention_guided_filter)  # one call in torch.fx graphs: it checks its arguments' sizes

__all__ = ["FSGNet", "checkpoint_filter_fn"]

MODEL_KIND = "segmentation"
MIN_SIZE = 8  # the deepest level is 1/8 of the input


@register_notrace_function  # one call in torch.fx graphs (FX wraps only public names)
def pad_to_min_size(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) zero-padded at the bottom and right to at least MIN_SIZE x MIN_SIZE."""
    pad_h, pad_w = max(MIN_SIZE - x.shape[-2], 0), max(MIN_SIZE - x.shape[-1], 0)
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


@register_notrace_function  # one call in torch.fx graphs (FX wraps only public names)
def resize_to(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize with aligned corners (the official choice everywhere); the same size returns ``x``."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear",
                                                                      align_corners=True)


@register_notrace_module
class DropBlock(nn.Module):
    """DropBlock as FSG-Net applies it: in training, square ``block_size`` blocks are zeroed per channel, their centres
    drawn with rate gamma = drop_prob / block_size^2 * HW / ((H - bs + 1)(W - bs + 1)) among the positions whose
    block lies inside the map, and the rest is rescaled by numel / kept. timm's DropBlock2d draws centres over the
    whole map with another rate, so it is not used. Blocks are clipped to maps smaller than ``block_size``."""

    def __init__(self, block_size: int = 7, drop_prob: float = 0.5):
        super().__init__()
        self.block_size = block_size
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.drop_prob:
            return x
        b, c, h, w = x.shape
        kh, kw = min(self.block_size, h), min(self.block_size, w)
        valid = (h - kh + 1, w - kw + 1)
        gamma = self.drop_prob / (kh * kw) * (h * w) / (valid[0] * valid[1])
        with torch.no_grad():
            centres = torch.bernoulli(torch.full((b, c, *valid), gamma, device=x.device, dtype=torch.float32))
            # a drawn position is the top-left corner of a block: spread it over the block's kh x kw pixels
            keep = 1 - F.max_pool2d(F.pad(centres, (kw - 1, kw - 1, kh - 1, kh - 1)), (kh, kw), stride=1)
            keep *= keep.numel() / keep.sum().clamp_min(1)
        return x * keep.to(x.dtype)


class MConv(nn.Module):
    """k x k conv, BatchNorm, ReLU (official ``M_Conv``; keys ``conv.{0,1}``)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, **dd),
                                  nn.BatchNorm2d(cout, **dd), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConvNext(nn.Module):
    """x + DropBlock(gamma * conv2(ReLU(conv1(BN(dwconv(x)))))); (B, C, H, W) -> same."""

    def __init__(self, dim: int, kernel_size: int = 3, layer_scale: float = 1e-6, drop_block: float = 0.5,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, **dd)
        self.norm = nn.BatchNorm2d(dim, **dd)
        self.conv1 = nn.Conv2d(dim, 4 * dim, 1, **dd)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(4 * dim, dim, 1, **dd)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale, **dd))
        self.drop_block = DropBlock(7, drop_block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.act(self.conv1(self.norm(self.dwconv(x)))))
        return x + self.drop_block(self.gamma[:, None, None] * y)


class EncoderLevel(nn.Module):
    """``entry`` (the stem M_Conv, or a 2 x 2 stride-2 conv), then ConvNext ``blocks``."""

    def __init__(self, entry: nn.Module, blocks: list[nn.Module]):
        super().__init__()
        self.entry = entry
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.entry(x)
        for block in self.blocks:
            x = maybe_checkpoint(block, x, enabled=self.grad_checkpointing)
        return x


class SpatialAttention(nn.Module):
    """x * sigmoid(conv7x7([mean_c x; max_c x])) (official ``SelfAttentionBlock``)."""

    def __init__(self, device=None, dtype=None):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled)) * x


class AttentionGate(nn.Module):
    """alpha = sigmoid(BN(psi(ReLU(theta(x) + phi(g))))), (B, 1, h, w) (official ``CrossAttentionBlock``)."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.theta = nn.Sequential(nn.Conv2d(dim, dim, 1, **dd), nn.BatchNorm2d(dim, **dd))
        self.phi = nn.Sequential(nn.Conv2d(dim, dim, 1, **dd), nn.BatchNorm2d(dim, **dd))
        self.psi = nn.Sequential(nn.Conv2d(dim, 1, 1, **dd), nn.BatchNorm2d(1, **dd), nn.Sigmoid())

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        theta = self.theta(x)
        return self.psi(F.relu(theta + resize_to(self.phi(g), theta.shape[-2:])))


class ResidualConv(nn.Module):
    """Pre-activation residual block: (BN, ReLU, conv3x3) x 2 plus a conv3x3-BN skip; cin -> cout channels."""

    def __init__(self, cin: int, cout: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv_block = nn.Sequential(
            nn.BatchNorm2d(cin, **dd), nn.ReLU(), nn.Conv2d(cin, cout, 3, padding=1, **dd),
            nn.BatchNorm2d(cout, **dd), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1, **dd),
        )
        self.conv_skip = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, **dd), nn.BatchNorm2d(cout, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(x) + self.conv_skip(x)


# The modules of each encoder level (the level's stage, its pyramid conv(s), the deepest level's attention) and of
# the decoder, by their official names.
_LEVELS = (("input_layer", "input_skip", "conv1"), ("down_conv_2", "conv2"), ("down_conv_3", "conv3"),
           ("down_conv_4", "attn"))
_DECODER = ("conv_cat_3", "conv_cat_2", "conv_cat_1", "attention_block3", "attention_block2", "attention_block1",
            "up_residual_conv3", "up_residual_conv2", "up_residual_conv1",
            "output_layer1", "output_layer2", "output_layer3")


class FSGNet(PretrainedMixin, nn.Module):
    """FSG-Net: (B, in_chans, H, W) images -> (B, num_classes, H, W) per-pixel logits (three in training)."""

    def __init__(self, num_classes: int = 1, in_chans: int = 3, base_c: int = 64,
                 depths: tuple[int, ...] = (3, 3, 9, 3), kernel_size: int = 3, guided_refinement: bool = True,
                 radius: int = 2, eps: float = 1e-2, drop_block: float = 0.5, device=None, dtype=None):
        super().__init__()
        check_segmentation_classes(num_classes)
        dd = dict(device=device, dtype=dtype)
        if len(depths) != 4:
            raise ValueError(f"FSGNet has four encoder levels, got depths={tuple(depths)}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.guided_refinement = guided_refinement
        self.radius, self.eps = radius, eps
        self.num_features = 8 * base_c
        self.head_hidden_size = base_c  # the per-pixel features the 1 x 1 classifier reads
        c = base_c

        def convnexts(dim: int, depth: int) -> list[nn.Module]:
            return [ConvNext(dim, kernel_size, drop_block=drop_block, **dd) for _ in range(depth)]

        self.input_layer = EncoderLevel(MConv(in_chans, c, kernel_size, **dd), convnexts(c, depths[0]))
        self.input_skip = nn.Sequential(MConv(in_chans, c, kernel_size, **dd))
        self.conv1 = MConv(in_chans, c, 3, **dd)
        self.down_conv_2 = EncoderLevel(nn.Conv2d(2 * c, 2 * c, 2, stride=2, **dd), convnexts(2 * c, depths[1]))
        self.conv2 = MConv(in_chans, 2 * c, 3, **dd)
        self.down_conv_3 = EncoderLevel(nn.Conv2d(4 * c, 4 * c, 2, stride=2, **dd), convnexts(4 * c, depths[2]))
        self.conv3 = MConv(in_chans, 4 * c, 3, **dd)
        self.down_conv_4 = EncoderLevel(nn.Conv2d(8 * c, 8 * c, 2, stride=2, **dd), convnexts(8 * c, depths[3]))
        self.attn = SpatialAttention(**dd) if guided_refinement else nn.Identity()
        self.feature_info = [dict(num_chs=(2 << i) * c if i < 3 else 8 * c, reduction=1 << i, module=_LEVELS[i][0])
                             for i in range(4)]

        self.up_residual_conv3 = ResidualConv(8 * c, 4 * c, **dd)
        self.up_residual_conv2 = ResidualConv(4 * c, 2 * c, **dd)
        self.up_residual_conv1 = ResidualConv(2 * c, c, **dd)
        self.output_layer3 = nn.Sequential(nn.Conv2d(4 * c, num_classes, 1, **dd))
        self.output_layer2 = nn.Sequential(nn.Conv2d(2 * c, num_classes, 1, **dd))
        self.output_layer1 = nn.Sequential(nn.Conv2d(c, num_classes, 1, **dd))
        if guided_refinement:
            self.attention_block3 = AttentionGate(8 * c, **dd)
            self.attention_block2 = AttentionGate(4 * c, **dd)
            self.attention_block1 = AttentionGate(2 * c, **dd)
            self.conv_cat_3 = MConv(16 * c, 8 * c, 1, **dd)
            self.conv_cat_2 = MConv(12 * c, 4 * c, 1, **dd)
            self.conv_cat_1 = MConv(6 * c, 2 * c, 1, **dd)
        self._levels = 4
        self._has_decoder = True

    # --- timm plumbing -------------------------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()  # the official AdamW decays every parameter

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^(?:input_layer\.entry|input_skip|conv1)\.",
                    blocks=[(r"^input_layer\.blocks\.(\d+)", (0,)) if not coarse else (r"^input_layer\.", (0,)),
                            (r"^(?:down_conv_|conv)(\d)\.", None), (r"^attn\.", (4,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for name in ("input_layer", "down_conv_2", "down_conv_3", "down_conv_4"):
            level = getattr(self, name)
            if isinstance(level, EncoderLevel):
                level.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The main head (a 1 x 1 conv); an Identity once ``prune_intermediate_layers`` removed the decoder."""
        return self.output_layer1 if self._has_decoder else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """New 1 x 1 heads (all three deep-supervision outputs) for ``num_classes`` output channels (at least 1)."""
        check_segmentation_classes(num_classes)
        if not self._has_decoder:
            raise ValueError("the decoder was pruned (prune_intermediate_layers(prune_head=True)); build a new model "
                             "to classify pixels again")
        self.num_classes = num_classes
        for i in (1, 2, 3):
            old = getattr(self, f"output_layer{i}")[0]
            setattr(self, f"output_layer{i}", nn.Sequential(
                nn.Conv2d(old.in_channels, num_classes, 1, device=old.weight.device, dtype=old.weight.dtype)))

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Keep the encoder levels up to the last of ``indices``; ``prune_head`` drops the decoder and heads
        (``forward`` then returns the encoder's last map). There is no final norm to prune."""
        take_indices, max_index = feature_take_indices(len(_LEVELS), indices)
        for names in _LEVELS[max_index + 1:]:
            for name in names:
                setattr(self, name, None)
        self._levels = max_index + 1
        if prune_head:
            for name in _DECODER:
                if hasattr(self, name):
                    setattr(self, name, None)
            self._has_decoder = False
            self.num_classes = 0
            self.head_hidden_size = self.feature_info[max_index]["num_chs"]  # forward returns the last level
        return take_indices

    # --- forward -------------------------------------------------------------------------------------------------

    def _encode(self, x: torch.Tensor, levels: int) -> list[torch.Tensor]:
        """The first ``levels`` encoder outputs: (B, 2C, H, W), (B, 4C, H/2, W/2), (B, 8C, H/4, W/4),
        (B, 8C, H/8, W/8) (each level the floor half of the one above)."""
        h, w = x.shape[-2:]
        feats = [torch.cat([self.conv1(x), self.input_layer(x) + self.input_skip(x)], dim=1)]
        pyramid = (None, resize_to(x, (h // 2, w // 2)), resize_to(x, (h // 4, w // 4)))
        for i in range(1, levels):
            stage, extra = (getattr(self, name) for name in _LEVELS[i])
            y = stage(feats[-1])
            feats.append(torch.cat([extra(pyramid[i]), y], dim=1) if i < 3 else extra(y))
        return feats

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Encoder level outputs in ``indices`` (2C, 4C, 8C, 8C channels at strides 1, 2, 4, 8) and the last level
        run unless ``intermediates_only``. ``norm`` changes nothing (no final norm)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r} is not supported; features are 'NCHW'")
        check_images(self, x)
        take_indices, max_index = feature_take_indices(self._levels, indices)
        feats = self._encode(pad_to_min_size(x), max_index + 1 if stop_early else self._levels)
        intermediates = [feats[i] for i in take_indices]
        return intermediates if intermediates_only else (feats[-1], intermediates)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> the deepest encoder map (B, 8C, H/8, W/8), after the spatial attention."""
        check_images(self, x)
        return self._encode(pad_to_min_size(x), self._levels)[-1]

    def _guided_level(self, level: int, skip: torch.Tensor, deeper: torch.Tensor, g: torch.Tensor):
        """One guided convolution block: the fused map F of ``skip`` and the ``deeper`` fused map, and the residual
        block's output on the attention-guided filter of ``g`` (guided by F at half size, applied to F)."""
        fused = getattr(self, f"conv_cat_{level}")(torch.cat([skip, resize_to(deeper, skip.shape[-2:])], dim=1))
        small = resize_to(fused, (fused.shape[-2] // 2, fused.shape[-1] // 2))
        alpha = getattr(self, f"attention_block{level}")(small, g)
        filtered = attention_guided_filter(small, g, alpha, fused, self.radius, self.eps)
        return fused, getattr(self, f"up_residual_conv{level}")(filtered)

    def _decode(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x1, x2, x3, x4 = feats
        if self.guided_refinement:
            fused, up3 = self._guided_level(3, x3, x4, x4)
            fused, up2 = self._guided_level(2, x2, fused, up3)
            _, up1 = self._guided_level(1, x1, fused, up2)
        else:
            # the official ablation's deep-supervision maps are taken after the resize to the next level
            up3 = resize_to(self.up_residual_conv3(resize_to(x4, x3.shape[-2:])), x2.shape[-2:])
            up2 = resize_to(self.up_residual_conv2(up3), x1.shape[-2:])
            up1 = self.up_residual_conv1(up2)
        return up1, up2, up3

    def _levels_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The logits of the decoder levels (main, 1/2, 1/4; only the main one without the decoder), each
        (B, num_classes, H, W) at the input's size."""
        check_images(self, x)
        height, width = x.shape[-2:]
        feats = self._encode(pad_to_min_size(x), self._levels)
        if not self._has_decoder:
            return (feats[-1],)
        up1, up2, up3 = self._decode(feats)
        size = up1.shape[-2:]
        main = self.output_layer1(up1)[..., :height, :width]
        if not self.training:
            return (main,)
        return (main, self.output_layer2(resize_to(up2, size))[..., :height, :width],
                self.output_layer3(resize_to(up3, size))[..., :height, :width])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, num_classes, H, W) logits."""
        return self._levels_logits(x)[0]

    def forward_train(self, x: torch.Tensor) -> TrainOutput:
        """The logits with the two coarser decoder levels' logits, upsampled to (H, W), as the deep-supervision
        outputs ``level2`` and ``level3`` (the official training averages the loss over all three)."""
        main, *coarse = self._levels_logits(x)
        return TrainOutput(main, aux_outputs=dict(zip(("level2", "level3"), coarse, strict=False)))


@checkpoint_filter(FSGNet)
def checkpoint_filter_fn(state_dict: dict, model: FSGNet) -> dict:
    """Map an official FSG-Net checkpoint (the wrapper's ``FSGNet.`` prefix, optionally DataParallel's ``module.``)
    onto :class:`FSGNet`: the first module of ``input_layer`` / ``down_conv_<i>`` becomes ``entry`` and the ConvNext
    blocks after it ``blocks.<j>``. Our own checkpoints pass unchanged."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.").removeprefix("FSGNet.")
        name, _, rest = key.partition(".")
        if name in ("input_layer", "down_conv_2", "down_conv_3", "down_conv_4"):
            index, _, tail = rest.partition(".")
            if index.isdigit():
                key = f"{name}.entry.{tail}" if index == "0" else f"{name}.blocks.{int(index) - 1}.{tail}"
        out[key] = value
    return out


def _cfg(**kwargs) -> dict:
    return {
        "url": "", "num_classes": 1, "input_size": (3, 608, 608), "pool_size": None, "crop_pct": 1.0,
        "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": ("input_layer.entry.conv.0", "input_skip.0.conv.0", "conv1.conv.0", "conv2.conv.0",
                       "conv3.conv.0"),
        "classifier": ("output_layer1.0", "output_layer2.0", "output_layer3.0"),
        "license": "unknown: no LICENSE file", "paper_ids": "arXiv:2501.18921",
        "paper_name": "Full-scale Representation Guided Network for Retinal Vessel Segmentation",
        "origin_url": "https://github.com/ZombaSY/FSG-Net-pytorch/releases/tag/1.1.0", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "fsgnet.untrained": _cfg(), "fsgnet_nogrm.untrained": _cfg(),
    "test_fsgnet": _cfg(input_size=(3, 32, 32)), "test_fsgnet_nogrm": _cfg(input_size=(3, 32, 32)),
})


@register_model
def fsgnet(pretrained: bool = False, **kwargs) -> FSGNet:
    """FSG-Net as published (base width 64, depths 3 / 3 / 9 / 3, kernel 3), 18.32 M parameters. The official
    weights (GitHub release 1.1.0, one per dataset) load with ``pretrained=True,
    pretrained_cfg_overlay=dict(file=PATH)``."""
    return create_model(FSGNet, "fsgnet", pretrained, kwargs, tag="untrained")


@register_model
def fsgnet_nogrm(pretrained: bool = False, **kwargs) -> FSGNet:
    """FSG-Net without the guided refinement (the official ``FSGNet_noGRM`` ablation), 16.85 M parameters."""
    return create_model(FSGNet, "fsgnet_nogrm", pretrained, dict(kwargs, guided_refinement=False), tag="untrained")


_TEST = dict(base_c=2, depths=(1, 1, 1, 1))


@register_model
def test_fsgnet(pretrained: bool = False, **kwargs) -> FSGNet:
    """Tiny FSG-Net for tests: base width 2, one ConvNeXt block per level, the guided refinement at every decoder
    level."""
    return create_model(FSGNet, "test_fsgnet", pretrained, dict(_TEST, **kwargs), tag="")


@register_model
def test_fsgnet_nogrm(pretrained: bool = False, **kwargs) -> FSGNet:
    """Tiny FSG-Net without the guided refinement (:func:`test_fsgnet`'s widths, the noGRM decoder)."""
    return create_model(FSGNet, "test_fsgnet_nogrm", pretrained, dict(_TEST, **kwargs, guided_refinement=False), tag="")
