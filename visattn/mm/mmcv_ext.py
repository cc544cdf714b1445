"""A stand-in for mmcv's compiled extension (``mmcv._ext``), installed only when mmcv-lite lacks it.

It supplies, from torchvision and plain PyTorch and with mmcv's semantics, the compiled ops that common
detectors and segmentors call (RetinaNet, FCOS, Mask R-CNN, UperNet, Semantic FPN): ``nms`` (and so
``batched_nms``), ``roi_align_forward``/``roi_align_backward`` (average pooling, ``aligned`` and adaptive
``sampling_ratio=0``) and ``sigmoid_focal_loss_forward``/``_backward``. Any other compiled op fails when called,
naming the op and how to get full mmcv. With full mmcv installed, :func:`install` does nothing.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

import torch

_FULL_MMCV = ("install full mmcv with its compiled ops (pip install mmcv==2.1.0 builds them; with torch 2.14 "
              "it needs setuptools<81 and -std=c++20)")


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0) -> torch.Tensor:
    """Indices of the boxes kept by greedy NMS, by decreasing score. ``offset=1`` counts box sides as x2 - x1 + 1."""
    import torchvision

    if boxes.numel() == 0:
        return boxes.new_zeros(0, dtype=torch.long)
    if offset:
        boxes = torch.cat([boxes[:, :2], boxes[:, 2:4] + offset], dim=1)
    return torchvision.ops.nms(boxes[:, :4].float(), scores.float(), float(iou_threshold))


def _check_avg(pool_mode: int) -> None:
    if pool_mode != 1:
        raise NotImplementedError(f"RoIAlign with pool_mode='max' needs mmcv's compiled ops; {_FULL_MMCV}")


def roi_align_forward(input, rois, output, argmax_y, argmax_x, aligned_height, aligned_width, spatial_scale,
                      sampling_ratio, pool_mode, aligned) -> None:
    """mmcv's RoIAlign forward (rois: (K, 5) batch index and x1, y1, x2, y2), written into ``output``."""
    import torchvision

    _check_avg(pool_mode)
    output.copy_(torchvision.ops.roi_align(input, rois.to(input.dtype), (aligned_height, aligned_width),
                                           spatial_scale, sampling_ratio, bool(aligned)))


def roi_align_backward(grad_output, rois, argmax_y, argmax_x, grad_input, aligned_height, aligned_width,
                       spatial_scale, sampling_ratio, pool_mode, aligned) -> None:
    """Gradient of :func:`roi_align_forward` with respect to its input (RoIAlign is linear in it)."""
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)

    _check_avg(pool_mode)
    b, c, h, w = grad_input.shape
    grad_input.copy_(torch.ops.torchvision._roi_align_backward(
        grad_output, rois.to(grad_output.dtype), spatial_scale, aligned_height, aligned_width, b, c, h, w,
        sampling_ratio, bool(aligned)))


def _sigmoid_focal_loss(logits, target, weight, gamma, alpha):
    """Per-element sigmoid focal loss; ``target`` holds a class index per row (num_classes = background)."""
    p = logits.sigmoid()
    classes = torch.arange(logits.shape[1], device=logits.device)
    positive = target[:, None] == classes[None, :]
    tiny = torch.finfo(p.dtype).tiny
    loss = torch.where(positive, -alpha * (1 - p).pow(gamma) * p.clamp_min(tiny).log(),
                       -(1 - alpha) * p.pow(gamma) * (1 - p).clamp_min(tiny).log())
    if weight.numel():
        loss = loss * weight[target.clamp(max=weight.numel() - 1)][:, None]
    return loss


def sigmoid_focal_loss_forward(input, target, weight, output, gamma, alpha) -> None:
    output.copy_(_sigmoid_focal_loss(input, target, weight, gamma, alpha))


def sigmoid_focal_loss_backward(input, target, weight, grad_input, gamma, alpha) -> None:
    with torch.enable_grad():
        x = input.detach().requires_grad_()
        (grad,) = torch.autograd.grad(_sigmoid_focal_loss(x, target, weight, gamma, alpha).sum(), x)
    grad_input.copy_(grad)


def get_compiler_version() -> str:
    return "none (visattn's torchvision stand-in for mmcv._ext)"


def get_compiling_cuda_version() -> str:
    return "none (visattn's torchvision stand-in for mmcv._ext)"


SUPPORTED = ("nms", "roi_align_forward", "roi_align_backward", "sigmoid_focal_loss_forward",
             "sigmoid_focal_loss_backward", "get_compiler_version", "get_compiling_cuda_version")


def _unavailable(name: str):
    def op(*args, **kwargs):
        raise NotImplementedError(
            f"mmcv op '{name}' needs mmcv's compiled extension, which is not installed (mmcv-lite); {_FULL_MMCV}"
        )

    op.__name__ = name
    return op


def _module_getattr(name: str):
    if name.startswith("_"):
        raise AttributeError(name)
    return _unavailable(name)


def has_compiled_mmcv() -> bool:
    """True when mmcv's own compiled extension is importable (full mmcv, not this stand-in)."""
    existing = sys.modules.get("mmcv._ext")
    if existing is not None:
        return not getattr(existing, "__visattn_fallback__", False)
    try:
        import mmcv._ext  # noqa: F401
    except ImportError:
        return False
    return True


def install() -> bool:
    """Put the stand-in at ``mmcv._ext`` when mmcv has no compiled extension. Returns True if it did."""
    if has_compiled_mmcv():
        return False
    if "mmcv._ext" in sys.modules:
        return True
    module = types.ModuleType("mmcv._ext", __doc__)
    module.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", loader=None)
    module.__visattn_fallback__ = True
    for name in SUPPORTED:
        setattr(module, name, globals()[name])
    module.__getattr__ = _module_getattr
    sys.modules["mmcv._ext"] = module
    import mmcv

    mmcv._ext = module
    return True
