"""Polarized self-attention's gating: a channel gate and a spatial gate applied to X in one pass.

With x (B, C, H, W), channel logits g (B, C) and spatial logits s (B, H, W):

    A_ch[c]   = sigmoid(g[c])
    A_sp[h,w] = sigmoid(softmax_{H*W}(s)[h,w])   (spatial_softmax=True, official PSA_p)
              = sigmoid(s[h,w])                  (spatial_softmax=False)
    parallel:   out = x * A_ch + x * A_sp
    sequential: out = x * A_ch * A_sp            (the spatial branch of PSA_s runs on Z_ch = x * A_ch)

The fused path reads x once and writes out once, and keeps nothing of size C*H*W for backward beyond x itself:
the gates are recomputed from the logits (and the per-image log-sum-exp of s). The softmax-weighted poolings that
produce g and s are linear in x and run in the block as batched products on x (one read each, nothing large kept).
"""

from __future__ import annotations

import torch

from .._backend import pick
from .fused import polarized_attention_fused, unsupported_reason
from .reference import polarized_attention_reference, spatial_gate

__all__ = ["polarized_attention", "spatial_gate", "LAYOUTS"]

LAYOUTS = ("parallel", "sequential")


def check_polarized_attention_args(x: torch.Tensor, channel_logits: torch.Tensor, spatial_logits: torch.Tensor,
                                   layout: str) -> None:
    """Raise a one-line ValueError for shapes, dtypes, devices or a layout that cannot work."""
    if x.dim() != 4:
        raise ValueError(f"expected x of shape (B, C, H, W), got {tuple(x.shape)}")
    b, c, h, w = x.shape
    if tuple(channel_logits.shape) != (b, c) or tuple(spatial_logits.shape) != (b, h, w):
        raise ValueError(f"expected channel_logits ({b}, {c}) and spatial_logits ({b}, {h}, {w}) for x "
                         f"{tuple(x.shape)}, got {tuple(channel_logits.shape)}, {tuple(spatial_logits.shape)}")
    if not x.is_floating_point() or not channel_logits.is_floating_point() or not spatial_logits.is_floating_point():
        raise ValueError(f"x and the logits must be floating point, got {x.dtype}/{channel_logits.dtype}/"
                         f"{spatial_logits.dtype}")
    if not x.device == channel_logits.device == spatial_logits.device:
        raise ValueError(f"x and the logits must share a device, got {x.device}/{channel_logits.device}/"
                         f"{spatial_logits.device}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}; use one of {', '.join(LAYOUTS)}")


def polarized_attention(x: torch.Tensor, channel_logits: torch.Tensor, spatial_logits: torch.Tensor, *,
                        layout: str = "parallel", spatial_softmax: bool = False,
                        backend: str | None = None) -> torch.Tensor:
    """Apply PSA's two gates to ``x``.

    Args:
        x: (B, C, H, W) feature map (float32, float16 or bfloat16 on the triton backend).
        channel_logits: (B, C) pre-sigmoid channel gate, any floating dtype.
        spatial_logits: (B, H, W) pre-sigmoid (pre-softmax with ``spatial_softmax``) spatial gate.
        layout: ``"parallel"`` (x A_ch + x A_sp) or ``"sequential"`` (x A_ch A_sp).
        spatial_softmax: softmax over the H*W positions of the spatial logits before the sigmoid.
        backend: ``"torch"``, ``"triton"`` or None (Triton for CUDA tensors; ``$VISATTN_BACKEND`` overrides).

    Returns:
        (B, C, H, W) in x's dtype; gradients for x and both logits.
    """
    check_polarized_attention_args(x, channel_logits, spatial_logits, layout)
    impl = pick(backend, x, polarized_attention_reference, polarized_attention_fused, unsupported_reason(x))
    return impl(x, channel_logits, spatial_logits, layout, bool(spatial_softmax))
