"""visattn backbones as OpenMMLab (mmdet / mmseg) backbones: multi-scale NCHW features."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import timm
import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModule
from timm.layers import LayerNorm2d

from ..backbones.psa import hrnet_psa_variant
from ..blocks.polarized_attention import LAYOUTS
from ..engine.models import build_model
from ..errors import UserError


def _levels(out_indices: int | Sequence[int], levels: int, model_name: str) -> tuple[int, ...]:
    """``out_indices`` (an int or a sequence of ints, negative from the last) as non-negative levels of a model with
    ``levels`` feature levels; a one-line error for an empty, non-integer or out-of-range choice."""
    given = (out_indices,) if isinstance(out_indices, int) else tuple(out_indices)
    if not given or not all(isinstance(i, int) and not isinstance(i, bool) for i in given):
        raise UserError(f"out_indices must be a level or a non-empty sequence of levels (ints), got {out_indices!r}")
    if any(not -levels <= i < levels for i in given):
        raise UserError(f"out_indices {given} out of range for {model_name}'s {levels} levels")
    return tuple(i % levels for i in given)


def _check_init_cfg(init_cfg) -> None:
    """A one-line error for an ``init_cfg`` the backbones cannot follow: one ``Pretrained`` dict with a checkpoint,
    and mmengine's optional ``prefix`` (and ``map_location``, unused: checkpoints are read on the CPU)."""
    if init_cfg is None:
        return
    if not isinstance(init_cfg, dict):
        raise UserError(f"init_cfg must be one dict(type='Pretrained', checkpoint=...), got {init_cfg!r}")
    if init_cfg.get("type") != "Pretrained":
        raise UserError(f"init_cfg type {init_cfg.get('type')!r} is not supported; use type='Pretrained'")
    if not init_cfg.get("checkpoint"):
        raise UserError("init_cfg=dict(type='Pretrained') needs checkpoint=: a file, a URL or 'visattn://<model>'")
    unknown = sorted(set(init_cfg) - {"type", "checkpoint", "prefix", "map_location"})
    if unknown:
        raise UserError(f"init_cfg takes checkpoint, prefix and map_location, not {', '.join(unknown)}")


