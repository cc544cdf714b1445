"""HER-Seg's dual-gated linear attention against an explicit N x N formulation of the paper's equation."""

import pytest
import torch
import torch.nn.functional as F

from tests.blocks.test_linear_attention_blocks import assert_fused_path_is_lean
from tests.fused import run_both_backends
from visattn.blocks.dual_gated_attention import (
    DualGatedLinearAttention,
    DualGatedLinearAttentionBlock,
    rope_2d,
    rope_2d_angles,
)


def _rope_complex(x, height, width, base=10000.0):
    """RoPE written with complex numbers: pair p of token (y, x) times exp(i * angle(p, y, x))."""
    b, n, c = x.shape
    k_max = c // 4
    theta = base ** (-torch.arange(k_max, dtype=torch.float64) / k_max)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    angles = torch.cat([ys[..., None] * theta, xs[..., None] * theta], dim=-1).reshape(n, c // 2)
    z = torch.view_as_complex(x.double().reshape(b, n, c // 2, 2).contiguous()) * torch.polar(
        torch.ones_like(angles), angles)
    return torch.view_as_real(z).reshape(b, n, c)


def test_rope_matches_the_complex_rotation_on_a_non_square_grid():
    x = torch.randn(2, 3 * 5, 16)
    torch.testing.assert_close(rope_2d(x, 3, 5).double(), _rope_complex(x, 3, 5), rtol=1e-5, atol=1e-5)


def test_rope_scores_depend_only_on_the_offset():
    q, k = torch.randn(1, 1, 8), torch.randn(1, 1, 8)

    def score(pq, pk, h=6, w=7):
        grid_q, grid_k = torch.zeros(1, h * w, 8), torch.zeros(1, h * w, 8)
        grid_q[0, pq[0] * w + pq[1]], grid_k[0, pk[0] * w + pk[1]] = q[0, 0], k[0, 0]
        return (rope_2d(grid_q, h, w)[0, pq[0] * w + pq[1]] * rope_2d(grid_k, h, w)[0, pk[0] * w + pk[1]]).sum()

    torch.testing.assert_close(score((1, 2), (3, 1)), score((2, 5), (4, 4)))
    assert not torch.allclose(score((1, 2), (3, 1)), score((1, 2), (3, 2)))


def test_rope_rejects_channels_not_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        rope_2d(torch.randn(1, 4, 6), 2, 2)


def _dense_dla(attn: DualGatedLinearAttention, u, height, width):
    """O_n = sum_m [RoPE(q_n) . RoPE(k_m) / N] v_m / (q_n . mean k + 1e-6) + DWConv3x3(V), per head."""
    b, n, c = u.shape
    heads, d = attn.num_heads, c // attn.num_heads
    q, k = (F.elu(t) + 1 for t in attn.qk(u).chunk(2, -1))
    v = attn.down_proj(F.silu(attn.up_proj(u)))
    qr, kr = rope_2d(q, height, width), rope_2d(k, height, width)
    out = torch.zeros_like(v)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        weights = qr[..., sl] @ kr[..., sl].transpose(1, 2) / n
        weights = weights / (q[..., sl] @ k[..., sl].mean(1, keepdim=True).transpose(1, 2) + 1e-6)
        out[..., sl] = weights @ v[..., sl]
    lepe = attn.lepe(v.transpose(1, 2).reshape(b, c, height, width)).flatten(2).transpose(1, 2)
    return out + lepe


@pytest.mark.parametrize("height,width,heads", [(4, 6, 2), (5, 3, 4)])
def test_attention_matches_the_dense_formula(height, width, heads):
    attn = DualGatedLinearAttention(16, heads)
    u = torch.randn(2, height * width, 16, requires_grad=True)
    out = attn(u, height, width)
    torch.testing.assert_close(out, _dense_dla(attn, u, height, width), rtol=1e-4, atol=1e-5)
    grad = torch.randn_like(out)
    (g_fast,) = torch.autograd.grad(out, u, grad)
    (g_dense,) = torch.autograd.grad(_dense_dla(attn, u, height, width), u, grad)
    torch.testing.assert_close(g_fast, g_dense, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("heads", [2, 4])
def test_fused_backend_matches_the_reference_forward_and_backward(heads, monkeypatch):
    attn = DualGatedLinearAttention(16, heads)
    u = torch.randn(2, 5 * 3, 16, requires_grad=True)

    def run():
        out = attn(u, 5, 3)
        (gu,) = torch.autograd.grad(out.square().sum(), u)
        return out.detach(), gu

    results = run_both_backends(run, monkeypatch)
    for fused, ref in zip(results["triton"], results["torch"], strict=True):
        torch.testing.assert_close(fused, ref, atol=1e-4, rtol=1e-4)


def test_shared_rope_tables_give_the_same_output():
    attn = DualGatedLinearAttention(16, 2)
    u = torch.randn(1, 4 * 6, 16)
    angles = rope_2d_angles(4, 6, 16, attn.rope_base, u.device)
    torch.testing.assert_close(attn(u, 4, 6, angles), attn(u, 4, 6))


def test_fused_path_copies_nothing_the_reference_does_not(monkeypatch):
    """A DLA block at HER-Seg's head width (96 channels, 6 heads of 16) on a 16 x 16 grid in float16 (the
    interpreter mishandles bf16): phi and RoPE run inside the op, so the fused path neither upcasts q and k to
    float32 nor writes their rotated copies."""
    block = DualGatedLinearAttentionBlock(96, 6).half()
    x = torch.randn(2, 16 * 16, 96, dtype=torch.float16, requires_grad=True)

    def run():
        out = block(x, 16, 16)
        torch.autograd.grad(out, [x, *block.parameters()], torch.ones_like(out))

    assert_fused_path_is_lean(run, monkeypatch, tokens=x.shape[0] * x.shape[1])


def test_block_gates_the_attention_and_adds_the_mlp():
    block = DualGatedLinearAttentionBlock(16, 2).eval()
    x = torch.randn(1, 12, 16)
    u = block.norm1(x)
    mixed = x + block.out_proj(block.attn(u, 3, 4) * F.silu(block.act_proj(u)))
    torch.testing.assert_close(block(x, 3, 4), mixed + block.mlp(block.norm2(mixed)))


def test_bad_width_is_a_clear_error():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        DualGatedLinearAttention(18, 4)
