"""Segment images with a medical-seg checkpoint or a zoo segmentation network: a probability map and a mask at the
input's original size.

    segmenter = Segmenter("runs/vessels/best.pth")
    result = segmenter("fundus.png")[0]     # Segmentation: probability (H, W) float32, mask (H, W) bool, area

Images are read and normalised as the task evaluates them (the checkpoint's scale, mean and std; a zoo model's
data config), and go through :func:`~visattn.tasks.medical.task.predict_logits`: with ``inference="auto"`` a
checkpoint's images go the way its run evaluated them (its stored mode: zero-padded whole images, or overlapping
tile x tile windows whose logits are averaged), and a zoo model's image that fits in the tile (its input size) is
zero-padded to the model's multiple, a larger one cut into windows; the logits are cropped and resized back to the
original size before the sigmoid.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ...engine.checkpoint import atomic_write_csv
from ...engine.progress import Progress
from ...errors import UserError
from ..images import as_rgb
from ..opened import OpenedModel
from ..prediction import ImageFileSet, Predictor
from .data import normalize, read_rgb, rescale_rgb
from .metrics import restore_original
from .task import INFERENCE_MODES, TASK, Inference, check_model_output, predict_logits, save_prediction

__all__ = ["Segmentation", "Segmenter", "write_segmentations"]

MODES = ("auto", *INFERENCE_MODES)


@dataclass
class Segmentation:
    """One image's foreground ``probability`` (H, W) float32 in [0, 1] and ``mask`` (H, W) bool (probability >=
    the threshold), at the image's original size."""

    probability: np.ndarray
    mask: np.ndarray

    @property
    def area(self) -> int:
        """Foreground pixels."""
        return int(self.mask.sum())

    @property
    def fraction(self) -> float:
        """Foreground pixels / all pixels."""
        return self.area / self.mask.size


