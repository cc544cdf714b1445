"""``visualize``: the pictures of what one model does with one image, written to a folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..contract import INSPECTION_KINDS, InspectionMap, inspect
from ..engine.checkpoint import atomic_write_json, check_output_folder
from ..errors import UserError, first_line
from ..tasks.classification.predict import class_names
from ..tasks.images import as_rgb
from ..tasks.opened import SEGMENTATION, OpenedModel, open_model
from .draw import Scene, draw_gradcam, draw_kind
from .gradcam import grad_cam, module_of

GRADCAM = "gradcam"
PICTURES = (*INSPECTION_KINDS, GRADCAM)


@dataclass
class Visualization:
    """What :func:`visualize` wrote: ``files`` (one PNG per picture, then ``summary.json``) and ``summary`` (the
    numbers behind the pictures, as written to ``summary.json``)."""

    files: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def input_spec(opened: OpenedModel, img_size: int | None = None) -> tuple[tuple[int, int], tuple, tuple]:
    """(input (H, W), mean, std) an opened model takes its images at (:meth:`OpenedModel.input_size`,
    :meth:`OpenedModel.preprocessing`)."""
    spec = opened.preprocessing()
    return opened.input_size(img_size), tuple(spec["mean"]), tuple(spec["std"])


def class_label(opened: OpenedModel, index: int, num_classes: int) -> str:
    """``name (index)`` of an output class: its short name (to the first comma) as the predictor names it
    (:func:`~visattn.tasks.classification.predict.class_names`)."""
    return f"{class_names(opened, num_classes)[index].split(',')[0]} ({index})"


def _check_query(query: Sequence[int] | None, size: tuple[int, int]) -> tuple[int, int]:
    """The query pixel (row, column): ``query``, else the image centre; a one-line error outside the image."""
    h, w = size
    if query is None:
        return h // 2, w // 2
    y, x = query
    if not (0 <= y < h and 0 <= x < w):
        raise UserError(f"--query {y},{x} lies outside the {h}x{w} image (rows 0-{h - 1}, columns 0-{w - 1}); give "
                        "Y,X inside it")
    return y, x


def _under(name: str, layers: Sequence[str]) -> bool:
    base = name.split("#")[0]
    return any(base == layer or base.startswith(f"{layer}.") for layer in layers)


def resampling(opened: OpenedModel) -> Image.Resampling:
    """The filter the model's evaluation resizes images with: its preprocessing's ``interpolation`` (a segmentation
    network's scale resize is bilinear), bicubic where it names none."""
    from timm.data.transforms import str_to_pil_interp

    if opened.kind == SEGMENTATION:
        return Image.Resampling.BILINEAR
    return str_to_pil_interp(opened.preprocessing().get("interpolation") or "bicubic")


def model_input(opened: OpenedModel, picture: Image.Image, img_size: int | None = None
                ) -> tuple[np.ndarray, torch.Tensor]:
    """The image as the model takes it: (H, W, 3) uint8, the whole image resized to :func:`input_spec`'s size with
    the model's :func:`resampling` (what the pictures are drawn over), and (1, 3, H, W) normalised on the model's
    device."""
    (h, w), mean, std = input_spec(opened, img_size)
    shown = np.array(picture.resize((w, h), resampling(opened)))
    x = torch.from_numpy(shown).permute(2, 0, 1).float().div(255)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return shown, x[None].to(opened.device)


def _choose(opened: OpenedModel, by_kind: dict, pictures: Sequence[str], layers: Sequence[str]) -> list[str]:
    """The pictures to draw: ``pictures``, else every one the model offers; a one-line error for one it does not."""
    offered = [k for k in INSPECTION_KINDS if k in by_kind] + ([GRADCAM] if opened.kind == "classification" else [])
    under = f" under --layer {', '.join(layers)}" if layers else ""
    missing = [p for p in pictures if p not in offered]
    if missing:
        raise UserError(f"{opened.name} has no {missing[0]} picture{under}; it offers {', '.join(offered) or 'none'}")
    if not offered:
        raise UserError(f"{opened.name} offers no picture{under}: no layer shows attention and its output is not "
                        "class logits")
    return list(pictures or offered)


def visualize(source: str, image: str, output: str, *, query: Sequence[int] | None = None,
              layers: Sequence[str] = (), pictures: Sequence[str] = (), weights: str | None = None,
              pretrained: bool = False, model_kwargs: dict | None = None, device: str | None = None,
              img_size: int | None = None) -> Visualization:
    """Draw what the model ``source`` (a training checkpoint or a model name, as
    :func:`visattn.tasks.opened.open_model` opens it) does with ``image``: one PNG per picture in ``output``, and
    ``summary.json`` with the numbers behind them.

    Args:
        query: the pixel (row, column) of the original image the query-following pictures look at (the centre by
            default).
        layers: module names; only the layers under them are drawn, and Grad-CAM is taken on their outputs
            (default: every layer; Grad-CAM on the model's last map).
        pictures: of :data:`PICTURES`; default every one the model offers: those of its ``inspect`` maps (the
            model-training contract) and Grad-CAM for a classifier.
        img_size: the side the image is resized to (default: the checkpoint's training size, else the model's).
    """
    unknown = [p for p in pictures if p not in PICTURES]
    if unknown:
        raise UserError(f"--picture {unknown[0]}: no such picture; use {', '.join(PICTURES)}")
    picture = as_rgb(image)
    check_output_folder(output, "the pictures")
    pixel = _check_query(query, (picture.height, picture.width))
    fraction = ((pixel[0] + 0.5) / picture.height, (pixel[1] + 0.5) / picture.width)
    opened = open_model(source, weights=weights, pretrained=pretrained, model_kwargs=model_kwargs, device=device)
    for layer in layers:
        module_of(opened.model, layer)
    shown, x = model_input(opened, picture, img_size)
    try:
        found = inspect(opened.model, x, fraction)
    except (ValueError, RuntimeError) as err:
        raise UserError(f"{opened.name} cannot take the {x.shape[-2]}x{x.shape[-1]} input: {first_line(err)}; try "
                        "--img-size") from None
    by_kind: dict[str, dict[str, InspectionMap]] = {}
    for name, m in (found.maps if found else {}).items():
        if not layers or _under(name, layers):
            by_kind.setdefault(m.kind, {})[name] = m
    chosen = _choose(opened, by_kind, pictures, layers)
    cams = grad_cam(opened.model, x, layers) if GRADCAM in chosen else None  # before any file: its errors write none
    caption = f"{opened.name} on {os.path.basename(image)} at {x.shape[-1]}x{x.shape[-2]}, query at pixel " \
              f"{pixel[0]},{pixel[1]}"
    if opened.kind == "classification" and found is not None and found.output.dim() == 2:
        caption += f"; top class {class_label(opened, int(found.output[0].argmax()), found.output.shape[1])}"
    result = Visualization(summary={"model": opened.name, "image": image, "input_size": list(shown.shape[:2]),
                                    "query": {"pixel": list(pixel), "fraction": list(fraction)}, "pictures": {}})
    scene = Scene(shown, fraction, caption)
    for kind in chosen:
        path = os.path.join(output, f"{kind}.png")
        if kind == GRADCAM:
            numbers = draw_gradcam(cams, scene, class_label(opened, cams[0].targets[0], cams[0].classes), path)
        else:
            numbers = draw_kind(kind, by_kind[kind], scene, path)
        result.summary["pictures"][kind] = {"file": os.path.basename(path), "layers": numbers}
        result.files.append(path)
    path = os.path.join(output, "summary.json")
    atomic_write_json(result.summary, path)
    result.files.append(path)
    return result
