"""Injective linear attention with a predicted local residual (InLine; Han et al., NeurIPS 2024)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from ..ops.linear_attention import linear_attention

__all__ = ["InjectiveLinearAttention", "PredictedLocalResidual", "injective_attention_rows", "residual_share"]


def injective_attention_rows(q: torch.Tensor, k: torch.Tensor, scale: float, index: int) -> torch.Tensor:
    """Row ``index`` of InLine's attention, written out: a_ij = scale q_i . (k_j - mean_j k) + 1 / N (it sums to 1;
    ``scale`` is the op's, s / N). q, k: (B, heads, N, d) -> (B, heads, N) float32."""
    q, k = q.float(), k.float()
    centred = k - k.mean(dim=-2, keepdim=True)
    return (centred @ q[:, :, index, :, None]).squeeze(-1) * scale + 1.0 / k.shape[-2]


def residual_share(attended: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """|local| / (|attended| + |local|) per sample (L2 norms over the channels): (B, C), (B, C) -> (B,)."""
    a, r = attended.float().norm(dim=-1), local.float().norm(dim=-1)
    return r / (a + r).clamp_min(torch.finfo(torch.float32).tiny)


class PredictedLocalResidual(nn.Sequential):
    """InLine's local residual: a per-sample depthwise 3x3 convolution (zero padded) whose kernels are predicted from
    a (B, C) context m (the mean of the attention's or block's input tokens):

        w = Conv1d(C, 9C, 1, groups=heads)(GELU(Conv1d(C, C, 1, groups=heads)(m))),  out = DWConv3x3_w(V)

    Keeps the official ``residual.{0,2}`` parameter layout. Shapes: v_map (B, C, H, W), context (B, C) -> v_map's.

    Eagerly the convolution is one ``conv2d`` with B * C groups. Its group count is a shape, which an ONNX graph
    with a dynamic batch cannot hold, so while ``torch.export`` traces (``torch.compiler.is_exporting()``) the same
    sum runs as nine shifted products: sum_{i,j} w_ij * V_pad[i:i+H, j:j+W].
    """

    def __init__(self, dim: int, num_heads: int, device=None, dtype=None):
        dd = dict(device=device, dtype=dtype)
        super().__init__(nn.Conv1d(dim, dim, 1, groups=num_heads, **dd), nn.GELU(),
                         nn.Conv1d(dim, 9 * dim, 1, groups=num_heads, **dd))

    def forward(self, v_map: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = v_map.shape
        kernels = super().forward(context.unsqueeze(-1)).reshape(b * c, 1, 3, 3)
        if torch.compiler.is_exporting():
            padded, taps = F.pad(v_map, (1, 1, 1, 1)), kernels.view(b, c, 9, 1, 1)
            return sum(taps[:, :, 3 * i + j] * padded[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3))
        if not b:  # conv2d takes no zero groups; the empty term stays in the kernels' graph (zero gradients)
            return v_map + kernels.sum()
        return F.conv2d(v_map.reshape(1, b * c, h, w), kernels, padding=1, groups=b * c).view(b, c, h, w)


@register_notrace_module
class InjectiveLinearAttention(nn.Module):
    """InLine attention over N = P + H*W tokens (P prefix tokens such as a class token, then an H x W grid).

    Per head (d channels, s = d ** -0.5, identity kernel), token i attends to every token j with weights

        a_ij = (s/N) q_i . k_j - mean_j[(s/N) q_i . k_j] + 1/N              (rows sum to 1, may be negative)
        O_i  = sum_j a_ij v_j = (s/N) q_i (sum_j k_j^T v_j - N k_mean^T v_mean) + v_mean,

    the second (linear-time, O(N d^2)) form being what runs. The local residual (:class:`PredictedLocalResidual`)
    adds, for grid tokens only, a per-sample DWConv3x3_w of the V map whose kernels w are predicted from the mean of
    all N input tokens X (prefix tokens included, as the official DeiT): Y = W_o (O + DWConv3x3_w(V)).

    Shapes: x (B, P + H*W, C) with ``size=(H, W)`` -> (B, P + H*W, C). Any H, W.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, backend: str | None = None, device=None,
                 dtype=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        dd = dict(device=device, dtype=dtype)
        self.num_heads, self.backend = num_heads, backend
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.residual = PredictedLocalResidual(dim, num_heads, **dd)
        self.proj = nn.Linear(dim, dim, **dd)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        h, w = size
        prefix = n - h * w
        if prefix < 0:
            raise ValueError(f"{n} tokens cannot hold a {h}x{w} grid")
        # unbind, not three selects: backward stacks dq, dk, dv into one (B, N, 3, H, d) gradient in one pass
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).unbind(2)
        out = linear_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.scale / n,
                               injective=True, backend=self.backend)
        out = out.transpose(1, 2).reshape(b, n, c)
        v_map = v[:, prefix:].reshape(b, h, w, c).permute(0, 3, 1, 2)
        local = self.residual(v_map, x.mean(dim=1)).reshape(b, c, h * w).transpose(1, 2)
        out = torch.cat([out[:, :prefix], out[:, prefix:] + local], dim=1) if prefix else out + local
        return self.proj(out)

    def query_attention(self, x: torch.Tensor, size: tuple[int, int], index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What token ``index`` does in :meth:`forward` on the same input: its attention weights over the N tokens
        (B, heads, N), which sum to 1, and the local residual's share of its output before W_o (B,) (0 for a prefix
        token, which gets no residual)."""
        b, n, c = x.shape
        h, w = size
        prefix = n - h * w
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        rows = injective_attention_rows(q, k, self.scale / n, index)
        attended = (rows.unsqueeze(-2) @ v.float()).reshape(b, c)
        if index < prefix:
            return rows, torch.zeros(b, device=x.device)
        v_map = v.transpose(1, 2)[:, prefix:].reshape(b, h, w, c).permute(0, 3, 1, 2)
        local = self.residual(v_map, x.mean(dim=1)).flatten(2)[:, :, index - prefix]
        return rows, residual_share(attended, local)
