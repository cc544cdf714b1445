"""The fused window-attention op as registered torch ops, so autograd, torch.compile and the FLOP counter see it.

Registering here imports no Triton: the kernels in :mod:`.triton` load on the first call.
"""

from __future__ import annotations

import torch

from .._backend import dtype_reason
from .._flops import register_flops

# A window's tokens must fit one 64-row tile of the kernels.
MAX_WINDOW_SIZE = 8
# Widest head: float32 tiles of 128 channels need more shared memory than an H100/H200 has (368 KB asked for,
# 227 KB available, measured on an H200), so float32 stops at 64.
MAX_HEAD_DIM = 128
MAX_FLOAT32_HEAD_DIM = 64


def unsupported_reason(q: torch.Tensor, v: torch.Tensor, num_heads: int, window_size: int) -> str | None:
    """Why the fused kernels cannot take these inputs (None when they can)."""
    if reason := dtype_reason(q):
        return reason
    if window_size > MAX_WINDOW_SIZE:
        return f"the triton backend takes window_size <= {MAX_WINDOW_SIZE}, got {window_size}"
    widest = max(q.shape[-1], v.shape[-1]) // num_heads
    limit = MAX_FLOAT32_HEAD_DIM if q.dtype == torch.float32 else MAX_HEAD_DIM
    if widest > limit:
        return f"the triton backend takes {q.dtype} heads of at most {limit} channels, got {widest}"
    return None


@torch.library.custom_op("visattn::window_attention", mutates_args=())
def _window_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos_bias: torch.Tensor | None,
                         num_heads: int, window_size: int, shift: int,
                         scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    from . import triton as kernels

    return kernels.forward(q, k, v, rel_pos_bias, num_heads, window_size, shift, scale)


@_window_attention_op.register_fake
def _(q, k, v, rel_pos_bias, num_heads, window_size, shift, scale):
    b, h, w, _ = q.shape
    return q.new_empty(b, h, w, v.shape[-1]), q.new_empty(b, num_heads, h, w, dtype=torch.float32)


@torch.library.custom_op("visattn::window_attention_backward", mutates_args=())
def _window_attention_backward_op(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    rel_pos_bias: torch.Tensor | None, num_heads: int, window_size: int, shift: int, scale: float, bias_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import triton as kernels

    return kernels.backward(q, k, v, out, lse, grad_out, rel_pos_bias, num_heads, window_size, shift, scale,
                            bias_grad)


@_window_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, rel_pos_bias, num_heads, window_size, shift, scale, bias_grad):
    dbias = torch.empty_like(rel_pos_bias) if bias_grad else q.new_empty(0)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dbias


def _setup_context(ctx, inputs, output):
    q, k, v, rel_pos_bias, num_heads, window_size, shift, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, rel_pos_bias)
    ctx.num_heads, ctx.window_size, ctx.shift, ctx.scale = num_heads, window_size, shift, scale


def _op_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, rel_pos_bias = ctx.saved_tensors
    bias_grad = ctx.needs_input_grad[3]
    dq, dk, dv, dbias = _window_attention_backward_op(grad_out, q, k, v, out, lse, rel_pos_bias, ctx.num_heads,
                                                      ctx.window_size, ctx.shift, ctx.scale, bias_grad)
    return dq, dk, dv, dbias if bias_grad else None, None, None, None, None


_window_attention_op.register_autograd(_op_backward, setup_context=_setup_context)


def _window_macs(q_shape, v_shape, window_size: int) -> int:
    """Multiply-adds of QK^T plus PV over every window's token pairs, padded windows and masked pairs included."""
    b, h, w, c_qk = q_shape
    windows = -(-h // window_size) * -(-w // window_size)
    tokens = window_size * window_size
    return b * windows * tokens * tokens * (c_qk + v_shape[-1])


def _forward_flops(q_shape, k_shape, v_shape, bias_shape, num_heads, window_size, shift, scale, out_shape=None,
                   **kwargs) -> int:
    return 2 * _window_macs(q_shape, v_shape, window_size)


def _backward_flops(grad_shape, q_shape, k_shape, v_shape, out_shape_, lse_shape, bias_shape, num_heads, window_size,
                    shift, scale, bias_grad, out_shape=None, **kwargs) -> int:
    # recompute QK^T, then dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q: 2.5x the forward attention
    return 5 * _window_macs(q_shape, v_shape, window_size)


register_flops(torch.ops.visattn.window_attention, _forward_flops)
register_flops(torch.ops.visattn.window_attention_backward, _backward_flops)


def window_attention_fused(q, k, v, rel_pos_bias, num_heads, window_size, shift, scale):
    """Fused twin of :func:`.reference.window_attention_reference` (same arguments, same result) for the inputs
    :func:`unsupported_reason` accepts."""
    return _window_attention_op(q, k, v, rel_pos_bias, num_heads, window_size, shift, float(scale))[0]
