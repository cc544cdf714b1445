"""FLOP formulas that ``torch.utils.flop_counter`` lacks for the ops our models run.

Torch counts scaled_dot_product_attention on CUDA but not its CPU flash kernel, so a CPU count of any
attention model would silently skip the attention. Ops of our own register their formulas next to
their definition through :func:`register_flops`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import (
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

aten = torch.ops.aten


def register_flops(op, formula: Callable) -> None:
    """Register ``formula(*arg_shapes, out_shape=..., **kwargs) -> int`` for ``op`` (overload or packet), once."""
    if getattr(op, "default", op) not in flop_registry:
        register_flop_formula(op)(formula)


def _sdpa_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


register_flops(aten._scaled_dot_product_flash_attention_for_cpu, _sdpa_forward)
register_flops(aten._scaled_dot_product_flash_attention_for_cpu_backward, _sdpa_backward)
