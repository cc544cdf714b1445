"""The fused sparse-attention op as registered torch ops, so autograd, torch.compile and the FLOP counter see it.

Registering here imports no Triton: the kernels in :mod:`.triton` load on the first call. The key-tile plan (sorted
indices and per-tile offsets) is made here with torch ops, so it runs on meta tensors and traces under
torch.compile without a host sync.
"""

from __future__ import annotations

import torch

from .._backend import dtype_reason
from .._flops import register_flops

# Key columns per tile of the kernels. A query's membership in a key tile is one int64 bit word, so at most 64; the
# plan's offsets are per key tile, so it lives here, where the fake kernels and the planning need no Triton.
BLOCK_N = 64
# Widest head (D or D_v) the kernels' register tiles take (ViT heads are 64 wide).
MAX_HEAD_DIM = 128


def plan_key_tiles(indices: torch.Tensor, num_keys: int, block_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's key indices, sorted and deduplicated, and where each key tile's entries start in them.

    indices: (B, H_i, N_q, K) integer. Returns ``sorted`` (B, H_i, N_q, K) int32, ascending, with padding clamped to
    -1 (first) or N_k (last) and each repeated index after its first copy replaced by N_k, and ``offsets``
    (B, H_i, N_q, T + 1) int32, T = ceil(N_k / block_n): the entries of key tile t, keys [t block_n, (t + 1) block_n),
    are ``sorted[..., offsets[..., t]:offsets[..., t + 1]]``, at most ``block_n`` of them.
    """
    idx = indices.clamp(-1, num_keys).to(torch.int32).sort(dim=-1).values
    repeat = torch.cat([torch.zeros_like(idx[..., :1], dtype=torch.bool), idx[..., 1:] == idx[..., :-1]], dim=-1)
    idx = torch.where(repeat, num_keys, idx).sort(dim=-1).values
    starts = torch.arange(0, num_keys + block_n, block_n, dtype=torch.int32, device=idx.device).clamp_(max=num_keys)
    offsets = torch.searchsorted(idx, starts.expand(*idx.shape[:-1], -1).contiguous(), out_int32=True)
    return idx, offsets


def unsupported_reason(q: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the fused kernels cannot take these inputs (None when they can)."""
    if reason := dtype_reason(q):
        return reason
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        return f"the triton backend takes head widths D, D_v <= {MAX_HEAD_DIM}, got D={q.shape[-1]}, D_v={v.shape[-1]}"
    return None


@torch.library.custom_op("visattn::sparse_attention", mutates_args=())
def _sparse_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sorted_idx: torch.Tensor,
                         offsets: torch.Tensor, dense_keys: int, normalize: str, scale: float,
                         block_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from . import triton as kernels

    return kernels.forward(q, k, v, sorted_idx, offsets, dense_keys, normalize, scale, block_n)


@_sparse_attention_op.register_fake
def _(q, k, v, sorted_idx, offsets, dense_keys, normalize, scale, block_n):
    b, h, n_q, _ = q.shape
    return q.new_empty(b, h, n_q, v.shape[-1]), q.new_empty(b, h, n_q, dtype=torch.float32)


@torch.library.custom_op("visattn::sparse_attention_backward", mutates_args=())
def _sparse_attention_backward_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  out: torch.Tensor, lse: torch.Tensor, sorted_idx: torch.Tensor,
                                  offsets: torch.Tensor, dense_keys: int, normalize: str, scale: float,
                                  block_n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import triton as kernels

    return kernels.backward(q, k, v, out, lse, grad_out, sorted_idx, offsets, dense_keys, normalize, scale, block_n)


@_sparse_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, sorted_idx, offsets, dense_keys, normalize, scale, block_n):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, sorted_idx, offsets, dense_keys, normalize, scale, block_n = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, sorted_idx, offsets)
    ctx.dense_keys, ctx.normalize, ctx.scale, ctx.block_n = dense_keys, normalize, scale, block_n


def _op_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, sorted_idx, offsets = ctx.saved_tensors
    dq, dk, dv = _sparse_attention_backward_op(grad_out, q, k, v, out, lse, sorted_idx, offsets, ctx.dense_keys,
                                               ctx.normalize, ctx.scale, ctx.block_n)
    return dq, dk, dv, None, None, None, None, None, None


_sparse_attention_op.register_autograd(_op_backward, setup_context=_setup_context)


def _pair_macs(q_shape, k_shape, v_shape, idx_shape, dense_keys: int, normalize: str) -> tuple[int, int]:
    """Multiply-adds of one QK^T-shaped and one PV-shaped product: (queries x scored keys x D, queries x attended
    keys x D_v). Attended keys are counted as K + dense_keys per query (padding and repeats included); "all" scores
    every key for its normaliser."""
    b, h, n_q, d = q_shape
    attended = idx_shape[-1] + dense_keys
    scored = k_shape[2] if normalize == "all" else attended
    return b * h * n_q * scored * d, b * h * n_q * attended * v_shape[-1]


def _forward_flops(q_shape, k_shape, v_shape, idx_shape, offsets_shape, dense_keys, normalize, scale, block_n,
                   out_shape=None, **kwargs) -> int:
    # QK^T over the scored keys, PV over the attended keys
    qk, pv = _pair_macs(q_shape, k_shape, v_shape, idx_shape, dense_keys, normalize)
    return 2 * (qk + pv)


def _backward_flops(grad_shape, q_shape, k_shape, v_shape, out_shape_, lse_shape, idx_shape, offsets_shape,
                    dense_keys, normalize, scale, block_n, out_shape=None, **kwargs) -> int:
    # routed attention's convention, product by product: recompute QK^T, dQ = dS K and dK = dS^T Q are QK^T-shaped,
    # dP = dO V^T and dV = P^T dO are PV-shaped; 2.5x the forward when D = D_v and normalize="attended"
    qk, pv = _pair_macs(q_shape, k_shape, v_shape, idx_shape, dense_keys, normalize)
    return 2 * (3 * qk + 2 * pv)


register_flops(torch.ops.visattn.sparse_attention, _forward_flops)
register_flops(torch.ops.visattn.sparse_attention_backward, _backward_flops)


def sparse_attention_fused(q, k, v, indices, dense_keys, normalize, scale):
    """Fused twin of :func:`.reference.sparse_attention_reference` (same arguments, same result) for the inputs
    :func:`unsupported_reason` accepts. Views are read in place when their channels are adjacent, else copied
    (so the op's gradients have the strides of its fake kernel's: those of q, k, v)."""
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    sorted_idx, offsets = plan_key_tiles(indices, k.shape[2], BLOCK_N)
    return _sparse_attention_op(q, k, v, sorted_idx, offsets, int(dense_keys), normalize, float(scale), BLOCK_N)[0]
