"""The fused polarized attention as registered torch ops, so autograd, torch.compile and the FLOP counter see it.

Registering here imports no Triton: the kernels in :mod:`.triton` load on the first call. Three ops carry the
passes over x: ``polarized_pool`` (softmax-weighted pooling and GAP, one read of x), ``polarized_spatial``
(the official sequential form's s = q softmax_N(W_a Z), flash-style, no J x N map kept) and
``polarized_attention`` (the gating, one read of x, one write of out). Between them the block's projections of
the pooled vectors, the linear spatial logits u . Z (one batched product over x) and the gates' sigmoids and
softmax over N run as torch ops with torch's autograd. Saved for backward: x and vectors of size C, J or N.
"""

from __future__ import annotations

import torch

from .._backend import dtype_reason
from .._flops import register_flops
from .reference import apply_callables


def unsupported_reason(x: torch.Tensor) -> str | None:
    """Why the fused kernels cannot take these inputs (None when they can)."""
    return dtype_reason(x)


# gating ------------------------------------------------------------------------------------------------------


@torch.library.custom_op("visattn::polarized_attention", mutates_args=())
def _gate_op(x: torch.Tensor, a_c: torch.Tensor, a_n: torch.Tensor, sequential: bool) -> torch.Tensor:
    from . import triton as kernels

    return kernels.forward(x, a_c, a_n, sequential)


@_gate_op.register_fake
def _(x, a_c, a_n, sequential):
    return torch.empty_like(x)


