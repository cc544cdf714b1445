"""The fused Triton kernels against the reference: under Triton's interpreter on CPU tensors in CI, on the GPU
(bf16 included) through benchmarks/gpu_suite.py."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import DEVICE
from tests.ops._compare import assert_matches_reference
from visattn.ops.routed_attention import routed_attention
from visattn.ops.routed_attention import triton as kernels

TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=3e-3, rtol=3e-3),
       torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
# The interpreter mishandles bf16 dot products: bf16 is checked on a GPU only.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE != "cpu" else [])


def _inputs(b, h, w, c, dtype, c_v=None):
    shapes = [(b, h, w, c), (b, h, w, c), (b, h, w, c_v or c)]
    return [torch.randn(s, dtype=dtype, device=DEVICE).requires_grad_() for s in shapes]


def _check(q, k, v, heads, n_win, topk):
    ref = routed_attention(q, k, v, heads, n_win, topk, backend="torch")
    out = routed_attention(q, k, v, heads, n_win, topk, backend="triton")
    assert_matches_reference(out, ref, {"q": q, "k": k, "v": v}, TOL[q.dtype])


# B, H, W, C, heads, n_win, topk: region sizes 64 / 16 / 4 / 1 as at 224, a large padded region,
# topk = 1 and topk = every region, a map smaller than the region grid with heads of 6 channels.
SHAPES = {
    "region64_topk1": (2, 16, 16, 64, 2, 2, 1),
    "region16_topk4": (1, 12, 12, 64, 2, 3, 4),
    "region4_topk16": (1, 10, 10, 32, 1, 5, 16),
    "region1_all": (1, 4, 4, 32, 2, 4, 16),
    "region300_padded": (1, 29, 40, 16, 1, 2, 2),
    "padded_topk_all": (2, 10, 13, 32, 2, 3, 9),
    "map_smaller_than_grid": (1, 3, 5, 12, 2, 7, 5),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_forward_and_gradients_match_the_reference(shape, dtype):
    b, h, w, c, heads, n_win, topk = shape
    _check(*_inputs(b, h, w, c, dtype), heads, n_win, topk)


@pytest.mark.parametrize("head_dim", [16, 24, 128])
def test_head_dims(head_dim):
    _check(*_inputs(1, 8, 8, 2 * head_dim, torch.float32), 2, 2, 2)


def test_value_width_differs_from_query_width():
    _check(*_inputs(1, 8, 8, 32, torch.float32, c_v=64), 2, 2, 3)


def test_ties_in_the_routing_scores():
    q, k, v = _inputs(1, 8, 8, 32, torch.float32)
    k_const = torch.ones_like(k).requires_grad_()  # every key region scores the same for every query region
    _check(q, k_const, v, 2, 4, 5)


@pytest.mark.parametrize("block_m,block_n", [(16, 16), (32, 16), (16, 64)])
def test_tile_sizes_split_and_pack_regions(monkeypatch, block_m, block_n):
    monkeypatch.setattr(kernels, "BLOCK_M", block_m)
    monkeypatch.setattr(kernels, "BLOCK_N", block_n)
    for shape in ((1, 12, 12, 32, 2, 3, 4), (1, 8, 8, 32, 2, 4, 5), (1, 10, 11, 32, 1, 2, 2)):
        b, h, w, c, heads, n_win, topk = shape
        _check(*_inputs(b, h, w, c, torch.float32), heads, n_win, topk)


def test_strided_views_from_a_fused_projection():
    qkv = torch.randn(1, 8, 8, 96, device=DEVICE, requires_grad=True)
    q, k, v = qkv.split(32, dim=-1)  # views with a channel stride of 1 and a row stride of 96
    ref = routed_attention(q, k, v, 2, 2, 2, backend="torch")
    out = routed_attention(q, k, v, 2, 2, 2, backend="triton")
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    (g_ref,) = torch.autograd.grad(ref.sum(), qkv)
    (g_out,) = torch.autograd.grad(out.sum(), qkv)
    torch.testing.assert_close(g_out, g_ref, **TOL[torch.float32])


def test_nothing_topk_sized_is_saved_for_backward():
    b, h, w, c, heads, n_win, topk = 1, 16, 16, 32, 2, 4, 8  # the gather approach would save 8 copies of K, V
    q, k, v = _inputs(b, h, w, c, torch.float32)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        routed_attention(q, k, v, heads, n_win, topk, backend="triton")
    qkv_bytes = 3 * q.numel() * q.element_size()
    assert sum(saved) <= qkv_bytes * 1.7  # q, k, v, out, the fp32 log-sum-exp and the routing indices
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        saved.clear()
        routed_attention(q, k, v, heads, n_win, topk, backend="torch")
    assert sum(saved) > qkv_bytes * topk / 2


def test_flop_counter_sees_the_fused_op():
    q, k, v = _inputs(2, 8, 8, 32, torch.float32)
    counts = {}
    for backend in ("torch", "triton"):
        with FlopCounterMode(display=False) as counter:
            routed_attention(q, k, v, 2, 4, 3, backend=backend)
        counts[backend] = counter.get_total_flops()
    assert counts["triton"] == counts["torch"] > 0
    with FlopCounterMode(display=False) as counter:
        routed_attention(q, k, v, 2, 4, 3, backend="triton").sum().backward()
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert by_op["visattn.routed_attention_backward"] == 2.5 * by_op["visattn.routed_attention"]


def test_torch_compile_traces_the_fused_op():
    q, k, v = _inputs(1, 8, 8, 32, torch.float32)

    def f(q, k, v):
        return routed_attention(q, k, v, 2, 2, 2, backend="triton") * 2

    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), f(q, k, v))
