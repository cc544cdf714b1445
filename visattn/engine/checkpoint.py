"""Atomic checkpoint and metric files, and strict state-dict loading with a one-line report."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserError


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file beside ``path``, then rename: a crash never leaves half a file."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def json_safe(value: Any) -> Any:
    """NaN and infinities -> None, recursively, so the value serialises as strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def atomic_write_json(obj: Any, path: str) -> None:
    """Strict JSON (NaN written as null) to ``path``, atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(json_safe(obj), f, indent=2, allow_nan=False)

    atomic_write(path, write)


def read_weights(path: str) -> Any:
    """torch.load a weights file on the CPU (tensors and plain containers only), with one-line errors."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        raise UserError(f"cannot read checkpoint {path}: {str(err).splitlines()[0]}") from None


def load_checkpoint_file(path: str) -> dict:
    """Load a visattn training checkpoint, with a clear error for a missing or unreadable file."""
    ckpt = read_weights(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{path} is not a visattn training checkpoint (no 'state_dict'); convert it first")
    return ckpt


def _preview(keys: list[str], limit: int = 3) -> str:
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")


def load_state_strict(model: nn.Module, state_dict: dict, what: str) -> None:
    """Load ``state_dict`` into ``model`` or raise a one-line :class:`UserError` naming mismatched keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    reshaped = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or reshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_preview(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_preview(unexpected)})")
        if reshaped:
            parts.append(f"{len(reshaped)} with other shapes ({_preview(reshaped)})")
        raise UserError(f"{what} does not match the model: {'; '.join(parts)}")
    model.load_state_dict(state_dict)
