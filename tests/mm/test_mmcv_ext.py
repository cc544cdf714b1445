"""The stand-in for mmcv's compiled ops against plain-PyTorch references, through mmcv's own op wrappers."""

import math
import sys
import types

import pytest
import torch

from visattn.mm import mmcv_ext


def greedy_nms(boxes, scores, iou_threshold, offset=0):
    order = scores.argsort(descending=True).tolist()
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = []
        for j in order:
            w = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]) + offset
            h = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]) + offset
            inter = max(w, 0) * max(h, 0)
            area = lambda b: (b[2] - b[0] + offset) * (b[3] - b[1] + offset)  # noqa: E731
            if inter / (area(boxes[i]) + area(boxes[j]) - inter) <= iou_threshold:
                rest.append(j)
        order = rest
    return torch.tensor(keep, dtype=torch.long)


def random_boxes(n, size=64.0):
    xy = torch.rand(n, 2) * size
    wh = torch.rand(n, 2) * size / 2 + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("offset", [0, 1])
def test_nms_matches_greedy_reference(offset):
    from mmcv.ops import nms

    boxes, scores = random_boxes(60), torch.rand(60)
    dets, keep = nms(boxes, scores, 0.4, offset=offset)
    assert keep.tolist() == greedy_nms(boxes, scores, 0.4, offset).tolist()
    torch.testing.assert_close(dets[:, 4], scores[keep])


def test_nms_score_threshold_and_batched_nms():
    from mmcv.ops import batched_nms, nms

    boxes, scores = random_boxes(40), torch.rand(40)
    _, keep = nms(boxes, scores, 0.5, score_threshold=0.3)
    valid = (scores > 0.3).nonzero().squeeze(1)
    assert keep.tolist() == valid[greedy_nms(boxes[valid], scores[valid], 0.5)].tolist()
    labels = torch.randint(0, 3, (40,))
    _, kept = batched_nms(boxes, scores, labels, dict(type="nms", iou_threshold=0.5))
    expected = []
    for c in range(3):
        idx = (labels == c).nonzero().squeeze(1)
        expected += idx[greedy_nms(boxes[idx], scores[idx], 0.5)].tolist()
    assert sorted(kept.tolist()) == sorted(expected)
    assert scores[kept].tolist() == sorted(scores[kept].tolist(), reverse=True)


def _bilinear(feat, y, x):
    """Detectron2/mmcv bilinear sample of feat (C, H, W) at (y, x); zero outside [-1, H] x [-1, W]."""
    _, h, w = feat.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return feat.new_zeros(feat.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * feat[:, y0, x0] + (1 - ly) * lx * feat[:, y0, x1]
            + ly * (1 - lx) * feat[:, y1, x0] + ly * lx * feat[:, y1, x1])


def roi_align_reference(feat, rois, size, scale, sampling_ratio, aligned):
    """RoIAlign from its definition: average of bilinear samples on a regular grid in each bin."""
    ph, pw = size
    out = []
    for b, x1, y1, x2, y2 in rois.tolist():
        shift = 0.5 if aligned else 0.0
        x1, y1, x2, y2 = x1 * scale - shift, y1 * scale - shift, x2 * scale - shift, y2 * scale - shift
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph, rw / pw
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / ph)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / pw)
        bins = []
        for i in range(ph):
            for j in range(pw):
                acc = feat.new_zeros(feat.shape[1])
                for iy in range(gh):
                    for ix in range(gw):
                        acc = acc + _bilinear(feat[int(b)], y1 + i * bh + (iy + 0.5) * bh / gh,
                                              x1 + j * bw + (ix + 0.5) * bw / gw)
                bins.append(acc / max(gh * gw, 1))
        out.append(torch.stack(bins, dim=1).view(-1, ph, pw))
    return torch.stack(out)


@pytest.mark.parametrize("aligned,sampling_ratio", [(True, 0), (False, 0), (True, 2)])
def test_roi_align_forward_and_backward_match_reference(aligned, sampling_ratio):
    from mmcv.ops import RoIAlign

    feat = torch.randn(2, 3, 12, 10, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 1.0, 2.0, 30.0, 20.0], [1, 0.0, 0.0, 8.0, 8.0], [1, 10.0, 14.0, 39.0, 47.0]],
                        dtype=torch.float64)
    layer = RoIAlign((3, 4), spatial_scale=0.25, sampling_ratio=sampling_ratio, aligned=aligned)
    out = layer(feat, rois)
    ref = roi_align_reference(feat, rois, (3, 4), 0.25, sampling_ratio, aligned)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    (g_out,) = torch.autograd.grad(out, feat, grad)
    (g_ref,) = torch.autograd.grad(ref, feat, grad)
    torch.testing.assert_close(g_out, g_ref)


def test_sigmoid_focal_loss_matches_mmdet_python_version():
    from mmcv.ops import sigmoid_focal_loss
    from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss

    logits = torch.randn(20, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 6, (20,))  # 5 = background
    got = sigmoid_focal_loss(logits, target, 2.0, 0.25, None, "none")
    one_hot = torch.nn.functional.one_hot(target, 6)[:, :5].to(logits.dtype)
    want = py_sigmoid_focal_loss(logits, one_hot, gamma=2.0, alpha=0.25, reduction="none")
    torch.testing.assert_close(got, want)
    (g_got,) = torch.autograd.grad(got.sum(), logits)
    (g_want,) = torch.autograd.grad(want.sum(), logits)
    torch.testing.assert_close(g_got, g_want)


def test_other_compiled_ops_fail_with_a_clear_message():
    from mmcv.ops import box_iou_rotated

    with pytest.raises(NotImplementedError, match="'box_iou_rotated' needs mmcv's compiled extension.*full mmcv"):
        box_iou_rotated(torch.rand(2, 5), torch.rand(2, 5))
    with pytest.raises(NotImplementedError, match="pool_mode='max'"):
        mmcv_ext.roi_align_forward(torch.rand(1, 1, 4, 4), torch.zeros(1, 5), torch.zeros(1, 1, 2, 2), None, None,
                                   2, 2, 1.0, 0, 0, True)


def test_full_mmcv_is_left_alone(monkeypatch):
    compiled = types.ModuleType("mmcv._ext")
    monkeypatch.setitem(sys.modules, "mmcv._ext", compiled)
    assert mmcv_ext.has_compiled_mmcv()
    assert mmcv_ext.install() is False
    assert sys.modules["mmcv._ext"] is compiled
