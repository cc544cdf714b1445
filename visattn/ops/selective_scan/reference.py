"""Plain-PyTorch selective scan: the sequential recurrence, the definition of correct for every backend."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_reference(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = None, z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """S6 scan, one step at a time in float32.

    u, delta: (batch, d, L); A: (d, n); B, C: (batch, g, n, L), channel c reading group c // (d // g);
    D, delta_bias: (d,) or None; z: (batch, d, L) or None. With h_0 = 0 and dt = softplus?(delta + delta_bias):

        h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,    y_t = sum_n C_t h_t + D u_t,    y = y silu(z)

    Returns y: (batch, d, L) in u's dtype.
    """
    batch, d, length = u.shape
    n = A.shape[1]
    per_group = d // B.shape[1]
    u32, dt = u.float(), delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    B32 = B.float().repeat_interleave(per_group, dim=1)
    C32 = C.float().repeat_interleave(per_group, dim=1)
    decay = torch.exp(dt[:, :, None, :] * A.float()[None, :, :, None])
    drive = (dt * u32)[:, :, None, :] * B32
    h = u32.new_zeros(batch, d, n)
    ys = []
    for t in range(length):
        h = decay[..., t] * h + drive[..., t]
        ys.append((h * C32[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.float()[:, None] * u32
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype)
