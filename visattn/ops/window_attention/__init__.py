"""(Shifted) window attention (Swin Transformer, Liu et al., ICCV 2021).

The map is split into non-overlapping ws x ws windows, optionally after a cyclic shift; every query attends
to the keys of its own window, with a relative position bias B looked up by the (dy, dx) offset of the pair:

    O_i = softmax_{j in window(i), allowed(i, j)}(s q_i k_j^T + B[rel(i, j)]) V
"""

from __future__ import annotations

import torch

from .._backend import check_qkv_maps, pick
from .fused import unsupported_reason, window_attention_fused
from .reference import relative_position_index, window_attention_reference

__all__ = ["window_attention", "relative_position_index"]


def check_window_attention_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
                                window_size: int, shift: int, rel_pos_bias: torch.Tensor | None) -> None:
    """Raise a one-line ValueError for maps, heads, window, shift or bias table that cannot work."""
    check_qkv_maps(q, k, v, num_heads)
    if window_size < 1:
        raise ValueError(f"window_size must be >= 1, got {window_size}")
    if not 0 <= shift < window_size:
        raise ValueError(f"shift={shift} must be in [0, window_size={window_size})")
    if rel_pos_bias is not None:
        expected = (num_heads, (2 * window_size - 1) ** 2)
        if tuple(rel_pos_bias.shape) != expected or not rel_pos_bias.is_floating_point():
            raise ValueError(f"rel_pos_bias must be a float table of shape {expected}, got "
                             f"{tuple(rel_pos_bias.shape)} {rel_pos_bias.dtype}")
        if rel_pos_bias.device != q.device:
            raise ValueError(f"rel_pos_bias is on {rel_pos_bias.device}, q on {q.device}")


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, window_size: int,
                     shift: int = 0, rel_pos_bias: torch.Tensor | None = None, scale: float | None = None,
                     backend: str | None = None) -> torch.Tensor:
    """Multi-head attention inside (shifted) windows of channels-last maps.

    Semantics (ws = ``window_size``, per head, d its channels):

    1. The maps are zero-padded at the bottom/right to Hp x Wp, multiples of ws. Padded tokens never act as
       keys (they are masked out of the softmax, not attended with zero k and v).
    2. If ``shift > 0`` the padded maps are rolled by (-shift, -shift): rolled[y, x] = padded[(y + shift) % Hp,
       (x + shift) % Wp].
    3. The (rolled) map is partitioned into ws x ws windows; query i attends to key j of its own window iff j is
       not padding and, with ``shift > 0``, i and j lie in the same region of Swin's 3 x 3 split of the rolled map
       by the row slices [0, Hp - ws), [Hp - ws, Hp - shift), [Hp - shift, Hp) and the same column slices.
    4. logit(i, j) = s q_i . k_j + B[h, (y_i - y_j + ws - 1) * (2 ws - 1) + (x_i - x_j + ws - 1)], (y, x) the
       in-window coordinates of i and j; O_i = sum_j softmax_j(logit(i, j)) v_j over the allowed keys.
    5. The output is rolled back by (shift, shift) and cropped to H x W.

    Args:
        q, k: (B, H, W, C_qk) queries and keys; v: (B, H, W, C_v) values; one floating dtype (float32, float16
            or bfloat16 on the triton backend) and one device. Any H, W.
        num_heads: heads; C_qk and C_v must be divisible by it.
        window_size: ws, window side in tokens (the triton backend takes ws <= 8 and heads of at most 64 channels
            in float32, 128 in half precision; with ``backend=None`` other inputs run the reference).
        shift: cyclic shift, 0 <= shift < ws (Swin uses 0 and ws // 2 in alternate blocks).
        rel_pos_bias: optional (num_heads, (2 * ws - 1) ** 2) floating relative position bias table B, on q's
            device.
        scale: logit scale s, default (C_qk / num_heads) ** -0.5.
        backend: ``"torch"``, ``"triton"`` or None (Triton for CUDA tensors; ``$VISATTN_BACKEND`` overrides).

    Returns:
        (B, H, W, C_v), dtype of q.
    """
    check_window_attention_args(q, k, v, num_heads, window_size, shift, rel_pos_bias)
    scale = (q.shape[-1] // num_heads) ** -0.5 if scale is None else scale
    impl = pick(backend, q, window_attention_reference, window_attention_fused,
                unsupported_reason(q, v, num_heads, window_size), out_shape=(*q.shape[:3], v.shape[-1]))
    return impl(q, k, v, rel_pos_bias, num_heads, window_size, shift, scale)
