"""The re-id network (BoT: any backbone, global pooling, BNNeck), cheap attention inserted into a ResNet, and the
re-id losses (CE with label smoothing, batch-hard triplet, centre loss)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ...backbones.psa import insert_after, psa_name
from ...blocks import PolarizedSelfAttention
from ...blocks.plugin_attention import NonLocalBlock, cbam, squeeze_excitation
from ...blocks.polarized_attention import LAYOUTS
from ...contract import Inspectable, TrainOutput
from ...engine.models import build_model
from ...errors import UserError

__all__ = ["REID_ATTENTION", "CenterLoss", "GeM", "ReIDLoss", "ReIDModel", "batch_hard_triplet_loss"]


def _psa(layout: str) -> Callable[..., nn.Module]:
    return lambda channels, **dd: PolarizedSelfAttention(channels, layout, "official", **dd)


# The attention kinds the re-id model can insert after ResNet blocks (--attn): name -> make(C, device=, dtype=), a
# (B, C, H, W) -> (B, C, H, W) block. PSA_p and PSA_s (official form), squeeze-and-excitation, CBAM, non-local.
REID_ATTENTION: dict[str, Callable[..., nn.Module]] = {
    **{psa_name(layout): _psa(layout) for layout in LAYOUTS},
    "se": squeeze_excitation, "cbam": cbam, "nonlocal": NonLocalBlock}


class GeM(nn.Module):
    """Generalised-mean pooling of (B, C, H, W): (mean x^p)^(1/p) with a learnable p (3 at start); p = 1 is the
    average."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p, self.eps = nn.Parameter(torch.tensor(float(p))), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().clamp_min(self.eps).pow(self.p).mean((2, 3)).pow(1.0 / self.p)


def _block_indices(spec: str, count: int, stage: int) -> list[int]:
    if spec == "all":
        return list(range(count))
    if spec == "last":
        return [count - 1]
    try:
        indices = [int(v) for v in str(spec).split(",")]
    except ValueError:
        raise UserError(f"--attn-blocks {spec}: use all, last or block indices such as 0,2") from None
    for i in indices:
        if not 0 <= i < count:
            raise UserError(f"--attn-blocks {spec}: stage {stage} has blocks 0..{count - 1}, so {i} does not exist")
    return indices


