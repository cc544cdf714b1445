"""Attention-guided filter (FSG-Net, arXiv 2501.18921): a fast guided filter whose local linear model is fitted with
per-pixel weights.

With guide x and target y at low resolution (h, w), weights a = |weights| + 1e-12, t = a / sum(a) (per sample), box
means mean(.) over (2r+1) x (2r+1) windows clipped at the borders (divided by the window's pixel count n), and F
the guide at high resolution (H, W):

    A = (mean(a^2 x y) - n mean(t a x) mean(a y)) / (|mean(a^2 x^2) - n mean(t a x) mean(a x)| + eps)
    b = (mean(a y) - A mean(a x)) / mean(a)
    out = up(mean(A)) * F + up(mean(b))

``up`` is bilinear upsampling with aligned corners from (h, w) to (H, W). The official code normalises ``t`` by the
sum over the whole batch; here it is per sample, which is the same for one image and keeps samples independent.

The fused path (CUDA tensors, or ``backend="triton"``) computes every sum in float32 (box sums as direct window sums)
and keeps for backward only the inputs and the float32 low-res box means of A and b; see :mod:`.triton` for what
each kernel does (the low-res part of the backward runs as float32 torch ops).
"""

from __future__ import annotations

import torch

from .._backend import pick
from .fused import guided_filter_fused, unsupported_reason
from .reference import guided_filter_reference, output_dtype

__all__ = ["attention_guided_filter", "guided_filter", "check_guided_filter_args"]


def _autocast(t: torch.Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(t.device.type)
    except RuntimeError:  # a device type without autocast (meta)
        return False


def check_guided_filter_args(guide_lowres: torch.Tensor, target_lowres: torch.Tensor, weights: torch.Tensor,
                             guide_highres: torch.Tensor, radius: int, eps: float) -> None:
    """Raise a one-line ValueError for shapes, dtypes, a radius or an eps that cannot work."""
    shapes = [tuple(t.shape) for t in (guide_lowres, target_lowres, weights, guide_highres)]
    if any(t.dim() != 4 for t in (guide_lowres, target_lowres, weights, guide_highres)):
        raise ValueError(f"expected (B, C, H, W) guide_lowres, target_lowres, weights, guide_highres, got {shapes}")
    b, c, h, w = guide_lowres.shape
    c_y = target_lowres.shape[1]
    if target_lowres.shape[0] != b or target_lowres.shape[2:] != (h, w) or c not in (1, c_y):
        raise ValueError(f"target_lowres {shapes[1]} must be (B={b}, C, {h}, {w}) with guide channels 1 or C, "
                         f"guide_lowres is {shapes[0]}")
    if weights.shape[0] != b or weights.shape[2:] != (h, w) or weights.shape[1] not in (1, c_y):
        raise ValueError(f"weights {shapes[2]} must be (B={b}, 1 or {c_y}, {h}, {w})")
    if guide_highres.shape[:2] != (b, c):
        raise ValueError(f"guide_highres {shapes[3]} must be (B={b}, C={c}, H, W) like guide_lowres {shapes[0]}")
    if 0 in (h, w):
        raise ValueError(f"empty low-res maps: guide_lowres {shapes[0]}")
    tensors = (guide_lowres, target_lowres, weights, guide_highres)
    # under autocast, maps of mixed floating dtypes are expected (say a float32 norm output next to a half conv's)
    one_dtype = len({t.dtype for t in tensors}) == 1 or _autocast(guide_lowres)
    if not one_dtype or len({t.device for t in tensors}) != 1 or not all(t.is_floating_point() for t in tensors):
        raise ValueError(f"inputs must share one floating dtype (mixed under autocast) and device, got "
                         f"{'/'.join(str(t.dtype) for t in tensors)} on {'/'.join(str(t.device) for t in tensors)}")
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
        raise ValueError(f"radius must be an integer >= 1, got {radius!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")


def attention_guided_filter(guide_lowres: torch.Tensor, target_lowres: torch.Tensor, weights: torch.Tensor,
                            guide_highres: torch.Tensor, radius: int = 2, eps: float = 1e-2,
                            backend: str | None = None) -> torch.Tensor:
    """Filter ``target_lowres`` guided by ``guide_lowres`` with pixel ``weights``; apply the model at high resolution.

    Args:
        guide_lowres: (B, C, h, w) guide x at low resolution (C = 1 or the target's channels).
        target_lowres: (B, C_y, h, w) target y.
        weights: (B, 1, h, w) or (B, C_y, h, w) pixel weights a (their absolute value is used).
        guide_highres: (B, C, H, W) guide F at the output resolution.
        radius: box radius r >= 1 (windows of (2r+1)^2 pixels, clipped at the borders; any map size works).
        eps: regulariser of the slope A, > 0.
        backend: ``"torch"``, ``"triton"`` or None (Triton for CUDA tensors; ``$VISATTN_BACKEND`` overrides).

    All inputs share one floating dtype and device (under autocast the dtypes may differ: the output then has
    their promoted dtype). Computed in float32 (float64 inputs in float64; the triton
    backend takes float32, float16 and bfloat16: float64 runs the reference when the backend is picked
    automatically and is an error when the kernels are forced).

    Returns:
        (B, C_y, H, W) ``A F + b``, dtype of the inputs (their promoted dtype under autocast).
    """
    check_guided_filter_args(guide_lowres, target_lowres, weights, guide_highres, radius, eps)
    tensors = (guide_lowres, target_lowres, weights, guide_highres)
    impl = pick(backend, guide_lowres, guided_filter_reference, guided_filter_fused, unsupported_reason(*tensors),
                out_shape=(*target_lowres.shape[:2], *guide_highres.shape[2:]), out_dtype=output_dtype(*tensors))
    return impl(guide_lowres, target_lowres, weights, guide_highres, radius, float(eps))


# The op's name, as every op folder exports it.
guided_filter = attention_guided_filter