class VisattnBackbone(BaseModule):
    """Any timm model with ``feature_info`` and ``forward_intermediates`` (every visattn model, and timm's own
    such as ``mambaout_*``) as a detection / segmentation backbone.

    Args:
        model_name: a registered model, e.g. ``'biformer_small'``.
        out_indices: feature levels (entries of the model's ``feature_info``; negative ones count from the last, an
            int is one level) returned as a tuple of (B, C_i, H/s_i, W/s_i) maps, in the order given.
        frozen_stages: -1 trains everything; 0 freezes the stem; i freezes the stem and stages 1..i (models with
            ``stem`` and ``stages``), with the output norms of their maps.
        norm_eval: keep BatchNorm layers in eval mode (frozen statistics) while training.
        with_cp: gradient checkpointing (timm's ``set_grad_checkpointing``): the blocks' activations are recomputed
            in the backward pass instead of kept, less memory for more compute, as mmdet's backbones' ``with_cp``.
        out_norms: add a LayerNorm2d on each returned stage output (as BiFormer's official det/seg code).
        model_kwargs: passed to ``timm.create_model`` (for BiFormer: n_win, topks, drop_path_rate, ...).
        init_cfg: ``dict(type='Pretrained', checkpoint=...)`` loads a classification checkpoint through
            :func:`visattn.load_pretrained`: an official file, ``visattn://<model>`` (the official weights,
            downloaded once), a tools/train.py checkpoint or a tools/convert.py safetensors file. A checkpoint
            missing any backbone key is an error; its classifier and final norm are not needed. ``prefix``
            (mmengine's) loads the keys under it: ``prefix='backbone.'`` takes the backbone of an mmdet / mmseg
            checkpoint (its output norms included).
    """

    def __init__(self, model_name: str, out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 norm_eval: bool = False, out_norms: bool = False, model_kwargs: dict | None = None,
                 init_cfg: dict | None = None, with_cp: bool = False):
        super().__init__(init_cfg=None)

        import visattn  # noqa: F401  (registers the models)

        _check_init_cfg(init_cfg)
        self.pretrained = init_cfg
        if not timm.is_model(model_name):
            close = difflib.get_close_matches(model_name, timm.list_models(), n=3, cutoff=0.7)
            raise UserError(f"there is no model {model_name!r}: check the backbone's arch"
                            + (f" (did you mean {', '.join(close)}?)" if close else ""))
        self.model = build_model(model_name, **(model_kwargs or {}))
        if not (getattr(self.model, "feature_info", None) and hasattr(self.model, "prune_intermediate_layers")):
            raise UserError(f"{model_name} has no feature_info and prune_intermediate_layers, so it cannot serve "
                             f"as a backbone; use a model timm's features_only API supports")
        self.out_indices = _levels(out_indices, len(self.model.feature_info), model_name)
        if frozen_stages >= 0 and not (hasattr(self.model, "stem") and hasattr(self.model, "stages")):
            raise UserError(f"frozen_stages needs a model with stem and stages; {model_name} has neither")
        if frozen_stages > 0 and frozen_stages > len(self.model.stages):
            raise UserError(f"frozen_stages={frozen_stages} but {model_name} has {len(self.model.stages)} stages")
        self._computed = sorted(set(self.out_indices))  # forward_intermediates gives each level once, in order
        self.model.prune_intermediate_layers(self._computed, prune_norm=True, prune_head=True)
        self.out_channels = [self.model.feature_info[i]["num_chs"] for i in self.out_indices]
        self.out_norms = nn.ModuleList(LayerNorm2d(c) for c in self.out_channels) if out_norms else None
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self._freeze_stages()
        if with_cp:
            self.model.set_grad_checkpointing(True)

    def _frozen_modules(self) -> list[nn.Module]:
        """The stem, the first ``frozen_stages`` stages (those out_indices keeps) and the output norms of their maps
        (as mmdet's Swin freezes them)."""
        if self.frozen_stages < 0:
            return []
        frozen = ("stem", *(f"stages.{i}" for i in range(self.frozen_stages)))

        def from_frozen(level: int) -> bool:
            module = self.model.feature_info[level]["module"]
            return any(module == name or module.startswith(f"{name}.") for name in frozen)

        norms = [] if self.out_norms is None else [
            norm for norm, level in zip(self.out_norms, self.out_indices, strict=True) if from_frozen(level)]
        return [self.model.stem, *self.model.stages[: self.frozen_stages], *norms]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def init_weights(self) -> None:
        if self.pretrained is None:
            return
        from ..weights import as_is, load_pretrained, read_state_dict

        path, prefix = self.pretrained["checkpoint"], self.pretrained.get("prefix")
        state = read_state_dict(path)
        if prefix:
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if not state:
                raise UserError(f"checkpoint {path} has no keys starting with init_cfg's prefix {prefix!r}")
            path = f"{path} ({prefix}*)"
        try:
            if any(k.startswith("model.") for k in state):  # this wrapper's own layout (a detector's backbone.*)
                result = load_pretrained(self, state, filter_fn=as_is, name=path)
            else:
                result = load_pretrained(self.model, state, name=path)
        except UserError as err:
            if prefix or not any(k.startswith("backbone.") for k in state):
                raise
            raise UserError(f"{err}; it holds a whole detector or segmentor: add prefix='backbone.' to init_cfg to "
                            f"load its backbone") from None
        print_log(f"loaded {result.loaded} tensors from {path}; {len(result.unused)} unused (classifier, final norm, "
                  f"pruned stages)", logger="current")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        computed = self.model.forward_intermediates(x, indices=self._computed, intermediates_only=True)
        by_level = dict(zip(self._computed, computed, strict=True))
        feats = [by_level[i] for i in self.out_indices]
        if self.out_norms is not None:
            feats = [norm(f) for norm, f in zip(self.out_norms, feats, strict=True)]
        return tuple(feats)


class BiFormerBackbone(VisattnBackbone):
    """BiFormer for detection and segmentation (official settings: n_win 16 for COCO, 8 for ADE20K at 512).

    Args:
        arch: 'tiny', 'small', 'base', 'stl' or 'stl_nchw'.
        n_win: regions per side; inputs of any size are padded per block and cropped back.
        topks: routed regions per stage (None = global attention), default (1, 4, 16, None).
        drop_path_rate: stochastic depth, linear over blocks.
        out_norms: LayerNorm2d on each output (the official det/seg ``extra_norms``), on by default.
    """

    def __init__(self, arch: str = "small", n_win: int = 16, topks: Sequence[int | None] | None = None,
                 drop_path_rate: float = 0.2, out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 norm_eval: bool = False, out_norms: bool = True, init_cfg: dict | None = None,
                 with_cp: bool = False):
        kwargs = dict(n_win=n_win, drop_path_rate=drop_path_rate)
        if topks is not None:
            kwargs["topks"] = tuple(topks)
        super().__init__(f"biformer_{arch}", out_indices, frozen_stages, norm_eval, out_norms, kwargs, init_cfg,
                         with_cp)


