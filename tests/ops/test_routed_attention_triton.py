"""The fused Triton kernels against the reference: under Triton's interpreter on CPU tensors in CI, on the GPU
(bf16 included) through benchmarks/gpu_suite.py."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import DEVICE
from tests.fused import fused_ops_in_graph
from tests.ops._compare import assert_matches_reference
from visattn.ops.routed_attention import route_regions, routed_attention
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


# B, H, W, C, heads, n_win, topk: region sizes 64 / 16 / 4 / 1 as at 224, a padded region larger than a tile (row
# slices of BLOCK_M and key tiles of BLOCK_N, the last of each partial),
# topk = 1 and topk = every region, a map smaller than the region grid with heads of 6 channels.
SHAPES = {
    "region64_topk1": (2, 16, 16, 64, 2, 2, 1),
    "region16_topk4": (1, 12, 12, 64, 2, 3, 4),
    "region4_topk16": (1, 10, 10, 32, 1, 5, 16),
    "region1_all": (1, 4, 4, 32, 2, 4, 16),
    "region1_64_per_tile": (1, 8, 8, 16, 1, 8, 6),  # a packed tile of 64 regions: the int64 bit masks' top bit
    "region81_padded": (1, 17, 18, 16, 1, 2, 2),
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
    # one head of 16 channels: the tile sizes split and pack regions, the heads only multiply the programs
    for shape in ((1, 12, 12, 16, 1, 3, 4), (1, 8, 8, 16, 1, 4, 5), (1, 10, 11, 16, 1, 2, 2)):
        b, h, w, c, heads, n_win, topk = shape
        _check(*_inputs(b, h, w, c, torch.float32), heads, n_win, topk)


def test_strided_views_from_a_fused_projection():
    qkv = torch.randn(1, 8, 8, 96, device=DEVICE, requires_grad=True)
    q, k, v = qkv.split(32, dim=-1)  # views with a channel stride of 1 and a row stride of 96
    ref = routed_attention(q, k, v, 2, 2, 2, backend="torch")
    out = routed_attention(q, k, v, 2, 2, 2, backend="triton")
    assert fused_ops_in_graph(out) and not fused_ops_in_graph(ref)
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
    attention_macs = 2 * 16 * 4 * (3 * 4) * (32 + 32)  # B, regions, tokens per region, attended keys, C_qk + C_v
    routing_macs = 2 * 16 * 16 * 32
    assert by_op["visattn.routed_attention"] == 2 * (attention_macs + routing_macs)
    assert by_op["visattn.routed_attention_backward"] == 5 * attention_macs


def test_torch_compile_traces_the_fused_op():
    q, k, v = _inputs(1, 8, 8, 32, torch.float32)

    def f(q, k, v):
        return routed_attention(q, k, v, 2, 2, 2, backend="triton") * 2

    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), f(q, k, v))


# B, H, W, C, n_win, topk; many_regions: 81 regions, more than a routing program's 64 rows (the last program partial)
ROUTING_SHAPES = {"region16": (2, 12, 12, 32, 3, 4), "padded": (2, 10, 13, 24, 3, 9), "grid_larger_than_map":
                  (1, 3, 5, 12, 7, 5), "one_region": (1, 6, 6, 16, 1, 1), "many_regions": (1, 9, 9, 8, 9, 20)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape", ROUTING_SHAPES.values(), ids=ROUTING_SHAPES.keys())
def test_fused_routing_equals_the_reference_routing(shape, dtype):
    b, h, w, c, n_win, topk = shape
    q, k = (torch.randn(b, h, w, c, dtype=dtype, device=DEVICE) for _ in range(2))
    idx = kernels.route(q, k, n_win, topk, c ** -0.5)[0]
    torch.testing.assert_close(idx, route_regions(q, k, n_win, topk, c ** -0.5), rtol=0, atol=0)


def test_fused_routing_breaks_ties_by_lowest_region_index():
    q = torch.randn(1, 8, 8, 16, device=DEVICE)
    k = torch.ones_like(q)  # every key region scores the same
    idx = kernels.route(q, k, 4, 5, 0.25)[0]
    assert idx.tolist() == [[[0, 1, 2, 3, 4]] * 16]
    torch.testing.assert_close(idx, route_regions(q, k, 4, 5, 0.25), rtol=0, atol=0)


def _plan_links(lists, bits, counts, n_tiles, group, regions):
    """The (row region, listed region) links a plan encodes: row region t*G + g links to list item j when bit g of
    its mask is set."""
    links = torch.zeros(lists.shape[0], regions, regions, dtype=torch.bool)
    for b in range(lists.shape[0]):
        for t in range(n_tiles):
            n = counts[b, t]
            for item, mask in zip(lists[b, t, :n].tolist(), bits[b, t, :n].tolist(), strict=True):
                assert mask != 0, "a listed region links to no region of its tile"
                for g in range(group):
                    if mask >> g & 1:
                        links[b, t * group + g, item] = True
    return links


@pytest.mark.parametrize("block_m", [64, 16])
@pytest.mark.parametrize("shape", [(2, 12, 12, 16, 2, 3, 4), (1, 8, 8, 16, 1, 4, 5), (1, 14, 14, 16, 2, 7, 16),
                                   (1, 8, 8, 16, 1, 8, 6)])
def test_forward_and_key_plans_encode_the_routing(monkeypatch, shape, block_m):
    monkeypatch.setattr(kernels, "BLOCK_M", block_m)
    b, h, w, c, heads, n_win, topk = shape
    q, k = (torch.randn(b, h, w, c, device=DEVICE) for _ in range(2))
    tiling = kernels.Tiling(q, k, heads, n_win)
    idx, *plan = kernels.route(q, k, n_win, topk, c ** -0.5)
    routed = torch.zeros(b, tiling.S2, tiling.S2, dtype=torch.bool).scatter_(2, idx.cpu(), True)
    fwd = _plan_links(*(t.cpu() for t in plan), tiling.n_tiles, tiling.G, tiling.S2)
    assert torch.equal(fwd, routed)
    key = _plan_links(*(t.cpu() for t in kernels._key_plan(idx, tiling)), tiling.n_tiles, tiling.G, tiling.S2)
    assert torch.equal(key, routed.transpose(1, 2))
    lists, _, counts = plan
    tiles = slice(0, tiling.n_tiles)
    for row, n in zip(lists[:, tiles].flatten(0, 1).tolist(), counts[:, tiles].flatten().tolist(), strict=True):
        assert row[:n] == sorted(row[:n])  # region order: key tiles are read in memory order


def test_backward_reuses_the_forward_plan(monkeypatch):
    calls = []
    route = kernels._route
    monkeypatch.setattr(kernels, "_route", lambda *args: calls.append(1) or route(*args))
    q, k, v = _inputs(1, 8, 8, 32, torch.float32)
    routed_attention(q, k, v, 2, 4, 3, backend="triton").sum().backward()
    assert len(calls) == 1
