"""The fused linear-attention op as registered torch ops, so autograd, torch.compile and the FLOP counter see it.

Registering here imports no Triton: the kernels in :mod:`.triton` load on the first call.
"""

from __future__ import annotations

import torch

from .._backend import dtype_reason
from .._flops import register_flops

# Widest head (D or E) the kernels' register tiles take.
MAX_HEAD_DIM = 128


def new_output(q: torch.Tensor, width: int) -> torch.Tensor:
    """An empty (B, H, N, width) tensor in q's dtype, in (B, N, H, width) memory when q is such a transposed
    view, so that the caller's ``out.transpose(1, 2).reshape(B, N, H * width)`` copies nothing."""
    b, h, n, _ = q.shape
    if q.stride(1) < q.stride(2):
        return q.new_empty(b, n, h, width).transpose(1, 2)
    return q.new_empty(b, h, n, width)


@torch.library.custom_op("visattn::linear_attention", mutates_args=())
def _linear_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, norm_q: torch.Tensor | None,
                         norm_k: torch.Tensor | None, rope_cos: torch.Tensor | None, rope_sin: torch.Tensor | None,
                         scale: float, injective: bool, normalize: bool, feature_map: str | None,
                         eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    from . import triton as kernels

    out = new_output(q, v.shape[-1])
    state = kernels.forward(q, k, v, norm_q, norm_k, rope_cos, rope_sin, scale, injective, normalize, feature_map,
                            eps, out)
    return out, state


@_linear_attention_op.register_fake
def _(q, k, v, norm_q, norm_k, rope_cos, rope_sin, scale, injective, normalize, feature_map, eps):
    b, h, _, d = q.shape
    e = v.shape[-1]
    return new_output(q, e), q.new_empty(b, h, d * e + d + e, dtype=torch.float32)


@torch.library.custom_op("visattn::linear_attention_backward", mutates_args=())
def _linear_attention_backward_op(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, norm_q: torch.Tensor | None,
    rope_cos: torch.Tensor | None, rope_sin: torch.Tensor | None, state: torch.Tensor, scale: float, injective: bool,
    normalize: bool, separate_norms: bool, feature_map: str | None, eps: float,
) -> list[torch.Tensor]:
    from . import triton as kernels

    grads = kernels.backward(grad_out, q, k, v, norm_q, rope_cos, rope_sin, state, scale, injective, normalize,
                             separate_norms, feature_map, eps)
    return [q.new_empty(0) if g is None else g for g in grads]


@_linear_attention_backward_op.register_fake
def _(grad_out, q, k, v, norm_q, rope_cos, rope_sin, state, scale, injective, normalize, separate_norms, feature_map,
      eps):
    norms = [torch.empty_like(q), torch.empty_like(k)] if separate_norms else [q.new_empty(0), q.new_empty(0)]
    return [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), *norms]


def _setup_context(ctx, inputs, output):
    q, k, v, norm_q, norm_k, rope_cos, rope_sin, scale, injective, normalize, feature_map, eps = inputs
    ctx.save_for_backward(q, k, v, norm_q, rope_cos, rope_sin, output[1])
    ctx.scale, ctx.injective, ctx.normalize, ctx.feature_map, ctx.eps = scale, injective, normalize, feature_map, eps
    ctx.separate_norms = norm_q is not None
    ctx.set_materialize_grads(False)  # the packed sums get no gradient: no zero-filled one either


def _op_backward(ctx, grad_out, grad_state):
    q, k, v, norm_q, rope_cos, rope_sin, state = ctx.saved_tensors
    dq, dk, dv, dnorm_q, dnorm_k = _linear_attention_backward_op(
        grad_out, q, k, v, norm_q, rope_cos, rope_sin, state, ctx.scale, ctx.injective, ctx.normalize,
        ctx.separate_norms, ctx.feature_map, ctx.eps)
    if not ctx.separate_norms:
        dnorm_q = dnorm_k = None
    return dq, dk, dv, dnorm_q, dnorm_k, None, None, None, None, None, None, None


_linear_attention_op.register_autograd(_op_backward, setup_context=_setup_context)


def _macs(q_shape, v_shape) -> int:
    """Multiply-adds of one (N x D) by (D x E) product per batch and head: B H N D E."""
    b, h, n, d = q_shape
    return b * h * n * d * v_shape[-1]


def _normalizer_macs(q_shape) -> int:
    """Multiply-adds of the normalizer dot products qn_i . mean kn: B H N D."""
    b, h, n, d = q_shape
    return b * h * n * d


def _forward_flops(q_shape, k_shape, v_shape, norm_q_shape, norm_k_shape, cos_shape, sin_shape, scale, injective,
                   normalize, feature_map, eps, out_shape=None, **kwargs) -> int:
    # the state sum_j k_j^T v_j and the read-out q_i S, plus z_i = qn_i . mean kn when normalizing
    return 2 * (2 * _macs(q_shape, v_shape) + (_normalizer_macs(q_shape) if normalize else 0))


def _backward_flops(grad_shape, q_shape, k_shape, v_shape, norm_q_shape, cos_shape, sin_shape, state_shape, scale,
                    injective, normalize, separate_norms, feature_map, eps, out_shape=None, **kwargs) -> int:
    # dq = r S^T, dS = q^T r, dk = v dS^T, dv = k dS; normalizing, the recomputed read-out q_i S, z_i, and
    # dm = sum_i dz_i qn_i
    extra = _macs(q_shape, v_shape) + 2 * _normalizer_macs(q_shape) if normalize else 0
    return 2 * (4 * _macs(q_shape, v_shape) + extra)


register_flops(torch.ops.visattn.linear_attention, _forward_flops)
register_flops(torch.ops.visattn.linear_attention_backward, _backward_flops)


def unsupported_reason(q: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the fused kernels cannot take these inputs (None when they can)."""
    if reason := dtype_reason(q):
        return reason
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        return f"the triton backend takes head widths D, E <= {MAX_HEAD_DIM}, got D={q.shape[-1]}, E={v.shape[-1]}"
    return None


def linear_attention_fused(q, k, v, scale, injective, normalize, norm_q, norm_k, eps, rope=None, feature_map=None):
    """Fused twin of :func:`.reference.linear_attention_reference` (same arguments, same result), D, E <= 128."""
    rope_cos, rope_sin = (None, None) if rope is None else (t.detach().float().contiguous() for t in rope)
    return _linear_attention_op(q, k, v, norm_q, norm_k, rope_cos, rope_sin, float(scale), bool(injective),
                                bool(normalize), feature_map, float(eps))[0]
