"""Bi-level routing attention (BiFormer, Zhu et al., CVPR 2023).

For a map split into S x S regions (S = ``n_win``), with region means Q^r, K^r of the queries and keys:

    I^r = topk_k((s Q^r)(K^r)^T)                      (region routing, no gradient)
    O_i = softmax(s q_i K_g^T) V_g,  K_g, V_g = tokens of the regions I^r[region(i)]

``s`` is the caller's scale (BiFormer uses qk_dim ** -0.5 over the whole qk_dim for both levels).
"""

from __future__ import annotations

import torch

from .._backend import check_qkv_maps, pick
from .fused import routed_attention_fused, unsupported_reason
from .reference import route_regions, routed_attention_reference

__all__ = ["routed_attention", "route_regions"]


def check_routing_args(n_win: int, topk: int) -> None:
    """Raise a one-line ValueError for a region grid or topk that cannot work (blocks check this at build time)."""
    if n_win < 1:
        raise ValueError(f"n_win must be >= 1, got {n_win}")
    if not 1 <= topk <= n_win * n_win:
        raise ValueError(f"topk={topk} must be between 1 and n_win**2={n_win * n_win} (n_win={n_win})")


def check_routed_attention_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, n_win: int,
                                topk: int) -> None:
    """Raise a one-line ValueError for maps, heads, region grid or topk that cannot work."""
    check_routing_args(n_win, topk)
    check_qkv_maps(q, k, v, num_heads)


def routed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, n_win: int, topk: int,
                     scale: float | None = None, backend: str | None = None) -> torch.Tensor:
    """Bi-level routing attention over channels-last maps.

    Per head, with S x S regions and Q^r, K^r the region means of q, k (in the maps' dtype):
    I^r = topk((s Q^r)(K^r)^T) in float32, lowest region index first among equal scores (no gradient), then
    O_i = softmax(s q_i K_g^T) V_g, K_g and V_g the tokens of the regions I^r[region(i)].

    Args:
        q, k: (B, H, W, C_qk) queries and keys; v: (B, H, W, C_v) values; one floating dtype (float32, float16
            or bfloat16 on the triton backend) and one device. Any H, W: the maps are zero-padded at the
            bottom/right to a multiple of ``n_win`` and the output is cropped back.
        num_heads: heads; C_qk and C_v must be divisible by it.
        n_win: regions per side (S); topk: key regions per query region, 1 <= topk <= S**2.
        scale: logit scale s, default C_qk ** -0.5 (BiFormer's convention, not head_dim ** -0.5).
        backend: ``"torch"``, ``"triton"`` or None (Triton for CUDA tensors; ``$VISATTN_BACKEND`` overrides).

    Returns:
        (B, H, W, C_v), dtype of q.
    """
    check_routed_attention_args(q, k, v, num_heads, n_win, topk)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    impl = pick(backend, q, routed_attention_reference, routed_attention_fused, unsupported_reason(q, v, num_heads),
                out_shape=(*q.shape[:3], v.shape[-1]))
    return impl(q, k, v, num_heads, n_win, topk, scale)
