"""Non-causal multi-head linear attention, with InLine's injective and HER-Seg's normalized variants.

Per batch and head, with the key-value state S = sum_j k_j^T v_j (D x E):

    O_i = scale q_i S                                                  plain
    O_i = scale q_i (S - N mean(k)^T mean(v)) + mean(v)                injective (InLine, NeurIPS 2024)
    O_i = scale q_i S / (qn_i . mean_j kn_j + eps)                     normalize
"""

from __future__ import annotations

import torch

from .._backend import pick
from .fused import linear_attention_fused, unsupported_reason
from .reference import linear_attention_reference

__all__ = ["linear_attention"]


def check_linear_attention_args(q, k, v, injective, normalize, norm_q, norm_k) -> None:
    """Raise a one-line ValueError for shapes, dtypes, devices or flag combinations that cannot work."""
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"expected q, k of shape (B, H, N, D) and v of shape (B, H, N, E), "
                         f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] < 1:
        raise ValueError(f"q and k need at least one channel, got D={q.shape[-1]}")
    if injective and normalize:
        raise ValueError("injective and normalize exclude each other: pick one")
    if (norm_q is None) != (norm_k is None):
        raise ValueError("pass norm_q and norm_k together, or neither")
    if norm_q is not None and not normalize:
        raise ValueError("norm_q and norm_k are only used with normalize=True: set it or drop them")
    given = {"q": q, "k": k, "v": v, "norm_q": norm_q, "norm_k": norm_k}
    given = {name: t for name, t in given.items() if t is not None}
    for name in ("norm_q", "norm_k"):
        if name in given and given[name].shape != q.shape:
            raise ValueError(f"expected {name} of q's shape {tuple(q.shape)}, got {tuple(given[name].shape)}")
    for name, t in given.items():
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.dtype != q.dtype:
            raise ValueError(f"{name} is {t.dtype} but q is {q.dtype}: cast them to one dtype")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}: move them to one device")


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0, *, injective: bool = False,
                     normalize: bool = False, norm_q: torch.Tensor | None = None, norm_k: torch.Tensor | None = None,
                     eps: float = 1e-6, backend: str | None = None) -> torch.Tensor:
    """Non-causal (bidirectional) multi-head linear attention, accumulated in float32.

    Per batch and head, with S = sum_j k_j^T v_j (D x E), mean k and mean v over the N tokens:

    - plain:      O_i = scale q_i S
    - injective:  O_i = scale q_i (S - N mean(k)^T mean(v)) + mean(v)
                  = sum_j (scale q_i (k_j - mean k)^T + 1 / N) v_j, attention rows that sum to 1 (InLine)
    - normalize:  O_i = scale q_i S / (qn_i . mean_j kn_j + eps), qn = norm_q or q, kn = norm_k or k
                  (HER-Seg: RoPE-rotated phi(q), phi(k) as q, k, the unrotated ones as norm_q, norm_k,
                  scale = 1 / N)

    Args:
        q, k: (B, H, N, D) queries and keys; v: (B, H, N, E) values; one dtype and device. Strided views such
            as ``x.view(B, N, H, D).transpose(1, 2)`` are read in place. The triton backend takes D, E <= 128
            (with ``backend=None`` wider heads run the reference).
        scale: factor on q_i S.
        injective: InLine's injective form; excludes ``normalize``.
        normalize: divide by the normalizer z_i = qn_i . mean kn + eps.
        norm_q, norm_k: (B, H, N, D) qn and kn of the normalizer, both or neither, only with ``normalize``.
        eps: added to the normalizer.
        backend: ``"torch"``, ``"triton"`` or None (Triton for CUDA tensors; ``$VISATTN_BACKEND`` overrides).

    Returns:
        (B, H, N, E), dtype of q. Gradients reach q, k, v, norm_q and norm_k.
    """
    check_linear_attention_args(q, k, v, injective, normalize, norm_q, norm_k)
    impl = pick(backend, q, linear_attention_reference, linear_attention_fused, unsupported_reason(q, v),
                out_shape=(*q.shape[:3], v.shape[-1]))
    return impl(q, k, v, scale, injective, normalize, norm_q, norm_k, eps)
