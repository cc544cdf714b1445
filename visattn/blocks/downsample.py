"""The strided-convolution downsampler of the pyramid families' stems and stage transitions."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from .spatial import pad_to_multiple

_FORMATS = ("NCHW", "NHWC")


class ConvDownsample(nn.Module):
    """Y = Norm(Conv(Pad(X))), or with ``norm_first`` Y = Conv(Pad(Norm(X))).

    Conv is k x k with stride s and zero ``padding`` p; Pad zero-pads the bottom and right to multiples of
    ``pad_multiple`` m (a patchify conv, k = s, keeps the sides s does not divide, where the official stems drop
    them). The norm (``norm_layer(channels)``) acts on the map in the layout it meets: the input's before the conv
    (``norm_first``), the output's after it, so use BatchNorm2d on NCHW and LayerNorm on NHWC maps.

    Shapes: (B, C_in, H, W), or (B, H, W, C_in) when ``input_fmt='NHWC'`` -> (B, C_out, H', W'), or
    (B, H', W', C_out) when ``output_fmt='NHWC'``, with H' = floor((ceil(H / m) m + 2p - k) / s) + 1.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, padding: int = 0,
                 norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d, norm_first: bool = False,
                 pad_multiple: int = 1, input_fmt: str = "NCHW", output_fmt: str = "NCHW", device=None, dtype=None):
        super().__init__()
        if input_fmt not in _FORMATS or output_fmt not in _FORMATS:
            raise ValueError(f"input_fmt and output_fmt are 'NCHW' or 'NHWC', got {input_fmt!r}, {output_fmt!r}")
        dd = dict(device=device, dtype=dtype)
        self.norm_first, self.pad_multiple = norm_first, pad_multiple
        self.input_fmt, self.output_fmt = input_fmt, output_fmt
        if norm_first:
            self.norm = norm_layer(in_chs, **dd)
        self.conv = nn.Conv2d(in_chs, out_chs, kernel, stride, padding, **dd)
        if not norm_first:
            self.norm = norm_layer(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = self.norm(x)
        if self.input_fmt == "NHWC":
            x = x.permute(0, 3, 1, 2)
        x = self.conv(pad_to_multiple(x, self.pad_multiple))
        if self.output_fmt == "NHWC":
            x = x.permute(0, 2, 3, 1)
        return x if self.norm_first else self.norm(x)
