"""Polarized self-attention (PSA, Liu et al. 2021, arXiv 2107.00782; official code DeLightCMU/PSA).

X is (C, H, W), N = H * W, C' = C // 2, sigma the sigmoid. Two branches, each a gate on X:

Paper form (``form="paper"``, the paper's equations)::

    channel-only:  z    = Wv(X) softmax_N(Wq(X))          Wv: 1x1 C -> C', Wq: 1x1 C -> 1; z is C' x 1
                   A_ch = sigma(LN_C(Wz(z)))              Wz: 1x1 C' -> C (bias), LN over the C channels
                   Z_ch = A_ch * X
    spatial-only:  q    = softmax_C'(GAP(Wq(X)))          Wq: 1x1 C -> C'; q is 1 x C'
                   A_sp = sigma(q Wv(X))                  Wv: 1x1 C -> C', Wv(X) as C' x N; A_sp is 1 x H x W
                   Z_sp = A_sp * X
    parallel:      PSA_p(X) = Z_ch + Z_sp
    sequential:    PSA_s(X) = A_sp(Z_ch) * Z_ch           the spatial branch runs on Z_ch

Official form (``form="official"``, ``network/PSA.py``)::

    channel-only:  A_ch = sigma(conv_up(conv_v_right(X) softmax_N(conv_q_right(X))))
    spatial-only:  w    = GAP(conv_q_left(X))                          (no softmax)
        parallel:    A_sp = sigma(softmax_N(w conv_v_left(X)))          softmax after the product
        sequential:  A_sp = sigma(w softmax_N(conv_v_left(Z_ch)))      softmax of each channel, before it

The four documented differences of the official code from the paper:

1. Its method names are swapped: ``spatial_pool`` computes the channel-only branch, ``channel_pool`` the spatial-only
   branch (issue #5). Here the parameters keep the official names (``*_right`` channel-only, ``*_left``
   spatial-only), so an official state dict loads as is.
2. The spatial branch has no softmax over the channels of the pooled query. PSA_p takes a softmax over the N
   positions after the product and then a sigmoid (the gate stays within about [0.5, 0.73]); PSA_s takes a softmax
   over the N positions of each channel of conv_v_left(Z_ch) before the product.
3. ``conv_up``: in PSA_p one 1x1 conv C' -> C without bias and without LayerNorm; in PSA_s the SE-like bottleneck
   conv(C' -> C'/4, bias), LayerNorm([C'/4, 1, 1]), ReLU, conv(C'/4 -> C, bias) (keys ``conv_up.{0,1,3}``).
4. The inner width is ``channels // 2``; the four q/v convs have no bias and Kaiming-normal fan_in init.

Computation: Wv and the GAP are linear, so the block pools X first and projects the pooled vectors
(Wv(X) softmax_N(q) = Wv(X softmax_N(q)), GAP(Wq(X)) = Wq(GAP(X)), q Wv(X) = (Wv^T q) X). The op
:func:`visattn.ops.polarized_attention.polarized_attention` runs the poolings, the spatial logits and the gating
(fused Triton passes over X on CUDA, the softmax over N of conv_v_left(Z_ch) of the official PSA_s recomputed tile
by tile instead of kept); the block hands it the projections of the pooled vectors.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import register_notrace_module

from ..contract import InspectionMap
from ..ops.polarized_attention import LAYOUTS, polarized_attention
from ..ops.polarized_attention.reference import apply_callables

__all__ = ["FORMS", "LAYOUTS", "LAYOUT_SHORT_NAMES", "PolarizedSelfAttention", "resolve_layout"]

FORMS = ("official", "paper")
LAYOUT_SHORT_NAMES = {"parallel": "p", "sequential": "s"}  # the paper's PSA_p and PSA_s


def resolve_layout(layout: str) -> str:
    """The layout (one of ``LAYOUTS``: ``"parallel"``, ``"sequential"``) named in full or by its short name
    (``"p"``, ``"s"``); a one-line ValueError otherwise."""
    full = {short: name for name, short in LAYOUT_SHORT_NAMES.items()}.get(layout, layout)
    if full not in LAYOUTS:
        raise ValueError(f"layout={layout!r}; use one of {', '.join(LAYOUTS)} (or "
                         f"{', '.join(LAYOUT_SHORT_NAMES.values())})")
    return full


@register_notrace_module
class PolarizedSelfAttention(nn.Module):
    """PSA on (B, C, H, W) maps, any H x W; returns (B, C, H, W).

    Args:
        channels: C, at least 2 (at least 8 for the official sequential form, whose bottleneck is C // 8 wide).
        layout: ``"parallel"`` (PSA_p) or ``"sequential"`` (PSA_s), or the short names ``"p"``, ``"s"``.
        form: ``"official"`` (network/PSA.py, its parameter names and shapes) or ``"paper"`` (the paper's
            equations; the same names plus ``norm``, the LayerNorm over C, and a biased ``conv_up``).
        backend: passed to the op (None: Triton for CUDA tensors, the PyTorch reference otherwise).
    """

    def __init__(self, channels: int, layout: str = "parallel", form: str = "official", backend: str | None = None,
                 device=None, dtype=None):
        super().__init__()
        layout = resolve_layout(layout)
        if form not in FORMS:
            raise ValueError(f"form={form!r}; use one of {', '.join(FORMS)}")
        min_channels = 8 if (form, layout) == ("official", "sequential") else 2
        if not isinstance(channels, int) or channels < min_channels:
            raise ValueError(f"channels must be an int >= {min_channels} for the {form} {layout} form, "
                             f"got {channels!r}")
        dd = dict(device=device, dtype=dtype)
        self.channels, self.layout, self.form = channels, layout, form
        self.inner = inner = channels // 2
        self.backend = backend
        self.conv_q_right = nn.Conv2d(channels, 1, 1, bias=False, **dd)
        self.conv_v_right = nn.Conv2d(channels, inner, 1, bias=False, **dd)
        if form == "paper":
            self.conv_up = nn.Conv2d(inner, channels, 1, **dd)
            self.norm = nn.LayerNorm(channels, **dd)
        elif layout == "parallel":
            self.conv_up = nn.Conv2d(inner, channels, 1, bias=False, **dd)
        else:
            hidden = inner // 4
            self.conv_up = nn.Sequential(nn.Conv2d(inner, hidden, 1, **dd), nn.LayerNorm([hidden, 1, 1], **dd),
                                         nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1, **dd))
        self.conv_q_left = nn.Conv2d(channels, inner, 1, bias=False, **dd)
        self.conv_v_left = nn.Conv2d(channels, inner, 1, bias=False, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.conv_q_right, self.conv_v_right, self.conv_q_left, self.conv_v_left):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")

    def extra_repr(self) -> str:
        return f"channels={self.channels}, layout={self.layout!r}, form={self.form!r}"

    @property
    def spatial_form(self) -> str:
        """The op's spatial form: "sigmoid" (paper), "softmax_after" (official PSA_p), "softmax_before" (PSA_s)."""
        if self.form == "paper":
            return "sigmoid"
        return "softmax_before" if self.layout == "sequential" else "softmax_after"

    def _channel_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """conv_up(Wv(pooled)) (LayerNorm over C in the paper form): (B, C) -> (B, C)."""
        g = self.conv_up(self.conv_v_right(pooled[..., None, None])).flatten(1)
        return self.norm(g) if self.form == "paper" else g

    def _spatial_query(self, mean: torch.Tensor) -> torch.Tensor:
        """GAP(Z) (B, C) -> u with s = u Z (B, C), or the pooled query (B, C') of the official PSA_s."""
        q = self.conv_q_left(mean[..., None, None]).flatten(1)
        if self.form == "paper":
            q = q.float().softmax(-1).to(mean.dtype)
        if self.spatial_form == "softmax_before":
            return q
        return q @ self.conv_v_left.weight.flatten(1)  # Wv^T q

    def _spatial_args(self) -> tuple[str, torch.Tensor | None]:
        """The op's ``spatial`` form and its ``spatial_value`` W_v (C', C) (only for "softmax_before")."""
        spatial = self.spatial_form
        return spatial, self.conv_v_left.weight.flatten(1) if spatial == "softmax_before" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected input (B, {self.channels}, H, W), got {tuple(x.shape)}")
        spatial, spatial_value = self._spatial_args()
        return polarized_attention(x, self.conv_q_right.weight, self._channel_logits, self._spatial_query,
                                   layout=self.layout, spatial=spatial, spatial_value=spatial_value,
                                   backend=self.backend)

    def inspect_forward(self, x: torch.Tensor, *, query: tuple[float, float]) -> InspectionMap:
        """The contract's ``gates`` map: A_ch (B, C) and A_sp (B, H, W) of :meth:`forward` on ``x`` (the op's
        reference), combined as a sum (parallel) or a product (sequential)."""
        b, c, h, w = x.shape
        spatial, spatial_value = self._spatial_args()
        flat = x.flatten(2).to(torch.promote_types(x.dtype, torch.float32))
        channel, positions = apply_callables(flat, self.conv_q_right.weight, self._channel_logits,
                                             self._spatial_query, self.layout, spatial, spatial_value, dtype=x.dtype)
        combine = "product" if self.layout == "sequential" else "sum"
        return InspectionMap("gates", {"channel": channel, "spatial": positions.view(b, h, w), "combine": combine},
                             (h, w))