class ReIDModel(Inspectable, nn.Module):
    """Re-id network on any visattn or timm backbone (``num_classes=0`` features), BoT style.

    Images in [0, 1] (B, 3, H, W) are normalised inside (the backbone's mean/std, else ImageNet's); the backbone's
    map is pooled (average or GeM; ViT tokens through timm's own head pooling) to f (B, D); BNNeck: f_bn = BN(f)
    with a frozen zero bias, logits = W f_bn (no bias). Training returns (logits, f) (CE on the logits, triplet on
    f); evaluation returns f_bn. ``last_stride=1`` removes the stride of a ResNet's last stage; ``attn`` inserts
    a REID_ATTENTION kind after the chosen bottlenecks (``attn_blocks``) of stages ``attn_at`` (1-4) of a ResNet,
    gated so that the network starts unchanged (:func:`visattn.backbones.psa.insert_after`).
    """

    def __init__(self, backbone: str, num_classes: int, pretrained: bool = False, pooling: str = "avg",
                 last_stride: int = 1, attn: str | None = None, attn_at=(), attn_blocks: str = "all",
                 model_kwargs: dict | None = None):
        super().__init__()
        if pooling not in ("avg", "gem"):
            raise UserError(f"--pooling {pooling}: use avg or gem")
        self.backbone_name = backbone
        self.backbone = build_model(backbone, pretrained=pretrained, num_classes=0, **(model_kwargs or {}))
        cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        self.register_buffer("mean", torch.tensor(cfg.get("mean", IMAGENET_DEFAULT_MEAN)).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", IMAGENET_DEFAULT_STD)).view(1, 3, 1, 1),
                             persistent=False)
        self.last_stride_applied = last_stride == 1 and self._remove_last_stride()
        if last_stride == 1 and not self.last_stride_applied:
            warnings.warn(f"last stride 1 (--last-stride, BoT's default) does not apply to {backbone}: it has no "
                          f"ResNet last stage (layer4) that starts with a stride of 2, so it keeps its strides",
                          stacklevel=2)
        self.attention_kind: str | None = attn  # the REID_ATTENTION kind, inserted at attention_at (layerN.i)
        self.attention_at: list[str] = []
        if attn is not None or attn_at:
            self._insert_attention(attn, tuple(attn_at), attn_blocks)
        self.feature_dim = dim = self.backbone.num_features
        self.pool = GeM() if pooling == "gem" else None
        self.bottleneck = nn.BatchNorm1d(dim)
        nn.init.ones_(self.bottleneck.weight)
        nn.init.zeros_(self.bottleneck.bias)
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False) if num_classes > 0 else None
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)

    def _remove_last_stride(self) -> bool:
        layer4 = getattr(self.backbone, "layer4", None)
        if layer4 is None:
            return False
        first = layer4[0]
        conv = first.conv2 if hasattr(first, "conv3") else first.conv1
        if conv.stride != (2, 2):
            return False
        conv.stride = (1, 1)
        if first.downsample is not None:
            for m in first.downsample.modules():
                if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
                    m.stride = (1, 1)
                elif isinstance(m, nn.AvgPool2d) and m.stride in (2, (2, 2)):
                    m.stride, m.kernel_size = 1, 1
        return True

    def _insert_attention(self, attn: str | None, stages: tuple[int, ...], blocks: str) -> None:
        if attn not in REID_ATTENTION:
            raise UserError(f"--attn {attn}: use one of {', '.join(REID_ATTENTION)}")
        if not stages:
            raise UserError(f"--attn {attn} needs --attn-at, the ResNet stages (1-4) to insert it in, e.g. 2,3")
        if not all(isinstance(getattr(self.backbone, f"layer{i}", None), nn.Sequential) for i in range(1, 5)):
            raise UserError(f"--attn {attn} goes after the residual blocks of a ResNet's stages (layer1..layer4), and "
                            f"{self.backbone_name} has none; use a ResNet backbone (resnet18/34/50/101/152 or a "
                            f"variant such as resnet50d) or drop --attn")
        for stage in stages:
            if stage not in (1, 2, 3, 4):
                raise UserError(f"--attn-at {','.join(map(str, stages))}: a ResNet's stages are 1-4, got {stage}")
            layer = getattr(self.backbone, f"layer{stage}")
            indices = insert_after(layer, _block_indices(blocks, len(layer), stage), REID_ATTENTION[attn])
            self.attention_at += [f"layer{stage}.{i}" for i in indices]
        # the modules added to a pretrained backbone: weights of the plain backbone leave them as initialised
        self.backbone.addon_keys = r"^layer\d+\.\d+\.(attention\.|gate$)"

    def backbone_state(self, state: dict) -> dict:
        """A state dict of the plain backbone (timm's key names) in this model's backbone's names: a block followed
        by attention is held as ``<site>.block``."""
        out = {}
        for key, value in state.items():
            site = next((s for s in self.attention_at if key.startswith(f"{s}.")), None)
            out[f"{site}.block.{key[len(site) + 1:]}" if site else key] = value
        return out

    def describe(self) -> str:
        pool = "GeM" if self.pool is not None else "average"
        stride = "last stride 1" if self.last_stride_applied else "backbone strides"
        attn = f", {self.attention_kind} attention after {', '.join(self.attention_at)}" if self.attention_at else ""
        return f"{self.backbone_name}, {pool} pooling, {stride}, BNNeck{attn}"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-BN features (B, D) of images in [0, 1]."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(x.shape)}")
        f = self.backbone.forward_features((x - self.mean) / self.std)
        if f.dim() == 4:
            if f.shape[1] != self.feature_dim and f.shape[-1] == self.feature_dim:  # NHWC maps (e.g. MambaOut)
                f = f.permute(0, 3, 1, 2)
            return self.pool(f).to(f.dtype) if self.pool is not None else f.mean((2, 3))
        if self.pool is not None:
            raise ValueError(f"GeM pooling needs a feature map; {self.backbone_name} gives tokens {tuple(f.shape)}")
        return self.backbone.forward_head(f, pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The test embedding: BNNeck features (B, D) of images in [0, 1]."""
        return self.bottleneck(self.features(x))

    def forward_train(self, x: torch.Tensor) -> TrainOutput:
        """Identity logits (B, classes) of the BNNeck features (the BNNeck features themselves without a
        classifier), with the pre-BN features (B, D) the metric losses use as ``extras["features"]``."""
        f = self.features(x)
        f_bn = self.bottleneck(f)
        return TrainOutput(self.classifier(f_bn) if self.classifier is not None else f_bn, extras={"features": f})


def batch_hard_triplet_loss(features: torch.Tensor, pids: torch.Tensor, margin: float | None = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss on features (B, D): per anchor the farthest positive and nearest negative in
    euclidean distance, mean of relu(d_ap - d_an + margin) (softplus(d_ap - d_an) for ``margin=None``); anchors
    without a positive or a negative are left out (0 when none is left). No host sync: the anchors are masked, not
    selected."""
    f = features.float()
    dist = torch.cdist(f, f).clamp_min(1e-12)
    same = pids[:, None] == pids[None, :]
    eye = torch.eye(len(pids), dtype=torch.bool, device=pids.device)
    positive, negative = same & ~eye, ~same
    ok = positive.any(1) & negative.any(1)
    d_ap = torch.where(positive, dist, 0.0).amax(1)
    d_an = torch.where(negative, dist, float("inf")).amin(1)
    gap = torch.where(ok, d_ap - d_an, 0.0)  # finite everywhere: the left-out anchors pass back zero gradients
    losses = F.softplus(gap) if margin is None else F.relu(gap + margin)
    return (losses * ok).sum() / ok.sum().clamp_min(1)


class CenterLoss(nn.Module):
    """Centre loss (Wen et al. 2016): mean over the batch of ||f - c_y||^2 / 2, the centres c trained with the
    network."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, dim))

    def forward(self, features: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        return (features.float() - self.centers[pids]).square().sum(1).mean() / 2


class ReIDLoss(nn.Module):
    """CE (label smoothing) on the logits + triplet_weight x batch-hard triplet on the pre-BN features
    (+ center_weight x centre loss); in float32. Returns the terms as they enter the loss, {"ce", "triplet"
    [, "center"]} 0-d tensors whose sum is the loss."""

    def __init__(self, num_classes: int, dim: int, label_smoothing: float = 0.1, margin: float | None = 0.3,
                 triplet_weight: float = 1.0, center_weight: float = 0.0):
        super().__init__()
        self.label_smoothing, self.margin = label_smoothing, margin
        self.triplet_weight, self.center_weight = triplet_weight, center_weight
        self.center = CenterLoss(num_classes, dim) if center_weight > 0 else None

    def forward(self, logits: torch.Tensor, features: torch.Tensor, pids: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = {"ce": F.cross_entropy(logits.float(), pids, label_smoothing=self.label_smoothing),
                 "triplet": self.triplet_weight * batch_hard_triplet_loss(features, pids, self.margin)}
        if self.center is not None:
            parts["center"] = self.center_weight * self.center(features, pids)
        return parts
