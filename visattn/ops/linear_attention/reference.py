"""Plain-PyTorch non-causal linear attention: the definition of correct for every backend."""

from __future__ import annotations

import torch


def linear_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, injective: bool, normalize: bool,
    norm_q: torch.Tensor | None, norm_k: torch.Tensor | None, eps: float,
) -> torch.Tensor:
    """Key-value state, then a per-query read-out, in float32 (float64 stays float64).

    q, k: (B, H, N, D); v: (B, H, N, E); norm_q, norm_k: (B, H, N, D) or None. With S = sum_j k_j^T v_j:

        plain:      O_i = scale q_i S
        injective:  O_i = scale q_i sum_j (k_j - mean k)^T v_j + mean v
        normalize:  O_i = scale q_i S / (qn_i . mean_j kn_j + eps),  qn = norm_q or q, kn = norm_k or k

    Returns (B, H, N, E) in q's dtype.
    """
    acc = torch.promote_types(q.dtype, torch.float32)
    q_, k_, v_ = (t.to(acc) for t in (q, k, v))
    if injective:
        k_ = k_ - k_.mean(-2, keepdim=True)
    out = scale * (q_ @ (k_.transpose(-2, -1) @ v_))
    if injective:
        out = out + v_.mean(-2, keepdim=True)
    if normalize:
        qn = q_ if norm_q is None else norm_q.to(acc)
        kn = k_ if norm_k is None else norm_k.to(acc)
        out = out / ((qn * kn.mean(-2, keepdim=True)).sum(-1, keepdim=True) + eps)
    return out.to(q.dtype)
