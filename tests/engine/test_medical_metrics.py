import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from visattn.tasks.medical.metrics import (
    SegmentationMetrics,
    boundary,
    confusion_counts,
    hd95,
    restore_original,
    roc_auc,
    scores_from_counts,
)


def _brute_boundary(mask):
    """Mask pixels with a background 8-neighbour, or on the image edge."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for y, x in zip(*np.nonzero(mask), strict=True):
        window = [(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        out[y, x] = any(not (0 <= i < h and 0 <= j < w) or not mask[i, j] for i, j in window)
    return out


def _brute_hd95(pred, target):
    a, b = np.argwhere(_brute_boundary(pred)), np.argwhere(_brute_boundary(target))
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))


def test_counts_and_scores_match_hand_computed_values():
    target = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], bool)
    pred = np.array([[1, 0, 1, 0], [1, 0, 0, 0], [0, 0, 1, 1]], bool)
    counts = confusion_counts(pred, target)
    assert counts.tolist() == [3, 2, 1, 6]  # TP, FP, FN, TN
    s = scores_from_counts(counts)
    assert s["dice"] == pytest.approx(6 / 9) and s["iou"] == pytest.approx(3 / 6)
    assert s["sensitivity"] == pytest.approx(3 / 4) and s["specificity"] == pytest.approx(6 / 8)
    assert s["accuracy"] == pytest.approx(9 / 12)


def test_empty_mask_conventions():
    empty = np.zeros((8, 6), bool)
    s = scores_from_counts(confusion_counts(empty, empty))
    assert s["dice"] == 1.0 and s["iou"] == 1.0 and s["specificity"] == 1.0 and s["accuracy"] == 1.0
    assert math.isnan(s["sensitivity"])
    assert hd95(empty, empty) == 0.0
    one = empty.copy()
    one[2:4, 2:4] = True
    assert math.isnan(hd95(one, empty)) and math.isnan(hd95(empty, one))  # no distance to measure
    s = scores_from_counts(confusion_counts(empty, one))
    assert s["dice"] == 0.0 and s["sensitivity"] == 0.0
    full = np.ones((8, 6), bool)
    assert math.isnan(scores_from_counts(confusion_counts(full, full))["specificity"])
    assert math.isnan(roc_auc(np.random.rand(8, 6), empty))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_including_ties_and_fov(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random((40, 50)) < 0.15
    scores = np.round(rng.random((40, 50)) * 0.6 + 0.4 * labels, 1)  # few distinct values: many ties
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels.ravel(), scores.ravel()), abs=1e-12)
    fov = rng.random((40, 50)) < 0.6
    assert roc_auc(scores, labels, fov) == pytest.approx(roc_auc_score(labels[fov], scores[fov]), abs=1e-12)
    assert roc_auc(torch.from_numpy(scores), torch.from_numpy(labels)) == roc_auc(scores, labels)


def test_auc_of_random_probabilities_is_one_half_unlike_fsgnets_sorted_auc():
    rng = np.random.default_rng(0)
    labels = rng.random((256, 256)) < 0.1
    random_probs = rng.random((256, 256))
    assert roc_auc(random_probs, labels) == pytest.approx(0.5, abs=0.01)
    # FSG-Net scores roc_auc_score(sorted(label), sorted(binary_pred)): a random mask of the right size gets 1.0.
    random_mask = np.zeros(labels.size, bool)
    random_mask[rng.permutation(labels.size)[: labels.sum()]] = True
    assert roc_auc_score(np.sort(labels.ravel()), np.sort(random_mask)) == 1.0
    assert roc_auc(random_mask.reshape(labels.shape), labels) == pytest.approx(0.5, abs=0.02)
    # 1.0 only for a perfect ranking; reversed ranking 0.0; a constant map 0.5.
    perfect = labels * 0.5 + rng.random(labels.shape) * 0.4
    assert roc_auc(perfect, labels) == 1.0
    assert roc_auc(1 - perfect, labels) == 0.0
    assert roc_auc(np.full(labels.shape, 0.3), labels) == 0.5
    one_swap = perfect.copy()
    one_swap[np.argwhere(~labels)[0][0], np.argwhere(~labels)[0][1]] = 0.95
    assert 0.99 < roc_auc(one_swap, labels) < 1.0


def test_auc_is_computed_on_probabilities_not_the_thresholded_mask():
    labels = np.array([1, 1, 0, 0, 0, 1], bool)
    good = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3])
    bad = np.array([0.6, 0.55, 0.99, 0.1, 0.2, 0.3])  # same >= 0.5 mask as ``good``
    assert ((good >= 0.5) == (bad >= 0.5)).all()
    assert roc_auc(good, labels) == pytest.approx(roc_auc_score(labels, good))
    assert roc_auc(bad, labels) == pytest.approx(roc_auc_score(labels, bad))
    assert roc_auc(good, labels) != roc_auc(bad, labels)


def test_fov_restricts_every_metric():
    target = np.zeros((20, 20), bool)
    target[8:12, 2:18] = True
    fov = np.zeros((20, 20), bool)
    fov[3:17, 3:17] = True
    prob = np.where(target, 0.9, 0.1)
    prob[0:2, :] = 0.8  # false positives outside the FOV only
    prob[8:12, 2] = 0.2  # a missed vessel column outside the FOV
    inside = SegmentationMetrics()
    inside.update(prob, target, fov)
    whole = SegmentationMetrics()
    whole.update(prob, target)
    a, b = inside.compute()["pooled"], whole.compute()["pooled"]
    assert a["dice"] == a["specificity"] == a["sensitivity"] == a["auc"] == 1.0 and a["hd95"] == 0.0
    assert b["specificity"] == pytest.approx(1 - 40 / (400 - 64)) and b["sensitivity"] == pytest.approx(60 / 64)
    assert b["auc"] == pytest.approx(roc_auc_score(target.ravel(), prob.ravel()))
    assert b["hd95"] > 0
    assert confusion_counts(prob >= 0.5, target, fov).sum() == fov.sum()


def test_pooled_and_per_image_reductions_differ_as_defined():
    big_target = np.zeros((40, 40), bool)
    big_target[5:35, 10:30] = True  # 600 vessel pixels, predicted perfectly
    small_target = np.zeros((40, 40), bool)
    small_target[0:2, 0:5] = True  # 10 vessel pixels, half found, plus 10 false positives
    small_pred = np.zeros((40, 40), bool)
    small_pred[0:1, 0:5] = True
    small_pred[20, 20:30] = True
    m = SegmentationMetrics()
    m.update(big_target.astype(float), big_target, name="big")
    m.update(small_pred.astype(float), small_target, name="small")
    r = m.compute()
    assert r["count"] == 2 and [i["name"] for i in r["images"]] == ["big", "small"]
    small_dice = 2 * 5 / (2 * 5 + 10 + 5)
    assert r["per_image"]["dice"] == pytest.approx((1.0 + small_dice) / 2)
    assert r["pooled"]["dice"] == pytest.approx(2 * 605 / (2 * 605 + 10 + 5))
    assert r["per_image"]["sensitivity"] == pytest.approx((1.0 + 0.5) / 2)
    assert r["pooled"]["sensitivity"] == pytest.approx(605 / 610)


def test_pooled_auc_ranks_pixels_across_images():
    rng = np.random.default_rng(0)
    labels = [rng.random((16, 16)) < 0.3 for _ in range(2)]
    # Each image ranks perfectly, but image 1's vessels score below image 0's background.
    probs = [np.where(labels[0], 0.9, 0.6), np.where(labels[1], 0.4, 0.1)]
    m = SegmentationMetrics()
    for p, t in zip(probs, labels, strict=True):
        m.update(p, t)
    r = m.compute()
    assert r["per_image"]["auc"] == 1.0
    expected = roc_auc_score(np.concatenate([t.ravel() for t in labels]), np.concatenate([p.ravel() for p in probs]))
    assert r["pooled"]["auc"] == pytest.approx(expected) and r["pooled"]["auc"] < 0.9


def test_per_image_mean_skips_undefined_values():
    m = SegmentationMetrics()
    empty = np.zeros((10, 10), bool)
    vessel = empty.copy()
    vessel[4:6] = True
    m.update(np.zeros((10, 10)), empty)  # no positives: sensitivity and AUC undefined
    m.update(vessel * 0.8, vessel)
    r = m.compute()
    assert math.isnan(r["images"][0]["sensitivity"]) and math.isnan(r["images"][0]["auc"])
    assert r["per_image"]["sensitivity"] == 1.0 and r["per_image"]["auc"] == 1.0
    assert r["per_image"]["dice"] == 1.0 and r["per_image"]["hd95"] == 0.0


def test_boundary_is_the_8_connected_inner_contour():
    rng = np.random.default_rng(1)
    mask = rng.random((15, 17)) < 0.6
    assert (boundary(mask) == _brute_boundary(mask)).all()
    square = np.zeros((9, 9), bool)
    square[2:7, 2:7] = True
    assert boundary(square).sum() == 16 and not boundary(square)[3:6, 3:6].any()


def test_hd95_on_known_shapes():
    a = np.zeros((20, 20), bool)
    b = a.copy()
    a[5, 5] = b[5, 9] = True
    assert hd95(a, b) == 4.0
    square = np.zeros((40, 40), bool)
    square[10:30, 10:30] = True
    assert hd95(square, square) == 0.0
    shifted = np.roll(square, 3, axis=1)
    assert hd95(shifted, square) == pytest.approx(_brute_hd95(shifted, square))
    assert hd95(shifted, square) == pytest.approx(3.0)
    # One stray pixel far away: the Hausdorff maximum would be ~25, the 95th percentile ignores it.
    stray = square.copy()
    stray[0, 39] = True
    assert hd95(stray, square) == 0.0
    disc = np.hypot(*np.mgrid[-20:20, -20:20]) < 12
    smaller = np.hypot(*np.mgrid[-20:20, -20:20]) < 9
    assert hd95(smaller, disc) == pytest.approx(_brute_hd95(smaller, disc))
    assert 2.5 < hd95(smaller, disc) <= 3.5


@pytest.mark.parametrize("seed", [0, 1])
def test_hd95_matches_brute_force_on_random_blobs(seed):
    torch.manual_seed(seed)
    pred = F.avg_pool2d(torch.rand(1, 1, 30, 30), 5, 1, 2).numpy()[0, 0] > 0.55
    target = F.avg_pool2d(torch.rand(1, 1, 30, 30), 5, 1, 2).numpy()[0, 0] > 0.55
    assert pred.any() and target.any()
    assert hd95(pred, target) == pytest.approx(_brute_hd95(pred, target))
    assert hd95(pred, target, np.ones((30, 30), bool)) == hd95(pred, target)


def test_pooled_hd95_pools_boundary_distances():
    square = np.zeros((40, 40), bool)
    square[10:30, 10:30] = True
    m = SegmentationMetrics()
    m.update(square.astype(float), square)
    m.update(np.roll(square, 6, axis=0).astype(float), square)
    r = m.compute()
    assert r["images"][0]["hd95"] == 0.0 and r["images"][1]["hd95"] == pytest.approx(6.0)
    assert r["per_image"]["hd95"] == pytest.approx(3.0)
    assert r["pooled"]["hd95"] == pytest.approx(6.0)  # over 5% of all boundary pixels are 6 px off


def test_an_empty_prediction_is_counted_and_left_out_of_hd95_instead_of_pinning_it_to_the_diagonal():
    square = np.zeros((40, 40), bool)
    square[10:30, 10:30] = True
    fov = np.ones((40, 40), bool)
    m = SegmentationMetrics()
    m.update(np.roll(square, 6, axis=0).astype(float), square, fov)
    m.update(np.zeros((40, 40)), square, fov)  # vessels, nothing predicted
    m.update(np.zeros((40, 40)), np.zeros((40, 40), bool), fov)  # nothing to find, nothing found: HD95 0
    r = m.compute()
    assert r["empty_predictions"] == 1 and math.isnan(r["images"][1]["hd95"]) and r["images"][2]["hd95"] == 0.0
    assert r["pooled"]["hd95"] == pytest.approx(6.0)  # the first image's distances alone, not math.hypot(40, 40)
    assert r["per_image"]["hd95"] == pytest.approx(3.0)  # the mean of 6 and 0
    assert r["images"][1]["dice"] == 0.0  # the empty prediction still scores in Dice
    only_empty = SegmentationMetrics()
    only_empty.update(np.zeros((40, 40)), square)
    r = only_empty.compute()
    assert r["empty_predictions"] == 1 and math.isnan(r["pooled"]["hd95"]) and math.isnan(r["per_image"]["hd95"])
    from visattn.tasks.medical.task import MedicalTask

    line = MedicalTask.epoch_line(None, {**r, "loss": 0.5, "region": "fov"}, {"epoch_seconds": 2.0})
    assert line.endswith("HD95 nan px (fov, pooled; 1 empty prediction left out; 2.0 s)")
    assert MedicalTask.val_scalars(None, {**r, "loss": 0.5})["val_empty_predictions"] == 1


def test_restore_original_removes_padding_and_resizing():
    logits = torch.randn(1, 1, 13, 11)
    padded = F.pad(logits, (2, 3, 1, 2), value=50.0)  # left, right, top, bottom
    assert torch.equal(restore_original(padded, (1, 2, 13, 11), (13, 11)), logits)
    small = torch.randn(1, 1, 7, 6)
    canvas = F.pad(small, (0, 2, 0, 1), value=-50.0)
    restored = restore_original(canvas, (0, 0, 7, 6), (14, 12))
    assert restored.shape == (1, 1, 14, 12)
    assert torch.allclose(restored, F.interpolate(small, size=(14, 12), mode="bilinear", align_corners=False))


def test_metrics_after_removing_padding_equal_metrics_on_the_original():
    rng = np.random.default_rng(0)
    target = rng.random((13, 11)) < 0.3
    logits = torch.from_numpy(np.where(target, 1.5, -1.5) + rng.normal(0, 1, target.shape))[None, None]
    padded = F.pad(logits, (2, 3, 1, 2), value=5.0)  # the padding would be false positives
    direct, restored = SegmentationMetrics(), SegmentationMetrics()
    direct.update(torch.sigmoid(logits)[0, 0], target)
    restored.update(torch.sigmoid(restore_original(padded, (1, 2, 13, 11), (13, 11)))[0, 0], target)
    assert direct.compute()["pooled"] == restored.compute()["pooled"]
    with pytest.raises(ValueError, match="does not match"):
        SegmentationMetrics().update(torch.sigmoid(padded)[0, 0], target)


def test_threshold_is_inclusive_and_configurable():
    target = np.array([[1, 0, 1, 0]], bool)
    prob = np.array([[0.5, 0.49, 0.7, 0.3]])
    assert SegmentationMetrics().update(prob, target)["dice"] == 1.0
    assert SegmentationMetrics(threshold=0.6).update(prob, target)["dice"] == pytest.approx(2 / 3)


def _fsgnet_published_auc(target, binary_pred):
    """FSG-Net's AUC (models/metrics.py): roc_auc_score(sorted(labels), sorted(binary predictions)). Written here
    only to show what it measures; visattn never computes it."""
    return roc_auc_score(np.sort(target.ravel()), np.sort(binary_pred.ravel()))


def test_the_published_fsgnet_auc_ignores_where_the_predicted_vessels_are():
    rng = np.random.default_rng(0)
    target = rng.random((64, 64)) < 0.12
    n = int(target.sum())
    # A spatially random prediction with exactly as many positive pixels as the target.
    prob = rng.random(target.shape)
    pred = prob >= np.sort(prob.ravel())[-n]
    assert pred.sum() == n
    assert _fsgnet_published_auc(target, pred) == 1.0
    assert abs(roc_auc(prob, target) - 0.5) < 0.03  # the matched-pixel AUC on the probabilities
    assert abs(roc_auc(pred.astype(float), target) - 0.5) < 0.03  # ... and on the binary map
    # Only the counts matter: p predicted and n true positives out of N pixels give 0.5 + 0.5 p/n for p <= n
    # and 1 - 0.5 (p - n) / (N - n) for p > n, wherever the pixels are.
    total = target.size
    for p in (0, 1, n // 4, n // 2, n - 1, n, n + 1, 2 * n, total // 2, total):
        scattered = np.zeros(total, dtype=bool)
        scattered[rng.permutation(total)[:p]] = True
        expected = 0.5 + 0.5 * p / n if p <= n else 1 - 0.5 * (p - n) / (total - n)
        assert _fsgnet_published_auc(target, scattered.reshape(target.shape)) == pytest.approx(expected, abs=1e-12)
        # The same number from our AUC on the two sorted arrays.
        assert roc_auc(np.sort(scattered).astype(float), np.sort(target.ravel())) == pytest.approx(expected)
