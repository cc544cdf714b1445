"""Per-query sparse attention: the reference against an independent dense formula, argument errors, and the fused
Triton kernels against the reference (under Triton's interpreter on CPU tensors in CI, on the GPU, bf16 included,
through benchmarks/gpu_suite.py)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import DEVICE
from tests.fused import fused_ops_in_graph
from tests.ops._compare import assert_matches_reference
from visattn.ops.sparse_attention import fused, sparse_attention
from visattn.ops.sparse_attention import triton as kernels

TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=3e-3, rtol=3e-3),
       torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
# The interpreter mishandles bf16 dot products: bf16 is checked on a GPU only.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE != "cpu" else [])
NORMALIZATIONS = ("attended", "all")


def dense_sparse_attention(q, k, v, indices, dense_keys, normalize, scale):
    """The definition, row by row in float64: w_ij = exp(s q_i.k_j) over the attended keys S_i, divided by the sum
    over S_i ("attended"; 0 for an empty S_i) or over all keys ("all")."""
    b, h, n_q, _ = q.shape
    n_k = k.shape[2]
    out = torch.zeros(b, h, n_q, v.shape[-1], dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            for i in range(n_q):
                listed = indices[bi, hi if indices.shape[1] > 1 else 0, i].tolist()
                keys = sorted({j for j in listed if 0 <= j < n_k} | set(range(dense_keys)))
                logits = (k[bi, hi].double() @ q[bi, hi, i].double()) * scale
                weights = (logits - logits.max()).exp()
                norm = weights[keys].sum() if normalize == "attended" else weights.sum()
                if keys:
                    out[bi, hi, i] = (weights[keys] / norm) @ v[bi, hi, keys].double()
    return out


def _qkv(b, h, n_q, n_k, d, d_v, dtype=torch.float32):
    shapes = [(b, h, n_q, d), (b, h, n_k, d), (b, h, n_k, d_v)]
    return [torch.randn(s, dtype=dtype, device=DEVICE).requires_grad_() for s in shapes]


def _indices(b, h, n_q, n_k, topk, pad=0.0, dtype=torch.int64):
    """Random key indices, with a fraction ``pad`` of entries -1 and, with K > 1, a repeated entry per query."""
    idx = torch.randint(0, n_k, (b, h, n_q, topk), device=DEVICE)
    idx = torch.where(torch.rand(idx.shape, device=DEVICE) < pad, -1, idx)
    if topk > 1:
        idx[..., -1] = idx[..., 0]
    return idx.to(dtype)


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
@pytest.mark.parametrize("dense_keys,heads_i", [(0, 2), (3, 2), (2, 1)], ids=["sparse", "dense_keys", "shared"])
def test_reference_matches_the_dense_formula(normalize, dense_keys, heads_i):
    q, k, v = (t.detach().double() for t in _qkv(2, 2, 7, 9, 4, 5))
    idx = _indices(2, heads_i, 7, 9, 4, pad=0.3)
    idx[0, 0, 0] = torch.tensor([-1, 9, 50, -7])  # a query with only padding
    out = sparse_attention(q, k, v, idx, dense_keys=dense_keys, normalize=normalize, scale=0.3, backend="torch")
    torch.testing.assert_close(out, dense_sparse_attention(q, k, v, idx, dense_keys, normalize, 0.3))
    if dense_keys == 0:
        assert out[0, 0, 0].abs().max() == 0


def test_normalize_all_leaves_the_weights_unrenormalised():
    q, k, v = (t.detach() for t in _qkv(1, 1, 3, 6, 4, 6))
    v = torch.eye(6, device=DEVICE)[None, None]  # the output row is the weight row
    idx = torch.tensor([[[[0, 1], [2, 2], [5, -1]]]], device=DEVICE)
    weights = sparse_attention(q, k, v, idx, normalize="all", backend="torch")
    full = ((q @ k.transpose(-2, -1)) * 0.5).softmax(-1)
    torch.testing.assert_close(weights[0, 0, 0, :2], full[0, 0, 0, :2])
    assert (weights.sum(-1) < 1).all() and (weights[0, 0, 1].count_nonzero() == 1)


X = torch.zeros(1, 2, 5, 4)
IDX = torch.zeros(1, 2, 5, 2, dtype=torch.long)
BAD = {
    "q_3d": ((X[0], X, X, IDX), {}, r"q \(B, H, N_q, D\)"),
    "k_width": ((X, X[..., :3], X, IDX), {}, r"q \(B, H, N_q, D\)"),
    "v_tokens": ((X, X, X[:, :, :4], IDX), {}, r"q \(B, H, N_q, D\)"),
    "dtypes": ((X, X, X.double(), IDX), {}, "share dtype"),
    "float_indices": ((X, X, X, IDX.float()), {}, "indices must be integer"),
    "index_heads": ((X, X, X, IDX[:, :1].expand(1, 3, 5, 2)), {}, "indices must be integer"),
    "index_queries": ((X, X, X, IDX[:, :, :4]), {}, "indices must be integer"),
    "k_above_n_k": ((X, X, X, torch.zeros(1, 2, 5, 6, dtype=torch.long)), {}, "exceed the N_k=5"),
    "dense_keys_negative": ((X, X, X, IDX), {"dense_keys": -1}, "dense_keys=-1"),
    "dense_keys_above_n_k": ((X, X, X, IDX), {"dense_keys": 6}, "dense_keys=6"),
    "normalize": ((X, X, X, IDX), {"normalize": "softmax"}, "normalize='softmax'"),
}


@pytest.mark.parametrize("args,kwargs,match", BAD.values(), ids=BAD.keys())
def test_bad_arguments_are_clear_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sparse_attention(*args, **kwargs)


def test_unsupported_inputs_fail_in_one_line_when_the_kernels_are_forced(monkeypatch):
    q, k, v = (t.detach().double() for t in _qkv(1, 2, 5, 5, 4, 4))
    idx = _indices(1, 2, 5, 5, 2)
    assert fused.unsupported_reason(q, v) is not None
    with pytest.raises(ValueError, match="float32, float16 or bfloat16.*use backend='torch'"):
        sparse_attention(q, k, v, idx, backend="triton")
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    with pytest.raises(ValueError, match=r"float32, float16 or bfloat16.*\$VISATTN_BACKEND=triton forces"):
        sparse_attention(q, k, v, idx)
    wide = torch.zeros(1, 1, 2, fused.MAX_HEAD_DIM + 1)
    assert "D_v" in fused.unsupported_reason(wide[..., :4], wide)


def test_the_plan_lists_each_key_tile_entries_once():
    idx = torch.tensor([[[[70, 3, -1, 3, 64, 200, 63, 3], [0, 1, 2, 3, 4, 5, 6, 7]]]], device=DEVICE)
    ordered, offsets = fused.plan_key_tiles(idx, 100, 64)
    assert ordered.dtype == offsets.dtype == torch.int32 and offsets.shape == (1, 1, 2, 3)
    first = ordered[0, 0, 0]
    tiles = [first[offsets[0, 0, 0, t]:offsets[0, 0, 0, t + 1]].tolist() for t in range(2)]
    assert tiles == [[3, 63], [64, 70]]
    assert first[:offsets[0, 0, 0, 0]].tolist() == [-1] and offsets[0, 0, 1].tolist() == [0, 8, 8]


def _check(q, k, v, idx, dense_keys, normalize, scale=None):
    kwargs = dict(dense_keys=dense_keys, normalize=normalize, scale=scale)
    ref = sparse_attention(q, k, v, idx, backend="torch", **kwargs)
    out = sparse_attention(q, k, v, idx, backend="triton", **kwargs)
    assert out.dtype == q.dtype
    assert_matches_reference(out, ref, {"q": q, "k": k, "v": v}, TOL[q.dtype])


# B, H, N_q, N_k, D, D_v, K, dense_keys, index heads, padding fraction: odd sizes and head widths, K = 1 and K = N_k,
# leading dense keys (TCPA's class token and patches), indices shared by the heads.
CASES = {
    "odd_padded": (1, 2, 37, 37, 16, 24, 5, 0, 2, 0.3),
    "k1": (1, 2, 37, 37, 16, 16, 1, 0, 2, 0.0),
    "k_all": (1, 2, 37, 37, 16, 16, 37, 0, 2, 0.0),
    "dense_keys": (1, 2, 37, 41, 20, 16, 4, 5, 2, 0.2),
    "shared": (2, 2, 19, 23, 16, 16, 3, 0, 1, 0.2),
    "one_query_one_key": (1, 1, 1, 1, 3, 5, 1, 0, 1, 0.0),
}


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_forward_and_gradients_match_the_reference(case, dtype, normalize):
    b, h, n_q, n_k, d, d_v, topk, dense_keys, heads_i, pad = case
    _check(*_qkv(b, h, n_q, n_k, d, d_v, dtype), _indices(b, heads_i, n_q, n_k, topk, pad), dense_keys, normalize)


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_several_tiles_skipped_tiles_and_int32_indices(monkeypatch, normalize):
    """16 x 16 tiles: keys near each query (most key tiles unattended by a whole query tile, so skipped), rows
    with no attended key, and an all-dense tile."""
    monkeypatch.setattr(fused, "BLOCK_N", 16)
    monkeypatch.setattr(kernels, "BLOCK_M", 16)
    n = 50
    near = (torch.arange(n, device=DEVICE)[:, None] + torch.arange(-2, 3, device=DEVICE)).clamp(-1, n)
    idx = near.expand(1, 2, n, 5).to(torch.int32).clone()
    idx[:, 1, 20:30] = -1
    _check(*_qkv(1, 2, n, n, 16, 16), idx, 0, normalize)
    _check(*_qkv(1, 2, n, n, 16, 16), idx[:, :1], 18, normalize)


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_keys_at_the_edges_of_64_key_tiles(normalize):
    """Bits 0 and 63 of a tile's int64 word (1 << 63 is the sign bit), a repeated index and the last partial tile."""
    idx = torch.tensor([63, 127, 64, 0, 129, 128], device=DEVICE).expand(1, 1, 20, 6).clone()
    idx[0, 0, 5] = 63
    _check(*_qkv(1, 1, 20, 130, 16, 16), idx, 0, normalize)