@torch.library.custom_op("visattn::polarized_attention_backward", mutates_args=())
def _gate_backward_op(grad_out: torch.Tensor, x: torch.Tensor, a_c: torch.Tensor, a_n: torch.Tensor,
                      sequential: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import triton as kernels

    return kernels.backward(grad_out.contiguous(), x, a_c, a_n, sequential)


@_gate_backward_op.register_fake
def _(grad_out, x, a_c, a_n, sequential):
    return torch.empty_like(x), torch.empty_like(a_c), torch.empty_like(a_n)


def _gate_setup_context(ctx, inputs, output):
    x, a_c, a_n, sequential = inputs
    ctx.save_for_backward(x, a_c, a_n)
    ctx.sequential = sequential


def _gate_backward(ctx, grad_out):
    x, a_c, a_n = ctx.saved_tensors
    dx, da_c, da_n = _gate_backward_op(grad_out, x, a_c, a_n, ctx.sequential)
    return dx, da_c, da_n, None


_gate_op.register_autograd(_gate_backward, setup_context=_gate_setup_context)


# channel pooling -----------------------------------------------------------------------------------------------


@torch.library.custom_op("visattn::polarized_pool", mutates_args=())
def _pool_op(x: torch.Tensor, w_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import triton as kernels

    return kernels.pool_forward(x, w_q)


@_pool_op.register_fake
def _(x, w_q):
    b, c, _ = x.shape
    return x.new_empty(b, c, dtype=torch.float32), x.new_empty(b, c, dtype=torch.float32), \
        x.new_empty(b, dtype=torch.float32)


@torch.library.custom_op("visattn::polarized_pool_backward", mutates_args=())
def _pool_backward_op(d_pooled: torch.Tensor, d_mean: torch.Tensor, x: torch.Tensor, w_q: torch.Tensor,
                      lse: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from . import triton as kernels

    dx, dw = kernels.pool_backward(x, w_q, lse, pooled, d_pooled.float().contiguous(), d_mean.float().contiguous())
    return dx, dw.to(w_q.dtype)


@_pool_backward_op.register_fake
def _(d_pooled, d_mean, x, w_q, lse, pooled):
    return torch.empty_like(x), torch.empty_like(w_q)


def _pool_setup_context(ctx, inputs, output):
    x, w_q = inputs
    pooled, _, lse = output
    ctx.save_for_backward(x, w_q, lse, pooled)
    ctx.mark_non_differentiable(lse)


def _pool_backward(ctx, d_pooled, d_mean, _):
    x, w_q, lse, pooled = ctx.saved_tensors
    d_pooled = torch.zeros_like(pooled) if d_pooled is None else d_pooled
    d_mean = torch.zeros_like(pooled) if d_mean is None else d_mean
    return _pool_backward_op(d_pooled, d_mean, x, w_q, lse, pooled)


_pool_op.register_autograd(_pool_backward, setup_context=_pool_setup_context)


# spatial logits of the official sequential form ---------------------------------------------------------------


@torch.library.custom_op("visattn::polarized_spatial", mutates_args=())
def _spatial_op(x: torch.Tensor, w_a: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from . import triton as kernels

    return kernels.spatial_forward(x, w_a, q)


@_spatial_op.register_fake
def _(x, w_a, q):
    b, _, n = x.shape
    return x.new_empty(b, n, dtype=torch.float32), x.new_empty(b, w_a.shape[1], dtype=torch.float32)


@torch.library.custom_op("visattn::polarized_spatial_backward", mutates_args=())
def _spatial_backward_op(ds: torch.Tensor, x: torch.Tensor, w_a: torch.Tensor, q: torch.Tensor,
                         lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import triton as kernels

    return kernels.spatial_backward(x, w_a, q, lse, ds.float().contiguous())


@_spatial_backward_op.register_fake
def _(ds, x, w_a, q, lse):
    return torch.empty_like(x), torch.empty_like(w_a), torch.empty_like(q)


def _spatial_setup_context(ctx, inputs, output):
    x, w_a, q = inputs
    _, lse = output
    ctx.save_for_backward(x, w_a, q, lse)
    ctx.mark_non_differentiable(lse)


def _spatial_backward(ctx, ds, _):
    x, w_a, q, lse = ctx.saved_tensors
    return _spatial_backward_op(ds, x, w_a, q, lse)


_spatial_op.register_autograd(_spatial_backward, setup_context=_spatial_setup_context)


# FLOP formulas: the products of the equations (recomputation inside the kernels is not counted) -------------


def _gate_flops(x_shape, *args, out_shape=None, **kwargs) -> int:
    b, c, n = x_shape
    return 2 * b * c * n  # combine the two gates (+ or x), multiply x


def _gate_backward_flops(grad_shape, x_shape, a_c_shape, a_n_shape, sequential, out_shape=None, **kwargs) -> int:
    b, c, n = x_shape
    return (7 if sequential else 5) * b * c * n  # dx = dout gate, dout x, its sums into da_c / da_n


def _pool_flops(x_shape, w_shape, out_shape=None, **kwargs) -> int:
    b, c, n = x_shape
    return 4 * b * c * n  # logits w_q x and the weighted sum, a multiply-add each


def _pool_backward_flops(d_pooled_shape, d_mean_shape, x_shape, *args, out_shape=None, **kwargs) -> int:
    b, c, n = x_shape
    return 8 * b * c * n  # dp, dx (two products) and dw_q


def _spatial_flops(x_shape, w_shape, q_shape, out_shape=None, **kwargs) -> int:
    b, c, n = x_shape
    return 2 * b * w_shape[1] * n * (c + 1)  # V = W_a x and q softmax(V)


def _spatial_backward_flops(ds_shape, x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    b, c, n = x_shape
    return 4 * b * w_shape[1] * n * c + 4 * b * w_shape[1] * n  # dx, dW_a and D, dV


register_flops(torch.ops.visattn.polarized_attention, _gate_flops)
register_flops(torch.ops.visattn.polarized_attention_backward, _gate_backward_flops)
register_flops(torch.ops.visattn.polarized_pool, _pool_flops)
register_flops(torch.ops.visattn.polarized_pool_backward, _pool_backward_flops)
register_flops(torch.ops.visattn.polarized_spatial, _spatial_flops)
register_flops(torch.ops.visattn.polarized_spatial_backward, _spatial_backward_flops)


def _pool(x, w_q):
    pooled, mean, _ = _pool_op(x, w_q)
    return pooled, mean


def _spatial_softmax_logits(x, w_a, q):
    return _spatial_op(x, w_a.contiguous(), q.contiguous())[0]


def polarized_attention_fused(x, channel_query, channel_transform, spatial_transform, layout, spatial,
                              spatial_value):
    """Fused twin of :func:`.reference.polarized_attention_reference` (same arguments, same result) for the inputs
    :func:`unsupported_reason` accepts."""
    b, c, h, w = x.shape
    flat = x.contiguous().view(b, c, h * w)
    a_c, a_n = apply_callables(flat, channel_query, channel_transform, spatial_transform, layout, spatial,
                               spatial_value, pool=_pool, softmax_logits=_spatial_softmax_logits)
    out = _gate_op(flat, a_c.contiguous(), a_n.contiguous(), layout == "sequential")
    return out.view(b, c, h, w)
