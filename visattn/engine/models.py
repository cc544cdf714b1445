"""Building a named model and trying it on a blank input, with one-line errors, for every task and tool."""

from __future__ import annotations

import difflib

import timm
import torch
import torch.nn as nn

from ..errors import UserError, first_line
from ..weights import has_published_weights, weights_unavailable


def build_model(name: str, **kwargs) -> nn.Module:
    """timm.create_model with one-line errors for an unknown name (with close matches) or bad arguments (importing
    any ``visattn`` module has registered the visattn models), and, with ``pretrained=True``, for published weights
    that cannot be fetched (:class:`~visattn.weights.WeightsUnavailable`: where they come from, where to put the
    file; a tool re-raises it naming its own option for a local file, ``WeightsUnavailable.instead``)."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models() or visattn.list_models()"
        raise UserError(f"unknown model {name!r}{hint}")
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if kwargs.get("pretrained") and not (overlay.get("file") or overlay.get("state_dict")) and \
            not has_published_weights(name):
        raise UserError(f"{name} has no published weights for pretrained=True (--pretrained, a --teacher named by "
                        "model) to load: use a weights file (--init, --weights or --teacher FILE) or train it from its "
                        "initialisation")
    try:
        return timm.create_model(name, **kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"cannot build {name} with {kwargs}: {err}") from None
    except Exception as err:
        fetched = kwargs.get("pretrained") and not (overlay.get("file") or overlay.get("state_dict"))
        failure = weights_unavailable(name, err) if fetched else None
        if failure is None:
            raise
        raise failure from None


def sized_model_kwargs(name: str, model_kwargs: dict, size: int | tuple[int, int]) -> tuple[dict, str | None]:
    """``model_kwargs`` for a run on ``size`` images (H = W, or (H, W)): with ``img_size`` added where the model is
    built for one input size that is not ``size`` (a timm ViT's position table: ``patch_embed.strict_img_size``) and
    takes ``img_size`` (timm resamples published position embeddings to it), with the line that says so; else as
    given, and None. Models that take any size (every visattn model) are left as they are."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if "img_size" in model_kwargs:
        return model_kwargs, None
    try:
        with torch.device("meta"):
            embed = getattr(build_model(name, **model_kwargs), "patch_embed", None)
    except Exception:  # noqa: BLE001 - a model that cannot be built on the meta device: the real build reports
        return model_kwargs, None
    built = tuple(getattr(embed, "img_size", None) or ())
    if not getattr(embed, "strict_img_size", False) or len(built) != 2 or built == (h, w):
        return model_kwargs, None
    sized = {**model_kwargs, "img_size": h if h == w else [h, w]}
    try:
        with torch.device("meta"):
            build_model(name, **sized)
    except UserError:  # it takes no img_size: the input check says what fails
        return model_kwargs, None
    return sized, (f"{name} is built for {built[0]}x{built[1]} images; this run builds it for {h}x{w} "
                   f"(img_size={sized['img_size']}; published position embeddings are resampled to it)")


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
