"""Binary segmentation metrics for retinal / medical images, computed the way the retinal literature should.

Per image, from a probability map ``p`` (H, W), a target mask ``t`` and an optional field-of-view mask ``f``,
all at the image's original resolution (use :func:`restore_original` to undo padding and resizing first).
Only pixels inside the FOV count (the whole image without one). The prediction is ``p >= threshold`` (0.5).

With TP, FP, FN, TN counted inside the FOV:

- Dice = 2TP / (2TP + FP + FN);  IoU = TP / (TP + FP + FN)        (1.0 when target and prediction are empty)
- sensitivity = TP / (TP + FN);  specificity = TN / (TN + FP)       (NaN without positives / negatives)
- accuracy = (TP + TN) / (TP + FP + FN + TN)
- AUC: area under the ROC curve of the *probabilities*, i.e. the Mann-Whitney statistic
  P(p_pos > p_neg) + 0.5 P(p_pos = p_neg) over all (positive, negative) pixel pairs (NaN without both classes).
- HD95 (pixels): boundaries are mask pixels with a background pixel among their 8 neighbours (pixels on the image
  edge count as boundary). d(A->B) is the Euclidean distance from each boundary pixel of A to the nearest
  boundary pixel of B; HD95 = max(P95(d(pred->target)), P95(d(target->pred))) with linear percentile
  interpolation. Empty masks: when both are empty HD95 = 0; when exactly one is empty there is no distance to
  measure and HD95 is undefined (NaN), as the Hausdorff distance of MONAI, which HER-Seg's official evaluation uses
  and whose undefined values it leaves out of its mean. An image with vessels but an empty prediction is counted
  (``empty_predictions``) instead of being given a made-up distance (the image diagonal would pin the pooled HD95
  at the diagonal for the whole run whenever one image has an empty prediction).

Two reductions over a dataset: ``pooled`` sums the counts (and pools all pixels for AUC, and the boundary
distances of the images whose HD95 is defined) before taking ratios; ``per_image`` is the mean of the per-image
values, ignoring NaNs. ``empty_predictions`` counts the images left out of both HD95s because nothing was predicted
where the target has vessels (an empty target with a prediction is left out too; the data loader warns about
empty targets).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

METRICS = ("dice", "iou", "sensitivity", "specificity", "accuracy", "auc", "hd95")


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _region(shape: tuple[int, ...], fov) -> np.ndarray:
    if fov is None:
        return np.ones(shape, dtype=bool)
    fov = _numpy(fov).astype(bool)
    if fov.shape != shape:
        raise ValueError(f"FOV mask shape {fov.shape} does not match {shape}")
    return fov


def _ratio(num: float, den: float, empty: float = math.nan) -> float:
    return num / den if den else empty


def confusion_counts(pred, target, fov=None) -> np.ndarray:
    """[TP, FP, FN, TN] (int64) of boolean ``pred`` vs ``target`` (H, W) inside ``fov``."""
    pred, target = _numpy(pred).astype(bool), _numpy(target).astype(bool)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match target shape {target.shape}")
    region = _region(target.shape, fov)
    p, t = pred[region], target[region]
    tp = np.count_nonzero(p & t)
    fp = np.count_nonzero(p & ~t)
    fn = np.count_nonzero(~p & t)
    return np.array([tp, fp, fn, p.size - tp - fp - fn], dtype=np.int64)


def scores_from_counts(counts) -> dict[str, float]:
    """Dice, IoU, sensitivity, specificity and accuracy from [TP, FP, FN, TN] (see the module docstring)."""
    tp, fp, fn, tn = (int(c) for c in counts)
    return {"dice": _ratio(2 * tp, 2 * tp + fp + fn, 1.0), "iou": _ratio(tp, tp + fp + fn, 1.0),
            "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
            "accuracy": _ratio(tp + tn, tp + fp + fn + tn)}


def rank_table(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct score values (ascending) with the number of positive and negative samples at each."""
    scores, labels = _numpy(scores).ravel(), _numpy(labels).astype(bool).ravel()
    values, inverse = np.unique(scores, return_inverse=True)
    positives = np.bincount(inverse[labels], minlength=len(values))
    negatives = np.bincount(inverse[~labels], minlength=len(values))
    return values, positives.astype(np.float64), negatives.astype(np.float64)


def auc_from_table(positives: np.ndarray, negatives: np.ndarray) -> float:
    """ROC-AUC from per-value counts sorted by ascending score: sum_v pos_v (neg_below_v + neg_v / 2) / (P N)."""
    total_pos, total_neg = positives.sum(), negatives.sum()
    if total_pos == 0 or total_neg == 0:
        return math.nan
    negatives_below = np.cumsum(negatives) - negatives
    return float(np.dot(positives, negatives_below + 0.5 * negatives) / (total_pos * total_neg))


