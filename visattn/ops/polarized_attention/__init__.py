"""Polarized self-attention's hot path: the two poolings, the two gates and their application to X.

With x (B, C, H, W), N = H * W, sigma the sigmoid, the caller's projections f (channel) and h (spatial):

    channel-only:  pooled = x softmax_N(w_q x)        (B, C)      softmax-weighted pooling over H*W
                   A_ch   = sigma(f(pooled))          (B, C)
    spatial-only on Z = x (parallel) or Z = A_ch x (sequential), u = h(GAP(Z)):
        "sigmoid":         A_sp = sigma(u Z)                         (paper)
        "softmax_after":   A_sp = sigma(softmax_N(u Z))              (official PSA_p)
        "softmax_before":  A_sp = sigma(u softmax_N(W_v Z))          (official PSA_s; u is (B, C'), W_v (C', C))
    parallel:   out = x A_ch + x A_sp
    sequential: out = x A_ch A_sp

The fused path reads x once per branch (the pooling with its logits and GAP; the spatial logits) and once to gate
it, and keeps nothing of size C x N for backward but x: the softmax over N of W_v Z is recomputed tile by tile from
x as in flash attention, and the gates are vectors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._backend import pick
from .fused import polarized_attention_fused, unsupported_reason
from .reference import polarized_attention_reference

__all__ = ["polarized_attention", "LAYOUTS", "SPATIAL_FORMS"]

LAYOUTS = ("parallel", "sequential")
SPATIAL_FORMS = ("sigmoid", "softmax_after", "softmax_before")


def check_polarized_attention_args(x: torch.Tensor, channel_query: torch.Tensor, channel_transform: Callable,
                                   spatial_transform: Callable, layout: str, spatial: str,
                                   spatial_value: torch.Tensor | None) -> None:
    """Raise a one-line ValueError for shapes, dtypes, devices or options that cannot work."""
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"expected a floating-point x of shape (B, C, H, W), got {tuple(x.shape)} {x.dtype}")
    c = x.shape[1]
    if channel_query.numel() != c or not channel_query.is_floating_point():
        raise ValueError(f"expected a floating-point channel_query of {c} elements for x {tuple(x.shape)}, got "
                         f"{tuple(channel_query.shape)} {channel_query.dtype}")
    if not callable(channel_transform) or not callable(spatial_transform):
        raise ValueError("channel_transform and spatial_transform must be callables on (B, C) vectors")
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}; use one of {', '.join(LAYOUTS)}")
    if spatial not in SPATIAL_FORMS:
        raise ValueError(f"spatial={spatial!r}; use one of {', '.join(SPATIAL_FORMS)}")
    if (spatial == "softmax_before") != (spatial_value is not None):
        raise ValueError("spatial_value (C', C) is needed for spatial='softmax_before' and only there")
    if spatial_value is not None and (spatial_value.dim() != 2 or spatial_value.shape[1] != c):
        raise ValueError(f"expected spatial_value of shape (C', {c}), got {tuple(spatial_value.shape)}")
    tensors = [channel_query] + ([spatial_value] if spatial_value is not None else [])
    if any(t.device != x.device for t in tensors):
        raise ValueError(f"x and the weights must share a device, got {x.device}/"
                         f"{'/'.join(str(t.device) for t in tensors)}")


def polarized_attention(x: torch.Tensor, channel_query: torch.Tensor, channel_transform: Callable,
                        spatial_transform: Callable, *, layout: str = "parallel", spatial: str = "softmax_after",
                        spatial_value: torch.Tensor | None = None, backend: str | None = None) -> torch.Tensor:
    """Polarized self-attention of ``x`` with the caller's projections of the pooled vectors.

    Args:
        x: (B, C, H, W) feature map (float32, float16 or bfloat16 on the triton backend).
        channel_query: w_q, C elements (e.g. a (1, C, 1, 1) conv weight): the logits of the pooling over H*W.
        channel_transform: f, (B, C) pooled vector in x's dtype -> (B, C) channel-gate logits.
        spatial_transform: h, (B, C) GAP of Z in x's dtype -> u, (B, C) (or (B, C') for "softmax_before").
        layout: ``"parallel"`` or ``"sequential"``.
        spatial: ``"sigmoid"``, ``"softmax_after"`` or ``"softmax_before"`` (see the module docstring).
        spatial_value: W_v (C', C) for ``"softmax_before"``.
        backend: ``"torch"``, ``"triton"`` or None (Triton for CUDA tensors; ``$VISATTN_BACKEND`` overrides).

    Returns:
        (B, C, H, W) in x's dtype; gradients for x, the weights and whatever the transforms close over (zeros for
        an empty x, on either backend).
    """
    check_polarized_attention_args(x, channel_query, channel_transform, spatial_transform, layout, spatial,
                                   spatial_value)
    impl = pick(backend, x, polarized_attention_reference, polarized_attention_fused, unsupported_reason(x),
                out_shape=x.shape, empty=polarized_attention_reference)
    return impl(x, channel_query, channel_transform, spatial_transform, layout, spatial, spatial_value)
