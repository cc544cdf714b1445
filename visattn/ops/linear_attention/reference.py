"""Plain-PyTorch non-causal linear attention: the definition of correct for every backend."""

from __future__ import annotations

import torch

FEATURE_MAPS = ("elu+1",)


def elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    """ELU(x) + 1 = x + 1 for x > 0, exp(x) otherwise: positive features, as exp(x - r) + r with r = ReLU(x).
    Element-wise passes that run on a transposed head view about as fast as on a contiguous one (``torch.where``
    over the two branches took several times longer on a CPU, and ``F.elu``'s backward on such a view breaks
    aot_autograd's stride prediction); the gradient is ELU's, 1 at x = 0 too (ReLU's gradient there is 0)."""
    positive = torch.relu(x)
    return torch.exp(x - positive) + positive


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of (B, H, N, D) heads: channel pair (x_2j, x_2j+1) of head h at token n goes to
    (x_2j c - x_2j+1 s, x_2j s + x_2j+1 c), c, s = cos, sin[n, h D / 2 + j] of (N, H D / 2) tables."""
    b, h, n, d = x.shape
    cos, sin = (t.to(x.dtype).reshape(n, h, d // 2).transpose(0, 1) for t in (cos, sin))
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def linear_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, injective: bool, normalize: bool,
    norm_q: torch.Tensor | None, norm_k: torch.Tensor | None, eps: float,
    rope: tuple[torch.Tensor, torch.Tensor] | None = None, feature_map: str | None = None,
) -> torch.Tensor:
    """Key-value state, then a per-query read-out, in float32 (float64 stays float64).

    q, k: (B, H, N, D); v: (B, H, N, E); norm_q, norm_k: (B, H, N, D) or None; rope: (cos, sin) tables, each
    (N, H D / 2), or None. With q' = phi(q), k' = phi(k) (phi = ELU + 1 for ``feature_map="elu+1"``, else the
    identity), q~ = R q', k~ = R k' (:func:`rotate_pairs` with ``rope``, else the identity) and
    S = sum_j k~_j^T v_j:

        plain:      O_i = scale q~_i S
        injective:  O_i = scale q~_i sum_j (k~_j - mean k~)^T v_j + mean v
        normalize:  O_i = scale q~_i S / (qn_i . mean_j kn_j + eps),  qn = norm_q or q', kn = norm_k or k'

    Returns (B, H, N, E) in q's dtype.
    """
    acc = torch.promote_types(q.dtype, torch.float32)
    q_, k_, v_ = (t.to(acc) for t in (q, k, v))
    if feature_map is not None:
        q_, k_ = elu_plus_one(q_), elu_plus_one(k_)
    qr, kr = (q_, k_) if rope is None else (rotate_pairs(t, *(r.detach() for r in rope)) for t in (q_, k_))
    if injective:
        kr = kr - kr.mean(-2, keepdim=True)
    out = scale * (qr @ (kr.transpose(-2, -1) @ v_))
    if injective:
        out = out + v_.mean(-2, keepdim=True)
    if normalize:
        qn = q_ if norm_q is None else norm_q.to(acc)
        kn = k_ if norm_k is None else norm_k.to(acc)
        out = out / ((qn * kn.mean(-2, keepdim=True)).sum(-1, keepdim=True) + eps)
    return out.to(q.dtype)
