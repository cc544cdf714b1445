"""The fused polarized gating as registered torch ops, so autograd, torch.compile and the FLOP counter see it.

Registering here imports no Triton: the kernels in :mod:`.triton` load on the first call. The gates themselves,
A_ch = sigmoid(g) (B, C) and A_sp = sigmoid(softmax_N(s) or s) (B, N), are small and computed here in float32 with
torch ops (their autograd is torch's); the op applies them to x: one read of x and one write of out forward, one
read of x and dout and one write of dx backward, with only x and the two gate vectors saved.
"""

from __future__ import annotations

import torch

from .._flops import register_flops
from .reference import spatial_gate

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def unsupported_reason(x: torch.Tensor) -> str | None:
    """Why the fused kernels cannot take these inputs (None when they can)."""
    if x.dtype not in DTYPES:
        return f"the triton backend takes float32, float16 or bfloat16, got {x.dtype}"
    if x.numel() == 0:
        return f"the triton backend takes non-empty maps, got {tuple(x.shape)}"
    return None


@torch.library.custom_op("visattn::polarized_attention", mutates_args=())
def _polarized_attention_op(x: torch.Tensor, a_c: torch.Tensor, a_n: torch.Tensor, sequential: bool) -> torch.Tensor:
    from . import triton as kernels

    return kernels.forward(x, a_c, a_n, sequential)


@_polarized_attention_op.register_fake
def _(x, a_c, a_n, sequential):
    return torch.empty_like(x)


@torch.library.custom_op("visattn::polarized_attention_backward", mutates_args=())
def _polarized_attention_backward_op(grad_out: torch.Tensor, x: torch.Tensor, a_c: torch.Tensor, a_n: torch.Tensor,
                                     sequential: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import triton as kernels

    return kernels.backward(grad_out.contiguous(), x, a_c, a_n, sequential)


@_polarized_attention_backward_op.register_fake
def _(grad_out, x, a_c, a_n, sequential):
    return torch.empty_like(x), torch.empty_like(a_c), torch.empty_like(a_n)


def _setup_context(ctx, inputs, output):
    x, a_c, a_n, sequential = inputs
    ctx.save_for_backward(x, a_c, a_n)
    ctx.sequential = sequential


def _op_backward(ctx, grad_out):
    x, a_c, a_n = ctx.saved_tensors
    dx, da_c, da_n = _polarized_attention_backward_op(grad_out, x, a_c, a_n, ctx.sequential)
    return dx, da_c, da_n, None


_polarized_attention_op.register_autograd(_op_backward, setup_context=_setup_context)


def _elements(x_shape) -> int:
    b, c, n = x_shape
    return b * c * n


def _forward_flops(x_shape, a_c_shape, a_n_shape, sequential, out_shape=None, **kwargs) -> int:
    # per element: combine the two gates (+ or x), multiply x
    return 2 * _elements(x_shape)


def _backward_flops(grad_shape, x_shape, a_c_shape, a_n_shape, sequential, out_shape=None, **kwargs) -> int:
    # per element: gate and dx = dout gate (2), dout x (1), its sums into da_c and da_n (2), and in the sequential
    # layout the two products by the other gate (2)
    return (7 if sequential else 5) * _elements(x_shape)


register_flops(torch.ops.visattn.polarized_attention, _forward_flops)
register_flops(torch.ops.visattn.polarized_attention_backward, _backward_flops)


def polarized_attention_fused(x, channel_logits, spatial_logits, layout, spatial_softmax):
    """Fused twin of :func:`.reference.polarized_attention_reference` (same arguments, same result) for the inputs
    :func:`unsupported_reason` accepts."""
    b, c, h, w = x.shape
    a_c = channel_logits.float().sigmoid().contiguous()
    a_n = spatial_gate(spatial_logits, spatial_softmax).float().reshape(b, h * w).contiguous()
    out = _polarized_attention_op(x.contiguous().view(b, c, h * w), a_c, a_n, layout == "sequential")
    return out.view(b, c, h, w)
