"""Re-id features and rankings, as torchreid's ``FeatureExtractor`` gives them.

    extractor = FeatureExtractor("runs/reid/best.pth")          # device=None: a GPU when there is one
    features = extractor(["a.jpg", pil_image, uint8_array])     # (N, D) float32 on the CPU
    indices, distances = rank(extractor(queries), extractor(gallery), metric="euclidean", topk=10)

A re-id checkpoint's features are its test-time embedding, as its evaluation computes it: the model's ``forward``
(the BNNeck feature) of the image resized to the training input size, averaged with its mirror image's when the
run evaluated with ``--flip-test``. Any other classification model (a zoo model by name, a classification
checkpoint) gives its pooled pre-logits features (timm's ``forward_head(..., pre_logits=True)``) after its eval
transform.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ...engine.checkpoint import atomic_write, atomic_write_csv
from ...engine.loop import autocast
from ...errors import UserError
from ..classification.predict import eval_transform
from ..images import as_rgb
from ..opened import OpenedModel
from ..prediction import Predictor
from .data import reid_eval_transform
from .metrics import distance_matrix, rerank_features
from .task import METRICS, TASK

__all__ = ["FeatureExtractor", "rank", "ranking_picture", "write_rankings"]


class FeatureExtractor(Predictor):
    """``extractor(images) -> (N, D)`` float32 features on the CPU, for one image or a list of paths, PIL images
    or (H, W, 3) uint8 arrays.

    ``flip``: average with the mirror image's features (default: as the re-id run evaluated; off for other
    models). :attr:`metric` and :attr:`rerank` are the run's evaluation settings (euclidean, no re-ranking for
    other models), what :func:`rank` is given by ``visattn-predict``. See
    :class:`~visattn.tasks.prediction.Predictor` for the other arguments.
    """

    kinds = ("reid", "classification")

    def __init__(self, checkpoint_or_model: str | OpenedModel, device: str | None = None, *,
                 flip: bool | None = None, **kwargs):
        super().__init__(checkpoint_or_model, device=device, **kwargs)
        ckpt = self.opened.checkpoint
        if self.opened.task == TASK:
            self.input_size = tuple(ckpt["input_size"])
            self.transform = reid_eval_transform(self.input_size)
            self.flip = ckpt["flip_test"] if flip is None else flip
            self.metric, self.rerank = ckpt["metric"], ckpt["rerank"]
        else:
            self.input_size = tuple(self.opened.data_config["input_size"][1:])
            self.transform = eval_transform(self.opened)
            self.flip, self.metric, self.rerank = bool(flip), "euclidean", False

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        if self.opened.kind == "reid":
            return self.model(batch).float()
        return self.model.forward_head(self.model.forward_features(batch), pre_logits=True).float()

    @torch.no_grad()
    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images on the device -> (B, D) float32 features on the device."""
        with autocast(self.device, self.amp):
            f = self._embed(batch)
            if self.flip:
                f = (f + self._embed(batch.flip(-1))) / 2
        return f

    @property
    def dim(self) -> int:
        """D, the width of a feature."""
        return self.model.feature_dim if self.opened.kind == "reid" else self.model.num_features

    def _stacked(self, batches: Iterator[tuple[torch.Tensor, list[int]]]) -> torch.Tensor:
        """The batches' features, in order, on the CPU: (N, D), (0, D) for no image."""
        return torch.cat([self.features(batch).cpu() for batch, _ in batches] or [torch.empty(0, self.dim)])

    def __call__(self, images) -> torch.Tensor:
        return self._stacked(self.batches(images))

    def file_features(self, paths: Sequence[str], desc: str = "features", workers: int = 0) -> torch.Tensor:
        """(N, D) float32 features of image files, in order, with a progress report."""
        return self._stacked(self.file_batches(paths, desc, workers))


def rank(query: torch.Tensor, gallery: torch.Tensor, metric: str = "euclidean", topk: int = 10,
         rerank: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``topk`` nearest gallery items of each query: (indices (Q, k) int64, distances (Q, k) float32), nearest
    first (ties in gallery order), k = min(topk, G). Distances are squared euclidean or cosine
    (:func:`~visattn.tasks.reid.metrics.distance_matrix`), after k-reciprocal re-ranking with ``rerank``."""
    if metric not in METRICS:
        raise UserError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if topk < 1:
        raise UserError(f"top-k must be >= 1, got {topk}")
    dist = rerank_features(query, gallery, metric=metric) if rerank else distance_matrix(query, gallery, metric)
    order = torch.argsort(dist, dim=1, stable=True)[:, :min(topk, dist.shape[1])]
    return order, dist.gather(1, order)


def ranking_picture(query: str, name: str, gallery: Sequence[str], distances: Sequence[float], path: str,
                    cell: tuple[int, int] = (128, 64)) -> None:
    """A PNG at ``path``: ``name`` on top, then the query image (framed black) and its ranked ``gallery`` images
    (framed grey), each ``cell`` = (H, W) with ``query`` or ``RANK: DISTANCE`` printed under it."""
    from PIL import Image, ImageDraw

    h, w = cell
    border, gap, text = 3, 12, 14
    cols = 1 + len(gallery)
    width = cols * (w + 2 * border) + gap
    canvas = Image.new("RGB", (width, text + h + 2 * border + text), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 1), name[:max(1, width // 6)], fill="black")
    shown = [(query, "query", "black")] + [(g, f"{r}: {d:.4g}", "#808080")
                                           for r, (g, d) in enumerate(zip(gallery, distances, strict=True), 1)]
    for col, (image, label, colour) in enumerate(shown):
        x = col * (w + 2 * border) + (gap if col else 0)
        draw.rectangle([x, text, x + w + 2 * border - 1, text + h + 2 * border - 1], fill=colour)
        canvas.paste(as_rgb(image).resize((w, h)), (x + border, text + border))
        draw.text((x + 1, text + h + 2 * border + 1), label, fill="black")
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))


def write_rankings(extractor: FeatureExtractor, queries: Sequence[str], names: Sequence[str],
                   gallery: Sequence[str], output: str, topk: int = 10, metric: str | None = None,
                   rerank: bool | None = None, workers: int = 0) -> dict[str, Any]:
    """Rank ``gallery`` files for each query file (features with a progress report) and write ``rankings.csv``
    (query, rank, gallery, distance; ``topk`` rows per query) and ``rank_NAME.png`` per query to ``output``.
    ``metric`` and ``rerank`` default to the extractor's. Returns {"metric", "rerank", "indices", "distances"}."""
    metric = metric or extractor.metric
    rerank = extractor.rerank if rerank is None else rerank
    q = extractor.file_features(queries, "query features", workers)
    g = extractor.file_features(gallery, "gallery features", workers)
    indices, distances = rank(q, g, metric, topk, rerank)
    rows = [[query, r, gallery[j], f"{d:.6f}"]
            for query, idx, dist in zip(queries, indices.tolist(), distances.tolist(), strict=True)
            for r, (j, d) in enumerate(zip(idx, dist, strict=True), 1)]
    atomic_write_csv(os.path.join(output, "rankings.csv"), ["query", "rank", "gallery", "distance"], rows)
    cell = (128, max(1, round(128 * extractor.input_size[1] / extractor.input_size[0])))
    for query, name, idx, dist in zip(queries, names, indices.tolist(), distances.tolist(), strict=True):
        ranking_picture(query, name, [gallery[j] for j in idx], dist, os.path.join(output, f"rank_{name}.png"), cell)
    return {"metric": metric, "rerank": rerank, "indices": indices, "distances": distances}
