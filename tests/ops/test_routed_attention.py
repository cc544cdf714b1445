import importlib

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.dense_reference import dense_routed_attention
from visattn.ops.routed_attention import route_regions, routed_attention

CASES = [
    # B, H, W, Cqk, Cv, heads, n_win, topk
    (2, 8, 8, 16, 16, 2, 4, 3),
    (1, 10, 13, 8, 12, 2, 3, 4),  # padded on both sides, Cv != Cqk
    (2, 6, 6, 8, 8, 1, 2, 4),  # topk == n_win**2: global attention
    (1, 3, 5, 8, 8, 2, 7, 5),  # map smaller than the region grid
]


@pytest.mark.parametrize("b,h,w,cqk,cv,heads,n_win,topk", CASES)
def test_forward_matches_dense_masked_attention(b, h, w, cqk, cv, heads, n_win, topk):
    q, k = torch.randn(2, b, h, w, cqk, dtype=torch.float64)
    v = torch.randn(b, h, w, cv, dtype=torch.float64)
    scale = cqk**-0.5
    out = routed_attention(q, k, v, heads, n_win, topk, scale)
    assert out.shape == (b, h, w, cv) and out.dtype == q.dtype
    torch.testing.assert_close(out, dense_routed_attention(q, k, v, heads, n_win, topk, scale))


@pytest.mark.parametrize("b,h,w,cqk,cv,heads,n_win,topk", CASES[:2])
def test_gradients_match_dense_masked_attention(b, h, w, cqk, cv, heads, n_win, topk):
    tensors = [torch.randn(b, h, w, c, dtype=torch.float64, requires_grad=True) for c in (cqk, cqk, cv)]
    grad_out = torch.randn(b, h, w, cv, dtype=torch.float64)
    grads = torch.autograd.grad(routed_attention(*tensors, heads, n_win, topk), tensors, grad_out)
    expected = torch.autograd.grad(dense_routed_attention(*tensors, heads, n_win, topk, cqk**-0.5), tensors, grad_out)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_default_scale_is_full_qk_dim():
    q, k, v = torch.randn(3, 1, 4, 4, 16)
    torch.testing.assert_close(routed_attention(q, k, v, 4, 2, 2), routed_attention(q, k, v, 4, 2, 2, scale=16**-0.5))
    assert not torch.allclose(routed_attention(q, k, v, 4, 2, 2), routed_attention(q, k, v, 4, 2, 2, scale=4**-0.5))


def test_routing_picks_top_regions_by_mean_query_key_affinity():
    q = torch.zeros(1, 4, 4, 2)
    k = torch.zeros(1, 4, 4, 2)
    q[..., 0] = 1.0  # every region queries direction 0
    k[0, 2:, 2:, 0] = 5.0  # region 3 (bottom right) is the strongest key
    k[0, :2, 2:, 0] = 2.0  # then region 1 (top right)
    idx = route_regions(q, k, n_win=2, topk=2, scale=1.0)
    assert idx.shape == (1, 4, 2)
    assert idx.tolist() == [[[3, 1]] * 4]


def test_routing_has_no_gradient_path():
    q, k, v = (torch.randn(1, 4, 4, 8, requires_grad=True) for _ in range(3))
    assert not route_regions(q, k, 2, 2, 1.0).requires_grad


@pytest.mark.parametrize("n_win,topk", [(2, 5), (3, 0), (0, 1)])
def test_bad_routing_arguments_are_clear_errors(n_win, topk):
    q = torch.randn(1, 4, 4, 8)
    with pytest.raises(ValueError, match="topk|n_win"):
        routed_attention(q, q, q, 2, n_win, topk)


def test_bad_shapes_are_clear_errors():
    q = torch.randn(1, 4, 4, 8)
    with pytest.raises(ValueError, match=r"\(B, H, W, C_qk\)"):
        routed_attention(q, torch.randn(1, 4, 5, 8), q, 2, 2, 1)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        routed_attention(q, q, q, 3, 2, 1)
    with pytest.raises(ValueError, match="share dtype and device"):
        routed_attention(q, q, q.double(), 2, 2, 1)


def test_backend_selection(monkeypatch):
    q = torch.randn(1, 4, 4, 8)
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        routed_attention(q, q, q, 2, 2, 1, backend="cuda")
    monkeypatch.setenv("VISATTN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="VISATTN_BACKEND"):
        routed_attention(q, q, q, 2, 2, 1)
    # which implementation runs: the op module's reference and fused callables replaced by sentinels
    op = importlib.import_module("visattn.ops.routed_attention")
    monkeypatch.setattr(op, "routed_attention_reference", lambda *args: "reference")
    monkeypatch.setattr(op, "routed_attention_fused", lambda *args: "fused")
    expected = {  # (VISATTN_BACKEND, backend argument) -> implementation
        (None, None): "reference", (None, "triton"): "fused", (None, "torch"): "reference",
        ("torch", None): "reference", ("torch", "triton"): "fused",
        ("triton", None): "fused", ("triton", "torch"): "reference",
    }
    for (env, backend), impl in expected.items():
        if env is None:
            monkeypatch.delenv("VISATTN_BACKEND", raising=False)
        else:
            monkeypatch.setenv("VISATTN_BACKEND", env)
        assert routed_attention(q, q, q, 2, 2, 1, backend=backend) == impl, (env, backend)


def test_flop_counter_counts_both_attention_levels():
    b, h, w, c, heads, n_win, topk = 2, 8, 8, 16, 2, 4, 3
    q, k, v = torch.randn(3, b, h, w, c)
    with FlopCounterMode(display=False) as counter:
        routed_attention(q, k, v, heads, n_win, topk)
    regions, tokens = n_win * n_win, h * w // (n_win * n_win)
    token_macs = b * regions * tokens * (topk * tokens) * (c + c)  # QK^T and AV
    routing_macs = b * regions * regions * c
    assert counter.get_total_flops() == 2 * (token_macs + routing_macs)

