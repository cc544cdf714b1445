"""Per-query sparse token attention: each query attends to its own set of keys.

For query i with attended key set S_i = {0, ..., dense_keys - 1} ∪ {indices[i, :]}, and s the logit scale:

    normalize="attended" (Sparsifiner):  O_i = Σ_{j∈S_i} softmax_{j∈S_i}(s q_i·k_j) v_j
    normalize="all" (TCPA, official form): O_i = Σ_{j∈S_i} softmax_{j∈all keys}(s q_i·k_j) v_j

The second normalises over every key and then zeroes the keys the query does not attend, with no
renormalisation: the attended weights of a row sum to less than one. The fused path never forms an N_q x N_k
mask or score matrix: it keeps the indices (sorted, with per-key-tile offsets) and the log-sum-exp per query.
"""

from __future__ import annotations

import torch

from .._backend import pick
from .fused import sparse_attention_fused, unsupported_reason
from .reference import attended_keys, sparse_attention_reference

__all__ = ["sparse_attention", "attended_keys", "NORMALIZATIONS"]

NORMALIZATIONS = ("attended", "all")


def check_sparse_attention_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor,
                                dense_keys: int, normalize: str) -> None:
    """Raise a one-line ValueError for shapes, dtypes, a key range or a normalisation that cannot work."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or k.shape[:3] != v.shape[:3] or q.shape[:2] != k.shape[:2] \
            or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"expected q (B, H, N_q, D), k (B, H, N_k, D), v (B, H, N_k, D_v), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not q.dtype == k.dtype == v.dtype or not q.device == k.device == v.device:
        raise ValueError(f"q, k, v must share dtype and device, got {q.dtype}/{k.dtype}/{v.dtype} "
                         f"on {q.device}/{k.device}/{v.device}")
    if q.shape[-1] < 1:
        raise ValueError(f"q and k need at least one channel, got D={q.shape[-1]}")
    b, h, n_q, _ = q.shape
    if (indices.dim() != 4 or indices.shape[0] != b or indices.shape[1] not in (1, h) or indices.shape[2] != n_q
            or indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool):
        raise ValueError(f"indices must be integer (B={b}, H={h} or 1, N_q={n_q}, K), got {indices.dtype} "
                         f"{tuple(indices.shape)}")
    if indices.device != q.device:
        raise ValueError(f"indices are on {indices.device}, q on {q.device}")
    if indices.shape[-1] > k.shape[2]:
        raise ValueError(f"K={indices.shape[-1]} indices per query exceed the N_k={k.shape[2]} keys")
    if not 0 <= dense_keys <= k.shape[2]:
        raise ValueError(f"dense_keys={dense_keys} must be between 0 and N_k={k.shape[2]}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r}; use one of {', '.join(NORMALIZATIONS)}")


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor, *,
                     dense_keys: int = 0, normalize: str = "attended", scale: float | None = None,
                     backend: str | None = None) -> torch.Tensor:
    """Attention of each query over its own key set: keys ``[0, dense_keys)`` plus its ``indices``.

    Args:
        q: (B, H, N_q, D) queries; k: (B, H, N_k, D) keys; v: (B, H, N_k, D_v) values; one floating dtype
            (float32, float16 or bfloat16 on the triton backend) and one device.
        indices: (B, H, N_q, K) or (B, 1, N_q, K) (shared by the heads) integer key indices per query, K <= N_k.
            Entries outside [0, N_k) (say -1) are padding; a repeated index counts once. No gradient.
        dense_keys: the leading keys every query attends to (TCPA: the class token and the patches).
        normalize: ``"attended"``, softmax over the attended keys (a query with none gives 0), or ``"all"``,
            softmax over all N_k keys then the unattended ones zeroed, without renormalisation (official TCPA).
        scale: logit scale s, default D ** -0.5.
        backend: ``"torch"``, ``"triton"`` or None (Triton for CUDA tensors; ``$VISATTN_BACKEND`` overrides).

    Returns:
        (B, H, N_q, D_v), dtype of q.
    """
    check_sparse_attention_args(q, k, v, indices, dense_keys, normalize)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    impl = pick(backend, q, sparse_attention_reference, sparse_attention_fused, unsupported_reason(q, v),
                out_shape=(*q.shape[:3], v.shape[-1]))
    return impl(q, k, v, indices, dense_keys, normalize, scale)
