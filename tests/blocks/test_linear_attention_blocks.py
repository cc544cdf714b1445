from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tests.fused import run_both_backends
from visattn.blocks import InjectiveLinearAttention

# aten ops that only move or fill memory: the fused path may run none that the reference path does not
MEMORY_OPS = {"clone", "_to_copy", "copy", "copy_", "contiguous", "zeros", "zeros_like", "new_zeros", "fill",
              "fill_", "select_backward", "slice_backward", "index_put", "as_strided_scatter"}


class AtenLog(TorchDispatchMode):
    """Every aten (and visattn) op run inside the mode: (name, input tensors, output tensors)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        name = func.overloadpacket.__name__ if func.namespace == "aten" else f"{func.namespace}::{func._opname}"
        self.ops.append((name, tensors, [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]))
        return out


def memory_traffic(run, backend: str, monkeypatch, tokens: int) -> tuple[Counter, list[str], list[str]]:
    """Runs ``run()`` (forward and backward of a half-precision block) on ``backend`` under :class:`AtenLog`.

    Returns the memory-only ops as a Counter of (name, output shape), the aten ops that read a half tensor of at
    least ``tokens`` elements and write a float32 one as large (upcast activations; the fused op's float32 packed
    sums are its own), and every op's name.
    """
    monkeypatch.setenv("VISATTN_BACKEND", backend)
    with AtenLog() as log:
        run()
    memory = Counter((name, tuple(outs[0].shape)) for name, _, outs in log.ops if name in MEMORY_OPS and outs)
    upcasts = [name for name, ins, outs in log.ops if not name.startswith("visattn::")
               and any(t.dtype in (torch.float16, torch.bfloat16) and t.numel() >= tokens for t in ins)
               and any(t.dtype == torch.float32 and t.numel() >= tokens for t in outs)]
    return memory, upcasts, [name for name, _, _ in log.ops]


def assert_fused_path_is_lean(run, monkeypatch, tokens: int) -> None:
    """The fused path of ``run`` (half precision, forward and backward) calls the fused op, runs no copy, cast or
    fill that the reference path does not, and upcasts no half activation (>= ``tokens`` elements) to float32."""
    fused, fused_upcasts, names = memory_traffic(run, "triton", monkeypatch, tokens)
    reference, _, _ = memory_traffic(run, "torch", monkeypatch, tokens)
    assert "visattn::linear_attention" in names and "visattn::linear_attention_backward" in names
    assert not fused - reference, f"copies or fills only the fused path runs: {dict(fused - reference)}"
    assert not fused_upcasts, f"half activations upcast to float32 on the fused path: {fused_upcasts}"


def _dense_inline(block, x, h, w):
    """InLine written out with its N x N weight matrix and a per-sample depthwise conv by shifted sums."""
    b, n, c = x.shape
    heads, prefix = block.num_heads, n - h * w
    q, k, v = block.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    logits = (c // heads) ** -0.5 / n * q @ k.transpose(-2, -1)
    weights = logits - logits.mean(-1, keepdim=True) + 1 / n  # a_ij = (s/N) q_i.k_j - mean_j(...) + 1/N
    out = (weights @ v).transpose(1, 2).reshape(b, n, c)
    predicted = x.mean(1).unsqueeze(-1)
    for layer in block.residual:  # the predictor's Conv1d, GELU, Conv1d applied one by one
        predicted = layer(predicted)
    kernels = predicted.reshape(b, c, 3, 3)
    v_map = F.pad(v.transpose(1, 2).reshape(b, n, c)[:, prefix:].reshape(b, h, w, c), (0, 0, 1, 1, 1, 1))
    local = sum(kernels[:, None, None, :, dy, dx] * v_map[:, dy:dy + h, dx:dx + w]
                for dy in range(3) for dx in range(3))
    out[:, prefix:] += local.reshape(b, h * w, c)
    return block.proj(out), weights


@pytest.mark.parametrize("prefix, h, w", [(0, 4, 6), (1, 3, 5), (2, 5, 1)])
def test_module_matches_the_dense_weight_matrix_with_the_local_residual(prefix, h, w):
    block = InjectiveLinearAttention(24, 3).double()
    x = torch.randn(2, prefix + h * w, 24, dtype=torch.float64)
    expected, weights = _dense_inline(block, x, h, w)
    torch.testing.assert_close(block(x, (h, w)), expected)
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights[..., 0]))
    assert (weights < 0).any()  # unlike softmax, injective weights can be negative


def test_prefix_tokens_get_no_local_term():
    block = InjectiveLinearAttention(8, 2).double()
    x = torch.randn(1, 1 + 6, 8, dtype=torch.float64)
    y = block(x, (2, 3))
    with torch.no_grad():
        block.residual[2].bias.add_(1.0)  # a constant 3x3 kernel added to every channel
    shifted = block(x, (2, 3))
    torch.testing.assert_close(shifted[:, 0], y[:, 0])  # prefix (class) tokens get no local term
    assert not torch.allclose(shifted[:, 1:], y[:, 1:])


def test_fused_backend_matches_the_reference_forward_and_backward(monkeypatch):
    block = InjectiveLinearAttention(32, 2)
    x = torch.randn(2, 1 + 12, 32, requires_grad=True)

    def run():
        out = block(x, (3, 4))
        (gx,) = torch.autograd.grad(out.square().sum(), x)
        return out.detach(), gx

    results = run_both_backends(run, monkeypatch)
    for fused, ref in zip(results["triton"], results["torch"], strict=True):
        torch.testing.assert_close(fused, ref, atol=1e-4, rtol=1e-4)


def test_fused_path_copies_nothing_the_reference_does_not(monkeypatch):
    """InLine-DeiT's attention at its token count (a class token and a 14 x 14 grid: 197), in float16 (the
    interpreter mishandles bf16): no layout copies, casts or zero-filled gradients around the fused op."""
    block = InjectiveLinearAttention(48, 3).half()
    x = torch.randn(2, 197, 48, dtype=torch.float16, requires_grad=True)

    def run():
        out = block(x, (14, 14))
        torch.autograd.grad(out, [x, *block.parameters()], torch.ones_like(out))

    assert_fused_path_is_lean(run, monkeypatch, tokens=x.shape[0] * x.shape[1])


def test_qkv_gradient_is_assembled_in_one_pass():
    """q, k, v are unbound from one projection: backward stacks their gradients instead of scattering each into a
    zero-filled (B, N, 3, H, d) buffer and adding the three."""
    block = InjectiveLinearAttention(16, 2).double()
    x = torch.randn(1, 1 + 6, 16, dtype=torch.float64, requires_grad=True)
    out = block(x, (2, 3))
    with AtenLog() as log:
        torch.autograd.grad(out.sum(), x)
    qkv_shape = (1, 7, 3, 2, 8)
    writes = [name for name, _, outs in log.ops if outs and tuple(outs[0].shape) == qkv_shape]
    assert writes == ["stack"]


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="dim=10 must be divisible by num_heads=3"):
        InjectiveLinearAttention(10, 3)
    with pytest.raises(ValueError, match="5 tokens cannot hold a 2x3 grid"):
        InjectiveLinearAttention(8, 2)(torch.randn(1, 5, 8), (2, 3))