class FamilyBackbone(VisattnBackbone):
    """A family's variant by ``arch`` (the model ``<family>_<arch>``), with output norms on by default.

    Args:
        arch: the variant, e.g. 'tiny'.
        drop_path_rate: stochastic depth, linear over blocks (default: the family's detection recipe).
        out_norms: LayerNorm2d on each output, on by default.
    """

    family: str
    default_arch = "tiny"
    default_drop_path_rate = 0.2

    def __init__(self, arch: str | None = None, drop_path_rate: float | None = None,
                 out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1, norm_eval: bool = False,
                 out_norms: bool = True, init_cfg: dict | None = None, with_cp: bool = False):
        rate = self.default_drop_path_rate if drop_path_rate is None else drop_path_rate
        super().__init__(f"{self.family}_{arch or self.default_arch}", out_indices, frozen_stages, norm_eval,
                         out_norms, dict(drop_path_rate=rate), init_cfg, with_cp)


class MambaOutBackbone(FamilyBackbone):
    """timm's MambaOut (``mambaout_<arch>``: 'femto', 'kobe', 'tiny', 'small' or 'base') for detection and
    segmentation; its authors released no det/seg code. Its stages end without a norm: keep ``out_norms``."""

    family = "mambaout"


class LaMambaBackbone(FamilyBackbone):
    """LaMamba (``lamamba_<arch>``: 'tiny', 'small' or 'base'; visattn's adaptation of LaMamba-Diff's block) for
    detection and segmentation."""

    family = "lamamba"


class InLineSwinBackbone(FamilyBackbone):
    """InLine-Swin (``inline_swin_<arch>``: 'tiny', 'small' or 'base'; injective linear attention in the early
    stages, Swin's shifted window attention in the late ones) for detection and segmentation. InLine windows are 56
    tokens per side, so at 512 x 512 the first two stages attend globally. Drop path 0.3 by default."""

    family = "inline_swin"
    default_drop_path_rate = 0.3


class InLinePVTBackbone(FamilyBackbone):
    """InLine-PVT (``inline_pvt_<arch>``: 'tiny', 'small', 'medium' or 'large'; PVT v1 with injective linear
    attention over the whole map in every block) for detection and segmentation. Its position tables are resampled
    bilinearly to each input's grid, as PVT's own det/seg code does. Drop path 0.1 by default (PVT's det/seg
    backbones); PVT returns its stage outputs without norms, so the configs set ``out_norms=False``."""

    family = "inline_pvt"
    default_drop_path_rate = 0.1


class InLineCSwinBackbone(FamilyBackbone):
    """InLine-CSwin (``inline_cswin_<arch>``: 'tiny', 'small' or 'base'; InLine over the whole map in stages 1-2,
    CSWin's cross-shaped stripes in stage 3, global attention in stage 4) for detection and segmentation. Output
    norms on, as CSWin's segmentation backbone; drop path 0.3 by default (CSWin-T's UperNet config)."""

    family = "inline_cswin"
    default_drop_path_rate = 0.3


class PSAHRNetBackbone(VisattnBackbone):
    """HRNetV2 with Polarized Self-Attention (``hrnet_<arch>_psa[_s]``) for segmentation and detection: the four
    branch outputs (strides 4-32, widths W, 2W, 4W, 8W) as mmseg's and mmdet's own HRNet return them, for heads that
    concatenate them (``input_transform='resize_concat'``: FCN, OCR) or mmdet's ``HRFPN`` neck.

    Args:
        arch: 'w18', 'w32' or 'w48'.
        layout: 'sequential' (PSA_s, the official ``hrnetv2.py``) or 'parallel' (PSA_p).
        upsample: fuse-layer upsampling; 'bilinear' (the official HRNetV2 segmentation code, mmseg's HRNet) or
            'nearest' (timm's ImageNet HRNet, mmdet's HRNet).
        out_indices: entries of the model's feature_info: 0 is the stem (stride 2), 1-4 the branches.
        init_cfg: as :class:`VisattnBackbone`; besides ImageNet HRNet weights (``visattn://hrnet_w48_psa_s``),
            an official PSA segmentation checkpoint (``module.backbone.*`` with its OCR head) loads its backbone.
    """

    def __init__(self, arch: str = "w48", layout: str = "sequential", upsample: str = "bilinear",
                 out_indices: Sequence[int] = (1, 2, 3, 4), norm_eval: bool = False, init_cfg: dict | None = None,
                 with_cp: bool = False):
        if layout not in LAYOUTS:
            raise UserError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
        name = hrnet_psa_variant(arch, layout)
        super().__init__(name, out_indices, -1, norm_eval, False, dict(head="", upsample=upsample), init_cfg,
                         with_cp)
