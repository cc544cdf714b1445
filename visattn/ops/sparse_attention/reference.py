"""Plain-PyTorch per-query sparse attention: the definition of correct for every backend."""

from __future__ import annotations

import torch


def attended_keys(indices: torch.Tensor, num_keys: int, dense_keys: int) -> torch.Tensor:
    """Boolean (B, H_i, N_q, N_k): key j is attended by a query when j < ``dense_keys`` or j is among its
    ``indices`` (entries outside [0, N_k) are padding; a repeated index counts once)."""
    valid = (indices >= 0) & (indices < num_keys)
    slot = torch.where(valid, indices, num_keys).long()
    attended = indices.new_zeros(*indices.shape[:-1], num_keys + 1, dtype=torch.bool)
    attended.scatter_(-1, slot, torch.ones_like(slot, dtype=torch.bool))  # a tensor source: torch.jit.trace takes it
    attended = attended[..., :num_keys]
    attended[..., :dense_keys] = True
    return attended


def sparse_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor,
                               dense_keys: int, normalize: str, scale: float) -> torch.Tensor:
    """Dense masked attention computing the same result as the fused op (it materialises the N_q x N_k scores).

    q: (B, H, N_q, D); k: (B, H, N_k, D); v: (B, H, N_k, D_v); indices: (B, H or 1, N_q, K) integer.
    ``normalize="attended"``: O = softmax over attended keys of s q K^T, times V (a query with no attended key
    gives 0). ``normalize="all"``: O = (softmax over all keys of s q K^T, zeroed off the attended keys) V, with no
    renormalisation. Computed in float32 (float64 inputs in float64), returned in q's dtype.
    """
    attended = attended_keys(indices, k.shape[2], dense_keys)
    compute = torch.promote_types(q.dtype, torch.float32)
    scores = (q.to(compute) @ k.to(compute).transpose(-2, -1)) * scale
    if normalize == "attended":
        probs = scores.masked_fill(~attended, float("-inf")).softmax(-1).nan_to_num(0.0)
    else:
        probs = scores.softmax(-1) * attended
    return (probs @ v.to(compute)).to(q.dtype)