def merge_tables(tables: list[tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """One rank table for the union of the samples of several tables."""
    values, inverse = np.unique(np.concatenate([t[0] for t in tables]), return_inverse=True)
    positives = np.bincount(inverse, weights=np.concatenate([t[1] for t in tables]), minlength=len(values))
    negatives = np.bincount(inverse, weights=np.concatenate([t[2] for t in tables]), minlength=len(values))
    return values, positives, negatives


def roc_auc(scores, labels, fov=None) -> float:
    """ROC-AUC of continuous ``scores`` against boolean ``labels`` inside ``fov`` (ties count one half)."""
    labels = _numpy(labels).astype(bool)
    region = _region(labels.shape, fov)
    _, positives, negatives = rank_table(_numpy(scores)[region], labels[region])
    return auc_from_table(positives, negatives)


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a background pixel (or the image edge) among their 8 neighbours."""
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, structure=np.ones((3, 3), dtype=bool), border_value=0)


def boundary_distances(pred, target, fov=None) -> tuple[np.ndarray, np.ndarray] | None:
    """Distances pred-boundary -> target-boundary and target-boundary -> pred-boundary, inside ``fov``; None when
    exactly one of the masks is empty (no distance to measure; both empty: two empty arrays)."""
    from scipy.ndimage import distance_transform_edt

    target = _numpy(target).astype(bool)
    region = _region(target.shape, fov)
    a, b = boundary(_numpy(pred).astype(bool) & region), boundary(target & region)
    if a.any() != b.any():
        return None
    if not a.any():
        return np.zeros(0), np.zeros(0)
    return distance_transform_edt(~b)[a], distance_transform_edt(~a)[b]


def hd95_from_distances(pred_to_target: np.ndarray, target_to_pred: np.ndarray) -> float:
    """max of the two directed 95th percentiles (an empty direction contributes 0)."""
    return max((float(np.percentile(d, 95)) for d in (pred_to_target, target_to_pred) if d.size), default=0.0)


def hd95(pred, target, fov=None) -> float:
    """95th-percentile symmetric Hausdorff distance in pixels: 0 when both masks are empty, NaN when exactly one is
    (see the module docstring)."""
    distances = boundary_distances(pred, target, fov)
    return math.nan if distances is None else hd95_from_distances(*distances)


def restore_original(logits: torch.Tensor, box: tuple[int, int, int, int], size: tuple[int, int]) -> torch.Tensor:
    """Undo padding and resizing: crop ``box`` = (top, left, height, width) from (B, C, h, w) ``logits``, then
    resize bilinearly to the original ``size`` = (H, W). Interpolate logits, not thresholded masks."""
    top, left, height, width = box
    logits = logits[..., top:top + height, left:left + width]
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    return logits


class SegmentationMetrics:
    """Accumulates per-image metrics and the pooled statistics of a dataset.

    ``update(prob, target, fov)`` takes one image at its original resolution and returns its metrics;
    ``compute()`` returns ``{"pooled": {...}, "per_image": {...}, "images": [...], "count": n, "threshold",
    "empty_predictions": images with vessels and an empty prediction}``.
    Pooled AUC keeps one rank table per image (distinct probabilities with class counts): memory grows with
    the number of distinct probability values, at most 24 bytes per pixel inside the FOV.
    """

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self.counts = np.zeros(4, dtype=np.int64)
        self.tables: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.distances: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
        self.hd95_images = 0  # images whose HD95 is defined
        self.empty_predictions = 0
        self.images: list[dict] = []

    def update(self, prob, target, fov=None, name: str | None = None) -> dict[str, float]:
        prob, target = _numpy(prob).astype(np.float32), _numpy(target).astype(bool)
        if prob.shape != target.shape:
            raise ValueError(f"probability map shape {prob.shape} does not match target shape {target.shape}")
        region = _region(target.shape, fov)
        pred = prob >= self.threshold
        counts = confusion_counts(pred, target, region)
        table = rank_table(prob[region], target[region])
        distances = boundary_distances(pred, target, region)
        self.counts += counts
        self.tables.append(table)
        if distances is not None:
            self.distances[0].append(distances[0])
            self.distances[1].append(distances[1])
            self.hd95_images += 1
        elif counts[0] + counts[2] > 0:  # vessels, but nothing predicted
            self.empty_predictions += 1
        metrics = {**scores_from_counts(counts), "auc": auc_from_table(table[1], table[2]),
                   "hd95": math.nan if distances is None else hd95_from_distances(*distances)}
        self.images.append({"name": name if name is not None else str(len(self.images)), **metrics})
        return metrics

    def compute(self) -> dict:
        if not self.images:
            raise ValueError("no images were scored")
        _, positives, negatives = merge_tables(self.tables)
        pooled_hd95 = hd95_from_distances(np.concatenate(self.distances[0]), np.concatenate(self.distances[1])) \
            if self.hd95_images else math.nan
        pooled = {**scores_from_counts(self.counts), "auc": auc_from_table(positives, negatives), "hd95": pooled_hd95}
        per_image = {}
        for key in METRICS:
            values = np.array([m[key] for m in self.images], dtype=np.float64)
            per_image[key] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
        return {"pooled": pooled, "per_image": per_image, "images": list(self.images), "count": len(self.images),
                "threshold": self.threshold, "empty_predictions": self.empty_predictions}
