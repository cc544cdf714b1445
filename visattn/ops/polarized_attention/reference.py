"""Plain-PyTorch polarized self-attention: the definition of correct for every backend."""

from __future__ import annotations

from collections.abc import Callable

import torch


def _pool(flat: torch.Tensor, w_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x softmax_N(w_q x), GAP(x)) of a (B, C, N) map, each (B, C); both 0 for an empty map (N = 0)."""
    # bmm, not einsum: einsum squeezes size-1 dimensions, so a traced program would guard on the batch being > 1
    p = torch.bmm(w_q.to(flat.dtype).expand(flat.shape[0], 1, -1), flat).squeeze(1).softmax(-1)
    return torch.bmm(flat, p.unsqueeze(-1)).squeeze(-1), flat.sum(-1) / max(flat.shape[-1], 1)


def _softmax_logits(flat: torch.Tensor, w_a: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """s = q softmax_N(W_a x), (B, N), for W_a (B, J, C) and q (B, J)."""
    return torch.bmm(q.to(flat.dtype).unsqueeze(1), torch.bmm(w_a, flat).softmax(-1)).squeeze(1)


def _checked(t: torch.Tensor, shape: tuple[int, int], name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must return a tensor of shape {shape}, got {got}")
    return t


def apply_callables(flat: torch.Tensor, channel_query: torch.Tensor, channel_transform: Callable,
                    spatial_transform: Callable, layout: str, spatial: str, spatial_value: torch.Tensor | None,
                    pool: Callable = _pool, softmax_logits: Callable = _softmax_logits,
                    dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The two gates (A_ch (B, C), A_sp (B, N), float32 at least) of a (B, C, N) map ``flat``: the poolings and
    logits run in ``flat``'s dtype through ``pool`` and ``softmax_logits``, the transforms take ``dtype`` inputs."""
    b, c, _ = flat.shape
    dtype = dtype or flat.dtype
    acc = torch.promote_types(flat.dtype, torch.float32)
    sequential = layout == "sequential"
    pooled, mean = pool(flat, channel_query.reshape(c))
    a_c = _checked(channel_transform(pooled.to(dtype)), (b, c), "channel_transform").to(acc).sigmoid()
    if sequential:
        mean = mean * a_c  # GAP(Z_ch) with Z_ch = A_ch x
    u = spatial_transform(mean.to(dtype))
    if spatial == "softmax_before":
        u = _checked(u, (b, spatial_value.shape[0]), "spatial_transform").to(acc)
        w_a = spatial_value.to(acc)[None]
        w_a = w_a * a_c[:, None, :] if sequential else w_a.expand(b, -1, -1)
        s = softmax_logits(flat, w_a.to(flat.dtype), u)
    else:
        u = _checked(u, (b, c), "spatial_transform").to(acc)
        u = u * a_c if sequential else u
        s = torch.bmm(u.to(flat.dtype).unsqueeze(1), flat).squeeze(1).to(acc)
        if spatial == "softmax_after":
            s = s.softmax(-1)
    return a_c, s.to(acc).sigmoid()


def polarized_attention_reference(x: torch.Tensor, channel_query: torch.Tensor, channel_transform: Callable,
                                  spatial_transform: Callable, layout: str, spatial: str,
                                  spatial_value: torch.Tensor | None) -> torch.Tensor:
    """PSA of x (B, C, H, W) as :func:`visattn.ops.polarized_attention.polarized_attention` defines it, computed in
    float32 at least; the result in x's dtype."""
    b, c, h, w = x.shape
    flat = x.flatten(2).to(torch.promote_types(x.dtype, torch.float32))
    a_c, a_n = apply_callables(flat, channel_query, channel_transform, spatial_transform, layout, spatial,
                               spatial_value, dtype=x.dtype)
    gate = a_c[:, :, None] * a_n[:, None] if layout == "sequential" else a_c[:, :, None] + a_n[:, None]
    return (flat * gate).view(b, c, h, w).to(x.dtype)
