"""Polarized Self-Attention (PSA): Towards High-quality Pixel-wise Regression (Liu et al., 2021, arXiv 2107.00782).

PSA (:class:`visattn.blocks.PolarizedSelfAttention`) inserted into timm's own backbones, where the official code
(DeLightCMU/PSA, ``network/hrnetv2.py``) puts it:

- HRNet (timm's ``HighResolutionNet``): after conv1-BN-ReLU of every BasicBlock of the stage 2-4 branches, before
  conv2, as the module ``deattn`` (so the official keys ``stageN.M.branches.B.K.deattn.*`` map as they are). The
  stage-1 Bottleneck blocks (``layer1``) are unchanged. ``hrnet_w{18,32,48}_psa`` use the parallel layout (PSA_p),
  ``hrnet_w{18,32,48}_psa_s`` the sequential one (PSA_s, the layout of the official ``hrnetv2.py`` at HEAD).
- ResNet-50 (timm's ``ResNet``): after the 3x3 conv (conv2-BN-ReLU) of every Bottleneck, before conv3. The paper's
  ResNet placement was not released; this is visattn's choice, by analogy with the HRNet BasicBlock.

Both are timm's model with PSA put into its blocks by :func:`insert_psa` (``placement="inside"``), the one way
visattn puts PSA into a ResNet; ``placement="after"`` (a gated PSA after whole blocks) is re-id's ``--attn psa_p|psa_s``
(:func:`insert_after`, which re-id's other attention kinds go through too). The
layouts and their short names are :mod:`visattn.blocks.polarized_attention`'s ``LAYOUTS`` and
``LAYOUT_SHORT_NAMES``; :func:`psa_name` and :func:`hrnet_psa_variant` spell the names built from them. No private
method of timm's classes is overridden.

Both use the official form of the block (``psa_form="official"``: the official code's softmax placement and
``conv_up``; ``"paper"`` gives the paper's equations). Everything else is timm's model: its stem, stages, heads
and features; any input size works wherever timm's model does (HRNet: any size, fused branches are resized by the
HRNet fuse layers' fixed scale factors, so odd sizes follow timm's behaviour).

Parameters and MACs (at 224): README's model table.

Weights: no ImageNet PSA weights are published (the official repository released Cityscapes segmentation only,
Apache-2.0; its checkpoints are not mirrored). ``pretrained=True`` loads timm's ImageNet weights of the plain
backbone (HRNet: the MSRA weights, MIT; ResNet-50: timm's A1 recipe, Apache-2.0) with the PSA modules at their
initialisation, and warns about them. An official PSA segmentation checkpoint (``module.backbone.stageN...``, with
its OCR head) loads into the backbone through :func:`visattn.load_pretrained` (the OCR head keys are dropped);
it has no classification head, so use a model without one (``head=""``, as the mmseg backbone
``PSAHRNetBackbone`` does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.hrnet import HighResolutionModule, HighResolutionNet, cfg_cls
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from ..blocks import PolarizedSelfAttention, maybe_checkpoint
from ..blocks.polarized_attention import LAYOUT_SHORT_NAMES, LAYOUTS, resolve_layout
from ..contract import Inspectable
from ..weights import PretrainedMixin, checkpoint_filter
from ._helpers import check_images, create_model

__all__ = ["PLACEMENTS", "AttentionAfter", "PSABasicBlock", "PSABottleneck", "PSAHRNet", "PSAResNet",
           "hrnet_psa_variant", "insert_after", "insert_psa", "psa_name"]

PLACEMENTS = ("inside", "after")


def psa_name(layout: str) -> str:
    """The paper's name of PSA in ``layout``: ``"psa_p"`` (parallel) or ``"psa_s"`` (sequential)."""
    return f"psa_{LAYOUT_SHORT_NAMES[resolve_layout(layout)]}"


def hrnet_psa_variant(width: str, layout: str) -> str:
    """The registered HRNet variant of ``width`` (``"w18"``, ...) with PSA in ``layout``: ``hrnet_w18_psa``
    (parallel) or ``hrnet_w18_psa_s`` (sequential)."""
    return f"hrnet_{width}_psa{'_s' if resolve_layout(layout) == 'sequential' else ''}"


