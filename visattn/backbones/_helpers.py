"""Helpers shared by the backbone families."""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, get_pretrained_cfg

from ..weights import pretrained_file, weights_unavailable


def init_linear_weights(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) Linear weights and zero biases; apply with ``model.apply``."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def rename_keys(state_dict: dict, rules: Sequence[tuple[str, str | Callable[[re.Match], str]]]) -> dict:
    """``state_dict`` with each key rewritten by the first ``(pattern, replacement)`` rule whose pattern matches it
    (``re.subn``); keys no rule matches are kept."""
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in rules:
            key, hits = re.subn(pattern, repl, key)
            if hits:
                break
        out[key] = value
    return out


def check_images(model: nn.Module, x: torch.Tensor, min_size: int = 1) -> None:
    """One-line ValueError, before any computation, unless ``x`` is a floating-point (B, ``model.in_chans``, H, W)
    batch with both sides at least ``min_size`` pixels. An empty batch (B = 0) is valid. Under ``torch.fx`` symbolic
    tracing (``x`` a Proxy, no sizes to check) it checks nothing."""
    if isinstance(x, torch.fx.Proxy):
        return
    name = type(model).__name__
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != model.in_chans:
        got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} expects (B, {model.in_chans}, H, W) images, got {got}")
    if not x.is_floating_point():
        raise ValueError(f"{name} expects floating-point (B, {model.in_chans}, H, W) images, got {x.dtype}: convert "
                         f"(and normalise) them first")
    h, w = x.shape[-2:]
    if h < min_size or w < min_size:
        unit = "pixel" if min_size == 1 else "pixels"
        raise ValueError(f"input {h}x{w} is too small for {name}: both sides must be at least {min_size} {unit}")


def resolve_pretrained_file(variant: str, tag: str, kwargs: dict) -> None:
    """Point timm's loader at :func:`pretrained_file` through ``pretrained_cfg_overlay`` (a ``file`` the caller
    already set is left alone)."""
    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    kwargs["pretrained_cfg_overlay"] = overlay
    if not overlay.get("file"):
        overlay["file"] = pretrained_file(variant, tag, overlay.get("url"))


def _is_int(value) -> bool:
    """An integer of Python or NumPy, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_model_kwargs(variant: str, kwargs: dict) -> None:
    """One-line ValueError for a timm construction argument no model can take: ``in_chans`` below 1, a negative
    ``num_classes`` (0: no classifier), an ``img_size`` that is not one or two positive integers, a dropout rate
    (``*drop_rate``, ``drop_path_rate``) outside [0, 1), an empty ``out_indices``."""

    def bad(what: str, value) -> ValueError:
        return ValueError(f"{variant}: {what}, got {value!r}")

    if "in_chans" in kwargs and not (_is_int(kwargs["in_chans"]) and kwargs["in_chans"] >= 1):
        raise bad("in_chans must be a positive integer (the input's channels)", kwargs["in_chans"])
    if "num_classes" in kwargs and not (_is_int(kwargs["num_classes"]) and kwargs["num_classes"] >= 0):
        raise bad("num_classes must be an integer >= 0 (0: no classifier)", kwargs["num_classes"])
    size = kwargs.get("img_size")
    sides = (size,) if _is_int(size) else tuple(size) if isinstance(size, Sequence) and len(size) == 2 else ()
    if size is not None and not (sides and all(_is_int(s) and s >= 1 for s in sides)):
        raise bad("img_size must be a positive integer or an (H, W) pair of them", size)
    for key, value in kwargs.items():
        if (key.endswith("drop_rate") or key == "drop_path_rate") and value is not None and not (
                isinstance(value, numbers.Real) and 0 <= value < 1):
            raise bad(f"{key} must lie in [0, 1)", value)
    out_indices = kwargs.get("out_indices")
    if isinstance(out_indices, Sequence) and not out_indices:
        raise bad("out_indices must name at least one feature level (an int n: the last n)", out_indices)


def check_segmentation_classes(num_classes) -> None:
    """One-line ValueError unless a per-pixel classifier gets at least one output channel."""
    if not (_is_int(num_classes) and num_classes >= 1):
        raise ValueError(f"a segmentation model needs num_classes >= 1 (one logit map per class), got {num_classes!r}")


def create_model(model_cls: type, variant: str, pretrained: bool, kwargs: dict, tag: str = "in1k"):
    """timm's ``build_model_with_cfg`` with our conventions: official weights (a URL downloaded to a variant-named
    file, or a Hugging Face hub file) loaded by :func:`visattn.load_pretrained` (timm's ``custom_load`` hook; a failed
    download is a :class:`~visattn.weights.WeightsUnavailable`), and ``features_only`` through
    ``forward_intermediates``; :func:`check_model_kwargs` first."""
    check_model_kwargs(variant, kwargs)
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    given = overlay.get("file") or overlay.get("url")
    if pretrained:
        cfg = None if given else get_pretrained_cfg(f"{variant}.{tag}")
        if given or not (cfg is not None and cfg.hf_hub_id and not cfg.url):
            resolve_pretrained_file(variant, tag, kwargs)  # a clear error when there is nothing to load
            kwargs["pretrained_cfg_overlay"]["custom_load"] = True
        # else the cfg names a hub file (custom_load="hf"): timm downloads it and calls model.load_pretrained
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    try:
        return build_model_with_cfg(model_cls, variant, pretrained,
                                    feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)
    except Exception as err:  # a hub file that cannot be fetched: a one-line WeightsUnavailable
        fetched = pretrained and not given
        failure = weights_unavailable(f"{variant}.{tag}" if tag else variant, err) if fetched else None
        if failure is None:
            raise
        raise failure from None
