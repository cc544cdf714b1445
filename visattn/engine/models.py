"""Building a named model and trying it on a blank input, with one-line errors, for every task and tool."""

from __future__ import annotations

import difflib

import timm
import torch
import torch.nn as nn

from ..errors import UserError, first_line
from ..weights import weights_unavailable


def build_model(name: str, **kwargs) -> nn.Module:
    """timm.create_model with one-line errors for an unknown name (with close matches) or bad arguments (importing
    any ``visattn`` module has registered the visattn models), and, with ``pretrained=True``, for published weights
    that cannot be fetched (:class:`~visattn.weights.WeightsUnavailable`: where they come from, where to put the
    file; a tool re-raises it naming its own option for a local file, ``WeightsUnavailable.instead``)."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models() or visattn.list_models()"
        raise UserError(f"unknown model {name!r}{hint}")
    try:
        return timm.create_model(name, **kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"cannot build {name} with {kwargs}: {err}") from None
    except Exception as err:
        overlay = kwargs.get("pretrained_cfg_overlay") or {}
        fetched = kwargs.get("pretrained") and not (overlay.get("file") or overlay.get("state_dict"))
        failure = weights_unavailable(name, err) if fetched else None
        if failure is None:
            raise
        raise failure from None


def check_model_input(model: nn.Module, size: int | tuple[int, int], name: str,
                      expected_shape: tuple[int, ...] | None = None, need: str = "") -> None:
    """Run one blank (1, 3, H, W) image (``size``: H = W, or (H, W)) through ``model`` so that an input it cannot
    take fails before training; with ``expected_shape`` the output must have that shape (``need`` says why, in the
    error)."""
    h, w = (size, size) if isinstance(size, int) else size
    shown = str(size) if isinstance(size, int) else f"{h}x{w}"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, h, w, device=next(model.parameters()).device))
    except (ValueError, RuntimeError, AssertionError) as err:
        raise UserError(f"image size {shown} does not work with {name}: {first_line(err)}") from None
    finally:
        model.train(was_training)
    if expected_shape is None:
        return
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != tuple(expected_shape):
        raise UserError(f"{name} returns {shape} for a (1, 3, {h}, {w}) image; "
                        f"{need or f'expected {tuple(expected_shape)}'}")
