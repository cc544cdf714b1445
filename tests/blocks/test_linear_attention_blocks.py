import pytest
import torch
import torch.nn.functional as F

from visattn.blocks import InjectiveLinearAttention


def _dense_inline(block, x, h, w):
    """InLine written out with its N x N weight matrix and a per-sample depthwise conv by shifted sums."""
    b, n, c = x.shape
    heads, prefix = block.num_heads, n - h * w
    q, k, v = block.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    logits = (c // heads) ** -0.5 / n * q @ k.transpose(-2, -1)
    weights = logits - logits.mean(-1, keepdim=True) + 1 / n  # a_ij = (s/N) q_i.k_j - mean_j(...) + 1/N
    out = (weights @ v).transpose(1, 2).reshape(b, n, c)
    kernels = block.residual(x.mean(1).unsqueeze(-1)).reshape(b, c, 3, 3)
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


def test_fused_backend_matches_the_reference_forward_and_backward():
    block = InjectiveLinearAttention(32, 2)
    x = torch.randn(2, 1 + 12, 32, requires_grad=True)
    results = {}
    for backend in ("torch", "triton"):
        block.backend = backend
        out = block(x, (3, 4))
        (gx,) = torch.autograd.grad(out.square().sum(), x)
        results[backend] = out.detach(), gx
    for fused, ref in zip(results["triton"], results["torch"], strict=True):
        torch.testing.assert_close(fused, ref, atol=1e-4, rtol=1e-4)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="dim=10 must be divisible by num_heads=3"):
        InjectiveLinearAttention(10, 3)
    with pytest.raises(ValueError, match="5 tokens cannot hold a 2x3 grid"):
        InjectiveLinearAttention(8, 2)(torch.randn(1, 5, 8), (2, 3))
