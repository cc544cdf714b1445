"""Dual-gated linear attention (HER-Seg's DLA block, an MLLA-style gated linear-attention block).

With U = LN(X) of a (B, N = H x W, C) token map and phi = ELU + 1:

    G = SiLU(W_g U)                                   output gate
    Q, K = phi(W_qk U)                                one linear C -> 2C
    V = W_down SiLU(W_up U)                           value path through a C/4 bottleneck
    O_n = [sum_m RoPE(Q)_n . RoPE(K)_m v_m / N] / (Q_n . mean_m K_m + 1e-6)      per head
    O += DWConv3x3(V)                                 LePE
    X <- X + W_o (O * G);  X <- X + MLP(LN(X))

phi and the rotary embedding run inside the linear-attention op (``feature_map="elu+1"``, ``rope``): phi(Q),
phi(K) and their rotated copies are never materialised. The 2-D rotary embedding is computed for the map it is
given, so a model is not tied to one input size.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, register_notrace_function, register_notrace_module

from ..contract import InspectionMap, query_cell
from ..ops.linear_attention import linear_attention
from ..ops.linear_attention.reference import elu_plus_one, rotate_pairs

__all__ = ["DualGatedLinearAttention", "DualGatedLinearAttentionBlock", "rope_2d", "rope_2d_angles"]


@register_notrace_function
def rope_2d_angles(height: int, width: int, channels: int, base: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (height * width, channels / 2) float32, of the angles :func:`rope_2d` rotates by."""
    if channels % 4:
        raise ValueError(f"2-D RoPE needs channels divisible by 4, got {channels}")
    k_max = channels // 4
    theta = base ** (-torch.arange(k_max, device=device, dtype=torch.float32) / k_max)
    rows = torch.arange(height, device=device, dtype=torch.float32)
    cols = torch.arange(width, device=device, dtype=torch.float32)
    angles = torch.cat([
        (rows[:, None, None] * theta).expand(height, width, k_max),
        (cols[None, :, None] * theta).expand(height, width, k_max),
    ], dim=-1).reshape(height * width, channels // 2)
    return angles.cos(), angles.sin()


def rope_2d(x: torch.Tensor, height: int, width: int, base: float = 10000.0,
            angles: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """2-D rotary position embedding of row-major tokens over all C channels.

    Channel pair p = (x[2p], x[2p + 1]) is rotated by the angle y * theta_p for p < C/4 and by x * theta_(p - C/4)
    for C/4 <= p < C/2, with theta_k = base^(-k / (C/4)) and (y, x) the token's row and column.

    Args:
        x: (B, height * width, C) tokens, C divisible by 4.
        angles: :func:`rope_2d_angles` of this grid, to share between calls (computed when None).

    Returns:
        (B, height * width, C) in x's dtype (rotated in float32).
    """
    b, n, c = x.shape
    if n != height * width:
        raise ValueError(f"rope_2d needs (B, {height} * {width}, C) tokens, got {tuple(x.shape)}")
    cos, sin = angles if angles is not None else rope_2d_angles(height, width, c, base, x.device)
    rotated = rotate_pairs(x.float().view(b, n, 1, c).transpose(1, 2), cos, sin)
    return rotated.transpose(1, 2).reshape(b, n, c).to(x.dtype)


@register_notrace_module
class DualGatedLinearAttention(nn.Module):
    """The token mixer of the DLA block: phi(Q), phi(K) from one linear, the bottleneck value path, RoPE in the
    numerator only, the mean-key normaliser and LePE. Input and output (B, N, C) with N = H x W.

    Q and K reach the op as head views of the W_qk output (phi and RoPE applied in its kernels), V as a head view
    of W_down's; its output is already (B, N, C) memory, and the LePE conv reads V as a channels-last map: no copies.
    """

    def __init__(self, dim: int, num_heads: int, qk_bias: bool = True, value_ratio: float = 0.25,
                 rope_base: float = 10000.0, device=None, dtype=None):
        super().__init__()
        if dim % num_heads or dim % 4:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads} and by 4 (2-D RoPE)")
        dd = dict(device=device, dtype=dtype)
        self.num_heads = num_heads
        self.rope_base = rope_base
        self.qk = nn.Linear(dim, 2 * dim, bias=qk_bias, **dd)
        self.up_proj = nn.Linear(dim, int(dim * value_ratio), **dd)
        self.down_proj = nn.Linear(int(dim * value_ratio), dim, **dd)
        self.lepe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)

    def forward(self, u: torch.Tensor, height: int, width: int,
                angles: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``angles``: :func:`rope_2d_angles` of this grid, width and ``rope_base``, for blocks on one grid to share
        (computed when None)."""
        b, n, c = u.shape
        heads, head_dim = self.num_heads, c // self.num_heads
        q, k = self.qk(u).chunk(2, dim=-1)
        v = self.down_proj(F.silu(self.up_proj(u)))

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, heads, head_dim).transpose(1, 2)

        if angles is None:
            angles = rope_2d_angles(height, width, c, self.rope_base, u.device)
        out = linear_attention(split(q), split(k), split(v), 1.0 / n, normalize=True, eps=1e-6, feature_map="elu+1",
                               rope=angles)
        out = out.transpose(1, 2).reshape(b, n, c)
        lepe = self.lepe(v.transpose(1, 2).reshape(b, c, height, width))
        return out + lepe.flatten(2).transpose(1, 2)


    def attention_rows(self, u: torch.Tensor, height: int, width: int, index: int,
                       angles: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Row ``index`` of the linear attention :meth:`forward` runs on ``u``, written out (LePE aside):
        a_ij = RoPE(phi(q_i)) . RoPE(phi(k_j)) / (N (phi(q_i) . mean_m phi(k_m) + 1e-6)), so O_i = sum_j a_ij v_j.
        RoPE keeps the rows from summing to 1 exactly. (B, N, C) -> (B, heads, N) float32."""
        b, n, c = u.shape
        q, k = (t.float().view(b, n, self.num_heads, -1).transpose(1, 2) for t in self.qk(u).chunk(2, dim=-1))
        q, k = elu_plus_one(q), elu_plus_one(k)
        cos, sin = angles if angles is not None else rope_2d_angles(height, width, c, self.rope_base, u.device)
        rotated_q, rotated_k = rotate_pairs(q, cos, sin), rotate_pairs(k, cos, sin)
        scores = (rotated_k @ rotated_q[:, :, index, :, None]).squeeze(-1) / n
        return scores / ((q[:, :, index] * k.mean(dim=-2)).sum(-1, keepdim=True) + 1e-6)


class DualGatedLinearAttentionBlock(nn.Module):
    """X <- X + W_o(DLA(LN X) * SiLU(W_g LN X)); X <- X + MLP(LN X). Input and output (B, H x W, C)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 2.0, drop_path: float = 0.0,
                 rope_base: float = 10000.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.act_proj = nn.Linear(dim, dim, **dd)
        self.attn = DualGatedLinearAttention(dim, num_heads, rope_base=rope_base, **dd)
        self.out_proj = nn.Linear(dim, dim, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, **dd)

    def forward(self, x: torch.Tensor, height: int, width: int,
                angles: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``angles``: as :meth:`DualGatedLinearAttention.forward`'s."""
        u = self.norm1(x)
        gate = F.silu(self.act_proj(u))
        x = x + self.drop_path(self.out_proj(self.attn(u, height, width, angles) * gate))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def inspect_forward(self, x: torch.Tensor, height: int, width: int,
                        angles: tuple[torch.Tensor, torch.Tensor] | None = None, *,
                        query: tuple[float, float]) -> InspectionMap:
        """The contract's ``query_attention`` map of the query's token (:meth:`DualGatedLinearAttention.attention_rows`)
        for the input :meth:`forward` ran on."""
        cell = query_cell(query, (height, width))
        rows = self.attn.attention_rows(self.norm1(x), height, width, cell[0] * width + cell[1], angles)
        weights = rows.view(x.shape[0], -1, height, width)
        return InspectionMap("query_attention", {"weights": weights, "prefix_weights": weights.new_zeros(
            *weights.shape[:2], 0)}, (height, width), cell)
