"""Cross-shaped stripe attention with a locally-enhanced positional term (CSWin, CVPR 2022), one branch per stripe
direction, and InLine's global branch of the same layout (InLine-CSwin)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from ..ops.linear_attention import linear_attention
from .linear_attention import PredictedLocalResidual, injective_attention_rows, residual_share
from .spatial import STRIPE_MODES, stripe_partition, stripe_reverse


@register_notrace_module
class StripeAttention(nn.Module):
    """One attention branch of a CSWin block on (B, H, W, C) q, k, v maps of its channels, in ``mode`` windows.

    Windows (:func:`visattn.blocks.spatial.stripe_partition`): the whole map (``'global'``), or vertical H x
    ``split`` / horizontal ``split`` x W stripes, the split side zero-padded. Per window of N tokens:

        O = Attn(Q, K, V) + DWConv3x3(V),

    the LePE convolution zero outside the window. Attn is softmax(Q K^T / sqrt(d)) V over the window's real tokens
    (padded stripe tokens are no keys), or, with ``inline``, InLine's injective linear attention (scale
    d^-0.5 / N) plus its residual DWConv3x3_w(V) whose kernels w are predicted from ``context`` (B, C), the mean of
    the block's input (InLine windows are the whole map).

    Shapes: q, k, v (B, H, W, C), context (B, C) or None -> (B, H, W, C).
    """

    def __init__(self, dim: int, num_heads: int, mode: str, split: int, inline: bool, backend: str | None = None,
                 device=None, dtype=None):
        super().__init__()
        if mode not in STRIPE_MODES:
            raise ValueError(f"unknown stripe mode {mode!r}; use one of {', '.join(map(repr, STRIPE_MODES))}")
        if inline and mode != "global":
            raise ValueError("InLine branches attend over the whole map (mode='global')")
        dd = dict(device=device, dtype=dtype)
        self.num_heads, self.mode, self.split, self.inline, self.backend = num_heads, mode, split, inline, backend
        self.scale = (dim // num_heads) ** -0.5
        self.get_v = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        if inline:
            self.residual = PredictedLocalResidual(dim, num_heads, **dd)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape
        return x.reshape(n, h * w, self.num_heads, c // self.num_heads).transpose(1, 2)

    def _real_keys(self, grid: tuple[int, int], window: tuple[int, int], size: tuple[int, int], batch: int,
                   device: torch.device) -> torch.Tensor | None:
        """(B * n, 1, 1, wh * ww) mask of the windows' real tokens, or None when no window is padded (always a mask
        while torch.export traces: the graph then takes any size)."""
        (n_rows, n_cols), (wh, ww), (h, w) = grid, window, size
        if not torch.compiler.is_exporting() and (n_rows * wh, n_cols * ww) == (h, w):
            return None
        rows = torch.arange(n_rows * wh, device=device).view(n_rows, wh, 1) < h
        cols = torch.arange(n_cols * ww, device=device).view(n_cols, 1, ww) < w
        return (rows[:, None] & cols[None]).reshape(-1, wh * ww).repeat(batch, 1)[:, None, None, :]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        b, h, w, c = q.shape
        (q, grid), (k, _), (v, _) = (stripe_partition(t, self.mode, self.split) for t in (q, k, v))
        n, wh, ww, _ = q.shape
        v_map = v.permute(0, 3, 1, 2)
        lepe = self.get_v(v_map).permute(0, 2, 3, 1)
        if self.inline:
            out = linear_attention(self._heads(q), self._heads(k), self._heads(v), self.scale / (wh * ww),
                                   injective=True, backend=self.backend)
            out = out.transpose(1, 2).reshape(n, wh, ww, c)
            out = out + self.residual(v_map, context).permute(0, 2, 3, 1)
        else:
            mask = self._real_keys(grid, (wh, ww), (h, w), b, q.device)
            out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v), attn_mask=mask)
            out = out.transpose(1, 2).reshape(n, wh, ww, c)
        return stripe_reverse(out + lepe, grid, (h, w))

    def query_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, context: torch.Tensor,
                        index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For an InLine branch (``mode='global'``): what token ``index`` (row-major) does in :meth:`forward` on the
        same input: its attention weights over the H*W tokens (B, heads, H*W), which sum to 1, and the predicted
        residual's share of its output beside the attention's (B,) (the LePE term aside)."""
        if not self.inline:
            raise ValueError("query_attention writes out InLine branches; this branch is softmax attention")
        b, h, w, c = q.shape
        rows = injective_attention_rows(self._heads(q), self._heads(k), self.scale / (h * w), index)
        attended = (rows.unsqueeze(-2) @ self._heads(v).float()).reshape(b, c)
        local = self.residual(v.permute(0, 3, 1, 2), context).flatten(2)[:, :, index]
        return rows, residual_share(attended, local)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, split={self.split}, num_heads={self.num_heads}, inline={self.inline}"
