"""Helpers shared by the backbone families."""

from __future__ import annotations

import os

import torch
from timm.models import get_pretrained_cfg


def check_input_size(x: torch.Tensor, min_size: int, model_name: str) -> None:
    """Raise a one-line error when an NCHW input is smaller than the model's total stride."""
    h, w = x.shape[-2:]
    if h < min_size or w < min_size:
        raise ValueError(
            f"input {h}x{w} is too small for {model_name}: both sides must be at least {min_size} pixels"
        )


def resolve_pretrained_file(variant: str, tag: str, kwargs: dict) -> None:
    """Download an official checkpoint to a name of its own before timm loads it.

    Official checkpoints served from share links all end in the same path segment (``.../content``), so
    timm's URL loader would cache every variant under one file name. This fetches ``url`` to
    ``$TORCH_HOME/hub/checkpoints/<variant>_<tag>.pth`` (once) and points timm at that file through
    ``pretrained_cfg_overlay``. A ``file`` the caller already set in the overlay is left alone.
    """
    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    kwargs["pretrained_cfg_overlay"] = overlay
    if overlay.get("file"):
        return
    cfg = get_pretrained_cfg(f"{variant}.{tag}")
    url = overlay.get("url") or (cfg.url if cfg is not None else None)
    if not url:
        return
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", f"{variant}_{tag}.pth")
    if not os.path.exists(cached):
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        torch.hub.download_url_to_file(url, cached, progress=True)
    overlay["file"] = cached