class PSABasicBlock(BasicBlock):
    """timm's ResNet/HRNet BasicBlock with PSA (``deattn``) after conv1-BN-ReLU (the official HRNet
    ``BasicBlock``), made from a BasicBlock by :func:`insert_psa`:

    y = ReLU(x' + BN(conv2(PSA(ReLU(BN(conv1(x))))))), x' = x or downsample(x).
    """

    deattn: PolarizedSelfAttention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        x = self.bn2(self.conv2(self.deattn(x)))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act2(x + shortcut)


class PSABottleneck(Bottleneck):
    """timm's ResNet Bottleneck with PSA (``deattn``) after the 3x3 conv (conv2-BN-ReLU), before conv3 (visattn's
    placement), made from a Bottleneck by :func:`insert_psa`:

    y = ReLU(x' + BN(conv3(PSA(ReLU(BN(conv2(ReLU(BN(conv1(x)))))))))).
    """

    deattn: PolarizedSelfAttention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        x = self.bn3(self.conv3(self.deattn(x)))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act3(x + shortcut)


class AttentionAfter(nn.Module):
    """A residual block B followed by an attention A on its output y = B(x) (any (B, C, H, W) -> (B, C, H, W)
    block: PSA, and re-id's other ``--attn`` kinds):

    out = y + g (A(y) - y) with a learnable gate g that starts at 0; out = A(y) when A starts as the identity
    itself (``A.identity_at_init``; no gate, which would keep both at their start for good).
    Shapes: B's, (B, C_in, H, W) -> (B, C, H', W'), A on its C output channels.
    """

    def __init__(self, block: nn.Module, attention: nn.Module):
        super().__init__()
        self.block, self.attention = block, attention
        gated = not getattr(attention, "identity_at_init", False)
        device = next(attention.parameters()).device
        self.register_parameter("gate", nn.Parameter(torch.zeros((), device=device)) if gated else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        if self.gate is None:
            return self.attention(y)
        return y + self.gate.to(y.dtype) * (self.attention(y) - y)


def _output_channels(block: nn.Module) -> int:
    """C of a residual block's (B, C, H, W) output: its last conv's (conv3, else conv2, else the last one)."""
    last = getattr(block, "conv3", None) or getattr(block, "conv2", None)
    return (last or [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1]).out_channels


def insert_after(stage: nn.Sequential, blocks: Sequence[int] | None,
                 make_attention: Callable[..., nn.Module]) -> list[int]:
    """Wrap the blocks ``blocks`` (indices, all when None) of ``stage``, an ``nn.Sequential`` of residual blocks
    on (B, C, H, W) maps, in place as :class:`AttentionAfter` (the block under ``block``, the attention under
    ``attention``, the gate ``gate``). ``make_attention(C, device=..., dtype=...)`` builds the attention on the
    block's C output channels, device and dtype. Returns the indices changed."""
    indices = list(range(len(stage))) if blocks is None else list(blocks)
    for i in indices:
        block = stage[i]
        weight = next(block.parameters())
        stage[i] = AttentionAfter(block, make_attention(_output_channels(block), device=weight.device,
                                                        dtype=weight.dtype))
    return indices


_WITH_PSA_INSIDE = {BasicBlock: PSABasicBlock, Bottleneck: PSABottleneck}


def insert_psa(stage: nn.Sequential, blocks: Sequence[int] | None = None, *, placement: str = "inside",
               layout: str = "parallel", form: str = "official", backend: str | None = None) -> list[int]:
    """Put PSA into residual blocks of ``stage``, in place: the blocks ``blocks`` (indices, all when None) of a
    ResNet stage (``layerN``) or an HRNet branch, an ``nn.Sequential`` of residual blocks on (B, C, H, W) maps.

    ``placement="inside"``: timm's BasicBlock / Bottleneck becomes :class:`PSABasicBlock` / :class:`PSABottleneck`
    (its parameters, plus PSA as ``deattn`` on the C = conv1 / conv2 output channels before the next conv: the
    official HRNet placement and ``resnet50_psa``'s). ``placement="after"``: any block B becomes a gated
    :class:`AttentionAfter` (B under ``block``, PSA under ``attention`` on B's
    output channels, the gate ``gate``), by :func:`insert_after`, the insertion re-id
    uses for every ``--attn`` kind. PSA is :class:`visattn.blocks.PolarizedSelfAttention` in ``layout`` and ``form``
    at its own initialisation, on the block's device and dtype; ``backend`` goes to its op. Returns the indices changed.
    Shapes: each block keeps its (B, C_in, H, W) -> (B, C_out, H', W').
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement={placement!r}; use one of {', '.join(PLACEMENTS)}")
    indices = list(range(len(stage))) if blocks is None else list(blocks)
    if placement == "after":
        return insert_after(stage, indices, lambda channels, **dd: PolarizedSelfAttention(channels, layout, form,
                                                                                          backend=backend, **dd))
    for i in indices:
        block = stage[i]
        weight = next(block.parameters())
        dd = dict(backend=backend, device=weight.device, dtype=weight.dtype)
        psa_cls = _WITH_PSA_INSIDE.get(type(block))
        if psa_cls is None:
            raise ValueError(f"placement='inside' takes timm's BasicBlock or Bottleneck, got {type(block).__name__}")
        channels = (block.conv1 if psa_cls is PSABasicBlock else block.conv2).out_channels
        attention = PolarizedSelfAttention(channels, layout, form, **dd)
        block.__class__ = psa_cls  # the same module and state, with the forward that runs deattn
        block.deattn = attention
    return indices


class CheckpointSequential(nn.Sequential):
    """``nn.Sequential`` (same state-dict keys) whose blocks run through gradient checkpointing when
    ``grad_checkpointing`` is set."""

    grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self:
            x = maybe_checkpoint(block, x, enabled=self.grad_checkpointing)
        return x


class _PSAModule(HighResolutionModule):
    """timm's HighResolutionModule whose fusion takes any input size (:class:`PSAHRNet` gives its modules this
    class, and branches that checkpoint per block).

    ``upsample="nearest"`` (timm's, as its ImageNet weights were trained): a lower-resolution branch upsampled by
    its fixed factor is cropped to the higher-resolution branch where the sizes were not divisible (the stride-2
    convs round up, so it is never smaller); the same outputs as timm's module where they are.
    ``upsample="bilinear"`` (the official HRNetV2 segmentation code, and mmseg's HRNet): resized to the branch's
    size, bilinear without corner alignment.
    """

    upsample = "nearest"

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.num_branches == 1:
            return [self.branches[0](x[0])]
        x = [branch(t) for branch, t in zip(self.branches, x, strict=True)]
        out = []
        for i, fuse in enumerate(self.fuse_layers):
            h, w = x[i].shape[-2:]
            y = None
            for j, f in enumerate(fuse):
                if j <= i:
                    t = f(x[j])
                elif self.upsample == "nearest":
                    t = f(x[j])[..., :h, :w]
                else:  # the fuse layer's conv and BN, then a bilinear resize in place of its nearest upsampling
                    t = F.interpolate(f[1](f[0](x[j])), size=(h, w), mode="bilinear", align_corners=False)
                y = t if y is None else y + t
            out.append(self.fuse_act(y))
        return out


class PSAHRNet(Inspectable, PretrainedMixin, HighResolutionNet):
    """timm's HighResolutionNet with PSA (``deattn``) in every BasicBlock of stages 2-4.

    Args:
        cfg: timm's HRNet architecture (``timm.models.hrnet.cfg_cls[...]``).
        psa_layout: ``"parallel"`` (PSA_p) or ``"sequential"`` (PSA_s), or ``"p"`` / ``"s"``.
        psa_form: ``"official"`` (the released code) or ``"paper"`` (the paper's equations).
        upsample: how the fuse layers upsample lower-resolution branches: ``"nearest"`` (timm's HRNet, its
            ImageNet weights) or ``"bilinear"`` (the official HRNetV2 segmentation code, mmseg's HRNet).
        **kwargs: timm's HighResolutionNet arguments (``head``: ``"classification"``, ``"incre"`` or ``""``).

    Beyond timm's model: gradient checkpointing (per residual block), ``prune_intermediate_layers`` that also drops
    the final fuse layers feeding only pruned branches, and ``forward_intermediates`` whose final output is a tensor
    (the aggregated head features, or the deepest branch output kept when the head is gone).
    """

    addon_keys = r"\.deattn\."  # the PSA modules a plain HRNet checkpoint lacks

    def __init__(self, cfg: dict, psa_layout: str = "parallel", psa_form: str = "official",
                 upsample: str = "nearest", **kwargs):
        if upsample not in ("nearest", "bilinear"):
            raise ValueError(f"upsample must be 'nearest' or 'bilinear', got {upsample!r}")
        if any(cfg[f"stage{n}"]["block_type"] != "BASIC" for n in (2, 3, 4)):
            raise ValueError("PSA HRNet stages 2-4 are BasicBlock stages")
        self.psa_layout, self.psa_form = resolve_layout(psa_layout), psa_form
        super().__init__(cfg, **kwargs)
        for module in (*self.stage2, *self.stage3, *self.stage4):
            module.__class__ = _PSAModule  # timm's module and state, with the fusion that takes any size
            module.upsample = upsample
            for i, branch in enumerate(module.branches):
                module.branches[i] = CheckpointSequential(*branch)
                insert_psa(module.branches[i], layout=self.psa_layout, form=psa_form)
        self.upsample = upsample
        self.layer1 = CheckpointSequential(*self.layer1)
        self.grad_checkpointing = False

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every residual block (stage-1 Bottlenecks and the branches' PSA BasicBlocks) in backward."""
        self.grad_checkpointing = enable
        for module in self.modules():
            if isinstance(module, CheckpointSequential):
                module.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Stem, then stage-1 blocks, then each HRNet module (its transitions with it), then the head."""
        return dict(
            stem=r"^conv[12]|^bn[12]",
            blocks=r"^(?:layer|transition|stage)(\d+)" if coarse else [
                (r"^layer(\d+)\.(\d+)", None),
                (r"^transition(\d+)", None),
                (r"^stage(\d+)\.(\d+)", None),
                (r"^incre_modules|^downsamp_modules|^final_layer", (99999,)),
            ],
        )

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    def _trunk_pruned(self) -> bool:
        return isinstance(self.layer1, nn.Identity)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_images(self, x)
        return super().forward_features(x)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Features of the stem (index 0, stride 2) and of the four branches (indices 1-4, strides 4-32; through
        the head's incre modules when the model has them), and the final output: the classification head's
        features (as ``forward_features``) when it is complete, else the deepest branch output computed."""
        if output_fmt != "NCHW":
            raise ValueError("PSA HRNet intermediates are NCHW")
        check_images(self, x)
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        intermediates = []
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take_indices:
            intermediates.append(x)
        if max_index == 0 and (stop_early or self._trunk_pruned()):
            return intermediates if intermediates_only else (x, intermediates)
        x = self.act2(self.bn2(self.conv2(x)))
        feats = self.stages(x)
        if self.incre_modules is not None:
            incre = self.incre_modules if not stop_early else self.incre_modules[:max_index]
            feats = [module(f) for module, f in zip(incre, feats, strict=False)]
        intermediates.extend(f for i, f in enumerate(feats, start=1) if i in take_indices)
        if intermediates_only:
            return intermediates
        if self.downsamp_modules is not None and self.final_layer is not None and len(feats) == self.num_branches:
            y = feats[0]
            for f, down in zip(feats[1:], self.downsamp_modules, strict=True):
                y = f + down(y)
            return self.final_layer(y), intermediates
        return feats[-1], intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Keep what the features at ``indices`` need: the trunk (or only the stem for index 0), the final fuse
        layers and incre modules of the branches up to the deepest index, and the classification head only when
        every branch is kept and ``prune_head`` is False."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        if max_index == 0:
            for name in ("conv2", "bn2", "act2", "layer1", "transition1", "stage2", "transition2", "stage3",
                         "transition3", "stage4"):
                setattr(self, name, nn.Identity())
            self.incre_modules = None if self.incre_modules is None else self.incre_modules[:0]
            self.num_features = self.head_hidden_size = self.feature_info[0]["num_chs"]
        else:
            last = self.stage4[-1]
            if isinstance(last.fuse_layers, nn.ModuleList):
                last.fuse_layers = last.fuse_layers[:max_index]
            if self.incre_modules is not None:
                self.incre_modules = self.incre_modules[:max_index]
        if prune_head or max_index < self.num_branches:
            self.downsamp_modules = None
            self.final_layer = None
            self.num_classes = 0
            self.global_pool = nn.Identity()
            self.head_drop = nn.Identity()
            self.classifier = nn.Identity()
        return take_indices


class PSAResNet(Inspectable, PretrainedMixin, ResNet):
    """timm's ResNet with PSA (``deattn``) in every Bottleneck after the 3x3 conv.

    Args:
        psa_layout: ``"parallel"`` (PSA_p) or ``"sequential"`` (PSA_s), or ``"p"`` / ``"s"``.
        psa_form: ``"official"`` or ``"paper"``.
        **kwargs: timm's ResNet arguments (``block`` is timm's Bottleneck, made a :class:`PSABottleneck` by
            :func:`insert_psa`).
    """

    addon_keys = r"\.deattn\."

    def __init__(self, psa_layout: str = "parallel", psa_form: str = "official", **kwargs):
        if "block" in kwargs:
            raise ValueError("PSA ResNet builds its own blocks (PSA Bottlenecks)")
        layout = resolve_layout(psa_layout)
        super().__init__(block=Bottleneck, **kwargs)
        self.psa_layout, self.psa_form = layout, psa_form
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            insert_psa(stage, layout=self.psa_layout, form=psa_form)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_images(self, x)
        return super().forward_features(x)

    def forward_intermediates(self, x: torch.Tensor, *args, **kwargs):
        """timm's ResNet ``forward_intermediates`` after the input check."""
        check_images(self, x)
        return super().forward_intermediates(x, *args, **kwargs)


# Official segmentation checkpoint (network/ocrnet.py MscaleOCR: backbone.*, ocr.*, scale_attn.*) -> ours.
_OFFICIAL_HEADS = ("ocr.", "scale_attn.", "aux_head.", "cls_head.", "criterion.")


@checkpoint_filter(PSAHRNet)
def checkpoint_filter_fn(state_dict: dict, model: PSAHRNet) -> dict:
    """Map an official PSA checkpoint (``[module.]backbone.stageN.M.branches.B.K.deattn.*`` with its OCR /
    scale-attention head), a timm HRNet state dict or one in our layout onto our keys: strip ``module.`` and
    ``backbone.``, drop the segmentation head's keys (the official layout and timm's HRNet layout are the same)."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith(_OFFICIAL_HEADS):
            continue
        out[key.removeprefix("backbone.")] = value
    return out


def _cfg(tag_cfg: dict, **kwargs) -> dict:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "interpolation": "bilinear",
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "first_conv": "conv1",
        "classifier": "classifier", "fixed_input_size": False, "custom_load": "hf",
        "hf_hub_filename": "model.safetensors",
        "license": "apache-2.0 (PSA code); mit (timm's HRNet ImageNet weights)",
        "paper_ids": "arXiv:2107.00782", "paper_name": "Polarized Self-Attention: Towards High-quality Pixel-wise "
                                                      "Regression",
        "origin_url": "https://github.com/DeLightCMU/PSA",
        "notes": ("timm's ImageNet HRNet weights (the backbone); the PSA modules are untrained",),
        **tag_cfg, **kwargs,
    }


_HRNET_WEIGHTS = {
    "w18": ("ms_aug_in1k", dict(hf_hub_id="timm/hrnet_w18.ms_aug_in1k", crop_pct=0.95)),
    "w32": ("ms_in1k", dict(hf_hub_id="timm/hrnet_w32.ms_in1k", crop_pct=0.875)),
    "w48": ("ms_in1k", dict(hf_hub_id="timm/hrnet_w48.ms_in1k", crop_pct=0.875)),
}

default_cfgs = generate_default_cfgs({
    **{f"{hrnet_psa_variant(width, layout)}.{tag}": _cfg(cfg)
       for width, (tag, cfg) in _HRNET_WEIGHTS.items() for layout in LAYOUTS},
    "resnet50_psa.a1_in1k": _cfg(
        dict(hf_hub_id="timm/resnet50.a1_in1k", crop_pct=0.95, test_crop_pct=1.0, test_input_size=(3, 288, 288),
             interpolation="bicubic", classifier="fc",
             license="apache-2.0 (PSA code and timm's ResNet-50 A1 weights)",
             notes=("timm's ImageNet ResNet-50 (A1 recipe) weights; the PSA modules are untrained",))),
    **{name: _cfg(dict(input_size=(3, 64, 64), pool_size=(2, 2), custom_load=False, notes=()), **head)
       for name, head in (("test_hrnet_psa", {}), ("test_resnet_psa", dict(classifier="fc")))},
})


def _create_hrnet(width: str, layout: str, pretrained: bool, kwargs: dict) -> PSAHRNet:
    return _build_hrnet(hrnet_psa_variant(width, layout), cfg_cls[f"hrnet_{width}"], layout, pretrained, kwargs,
                        _HRNET_WEIGHTS[width][0])


def _build_hrnet(variant: str, model_cfg: dict, layout: str, pretrained: bool, kwargs: dict, tag: str) -> PSAHRNet:
    """``features_only`` takes timm's HRNet ``feature_location``: ``"incre"`` (default) or ``""`` (the raw branch
    outputs, HRNetV2's features)."""
    location = kwargs.pop("feature_location", None)
    if location is not None:
        if not kwargs.get("features_only"):
            raise ValueError("feature_location applies to features_only=True")
        if location not in ("incre", ""):
            raise ValueError(f"feature_location must be 'incre' or '', got {location!r}")
        kwargs["head"] = location
    args = dict(model_cfg=model_cfg, psa_layout=layout, out_indices=(0, 1, 2, 3, 4))
    return create_model(PSAHRNet, variant, pretrained, dict(args, **kwargs), tag=tag)


@register_model
def hrnet_w18_psa(pretrained: bool = False, **kwargs) -> PSAHRNet:
    """HRNet-W18 (branches 18/36/72/144) with parallel PSA in every stage 2-4 BasicBlock."""
    return _create_hrnet("w18", "parallel", pretrained, kwargs)


@register_model
def hrnet_w32_psa(pretrained: bool = False, **kwargs) -> PSAHRNet:
    """HRNet-W32 (branches 32/64/128/256) with parallel PSA in every stage 2-4 BasicBlock."""
    return _create_hrnet("w32", "parallel", pretrained, kwargs)


@register_model
def hrnet_w48_psa(pretrained: bool = False, **kwargs) -> PSAHRNet:
    """HRNet-W48 (branches 48/96/192/384) with parallel PSA in every stage 2-4 BasicBlock (the PSA_p paper
    backbone)."""
    return _create_hrnet("w48", "parallel", pretrained, kwargs)


@register_model
def hrnet_w18_psa_s(pretrained: bool = False, **kwargs) -> PSAHRNet:
    """HRNet-W18 with sequential PSA in every stage 2-4 BasicBlock."""
    return _create_hrnet("w18", "sequential", pretrained, kwargs)


@register_model
def hrnet_w32_psa_s(pretrained: bool = False, **kwargs) -> PSAHRNet:
    """HRNet-W32 with sequential PSA in every stage 2-4 BasicBlock."""
    return _create_hrnet("w32", "sequential", pretrained, kwargs)


@register_model
def hrnet_w48_psa_s(pretrained: bool = False, **kwargs) -> PSAHRNet:
    """HRNet-W48 with sequential PSA in every stage 2-4 BasicBlock (the official ``hrnetv2.py``)."""
    return _create_hrnet("w48", "sequential", pretrained, kwargs)


@register_model
def resnet50_psa(pretrained: bool = False, **kwargs) -> PSAResNet:
    """ResNet-50 (timm's, 3-4-6-3 Bottlenecks) with parallel PSA after the 3x3 conv of every Bottleneck."""
    args = dict(layers=(3, 4, 6, 3), out_indices=(0, 1, 2, 3, 4))
    return create_model(PSAResNet, "resnet50_psa", pretrained, dict(args, **kwargs), tag="a1_in1k")


# HRNet's layout (a Bottleneck stage 1, then 2, 3, 4 branches of BasicBlocks) with one block per branch, 8-64 channels
_TEST_HRNET = dict(
    stem_width=64,  # timm's HRNet feature_info assumes a 64-channel stem
    stage1=dict(num_modules=1, num_branches=1, block_type="BOTTLENECK", num_blocks=(1,), num_channels=(8,),
                fuse_method="SUM"),
    **{f"stage{n}": dict(num_modules=1, num_branches=n, block_type="BASIC", num_blocks=(1,) * n,
                         num_channels=(8, 16, 32, 64)[:n], fuse_method="SUM") for n in (2, 3, 4)},
)


@register_model
def test_hrnet_psa(pretrained: bool = False, **kwargs) -> PSAHRNet:
    """Tiny PSA HRNet for tests: one parallel-PSA BasicBlock per branch (8-64 channels), timm's classification head."""
    return _build_hrnet("test_hrnet_psa", _TEST_HRNET, "parallel", pretrained, kwargs, tag="")


@register_model
def test_resnet_psa(pretrained: bool = False, **kwargs) -> PSAResNet:
    """Tiny PSA ResNet for tests: one Bottleneck per stage (8-64 channels) with sequential PSA (the other layout than
    :func:`test_hrnet_psa`'s)."""
    args = dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_width=8, psa_layout="sequential",
                out_indices=(0, 1, 2, 3, 4))
    return create_model(PSAResNet, "test_resnet_psa", pretrained, dict(args, **kwargs), tag="")
