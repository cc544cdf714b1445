"""MambaOut: Do We Really Need Mamba for Vision? (Yu & Wang, CVPR 2025).

A four-stage pyramid of Gated CNN blocks (:class:`visattn.blocks.GatedCNNBlock`: Mamba's gated skeleton with a
7x7 depthwise conv in place of the SSM). Stem conv3x3/2 → LN → GELU → conv3x3/2 → LN; conv3x3/2 + LN
between stages; head GAP → LN → Linear(C, 4C) → GELU → LN → Linear. Stages run on (B, H, W, C) maps.

Registered as ``visattn_mambaout_*`` (timm registers ``mambaout_*`` itself). ``checkpoint_filter_fn`` loads
the official release checkpoints and timm's ``mambaout_*`` checkpoints (timm's key layout is ours).

| model                   | depths    | dims        | params (M) | MACs @224 (G) | top-1 (official) |
|-------------------------|-----------|-------------|-----------:|--------------:|-----------------:|
| visattn_mambaout_femto  | 3-3-9-3   | 48..288     | 7.3        | 1.2           | 78.9             |
| visattn_mambaout_kobe   | 3-3-15-3  | 48..288     | 9.1        | 1.5           | 80.0             |
| visattn_mambaout_tiny   | 3-3-9-3   | 96..576     | 26.5       | 4.5           | 82.7             |
| visattn_mambaout_small  | 3-4-27-3  | 96..576     | 48.5       | 9.0           | 84.1             |
| visattn_mambaout_base   | 3-4-27-3  | 128..768    | 84.8       | 15.8          | 84.2             |
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import generate_default_cfgs, register_model

from ..blocks import GatedCNNBlock
from ._helpers import create_model
from ._pyramid import PyramidModel, PyramidStage

__all__ = ["MambaOut"]


class Stem(nn.Module):
    """Conv3x3/2 → LN → GELU → Conv3x3/2 → LN: (B, 3, H, W) -> (B, H/4, W/4, C)."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs // 2, 3, stride=2, padding=1)
        self.norm1 = nn.LayerNorm(out_chs // 2, eps=1e-6)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(out_chs // 2, out_chs, 3, stride=2, padding=1)
        self.norm2 = nn.LayerNorm(out_chs, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.conv1(x).permute(0, 2, 3, 1)))
        return self.norm2(self.conv2(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class Downsample(nn.Module):
    """Conv3x3/2 → LN on channels-last maps: (B, H, W, C_in) -> (B, ceil(H/2), ceil(W/2), C_out)."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out_chs, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class MlpHead(nn.Module):
    """GAP → LN → Linear(C, rC) → GELU → LN → (dropout) → Linear(rC, classes) on NCHW maps."""

    def __init__(self, dim: int, num_classes: int, mlp_ratio: float = 4.0, drop_rate: float = 0.0):
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pre_logits = nn.Sequential()
        self.pre_logits.add_module("fc", nn.Linear(dim, hidden))
        self.pre_logits.add_module("act", nn.GELU())
        self.pre_logits.add_module("norm", nn.LayerNorm(hidden, eps=1e-6))
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()
        self.hidden = hidden

    def reset(self, num_classes: int, pool_type: str | None = None) -> None:
        if pool_type not in (None, "avg", ""):
            raise ValueError(f"MambaOut's head pools by averaging; global_pool={pool_type!r} is not supported")
        self.fc = nn.Linear(self.hidden, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(self.norm(x.mean(dim=(2, 3))))
        return x if pre_logits else self.fc(self.drop(x))


class MambaOut(PyramidModel):
    """MambaOut classifier and backbone.

    Args:
        depths, dims: blocks and channels per stage.
        expansion_ratio, conv_ratio, kernel_size: Gated CNN block settings (8/3, 1.0, 7 in every variant).
        head_mlp_ratio: width of the head's hidden layer relative to dims[-1].
    """

    channels_last = True

    def __init__(self, depths: Sequence[int] = (3, 3, 9, 3), dims: Sequence[int] = (96, 192, 384, 576),
                 expansion_ratio: float = 8 / 3, conv_ratio: float = 1.0, kernel_size: int = 7,
                 head_mlp_ratio: float = 4.0, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError(f"depths and dims need one entry per stage, got {depths}, {dims}")
        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.stem = Stem(in_chans, dims[0])
        dpr = [r.tolist() for r in torch.linspace(0, drop_path_rate, sum(depths)).split(list(depths))]
        stages, self.feature_info = [], []
        for i, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
            blocks = [GatedCNNBlock(dim, expansion_ratio, conv_ratio, kernel_size, dpr[i][j]) for j in range(depth)]
            stages.append(PyramidStage(Downsample(dims[i - 1], dim) if i else nn.Identity(), blocks))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.min_input_size = 4 * 2 ** (len(dims) - 1)
        self.norm = nn.Identity()
        self.head = MlpHead(dims[-1], num_classes, head_mlp_ratio, drop_rate)
        self.head_hidden_size = self.head.hidden
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d | nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


# Official release layout -> ours (timm's), first match wins.
_OFFICIAL_RENAMES = [
    (r"^downsample_layers\.0\.", "stem."),
    (r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample."),
    (r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"^norm\.", "head.norm."),
    (r"^head\.fc1\.", "head.pre_logits.fc."),
    (r"^head\.norm\.", "head.pre_logits.norm."),
    (r"^head\.fc2\.", "head.fc."),
]


def checkpoint_filter_fn(state_dict: dict, model: MambaOut) -> dict:
    """Map an official MambaOut checkpoint (raw state dict or under ``model``) onto visattn keys; timm's
    ``mambaout_*`` checkpoints already use visattn's layout and pass through."""
    state_dict = state_dict.get("model", state_dict)
    if "downsample_layers.0.conv1.weight" not in state_dict:
        return state_dict
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _OFFICIAL_RENAMES:
            new_key, hits = re.subn(pattern, repl, key)
            if hits:
                key = new_key
                break
        out[key] = value
    return out


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "test_input_size": (3, 288, 288),
        "pool_size": (7, 7), "crop_pct": 1.0, "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "first_conv": "stem.conv1",
        "classifier": "head.fc", "license": "apache-2.0", "paper_ids": "arXiv:2405.07992",
        "paper_name": "MambaOut: Do We Really Need Mamba for Vision?",
        "origin_url": "https://github.com/yuweihao/MambaOut", **kwargs,
    }


_RELEASE = "https://github.com/yuweihao/MambaOut/releases/download/model/mambaout_{}.pth"
_VARIANTS = {
    # name: (depths, dims, default drop path)
    "femto": ((3, 3, 9, 3), (48, 96, 192, 288), 0.025),
    "kobe": ((3, 3, 15, 3), (48, 96, 192, 288), 0.025),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 576), 0.2),
    "small": ((3, 4, 27, 3), (96, 192, 384, 576), 0.4),
    "base": ((3, 4, 27, 3), (128, 256, 512, 768), 0.6),
}

