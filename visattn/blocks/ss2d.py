"""2-D selective-scan mixer (SS2D, VMamba; the Mamba half of LaMamba's block)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from ..ops.selective_scan import selective_scan


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) -> (B, 4, D, H*W): row-major, column-major, and both reversed."""
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def cross_merge(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`cross_scan`, summing the four directions: (B, 4, D, H*W) -> (B, D, H, W)."""
    b, _, d, _ = y.shape
    rows = y[:, 0] + y[:, 2].flip(-1)
    cols = y[:, 1] + y[:, 3].flip(-1)
    return rows.view(b, d, h, w) + cols.view(b, d, w, h).transpose(2, 3)


@register_notrace_module
class SS2D(nn.Module):
    """Y = W_out (LN(Merge_k S6_k(Scan_k(SiLU(DWConv3x3(X W_x))))) ⊙ SiLU(X W_z)).

    X W_x and X W_z split one bias-free Linear(C, 2 d_inner), d_inner = ssm_ratio * C. Each of the 4 scan
    directions k has its own input-dependent step, B and C (x_proj, dt_proj), A = -exp(A_log) and skip D;
    the selective scan S6 is :func:`visattn.ops.selective_scan.selective_scan`. Shapes: (B, H, W, C) -> same.
    """

    directions = 4

    def __init__(self, dim: int, d_state: int = 1, ssm_ratio: float = 2.0, dt_rank: int | None = None,
                 conv_kernel: int = 3, dt_min: float = 1e-3, dt_max: float = 0.1, backend: str | None = None,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        k = self.directions
        d_inner = int(ssm_ratio * dim)
        self.d_inner, self.d_state = d_inner, d_state
        self.dt_rank = dt_rank or math.ceil(dim / 16)
        self.backend = backend
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False, **dd)
        self.conv = nn.Conv2d(d_inner, d_inner, conv_kernel, padding=conv_kernel // 2, groups=d_inner, **dd)
        self.x_proj_weight = nn.Parameter(torch.empty(k, self.dt_rank + 2 * d_state, d_inner, **dd))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, self.dt_rank, **dd))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner, **dd))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state, **dd))
        self.Ds = nn.Parameter(torch.ones(k * d_inner, **dd))
        self.out_norm = nn.LayerNorm(d_inner, **dd)
        self.out_proj = nn.Linear(d_inner, dim, bias=False, **dd)
        nn.init.uniform_(self.x_proj_weight, -d_inner**-0.5, d_inner**-0.5)
        nn.init.uniform_(self.dt_projs_weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        dt = torch.exp(torch.rand(k, d_inner, device=device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        with torch.no_grad():  # A = -(1..d_state); softplus^-1 of a log-uniform step in [dt_min, dt_max], as in Mamba
            self.A_logs.copy_(torch.arange(1, d_state + 1, device=device, dtype=torch.float32).log())
            self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(self.conv(u.permute(0, 3, 1, 2)))
        xs = cross_scan(u)  # (B, 4, D, L)
        proj = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, bs, cs = proj.split([self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        length, channels = h * w, self.directions * self.d_inner
        y = selective_scan(
            xs.reshape(b, channels, length), dts.reshape(b, channels, length), -torch.exp(self.A_logs.float()),
            bs.contiguous(), cs.contiguous(), self.Ds.float(), delta_bias=self.dt_projs_bias.float().flatten(),
            delta_softplus=True, backend=self.backend,
        )
        y = cross_merge(y.view(b, self.directions, self.d_inner, length), h, w).permute(0, 2, 3, 1)
        return self.out_proj(self.out_norm(y) * F.silu(z))
