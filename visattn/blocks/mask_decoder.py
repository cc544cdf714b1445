"""Prompt-free two-way-transformer mask decoder (SAM's decoder without prompts, as HER-Seg uses it).

Output tokens T (an IoU token and mask tokens) and the image embedding E (B, C, h, w) with a random-Fourier
positional encoding P attend to each other in ``depth`` two-way blocks:

    T <- LN(T + SelfAttn(T + T0))            (the first block: T <- LN(SelfAttn(T)), no residual, no T0)
    T <- LN(T + Attn(T + T0, E + P, E));  T <- LN(T + MLP(T));  E <- LN(E + Attn(E + P, T + T0, T))

then T <- LN(T + Attn(T + T0, E + P, E)), with T0 the initial tokens and cross-attention at C / 2 channels.
E is upsampled 4x by two transposed convolutions; mask c = MLP_c(T[0]) . upsampled E. Like the released HER-Seg
decoder, the hypernetwork MLPs read the first output token.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d, get_device_dtype, register_notrace_module

from ._checkpoint import maybe_checkpoint

__all__ = ["PromptFreeMaskDecoder", "TwoWayTransformer"]


class _Attention(nn.Module):
    """Multi-head attention whose projections may shrink the width by ``downsample_rate``."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1, device=None, dtype=None):
        super().__init__()
        inner = dim // downsample_rate
        if inner % num_heads:
            raise ValueError(f"attention width {inner} must be divisible by num_heads={num_heads}")
        dd = dict(device=device, dtype=dtype)
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, inner, **dd) for _ in range(3))
        self.out_proj = nn.Linear(inner, dim, **dd)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj(q)), heads(self.k_proj(k)), heads(self.v_proj(v)))
        return self.out_proj(out.transpose(1, 2).flatten(2))


class _MLP(nn.Module):
    """Linear layers with ReLU between them (keys ``layers.i``)."""

    def __init__(self, dims: list[int], device=None, dtype=None):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b, device=device, dtype=dtype)
                                    for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class _TwoWayBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int, first: bool, device=None,
                 dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.first = first
        self.self_attn = _Attention(dim, num_heads, **dd)
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.cross_attn_token_to_image = _Attention(dim, num_heads, downsample_rate, **dd)
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = nn.Sequential()
        self.mlp.add_module("lin1", nn.Linear(dim, mlp_dim, **dd))
        self.mlp.add_module("act", nn.ReLU())
        self.mlp.add_module("lin2", nn.Linear(mlp_dim, dim, **dd))
        self.norm3 = nn.LayerNorm(dim, **dd)
        self.norm4 = nn.LayerNorm(dim, **dd)
        self.cross_attn_image_to_token = _Attention(dim, num_heads, downsample_rate, **dd)

    def forward(self, tokens, image, token_pe, image_pe):
        if self.first:
            tokens = self.self_attn(tokens, tokens, tokens)
        else:
            q = tokens + token_pe
            tokens = tokens + self.self_attn(q, q, tokens)
        tokens = self.norm1(tokens)
        tokens = self.norm2(tokens + self.cross_attn_token_to_image(tokens + token_pe, image + image_pe, image))
        tokens = self.norm3(tokens + self.mlp(tokens))
        image = self.norm4(image + self.cross_attn_image_to_token(image + image_pe, tokens + token_pe, tokens))
        return tokens, image


class TwoWayTransformer(nn.Module):
    """Tokens (B, T, C) and image tokens (B, h*w, C) with their positional encoding -> both, updated."""

    def __init__(self, dim: int = 256, depth: int = 2, num_heads: int = 8, mlp_dim: int = 256,
                 downsample_rate: int = 2, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.layers = nn.ModuleList(_TwoWayBlock(dim, num_heads, mlp_dim, downsample_rate, first=i == 0, **dd)
                                    for i in range(depth))
        self.final_attn_token_to_image = _Attention(dim, num_heads, downsample_rate, **dd)
        self.norm_final_attn = nn.LayerNorm(dim, **dd)
        self.grad_checkpointing = False

    def forward(self, tokens: torch.Tensor, image: torch.Tensor, image_pe: torch.Tensor):
        token_pe = tokens
        for layer in self.layers:
            tokens, image = maybe_checkpoint(layer, tokens, image, token_pe, image_pe, enabled=self.grad_checkpointing)
        tokens = self.norm_final_attn(tokens + self.final_attn_token_to_image(tokens + token_pe, image + image_pe,
                                                                              image))
        return tokens, image


@register_notrace_module
class PromptFreeMaskDecoder(nn.Module):
    """Image embedding (B, C, h, w) -> mask logits (B, num_classes, 4h, 4w).

    Without prompts SAM's prompt encoder contributes only the learned no-mask embedding (added to every image
    token) and the random-Fourier encoding of the token grid, computed here for any h x w:
    P(y, x) = [sin(2 pi g), cos(2 pi g)], g = (2 [(x + 0.5) / w, (y + 0.5) / h] - 1) G, G a fixed (2, C/2)
    Gaussian matrix.
    """

    def __init__(self, dim: int = 256, num_classes: int = 1, num_mask_tokens: int = 3, depth: int = 2,
                 num_heads: int = 8, mlp_dim: int = 256, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.transformer = TwoWayTransformer(dim, depth, num_heads, mlp_dim, **dd)
        self.iou_token = nn.Embedding(1, dim, **dd)
        self.mask_tokens = nn.Embedding(num_mask_tokens, dim, **dd)
        self.no_mask_embed = nn.Embedding(1, dim, **dd)
        self.register_buffer("pe_gaussian", torch.randn(2, dim // 2, **dd))
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2, **dd), LayerNorm2d(dim // 4, eps=1e-6, **dd),
            nn.GELU(), nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2, **dd), nn.GELU(),
        )
        self.reset_classes(num_classes)

    def reset_classes(self, num_classes: int) -> None:
        """One hypernetwork MLP (new weights, on the decoder's device and dtype) per output channel."""
        dim = self.iou_token.embedding_dim
        dd = get_device_dtype(self)
        self.output_hypernetworks_mlps = nn.ModuleList(_MLP([dim, dim, dim, dim // 8], **dd)
                                                       for _ in range(num_classes))

    def dense_pe(self, height: int, width: int) -> torch.Tensor:
        """(1, C, height, width) random-Fourier encoding of the token grid centres."""
        device = self.pe_gaussian.device
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        grid = torch.stack([xs[None, :].expand(height, width), ys[:, None].expand(height, width)], dim=-1)
        proj = 2 * math.pi * ((2 * grid - 1) @ self.pe_gaussian.float())
        return torch.cat([proj.sin(), proj.cos()], dim=-1).permute(2, 0, 1).unsqueeze(0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b, c, h, w = image.shape
        # copied per image, not an expanded view, whose zero batch stride makes torch.export guard a batch over 1
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0).repeat(b, 1, 1)
        src = (image + self.no_mask_embed.weight.reshape(1, c, 1, 1)).flatten(2).transpose(1, 2)
        pe = self.dense_pe(h, w).to(image.dtype).flatten(2).transpose(1, 2).expand(b, -1, -1)
        tokens, src = self.transformer(tokens, src, pe)
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(tokens[:, 0]) for mlp in self.output_hypernetworks_mlps], dim=1)
        return (hyper @ upscaled.flatten(2)).unflatten(-1, upscaled.shape[-2:])
