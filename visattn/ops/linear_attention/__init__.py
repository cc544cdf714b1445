"""Non-causal multi-head linear attention, with InLine's injective and HER-Seg's normalized variants.

Per batch and head, with features q' = phi(q), k' = phi(k), their rotary embeddings q~ = R q', k~ = R k' (both
optional) and the key-value state S = sum_j k~_j^T v_j (D x E):

    O_i = scale q~_i S                                                  plain
    O_i = scale q~_i (S - N mean(k~)^T mean(v)) + mean(v)               injective (InLine, NeurIPS 2024)
    O_i = scale q~_i S / (q'_i . mean_j k'_j + eps)                     normalize (HER-Seg / MLLA)
"""

from __future__ import annotations

import torch

from .._backend import pick
from .fused import linear_attention_fused, unsupported_reason
from .reference import FEATURE_MAPS, linear_attention_reference

__all__ = ["linear_attention"]


def check_linear_attention_args(q, k, v, injective, normalize, norm_q, norm_k, rope=None, feature_map=None) -> None:
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
    if feature_map is not None and feature_map not in FEATURE_MAPS:
        raise ValueError(f"unknown feature_map {feature_map!r}; use one of {', '.join(FEATURE_MAPS)} or None")
    given = {"q": q, "k": k, "v": v, "norm_q": norm_q, "norm_k": norm_k}
    given = {name: t for name, t in given.items() if t is not None}
    for name in ("norm_q", "norm_k"):
        if name in given and given[name].shape != q.shape:
            raise ValueError(f"expected {name} of q's shape {tuple(q.shape)}, got {tuple(given[name].shape)}")
    if rope is not None:
        _, h, n, d = q.shape
        if d % 2:
            raise ValueError(f"rope rotates channel pairs: it needs an even head width D, got D={d}")
        if not isinstance(rope, tuple | list) or len(rope) != 2:
            raise ValueError("rope must be a (cos, sin) pair of tables")
        for name, t in zip(("rope cos", "rope sin"), rope, strict=True):
            if t.shape != (n, h * d // 2) or not t.is_floating_point() or t.device != q.device:
                raise ValueError(f"expected a floating-point {name} table of shape (N, H * D / 2) = "
                                 f"{(n, h * d // 2)} on {q.device}, got {t.dtype} {tuple(t.shape)} on {t.device}")
    for name, t in given.items():
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.dtype != q.dtype:
            raise ValueError(f"{name} is {t.dtype} but q is {q.dtype}: cast them to one dtype")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}: move them to one device")


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0, *, injective: bool = False,
                     normalize: bool = False, norm_q: torch.Tensor | None = None, norm_k: torch.Tensor | None = None,
                     eps: float = 1e-6, feature_map: str | None = None,
                     rope: tuple[torch.Tensor, torch.Tensor] | None = None, backend: str | None = None) -> torch.Tensor:
    """Non-causal (bidirectional) multi-head linear attention, accumulated in float32.

    Per batch and head, with features q' = phi(q), k' = phi(k), rotated features q~ = R q', k~ = R k',
    S = sum_j k~_j^T v_j (D x E), and means over the N tokens:

    - plain:      O_i = scale q~_i S
    - injective:  O_i = scale q~_i (S - N mean(k~)^T mean(v)) + mean(v)
                  = sum_j (scale q~_i (k~_j - mean k~)^T + 1 / N) v_j, attention rows that sum to 1 (InLine)
    - normalize:  O_i = scale q~_i S / (qn_i . mean_j kn_j + eps), qn = norm_q or q', kn = norm_k or k'
                  (HER-Seg: ``feature_map="elu+1"``, its 2-D RoPE tables as ``rope``, scale = 1 / N)

    The feature map and the rotation run inside the kernels: the features and rotated copies of q and k are never
    written to memory.

    Args:
        q, k: (B, H, N, D) queries and keys; v: (B, H, N, E) values; one dtype and device. Strided views such
            as ``x.view(B, N, H, D).transpose(1, 2)`` are read in place. The triton backend takes D, E <= 128
            (with ``backend=None`` wider heads run the reference).
        scale: factor on q~_i S.
        injective: InLine's injective form; excludes ``normalize``.
        normalize: divide by the normalizer z_i = qn_i . mean kn + eps (never rotated).
        norm_q, norm_k: (B, H, N, D) qn and kn of the normalizer, both or neither, only with ``normalize``.
        eps: added to the normalizer.
        feature_map: phi: None (the identity) or ``"elu+1"`` (ELU(x) + 1, as linear attention's positive
            features); applied to q and k, not to v, norm_q or norm_k.
        rope: None, or rotary tables ``(cos, sin)``, each (N, H * D / 2) (D even): channel pair
            (2j, 2j + 1) of head h at token n is rotated by the angle of entry [n, h D / 2 + j], so the tables of
            a rotary embedding over the C = H D channels of a (B, N, C) token map serve its (B, H, N, D) view.
            Constants: no gradient reaches them.
        backend: ``"torch"``, ``"triton"`` or None (Triton for CUDA tensors; ``$VISATTN_BACKEND`` overrides).

    Returns:
        (B, H, N, E), dtype of q, laid out like q when q is a (B, N, H, D) view, so that merging the heads back
        copies nothing. Gradients reach q, k, v, norm_q and norm_k.
    """
    check_linear_attention_args(q, k, v, injective, normalize, norm_q, norm_k, rope, feature_map)
    impl = pick(backend, q, linear_attention_reference, linear_attention_fused, unsupported_reason(q, v),
                out_shape=(*q.shape[:3], v.shape[-1]))
    return impl(q, k, v, scale, injective, normalize, norm_q, norm_k, eps, rope, feature_map)