class Segmenter(Predictor):
    """Binary segmentation of whole images: ``segmenter(images) -> list[Segmentation]``.

    ``threshold``: default the checkpoint's (0.5 for a zoo model); ``inference``: ``auto`` (a checkpoint's
    evaluation mode; for a zoo model the padded whole image when it fits in the tile, else sliding windows),
    ``padded`` or ``sliding``; ``tile``: the window size (default: the
    checkpoint's tile, which is its training crop unless set otherwise, or the zoo model's input size). Windows
    go through the model ``batch_size`` at a time. See :class:`~visattn.tasks.prediction.Predictor` for the model
    arguments.
    """

    kinds = ("segmentation",)

    def __init__(self, source: str | OpenedModel, *, threshold: float | None = None, inference: str = "auto",
                 tile: int | None = None, **kwargs):
        super().__init__(source, **kwargs)
        if inference not in MODES:
            raise UserError(f"inference must be one of {', '.join(MODES)}, got {inference!r}")
        ckpt, config = self.opened.checkpoint, self.opened.data_config
        if self.opened.task == TASK:
            self.scale, self.mean, self.std = ckpt["scale"], tuple(ckpt["mean"]), tuple(ckpt["std"])
            stored = Inference(**ckpt["inference"])
            stored_threshold = ckpt["threshold"]
        else:
            self.scale, self.mean, self.std = 1.0, tuple(config["mean"]), tuple(config["std"])
            stored = Inference("padded", tile=config["input_size"][-1])
            stored_threshold = 0.5
        self.threshold = stored_threshold if threshold is None else threshold
        if not 0 < self.threshold < 1:
            raise UserError(f"threshold must be in (0, 1), got {self.threshold}")
        self.inference, self.stored = inference, stored
        self.tile = tile or stored.tile
        self.settings("sliding")  # checks the tile
        check_model_output(self.model, self.tile, self.opened.name)

    def settings(self, mode: str) -> Inference:
        """The inference settings of ``mode`` (``padded`` or ``sliding``): the tile, the stored overlap, padding
        multiple and canvas, this predictor's batch size."""
        stored = self.stored
        return Inference(mode, self.tile, stored.overlap, stored.pad_multiple, self.batch_size, stored.pad_to)

    def mode_for(self, height: int, width: int) -> str:
        """``padded`` or ``sliding`` for an image of (``height``, ``width``) after scaling."""
        if self.inference != "auto":
            return self.inference
        if self.opened.task == TASK:  # as the run evaluated: the numbers it reported are those of this mode
            return self.stored.mode
        return "sliding" if max(height, width) > self.tile else "padded"

    @torch.no_grad()
    def probability(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 image -> (H, W) float32 foreground probability."""
        height, width = rgb.shape[:2]
        image = normalize(rescale_rgb(rgb, self.scale), self.mean, self.std)[None].to(self.device)
        settings = self.settings(self.mode_for(*image.shape[-2:]))
        logits = predict_logits(self.model, image, settings, self.amp)
        logits = restore_original(logits, (0, 0, *logits.shape[-2:]), (height, width))
        return torch.sigmoid(logits)[0, 0].cpu().numpy()

    def segment(self, rgb: np.ndarray) -> Segmentation:
        """The :class:`Segmentation` of one (H, W, 3) uint8 image."""
        prob = self.probability(rgb)
        return Segmentation(prob, prob >= self.threshold)

    def __call__(self, images) -> list[Segmentation]:
        """Segmentations of one image or a list (paths, PIL images, (H, W, 3) uint8 arrays), in order."""
        items = images if isinstance(images, list | tuple) else [images]
        return [self.segment(_read(item)) for item in items]


def _read(item) -> np.ndarray:
    """(H, W, 3) uint8: a path as the task reads files (16-bit images scaled), anything else through as_rgb."""
    if isinstance(item, str | os.PathLike):
        if not os.path.isfile(item):
            raise UserError(f"{item}: no such file")
        return read_rgb(os.fspath(item))
    return np.asarray(as_rgb(item))


def _same(item):
    return item


def _read_or_why(path: str) -> tuple[np.ndarray | None, str | None]:
    """(the image, None), or (None, why) for a file that fails to decode though its up-front check passed."""
    try:
        return _read(path), None
    except UserError as err:
        return None, str(err)


def write_segmentations(segmenter: Segmenter, paths: Sequence[str], names: Sequence[str], output: str,
                        workers: int = 0) -> list[dict[str, Any]]:
    """Segment image files (with a progress report); for each, ``NAME_prob.png``, ``NAME_pred.png`` and
    ``NAME_overlay.png`` (predicted foreground green) at its original size in ``output``, and ``areas.csv``:
    file, name, height, width, foreground_pixels, foreground_fraction. Returns the rows as dicts. A file that fails
    to decode is skipped with a warning (none decoding is a one-line error)."""
    loader = DataLoader(ImageFileSet(paths, _same, _read_or_why), batch_size=None, num_workers=workers,
                        collate_fn=_same)
    bar = Progress(loader, "predict", interval=10)
    rows, failed = [], []
    for (rgb, why), index in bar:
        if rgb is None:
            failed.append(why)
        else:
            result = segmenter.segment(rgb)
            save_prediction(output, names[index], rgb, result.probability, result.mask)
            rows.append({"file": paths[index], "name": names[index], "height": rgb.shape[0], "width": rgb.shape[1],
                         "foreground_pixels": result.area, "foreground_fraction": result.fraction})
        bar.update(1)
    if not rows:
        raise UserError(f"none of the {len(paths)} images could be decoded (first: {failed[0]})")
    if failed:
        warnings.warn(f"skipped {len(failed)} of {len(paths)} images that failed to decode, left out of areas.csv "
                      f"(first: {failed[0]})", stacklevel=2)
    header = list(rows[0])
    atomic_write_csv(os.path.join(output, "areas.csv"), header,
                     [[f"{v:.6f}" if k == "foreground_fraction" else v for k, v in row.items()] for row in rows])
    return rows
