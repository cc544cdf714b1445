"""Classify images with a trained checkpoint or a zoo model: top-k classes with names and probabilities.

    classifier = Classifier("runs/bt/best.pth")          # or Classifier("biformer_tiny", pretrained=True)
    classifier(["cat.jpg", pil_image, uint8_array])      # -> [Prediction(indices, classes, probabilities), ...]

Preprocessing is what the model was evaluated with: a checkpoint's stored data config at its image size (its
evaluation transform), or timm's data config of a zoo model (timm's eval transform). Class names are the
checkpoint's classes, ImageNet's (timm's ``ImageNetInfo``) for a zoo model with ImageNet's classes, else indices.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import timm
import torch

from ...engine.checkpoint import atomic_write_csv, atomic_write_json
from ...engine.loop import autocast
from ...errors import UserError
from ..opened import OpenedModel
from ..prediction import Predictor
from .task import DIGITS, image_transform

__all__ = ["Classifier", "Prediction", "class_names", "eval_transform", "write_predictions"]


@dataclass
class Prediction:
    """One image's top-k classes, most probable first: class ``indices``, their names and probabilities."""

    indices: list[int]
    classes: list[str]
    probabilities: list[float]


def eval_transform(opened: OpenedModel):
    """RGB PIL image -> (3, H, W) normalised tensor, as the model was evaluated: a classification checkpoint's
    stored data config and image size (uncropped for the built-in digits), else timm's eval transform of the
    model's data config."""
    ckpt = opened.checkpoint
    if "data_cfg" in ckpt and "img_size" in ckpt:
        return image_transform(ckpt["img_size"], ckpt["data_cfg"], digits=ckpt.get("dataset") == DIGITS)
    return timm.data.create_transform(**opened.data_config, is_training=False)


def class_names(opened: OpenedModel, num_classes: int) -> list[str]:
    """The names of the ``num_classes`` outputs: the checkpoint's classes, ImageNet's descriptions for a model of
    ImageNet's classes, else the indices."""
    stored = opened.checkpoint.get("classes")
    if stored is not None and len(stored) == num_classes:
        return [str(c) for c in stored]
    subset = timm.data.infer_imagenet_subset(opened.model) if not opened.checkpoint else None
    if subset:
        info = timm.data.ImageNetInfo(subset)
        if info.num_classes() == num_classes:
            return [info.index_to_description(i) for i in range(num_classes)]
    return [str(i) for i in range(num_classes)]


class Classifier(Predictor):
    """Top-``topk`` classes of images (at most all the classes): ``classifier(images) -> list[Prediction]``;
    :meth:`logits` of a preprocessed batch. See :class:`~visattn.tasks.prediction.Predictor` for the model
    arguments."""

    kinds = ("classification",)

    def __init__(self, source: str | OpenedModel, *, topk: int = 5, **kwargs):
        super().__init__(source, **kwargs)
        if topk < 1:
            raise UserError(f"top-k must be >= 1, got {topk}")
        self.transform = eval_transform(self.opened)
        num_classes = getattr(self.model, "num_classes", None)
        if not num_classes:
            raise UserError(f"{self.opened.name} has no classifier (num_classes={num_classes}); it gives features, "
                            "not classes")
        self.classes = class_names(self.opened, num_classes)
        self.topk = min(topk, num_classes)

    @torch.no_grad()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images on the device -> (B, classes) float32 logits."""
        with autocast(self.device, self.amp):
            return self.model(batch).float()

    def predict_batch(self, batch: torch.Tensor) -> list[Prediction]:
        """The top-k :class:`Prediction` of each image of a preprocessed batch."""
        probs, indices = self.logits(batch).softmax(dim=1).topk(self.topk, dim=1)
        return [Prediction(idx, [self.classes[i] for i in idx], p)
                for idx, p in zip(indices.tolist(), probs.tolist(), strict=True)]

    def __call__(self, images) -> list[Prediction]:
        """Predictions for one image or a list (paths, PIL images, (H, W, 3) uint8 arrays), in order."""
        return [p for batch, _ in self.batches(images) for p in self.predict_batch(batch)]


def write_predictions(classifier: Classifier, paths: Sequence[str], output: str, workers: int = 0,
                      skipped: dict[str, str] | None = None) -> dict[str, Any]:
    """Classify image files (with a progress report) and write ``predictions.csv`` (file, rank, index, class,
    probability: one row per image and rank) and ``predictions.json`` (``model``, ``task``, ``topk``, ``images``:
    per image its ``file`` and ``topk`` list of {index, class, probability}; ``skipped``: {file: why}) to ``output``.
    Returns what the JSON holds."""
    results: list[Prediction | None] = [None] * len(paths)
    for batch, indices in classifier.file_batches(paths, "predict", workers):
        for i, prediction in zip(indices, classifier.predict_batch(batch), strict=True):
            results[i] = prediction
    rows = [[path, rank, index, name, f"{prob:.6f}"]
            for path, p in zip(paths, results, strict=True)
            for rank, (index, name, prob) in enumerate(zip(p.indices, p.classes, p.probabilities, strict=True), 1)]
    atomic_write_csv(os.path.join(output, "predictions.csv"), ["file", "rank", "index", "class", "probability"], rows)
    summary = {"model": classifier.opened.name, "task": classifier.opened.task, "topk": classifier.topk,
               "images": [{"file": path, "topk": [{"index": i, "class": c, "probability": prob}
                                                   for i, c, prob in zip(p.indices, p.classes, p.probabilities,
                                                                         strict=True)]}
                          for path, p in zip(paths, results, strict=True)],
               "skipped": dict(skipped or {})}
    atomic_write_json(summary, os.path.join(output, "predictions.json"))
    return summary
