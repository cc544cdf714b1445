"""Plain-PyTorch selective scan: the sequential recurrence, the definition of correct for every backend."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_reference(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = None, z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """S6 scan, one step at a time in float32 (float64 when u is float64).

    u, delta: (batch, d, L); A: (d, n); B, C: (batch, g, n, L), channel c reading group c // (d // g);
    D, delta_bias: (d,) or None; z: (batch, d, L) or None. With h_0 = 0 and dt = softplus?(delta + delta_bias):

        h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,    y_t = sum_n C_t h_t + D u_t,    y = y silu(z)

    Returns y: (batch, d, L) in u's dtype.
    """
    batch, d, length = u.shape
    n = A.shape[1]
    per_group = d // B.shape[1]
    acc = torch.promote_types(u.dtype, torch.float32)
    u_, dt = u.to(acc), delta.to(acc)
    if delta_bias is not None:
        dt = dt + delta_bias.to(acc)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    B_ = B.to(acc).repeat_interleave(per_group, dim=1)
    C_ = C.to(acc).repeat_interleave(per_group, dim=1)
    decay = torch.exp(dt[:, :, None, :] * A.to(acc)[None, :, :, None])
    drive = (dt * u_)[:, :, None, :] * B_
    h = u_.new_zeros(batch, d, n)
    if torch.compiler.is_exporting() or torch.compiler.is_compiling():
        y = _traced_recurrence(decay, drive, C_, h)
    else:
        ys = []
        for t in range(length):
            h = decay[..., t] * h + drive[..., t]
            ys.append((h * C_[..., t]).sum(-1))
        y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(acc)[:, None] * u_
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(u.dtype)


def _traced_recurrence(decay: torch.Tensor, drive: torch.Tensor, C: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The loop of :func:`selective_scan_reference` as torch's ``scan`` higher-order op, which ``torch.export`` and
    ``torch.compile`` keep as one step in a loop (an ONNX ``Scan``, a loop in inductor's code) instead of unrolling
    it: the graph takes any length and stays small (a training step's backward included). The same operations per
    step, so the same numbers. (batch, d, n, L) x 3, h_0 (batch, d, n) -> y (batch, d, L).
    """
    from torch._higher_order_ops.scan import scan  # torch's prototype scan: what torch.export and ONNX loops take

    def step(h: torch.Tensor, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        decay_t, drive_t, c_t = xs
        h = decay_t * h + drive_t
        return h.clone(), (h * c_t).sum(-1)  # a carry apart from the output: scan's autograd refuses aliases

    _, ys = scan(step, h, tuple(t.permute(3, 0, 1, 2) for t in (decay, drive, C)))
    return ys.permute(1, 2, 0)
