"""Gradient checkpointing, one way for every block loop."""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.models import checkpoint

__all__ = ["maybe_checkpoint"]


def maybe_checkpoint(fn: Callable, *args, enabled: bool):
    """``fn(*args)``; when ``enabled`` and autograd records, through timm's ``checkpoint``: activations are dropped
    and ``fn`` runs again in backward (with the same random state)."""
    if enabled and torch.is_grad_enabled() and not torch.jit.is_scripting():
        return checkpoint(fn, *args)
    return fn(*args)