default_cfgs = generate_default_cfgs({
    f"visattn_mambaout_{name}.in1k": _cfg(url=_RELEASE.format(name)) for name in _VARIANTS
})


def _create_mambaout(variant: str, pretrained: bool = False, **kwargs) -> MambaOut:
    return create_model(MambaOut, variant, pretrained, kwargs, checkpoint_filter_fn)


def _variant(name: str, pretrained: bool, kwargs: dict) -> MambaOut:
    depths, dims, _ = _VARIANTS[name]
    return _create_mambaout(f"visattn_mambaout_{name}", pretrained, **dict(dict(depths=depths, dims=dims), **kwargs))


@register_model
def visattn_mambaout_femto(pretrained: bool = False, **kwargs) -> MambaOut:
    """MambaOut-Femto: depths 3-3-9-3, dims 48-288. 7.3 M params, 1.2 GMACs @224, 78.9% top-1 (drop path 0.025)."""
    return _variant("femto", pretrained, kwargs)


@register_model
def visattn_mambaout_kobe(pretrained: bool = False, **kwargs) -> MambaOut:
    """MambaOut-Kobe: depths 3-3-15-3, dims 48-288. 9.1 M params, 1.5 GMACs @224, 80.0% top-1 (drop path 0.025)."""
    return _variant("kobe", pretrained, kwargs)


@register_model
def visattn_mambaout_tiny(pretrained: bool = False, **kwargs) -> MambaOut:
    """MambaOut-Tiny: depths 3-3-9-3, dims 96-576. 26.5 M params, 4.5 GMACs @224, 82.7% top-1 (drop path 0.2)."""
    return _variant("tiny", pretrained, kwargs)


@register_model
def visattn_mambaout_small(pretrained: bool = False, **kwargs) -> MambaOut:
    """MambaOut-Small: depths 3-4-27-3, dims 96-576. 48.5 M params, 9.0 GMACs @224, 84.1% top-1 (drop path 0.4)."""
    return _variant("small", pretrained, kwargs)


@register_model
def visattn_mambaout_base(pretrained: bool = False, **kwargs) -> MambaOut:
    """MambaOut-Base: depths 3-4-27-3, dims 128-768. 84.8 M params, 15.8 GMACs @224, 84.2% top-1 (drop path 0.6)."""
    return _variant("base", pretrained, kwargs)
