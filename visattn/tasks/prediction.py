"""What the task predictors share: opening the model (:func:`~visattn.tasks.opened.open_model`) and checking its
kind, and batches of images, from a user's list (paths, arrays, PIL images) or from files with a progress report.

Each task's ``predict.py`` subclasses :class:`Predictor` (classification's ``Classifier``, medical's ``Segmenter``,
re-id's ``FeatureExtractor``); ``visattn-predict`` picks one by the opened model's ``kind``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader, Dataset

from ..engine.progress import Progress
from ..errors import UserError
from .images import as_rgb
from .opened import OpenedModel, open_model

__all__ = ["ImageFileSet", "Predictor"]


class ImageFileSet(Dataset):
    """``(transform(read(path)), index)`` for each of ``paths`` (``read`` default: an RGB PIL image)."""

    def __init__(self, paths: Sequence[str], transform: Callable, read: Callable = as_rgb):
        self.paths, self.transform, self.read = list(paths), transform, read

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.transform(self.read(self.paths[index])), index


class Predictor:
    """A model opened for one kind of prediction.

    ``source``: a training checkpoint, a timm model name (with ``weights``, ``pretrained``, ``model_kwargs``) or an
    :class:`~visattn.tasks.opened.OpenedModel` (used as it is: the opening arguments are for a source to open); a
    model of another kind than :attr:`kinds` is a one-line error naming the predictor of its kind.
    ``batch_size`` images go through the model at a time (bf16 autocast on a GPU with ``amp``).
    """

    kinds: ClassVar[tuple[str, ...]]
    transform: Callable[[Any], torch.Tensor]  # one RGB PIL image -> the model's input (3, H, W): set by a subclass
    alternatives: ClassVar[dict[str, str]] = {"classification": "Classifier", "segmentation": "Segmenter",
                                              "reid": "FeatureExtractor"}

    def __init__(self, source: str | OpenedModel, *, weights: str | None = None, pretrained: bool = False,
                 model_kwargs: dict | None = None, device: str | None = None, use_ema: bool = True,
                 batch_size: int = 32, amp: bool = True):
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        self.opened = source if isinstance(source, OpenedModel) else open_model(
            source, weights=weights, pretrained=pretrained, model_kwargs=model_kwargs, device=device, use_ema=use_ema)
        if self.opened.kind not in self.kinds:
            raise UserError(f"{self.opened.name} is a {self.opened.kind} model; {type(self).__name__} takes "
                            f"{' or '.join(self.kinds)} models (use {self.alternatives[self.opened.kind]})")
        self.model, self.device = self.opened.model, self.opened.device
        self.batch_size, self.amp = batch_size, amp

    def batches(self, images) -> Iterator[tuple[torch.Tensor, list[int]]]:
        """(batch (B, 3, H, W) on the device, the batch's indices into ``images``): ``images`` is one image or a
        list of them, each a path, a PIL image or an (H, W, 3) uint8 array."""
        items = images if isinstance(images, list | tuple) else [images]
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            batch = torch.stack([self.transform(as_rgb(item)) for item in chunk]).to(self.device)
            yield batch, list(range(start, start + len(chunk)))

    def file_batches(self, paths: Sequence[str], desc: str = "predict",
                     workers: int = 0) -> Iterator[tuple[torch.Tensor, list[int]]]:
        """:meth:`batches` of image files, read by ``workers`` DataLoader processes, with a progress report."""
        loader = DataLoader(ImageFileSet(paths, self.transform), batch_size=self.batch_size, num_workers=workers,
                            pin_memory=self.device.type == "cuda")
        bar = Progress(loader, desc, interval=10)
        for batch, indices in bar:
            yield batch.to(self.device, non_blocking=True), indices.tolist()
            bar.update(len(indices))
