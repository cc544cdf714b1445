"""The FlexAttention comparator of routed attention against the reference: eager flex on CPU tensors in CI,
compiled flex on the GPU through benchmarks/gpu_suite.py (fp32 here; the suite also compares bf16 flex with the
reference at the benchmark shapes).

torch's flex_attention has no backward on CPU, so on CPU the gradients are checked through the same layout and the
same BlockMask (block lists and mask_mod) applied as a token mask to dense SDPA; on CUDA through flex itself."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_mask

from benchmarks import routed_flex as flex
from tests.conftest import DEVICE
from tests.ops._compare import assert_matches_reference
from visattn.ops.routed_attention.reference import attend_routed_regions, route_regions

TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5)}
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

# B, H, W, C_qk, C_v, heads, n_win, topk (head dims >= 16, as the compiled kernel needs). Region sizes R: whole
# 16-token blocks, padded to a multiple of 16, and several (padded) regions per 16-token block, with region counts
# that are and are not a multiple of the group; maps that need zero-padding; topk = 1 and topk = n_win**2.
SHAPES = {
    "R16_full_blocks_topk1": (2, 8, 8, 32, 32, 2, 2, 1),
    "R64_full_blocks_topk_all_wide_v": (1, 16, 16, 32, 64, 2, 2, 4),
    "R20_to_32_padded_map": (2, 7, 9, 32, 32, 2, 2, 2),
    "R9_to_16_topk_all": (1, 9, 9, 32, 32, 1, 3, 9),
    "R4_four_per_block_49_regions": (2, 14, 14, 64, 64, 4, 7, 16),
    "R4_four_per_block_9_regions_topk1": (1, 6, 6, 32, 32, 2, 3, 1),
    "R6_to_8_two_per_block_padded_map": (1, 5, 4, 32, 64, 2, 2, 2),
    "R1_map_smaller_than_grid": (1, 3, 5, 32, 32, 2, 7, 5),
    "R1_topk_all": (1, 4, 4, 32, 32, 2, 4, 16),
}


def _inputs(b, h, w, c, c_v, dtype):
    shapes = [(b, h, w, c), (b, h, w, c), (b, h, w, c_v)]
    return [torch.randn(s, dtype=dtype, device=DEVICE).requires_grad_() for s in shapes]


def _dense_twin(q, k, v, region_idx, heads, n_win, scale):
    """What flex computes with routed_block_mask, on the same layout, as dense SDPA under the BlockMask's token mask
    (kv blocks visited, times the mask_mod inside them)."""
    h, w = q.shape[1:3]
    mask = flex.routed_block_mask(region_idx, n_win, h, w)
    qf, kf, vf = (flex.to_flex(t, n_win, heads) for t in (q, k, v))
    length, (bq, bk) = qf.shape[2], mask.BLOCK_SIZE
    tokens = mask.to_dense().bool().repeat_interleave(bq, -2).repeat_interleave(bk, -1)
    tokens &= create_mask(mask.mask_mod, q.shape[0], 1, length, length, device=q.device)
    out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=tokens, scale=scale)
    return flex.from_flex(out.nan_to_num(), n_win, h, w)  # padding regions attend to nothing: NaN rows, dropped


def _check(q, k, v, region_idx, heads, n_win):
    scale = q.shape[-1] ** -0.5
    ref = attend_routed_regions(q, k, v, region_idx, heads, n_win, scale)
    if DEVICE == "cpu":  # flex's forward; then the gradients of its layout and mask (no flex backward on CPU)
        with torch.no_grad():
            out = flex.routed_attention_flex(q, k, v, region_idx, heads, n_win, scale)
        assert out.dtype == q.dtype and out.shape == ref.shape
        torch.testing.assert_close(out, ref.detach(), **TOL[q.dtype])
        out = _dense_twin(q, k, v, region_idx, heads, n_win, scale)
    else:
        out = flex.routed_attention_flex(q, k, v, region_idx, heads, n_win, scale)
    assert_matches_reference(out, ref, {"q": q, "k": k, "v": v}, TOL[q.dtype], fused=False)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_forward_and_gradients_match_the_reference(shape):
    b, h, w, c, c_v, heads, n_win, topk = shape
    q, k, v = _inputs(b, h, w, c, c_v, torch.float32)
    _check(q, k, v, route_regions(q, k, n_win, topk, c ** -0.5), heads, n_win)


def test_any_routing_order_matches_the_reference():
    """Unsorted routes that differ per batch element and region (not only what route_regions returns)."""
    q, k, v = _inputs(2, 12, 12, 32, 32, torch.float32)
    for n_win in (3, 6):  # R = 16 (one region per block) and R = 4 (four per block)
        idx = torch.rand(2, n_win ** 2, n_win ** 2, device=DEVICE).argsort(-1)[..., :3]
        _check(q, k, v, idx, 2, n_win)


@pytest.mark.parametrize("h, w, n_win, want", [
    (56, 56, 7, (56, 56, 64, 64, 1, 49, 49)),  # BiFormer stage 1 at 224: whole blocks
    (14, 14, 7, (14, 14, 4, 4, 4, 49, 52)),  # stage 3: four regions per 16-token block
    (200, 336, 16, (208, 336, 273, 288, 1, 256, 256)),  # stage 1 at 800 x 1344: padded map and regions
    (50, 84, 16, (64, 96, 24, 32, 1, 256, 256)),
    (7, 7, 7, (7, 7, 1, 1, 16, 49, 64)),
    (6, 4, 2, (6, 4, 6, 8, 2, 4, 4)),
])
def test_layout(h, w, n_win, want):
    lay = flex.region_layout(h, w, n_win)
    assert tuple(lay) == want
    assert lay.block % 16 == 0 and lay.length % lay.block == 0


def test_block_mask_visits_only_routed_blocks():
    idx = torch.tensor([[[2, 0], [1, 3], [3, 2], [0, 1]]], device=DEVICE)
    full = flex.routed_block_mask(idx, 2, 8, 8)  # R = 16: the routes are the kv block lists, all full blocks
    assert full.BLOCK_SIZE == (16, 16)
    assert full.kv_num_blocks.sum() == 0 and full.full_kv_num_blocks.flatten().tolist() == [2, 2, 2, 2]
    assert full.full_kv_indices[0, 0, :, :2].tolist() == idx[0].tolist()
    partial = flex.routed_block_mask(idx, 2, 8, 10)  # R = 20 padded to 32: partial blocks
    assert partial.BLOCK_SIZE == (32, 32) and partial.full_kv_num_blocks is None
    assert partial.kv_num_blocks.flatten().tolist() == [2, 2, 2, 2]
    dense = partial.to_dense()[0, 0]
    assert dense.tolist() == [[1 if j in row else 0 for j in range(4)] for row in idx[0].tolist()]


def test_grouped_block_mask_is_the_union_of_the_regions_routes():
    idx = torch.zeros(1, 9, 1, dtype=torch.long, device=DEVICE)
    idx[0, :4, 0] = torch.tensor([0, 5, 0, 0])  # block 0 (regions 0-3) routes to regions 0 and 5: blocks 0, 1
    idx[0, 4:8, 0] = 8  # block 1 routes to region 8: block 2
    idx[0, 8, 0] = 4  # block 2 (region 8 and three padding regions) routes to region 4: block 1
    mask = flex.routed_block_mask(idx, 3, 6, 6)  # R = 4, four regions per block, 12 regions
    assert mask.BLOCK_SIZE == (16, 16)
    assert mask.to_dense()[0, 0].tolist() == [[1, 1, 0], [0, 0, 1], [0, 1, 0]]


@pytest.mark.skipif(DEVICE != "cpu", reason="the CPU path")
def test_cpu_calls_run_eager_flex_without_compiling():
    q, k, v = _inputs(1, 8, 8, 32, 32, torch.float32)
    with torch.no_grad():
        flex.routed_attention_flex(q, k, v, route_regions(q, k, 2, 1, 0.2), 2, 2, 0.2)
    assert flex._compiled_flex is None
