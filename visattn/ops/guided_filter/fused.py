"""The fused attention-guided filter as registered torch ops, so autograd, torch.compile and the FLOP counter see it.

Registering here imports no Triton: the kernels in :mod:`.triton` load on the first call. The forward op returns the
output and the float32 low-res box means of A and b; backward keeps only the inputs and those two means (nothing
high-res beyond the inputs).
"""

from __future__ import annotations

import torch

from .._backend import dtype_reason
from .._flops import register_flops
from .reference import output_dtype

# FLOP conventions: per low-res pixel and target channel, one add per window pixel per box sum (forward: six sums
# and two box means; backward: the same eight again), and the pointwise work around them; per high-res element,
# an interpolation (four weighted corners, a multiply-add each: 8) and the rest.
LOW_POINTWISE_FORWARD = 20
LOW_POINTWISE_BACKWARD = 60
HIGH_FORWARD = 2 * 8 + 2  # two interpolations, A F + b
HIGH_BACKWARD = 8 + 2 + 1 + 2 * 4 * 2  # interpolate A, dF, dout F, scatter two maps to four corners


def unsupported_reason(*tensors: torch.Tensor) -> str | None:
    """Why the fused kernels cannot take these inputs (None when they can)."""
    return dtype_reason(*tensors)


@torch.library.custom_op("visattn::guided_filter", mutates_args=())
def _guided_filter_op(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, f: torch.Tensor, radius: int,
                      eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import triton as kernels

    return kernels.forward(x, y, a, f, radius, eps)


@_guided_filter_op.register_fake
def _(x, y, a, f, radius, eps):
    b, c, h, w = y.shape
    low = y.new_empty(b, c, h, w, dtype=torch.float32)
    return y.new_empty(b, c, *f.shape[-2:], dtype=output_dtype(x, y, a, f)), low, torch.empty_like(low)


@torch.library.custom_op("visattn::guided_filter_backward", mutates_args=())
def _guided_filter_backward_op(grad_out: torch.Tensor, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor,
                               f: torch.Tensor, mean_a: torch.Tensor, mean_b: torch.Tensor, radius: int,
                               eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import triton as kernels

    return kernels.backward(grad_out.contiguous(), x, y, a, f, mean_a, mean_b, radius, eps)


@_guided_filter_backward_op.register_fake
def _(grad_out, x, y, a, f, mean_a, mean_b, radius, eps):
    return torch.empty_like(x), torch.empty_like(y), torch.empty_like(a), torch.empty_like(f)


def _setup_context(ctx, inputs, output):
    x, y, a, f, radius, eps = inputs
    _, mean_a, mean_b = output
    ctx.mark_non_differentiable(mean_a, mean_b)
    ctx.save_for_backward(x, y, a, f, mean_a, mean_b)
    ctx.radius, ctx.eps = radius, eps


def _op_backward(ctx, grad_out, grad_mean_a, grad_mean_b):
    dx, dy, da, df = _guided_filter_backward_op(grad_out, *ctx.saved_tensors, ctx.radius, ctx.eps)
    return dx, dy, da, df, None, None


_guided_filter_op.register_autograd(_op_backward, setup_context=_setup_context)


def _window(size: int, radius: int) -> int:
    return 2 * min(radius, size - 1) + 1


def _sizes(y_shape, f_shape, radius) -> tuple[int, int, int]:
    """(low-res elements, window pixels of an interior window, high-res elements) of the output channels."""
    b, c, h, w = y_shape
    return b * c * h * w, _window(h, radius) * _window(w, radius), b * c * f_shape[-2] * f_shape[-1]


def _forward_flops(x_shape, y_shape, a_shape, f_shape, radius, eps, out_shape=None, **kwargs) -> int:
    low, window, high = _sizes(y_shape, f_shape, radius)
    return low * (8 * window + LOW_POINTWISE_FORWARD) + high * HIGH_FORWARD


def _backward_flops(grad_shape, x_shape, y_shape, a_shape, f_shape, mean_a_shape, mean_b_shape, radius, eps,
                    out_shape=None, **kwargs) -> int:
    low, window, high = _sizes(y_shape, f_shape, radius)
    return low * (8 * window + LOW_POINTWISE_BACKWARD) + high * HIGH_BACKWARD


register_flops(torch.ops.visattn.guided_filter, _forward_flops)
register_flops(torch.ops.visattn.guided_filter_backward, _backward_flops)


def guided_filter_fused(guide_lowres, target_lowres, weights, guide_highres, radius, eps):
    """Fused twin of :func:`.reference.guided_filter_reference` (same arguments, same result) for the inputs
    :func:`unsupported_reason` accepts."""
    x, y, a, f = (t.contiguous() for t in (guide_lowres, target_lowres, weights, guide_highres))
    return _guided_filter_op(x, y, a, f, int(radius), float(eps))[0]
