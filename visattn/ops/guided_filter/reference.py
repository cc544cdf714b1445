"""Plain-PyTorch attention-guided filter: the definition of correct for every backend."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Added to |weights| so that no window has zero total weight (the official value).
WEIGHT_FLOOR = 1e-12


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over each (2r+1) x (2r+1) window clipped to the map (the sum over the window's pixels divided by their
    count); (B, C, h, w) -> same. Summed directly, not by differencing cumulative sums, so float32 stays accurate.
    On a CPU the sums run down the columns, then along the rows, as two depthwise convolutions with ones (a tenth of
    avg_pool2d's time there), in x's dtype even under autocast; elsewhere, and in an exported graph (ONNX's Conv takes
    no padding that depends on the input's size), through avg_pool2d (cuDNN's convolutions may round float32 to
    TF32)."""
    h, w = x.shape[-2:]
    rh, rw = min(radius, h - 1), min(radius, w - 1)
    if x.device.type != "cpu" or torch.compiler.is_exporting():  # avg_pool2d: the window clipped to the map first
        kh, kw = 2 * rh + 1, 2 * rw + 1
        return F.avg_pool2d(x, (kh, kw), stride=1, padding=(rh, rw), count_include_pad=False)
    channels = x.shape[1]
    with torch.autocast("cpu", enabled=False):
        sums = F.conv2d(x, x.new_ones(channels, 1, 2 * rh + 1, 1), padding=(rh, 0), groups=channels)
        sums = F.conv2d(sums, x.new_ones(channels, 1, 1, 2 * rw + 1), padding=(0, rw), groups=channels)
    return sums / window_count(h, w, radius, x)


def window_count(h: int, w: int, radius: int, like: torch.Tensor) -> torch.Tensor:
    """(1, 1, h, w) pixel count of each clipped (2r+1) x (2r+1) window."""
    def counts(n: int) -> torch.Tensor:
        i = torch.arange(n, device=like.device, dtype=like.dtype)
        return (i + radius).clamp(max=n - 1) - (i - radius).clamp(min=0) + 1

    return (counts(h)[:, None] * counts(w)[None, :])[None, None]


def output_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The inputs' dtype; their promoted dtype when they differ (maps of mixed dtypes under autocast)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def guided_filter_reference(guide_lowres: torch.Tensor, target_lowres: torch.Tensor, weights: torch.Tensor,
                            guide_highres: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """``A F + b`` of :func:`visattn.ops.guided_filter.attention_guided_filter`, computed in float32 (float64 inputs
    in float64) and returned in the inputs' (promoted) dtype."""
    dtype = output_dtype(guide_lowres, target_lowres, weights, guide_highres)
    compute = torch.promote_types(dtype, torch.float32)
    x, y = guide_lowres.to(compute), target_lowres.to(compute)
    a = weights.to(compute).abs() + WEIGHT_FLOOR
    t = a / a.sum(dim=(1, 2, 3), keepdim=True)
    n = window_count(*x.shape[-2:], radius, x)

    mean_a = box_mean(a, radius)
    mean_ax = box_mean(a * x, radius)
    mean_ay = box_mean(a * y, radius)
    mean_a2xy = box_mean(a * a * x * y, radius)
    mean_a2x2 = box_mean(a * a * x * x, radius)
    sum_tax = n * box_mean(t * a * x, radius)

    slope = (mean_a2xy - sum_tax * mean_ay) / ((mean_a2x2 - sum_tax * mean_ax).abs() + eps)
    offset = (mean_ay - slope * mean_ax) / mean_a

    size = guide_highres.shape[-2:]
    slope = F.interpolate(box_mean(slope, radius), size=size, mode="bilinear", align_corners=True)
    offset = F.interpolate(box_mean(offset, radius), size=size, mode="bilinear", align_corners=True)
    return (slope * guide_highres.to(compute) + offset).to(dtype)
