"""The fused routed-attention op as registered torch ops, so autograd, torch.compile and the FLOP counter see it.

Registering here imports no Triton: the kernels in :mod:`.triton` load on the first call.
"""

from __future__ import annotations

import torch

from .._backend import dtype_reason
from .._flops import register_flops


@torch.library.custom_op("visattn::routed_attention", mutates_args=())
def _routed_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, n_win: int, topk: int,
                         scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                torch.Tensor]:
    """(out, log2-sum-exp, region_idx, and the forward plan's lists, bits and counts, which backward reuses)."""
    from . import triton as kernels

    return kernels.forward(q, k, v, num_heads, n_win, topk, scale)


@_routed_attention_op.register_fake
def _(q, k, v, num_heads, n_win, topk, scale):
    b, h, w, _ = q.shape
    regions = n_win * n_win
    return (q.new_empty(b, h, w, v.shape[-1]), q.new_empty(b, num_heads, h, w, dtype=torch.float32),
            q.new_empty(b, regions, topk, dtype=torch.int64), *_fake_plan(q, regions))


def _fake_plan(q: torch.Tensor, regions: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b = q.shape[0]
    return (q.new_empty(b, regions, regions, dtype=torch.int32), q.new_empty(b, regions, regions, dtype=torch.int64),
            q.new_empty(b, regions, dtype=torch.int32))


@torch.library.custom_op("visattn::routed_attention_backward", mutates_args=())
def _routed_attention_backward_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  out: torch.Tensor, lse: torch.Tensor, region_idx: torch.Tensor, lists: torch.Tensor,
                                  bits: torch.Tensor, counts: torch.Tensor, num_heads: int, n_win: int,
                                  scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import triton as kernels

    return kernels.backward(q, k, v, out, lse, grad_out, region_idx, lists, bits, counts, num_heads, n_win, scale)


@_routed_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, region_idx, lists, bits, counts, num_heads, n_win, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, num_heads, n_win, topk, scale = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.mark_non_differentiable(*output[1:])
    ctx.num_heads, ctx.n_win, ctx.scale = num_heads, n_win, scale


def _op_backward(ctx, grad_out, *unused):
    q, k, v, *saved = ctx.saved_tensors
    dq, dk, dv = _routed_attention_backward_op(grad_out, q, k, v, *saved, ctx.num_heads, ctx.n_win, ctx.scale)
    return dq, dk, dv, None, None, None, None


_routed_attention_op.register_autograd(_op_backward, setup_context=_setup_context)


def _attended_macs(q_shape, v_shape, topk: int, n_win: int) -> int:
    """Multiply-adds of QK^T plus PV over every (query, attended key) pair, padded tokens included."""
    b, h, w, c_qk = q_shape
    tokens = -(-h // n_win) * -(-w // n_win)
    return b * n_win * n_win * tokens * topk * tokens * (c_qk + v_shape[-1])


def _forward_flops(q_shape, k_shape, v_shape, num_heads, n_win, topk, scale, out_shape=None, **kwargs) -> int:
    # the routing logits (S^2 x S^2 region pairs over C_qk), then QK^T and PV over the attended keys
    routing_macs = q_shape[0] * (n_win * n_win) ** 2 * q_shape[-1]
    return 2 * (routing_macs + _attended_macs(q_shape, v_shape, topk, n_win))


def _backward_flops(grad_shape, q_shape, k_shape, v_shape, out_shape_, lse_shape, idx_shape, lists_shape,
                    bits_shape, counts_shape, num_heads, n_win, scale, out_shape=None, **kwargs) -> int:
    # recompute QK^T, then dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q: 2.5x the forward attention
    return 5 * _attended_macs(q_shape, v_shape, idx_shape[-1], n_win)


register_flops(torch.ops.visattn.routed_attention, _forward_flops)
register_flops(torch.ops.visattn.routed_attention_backward, _backward_flops)


def unsupported_reason(q: torch.Tensor, v: torch.Tensor, num_heads: int) -> str | None:
    """Why the fused kernels cannot take these inputs (None when they can): any call the argument checks accept in
    float32, float16 or bfloat16 (any map size, region grid, top-k and head width)."""
    return dtype_reason(q)


def routed_attention_fused(q, k, v, num_heads, n_win, topk, scale):
    """Fused twin of :func:`.reference.routed_attention_reference` (same arguments, same result): routing, planning
    and attention in one op."""
    return _routed_attention_op(q, k, v, num_heads, n_win, topk, float(scale))[0]
