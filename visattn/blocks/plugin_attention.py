"""Plug-in attention blocks for CNN maps, as attention studies on CNNs compare them.

Each block maps (B, C, H, W) to (B, C, H, W). Let X be the map, N = H W, sigma the sigmoid.

- Squeeze-and-excitation (Hu et al., CVPR 2018), :func:`squeeze_excitation` (timm's ``SEModule``):
  ``SE(X) = X * sigma(W2 ReLU(W1 GAP(X)))``, W1: C -> C/r, W2: C/r -> C (1x1 convs with bias), r = 16.
- CBAM (Woo et al., ECCV 2018), :func:`cbam` (timm's ``CbamModule``): channel attention
  ``X' = X * sigma(MLP(GAP(X)) + MLP(GMP(X)))`` (one shared bias-free MLP C -> C/16 -> C on the average- and the
  max-pooled vector), then spatial attention ``X' * sigma(BN(conv7x7([mean_C(X'); max_C(X')])))`` (2 -> 1 channels;
  the BN is the official code's).
- Non-local block, embedded Gaussian (Wang et al., CVPR 2018), :class:`NonLocalBlock`:
  ``Z = X + BN(W_z (softmax_j(theta(X)_i . phi(X)_j) g(X)))``, theta, phi, g: 1x1 C -> C/2, W_z: 1x1 C/2 -> C;
  the BN's scale starts at 0, so the block starts as the identity (the paper's initialisation).

Re-id puts them after residual blocks with :func:`visattn.backbones.psa.insert_after` (gated by a learnable scalar
that starts at 0, unless the block starts as the identity itself, as the non-local block does).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import SEModule, register_notrace_module
from timm.layers.cbam import CbamModule

__all__ = ["NonLocalBlock", "cbam", "squeeze_excitation"]

REDUCTION = 16  # SE's and CBAM's channel reduction r


def squeeze_excitation(channels: int, device=None, dtype=None) -> SEModule:
    """The SE block of the paper on ``channels``: timm's ``SEModule`` with C/16 hidden channels (rounded, at
    least 1; timm's default would round them to a multiple of 8), ReLU, sigmoid gate, biases."""
    return SEModule(channels, rd_ratio=1 / REDUCTION, rd_divisor=1, device=device, dtype=dtype)


def cbam(channels: int, device=None, dtype=None) -> CbamModule:
    """The CBAM block of the paper on ``channels``: timm's ``CbamModule`` (channel attention from the average- and
    max-pooled vectors through one shared MLP with C/16 hidden channels, then a 7x7 spatial attention on the
    channel mean and max)."""
    return CbamModule(channels, rd_ratio=1 / REDUCTION, rd_divisor=1, spatial_kernel_size=7, device=device,
                      dtype=dtype)


@register_notrace_module
class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block on (B, C, H, W) maps (see the module docstring), inner width C // 2.

    ``identity_at_init``: the BN after W_z has its scale and shift at 0, so Z = X until it learns.
    """

    identity_at_init = True

    def __init__(self, channels: int, device=None, dtype=None):
        super().__init__()
        if not isinstance(channels, int) or channels < 2:
            raise ValueError(f"channels must be an int >= 2, got {channels!r}")
        dd = dict(device=device, dtype=dtype)
        self.inner = inner = channels // 2
        self.theta = nn.Conv2d(channels, inner, 1, **dd)
        self.phi = nn.Conv2d(channels, inner, 1, **dd)
        self.g = nn.Conv2d(channels, inner, 1, **dd)
        self.out = nn.Conv2d(inner, channels, 1, bias=False, **dd)
        self.norm = nn.BatchNorm2d(channels, **dd)
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, C')
        phi, g = self.phi(x).flatten(2), self.g(x).flatten(2).transpose(1, 2)  # (B, C', N), (B, N, C')
        attention = torch.softmax(torch.bmm(theta, phi), dim=-1)  # (B, N, N): row i over the positions j
        y = torch.bmm(attention, g).transpose(1, 2).reshape(b, self.inner, h, w)
        return x + self.norm(self.out(y))
