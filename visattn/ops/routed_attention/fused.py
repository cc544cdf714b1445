"""The fused routed-attention op as registered torch ops, so autograd, torch.compile and the FLOP counter see it.

Registering here imports no Triton: the kernels in :mod:`.triton` load on the first call.
"""

from __future__ import annotations

import torch

from .._flops import register_flops


@torch.library.custom_op("visattn::routed_attention", mutates_args=())
def _routed_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, region_idx: torch.Tensor,
                         num_heads: int, n_win: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    from . import triton as kernels

    return kernels.forward(q, k, v, region_idx, num_heads, n_win, scale)


@_routed_attention_op.register_fake
def _(q, k, v, region_idx, num_heads, n_win, scale):
    b, h, w, _ = q.shape
    return q.new_empty(b, h, w, v.shape[-1]), q.new_empty(b, num_heads, h, w, dtype=torch.float32)


@torch.library.custom_op("visattn::routed_attention_backward", mutates_args=())
def _routed_attention_backward_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  out: torch.Tensor, lse: torch.Tensor, region_idx: torch.Tensor, num_heads: int,
                                  n_win: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import triton as kernels

    return kernels.backward(q, k, v, out, lse, grad_out, region_idx, num_heads, n_win, scale)


@_routed_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, region_idx, num_heads, n_win, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, region_idx, num_heads, n_win, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, region_idx)
    ctx.num_heads, ctx.n_win, ctx.scale = num_heads, n_win, scale


def _op_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, region_idx = ctx.saved_tensors
    dq, dk, dv = _routed_attention_backward_op(grad_out, q, k, v, out, lse, region_idx, ctx.num_heads, ctx.n_win,
                                               ctx.scale)
    return dq, dk, dv, None, None, None, None


_routed_attention_op.register_autograd(_op_backward, setup_context=_setup_context)


def _attended_macs(q_shape, v_shape, idx_shape, n_win: int) -> int:
    """Multiply-adds of QK^T plus PV over every (query, attended key) pair, padded tokens included."""
    b, h, w, c_qk = q_shape
    tokens = -(-h // n_win) * -(-w // n_win)
    return b * n_win * n_win * tokens * idx_shape[-1] * tokens * (c_qk + v_shape[-1])


def _forward_flops(q_shape, k_shape, v_shape, idx_shape, num_heads, n_win, scale, out_shape=None, **kwargs) -> int:
    # QK^T and PV over the attended keys (the routing runs outside this op and is counted there)
    return 2 * _attended_macs(q_shape, v_shape, idx_shape, n_win)


def _backward_flops(grad_shape, q_shape, k_shape, v_shape, out_shape_, lse_shape, idx_shape, num_heads, n_win, scale,
                    out_shape=None, **kwargs) -> int:
    # recompute QK^T, then dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q: 2.5x the forward attention
    return 5 * _attended_macs(q_shape, v_shape, idx_shape, n_win)


register_flops(torch.ops.visattn.routed_attention, _forward_flops)
register_flops(torch.ops.visattn.routed_attention_backward, _backward_flops)


def unsupported_reason(q: torch.Tensor, v: torch.Tensor, num_heads: int) -> str | None:
    """Why the fused kernels cannot take these inputs (None when they can): they take every call the argument
    checks accept, any map size, region grid, top-k and head width."""
    return None


def routed_attention_fused(q, k, v, region_idx, num_heads, n_win, scale):
    """Fused twin of :func:`.reference.routed_attention_reference` (same arguments, same result)."""
    return _routed_attention_op(q, k, v, region_idx, num_heads, n_win, float(scale))[0]
