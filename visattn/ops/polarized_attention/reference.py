"""Plain-PyTorch polarized gating: the definition of correct for every backend."""

from __future__ import annotations

import torch


def spatial_gate(spatial_logits: torch.Tensor, spatial_softmax: bool) -> torch.Tensor:
    """A_sp = sigmoid(softmax over H*W of the logits) or sigmoid(logits), (B, H, W), in float32 at least."""
    t = spatial_logits.to(torch.promote_types(spatial_logits.dtype, torch.float32))
    if spatial_softmax:
        t = t.flatten(1).softmax(-1).view_as(t)
    return t.sigmoid()


def polarized_attention_reference(x: torch.Tensor, channel_logits: torch.Tensor, spatial_logits: torch.Tensor,
                                  layout: str, spatial_softmax: bool) -> torch.Tensor:
    """x (B, C, H, W) gated by A_ch = sigmoid(channel_logits) (B, C) and A_sp (B, H, W): x (A_ch + A_sp) for the
    parallel layout, x A_ch A_sp for the sequential one; gates in float32 at least, the result in x's dtype."""
    a_ch = channel_logits.to(torch.promote_types(channel_logits.dtype, torch.float32)).sigmoid()[:, :, None, None]
    a_sp = spatial_gate(spatial_logits, spatial_softmax)[:, None]
    gate = a_ch + a_sp if layout == "parallel" else a_ch * a_sp
    return (x * gate).to(x.dtype)