def test_strided_views_from_a_fused_projection():
    b, n, h, d = 1, 21, 2, 16
    qkv = torch.randn(b, n, 3, h, d, device=DEVICE, requires_grad=True)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, H, N, D) views with row stride 3 H D
    kt = torch.randn(b, h, d, n, device=DEVICE, requires_grad=True)  # a key view with channel stride N
    idx = _indices(b, h, n, n, 4, pad=0.2)
    for normalize in NORMALIZATIONS:
        ref = sparse_attention(q, kt.transpose(-2, -1), v, idx, normalize=normalize, backend="torch")
        out = sparse_attention(q, kt.transpose(-2, -1), v, idx, normalize=normalize, backend="triton")
        assert fused_ops_in_graph(out) and not fused_ops_in_graph(ref)
        torch.testing.assert_close(out, ref, **TOL[torch.float32])
        grad = torch.randn_like(ref)
        for g_out, g_ref in zip(torch.autograd.grad(out, (qkv, kt), grad), torch.autograd.grad(ref, (qkv, kt), grad),
                                strict=True):
            torch.testing.assert_close(g_out, g_ref, **TOL[torch.float32])


def test_nothing_n_q_by_n_k_is_saved_for_backward():
    b, h, n, d, topk = 1, 2, 128, 16, 8  # N_q N_k = 16384 per head; q, k, v hold 2048 elements per head
    q, k, v = _qkv(b, h, n, n, d, d)
    idx = _indices(b, h, n, n, topk)
    saved = {}

    def pack(t):
        saved[backend].append(t.numel())
        return t

    for backend in ("triton", "torch"):
        saved[backend] = []
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            sparse_attention(q, k, v, idx, normalize="all", backend=backend)
    assert max(saved["triton"]) / (b * h) < n * n <= max(saved["torch"]) / (b * h), saved


