"""The fused selective scan as registered torch ops, so autograd, torch.compile and the FLOP counter see it.

Registering here imports no Triton: the kernels in :mod:`.triton` load on the first call.
"""

from __future__ import annotations

import torch

from .._backend import dtype_reason
from .._flops import register_flops

# Positions per chunk of the kernels' scan. The forward saves the state at the start of every chunk, so this sets
# the shape of what the op saves for backward; it lives here so that the fake kernel needs no Triton.
BLOCK_L = 32


def num_chunks(length: int) -> int:
    """Chunks of BLOCK_L positions covering a sequence of ``length``: the number of states saved for backward."""
    return -(-length // BLOCK_L)


def unsupported_reason(u: torch.Tensor, A: torch.Tensor) -> str | None:
    """Why the fused kernels cannot take these inputs (None when they can): any call the argument checks accept in
    float32, float16 or bfloat16."""
    return dtype_reason(u)


@torch.library.custom_op("visattn::selective_scan", mutates_args=())
def _selective_scan_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                       delta_softplus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from . import triton as kernels

    return kernels.forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, BLOCK_L)


@_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    batch, d, length = u.shape
    states = u.new_empty(batch, d, num_chunks(length), A.shape[1], dtype=torch.float32)
    return u.new_empty(u.shape), states


@torch.library.custom_op("visattn::selective_scan_backward", mutates_args=())
def _selective_scan_backward_op(grad_y: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                                B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
                                delta_bias: torch.Tensor | None, states: torch.Tensor,
                                delta_softplus: bool) -> list[torch.Tensor]:
    from . import triton as kernels

    grads = kernels.backward(grad_y, u, delta, A, B, C, D, z, delta_bias, states, delta_softplus, BLOCK_L)
    return [u.new_empty(0) if g is None else g for g in grads]


@_selective_scan_backward_op.register_fake
def _(grad_y, u, delta, A, B, C, D, z, delta_bias, states, delta_softplus):
    def like(t, dtype=None):
        return u.new_empty(0) if t is None else t.new_empty(t.shape, dtype=dtype)

    f32 = torch.float32
    return [like(u), like(delta), like(A, f32), like(B), like(C), like(D, f32), like(z), like(delta_bias, f32)]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[1])
    ctx.delta_softplus = delta_softplus


def _op_backward(ctx, grad_y, grad_states):
    u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
    grads = _selective_scan_backward_op(grad_y, u, delta, A, B, C, D, z, delta_bias, states, ctx.delta_softplus)
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    return (*(None if t is None else g for t, g in zip(inputs, grads, strict=True)), None)


_selective_scan_op.register_autograd(_op_backward, setup_context=_setup_context)


def _state_steps(u_shape, A_shape) -> int:
    """State elements times steps: batch * d * n * L."""
    batch, d, length = u_shape
    return batch * d * A_shape[1] * length


def _forward_flops(u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, z_shape, bias_shape, delta_softplus,
                   out_shape=None, **kwargs) -> int:
    # the Mamba paper's 9 per state element and step: dt*A, exp, dt*u*B (2), a*h + b (2), C*h and its sum over n
    # (2) make 8, the ninth stands for the per-channel terms (bias, softplus, D*u, gate) spread over the n states
    return 9 * _state_steps(u_shape, A_shape)


def _backward_flops(grad_shape, u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, z_shape, bias_shape,
                    states_shape, delta_softplus, out_shape=None, **kwargs) -> int:
    # the forward recomputed (9), then per state element and step: a_{t+1} = exp(dt_{t+1} A) (2), dy*C (1),
    # g = a g + dy*C (2), dC, dB, du/ddelta through B, ddelta through A and dA: a product and a sum each (8),
    # g * (h - b) (2): 24 in all
    return 24 * _state_steps(u_shape, A_shape)


register_flops(torch.ops.visattn.selective_scan, _forward_flops)
register_flops(torch.ops.visattn.selective_scan_backward, _backward_flops)


def selective_scan_fused(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Fused twin of :func:`.reference.selective_scan_reference` (same arguments, same result)."""
    return _selective_scan_op(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))[0]