def _meta_flops(b, h, n_q, n_k, d, d_v, topk, dense_keys, normalize, monkeypatch):
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    q, k, v = (torch.empty(s, device="meta", requires_grad=True)
               for s in ((b, h, n_q, d), (b, h, n_k, d), (b, h, n_k, d_v)))
    idx = torch.empty(b, 1, n_q, topk, device="meta", dtype=torch.int64)
    with FlopCounterMode(display=False) as counter:
        sparse_attention(q, k, v, idx, dense_keys=dense_keys, normalize=normalize).sum().backward()
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_flop_counter_counts_the_attended_pairs_on_meta_tensors(monkeypatch, normalize):
    b, h, n_q, n_k, d, d_v, topk, dense_keys = 2, 3, 50, 60, 16, 24, 8, 2
    counts = _meta_flops(b, h, n_q, n_k, d, d_v, topk, dense_keys, normalize, monkeypatch)
    attended = topk + dense_keys
    scored = n_k if normalize == "all" else attended
    qk, pv = b * h * n_q * scored * d, b * h * n_q * attended * d_v
    assert counts["visattn.sparse_attention"] == 2 * (qk + pv)
    assert counts["visattn.sparse_attention_backward"] == 2 * (3 * qk + 2 * pv)
    fewer = _meta_flops(b, h, n_q, n_k, d, d_v, topk // 2, dense_keys, normalize, monkeypatch)
    assert fewer["visattn.sparse_attention"] < counts["visattn.sparse_attention"]


def test_torch_compile_traces_the_fused_op():
    q, k, v = _qkv(1, 2, 20, 20, 16, 16)
    idx = _indices(1, 1, 20, 20, 4, pad=0.2)

    def f(q, k, v):
        return sparse_attention(q, k, v, idx, dense_keys=1, normalize="all", backend="triton") * 2

    compiled = torch.compile(f, fullgraph=True)
    out, ref = compiled(q, k, v), f(q, k, v)
    torch.testing.assert_close(out, ref)
    for got, want in zip(torch.autograd.grad(out.sum(), (q, k, v)), torch.autograd.grad(ref.sum(), (q, k, v)),
                         strict=True):
        torch.testing.assert_close(got, want)
