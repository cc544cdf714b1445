"""Polarized self-attention op: the reference against the equations, argument errors, and the fused Triton kernels
(pooling, official spatial logits, gating) against the reference (under Triton's interpreter on CPU tensors here,
on the GPU through benchmarks/gpu_suite.py)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import DEVICE
from tests.fused import FusedOps
from tests.ops._compare import assert_matches_reference
from visattn.ops.polarized_attention import fused, polarized_attention
from visattn.ops.polarized_attention import triton as kernels

TOL = {torch.float32: dict(atol=3e-5, rtol=3e-5), torch.float16: dict(atol=1e-2, rtol=1e-2),
       torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}
# The interpreter mishandles bf16: bf16 is checked on a GPU only.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE != "cpu" else [])
MODES = [(layout, spatial) for layout in ("parallel", "sequential")
         for spatial in ("sigmoid", "softmax_after", "softmax_before")]


def _inputs(b, c, h, w, spatial, dtype=torch.float32, inner=None):
    """x, the weights and two linear transforms closing over leaves A (C, C) and H (C, C or C')."""
    inner = inner or max(c // 2, 1)
    x = torch.randn(b, c, h, w, device=DEVICE, dtype=dtype).requires_grad_()
    w_q = torch.randn(c, device=DEVICE).requires_grad_()
    a = (torch.randn(c, c, device=DEVICE) / c ** 0.5).requires_grad_()
    width = inner if spatial == "softmax_before" else c
    hm = (torch.randn(c, width, device=DEVICE) * 2 / c ** 0.5).requires_grad_()
    w_v = torch.randn(inner, c, device=DEVICE).requires_grad_() if spatial == "softmax_before" else None
    leaves = {"x": x, "w_q": w_q, "a": a, "h": hm} | ({"w_v": w_v} if w_v is not None else {})
    return leaves


def _call(leaves, layout, spatial, backend):
    a, hm = leaves["a"], leaves["h"]
    return polarized_attention(leaves["x"], leaves["w_q"], lambda p: p.to(a.dtype) @ a,
                               lambda m: m.to(hm.dtype) @ hm,
                               layout=layout, spatial=spatial, spatial_value=leaves.get("w_v"), backend=backend)


@pytest.mark.parametrize("layout,spatial", MODES)
def test_reference_matches_the_equations(layout, spatial):
    torch.manual_seed(0)
    b, c, h, w, inner = 2, 3, 4, 5, 2
    x = torch.randn(b, c, h, w, dtype=torch.float64)
    w_q, a, w_v = torch.randn(c, dtype=torch.float64), torch.randn(c, c, dtype=torch.float64), \
        torch.randn(inner, c, dtype=torch.float64)
    hm = torch.randn(c, inner if spatial == "softmax_before" else c, dtype=torch.float64)
    out = polarized_attention(x, w_q, lambda p: p @ a, lambda m: m @ hm, layout=layout, spatial=spatial,
                              spatial_value=w_v if spatial == "softmax_before" else None, backend="torch")
    sig = torch.sigmoid
    for bi in range(b):
        xs = x[bi].reshape(c, -1)  # (C, N)
        p = torch.exp(w_q @ xs) / torch.exp(w_q @ xs).sum()
        a_ch = sig(torch.stack([(xs[ci] * p).sum() for ci in range(c)]) @ a)
        z = xs * a_ch[:, None] if layout == "sequential" else xs
        u = z.mean(1) @ hm
        if spatial == "softmax_before":
            v = w_v @ z
            sm = torch.exp(v) / torch.exp(v).sum(1, keepdim=True)
            a_sp = sig(u @ sm)
        else:
            s = u @ z
            a_sp = sig(torch.exp(s) / torch.exp(s).sum()) if spatial == "softmax_after" else sig(s)
        want = xs * a_ch[:, None] * a_sp if layout == "sequential" else xs * a_ch[:, None] + xs * a_sp
        torch.testing.assert_close(out[bi].reshape(c, -1), want)


CASES = {"tiny": (1, 1, 1, 1), "odd": (2, 5, 3, 7), "rows": (1, 20, 1, 9), "tiles": (2, 33, 13, 11)}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout,spatial", MODES)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_fused_forward_and_gradients_match_the_reference(case, layout, spatial, dtype):
    torch.manual_seed(0)
    leaves = _inputs(*case, spatial, dtype=dtype)
    ref_leaves = {k: t.detach().float().requires_grad_() for k, t in leaves.items()}
    out = _call(leaves, layout, spatial, "triton")
    ref = _call(ref_leaves, layout, spatial, "torch")
    assert out.dtype == dtype
    assert_matches_reference(out, ref, leaves, TOL[dtype], ref_leaves)


def test_spatial_kernels_walk_several_row_tiles_and_position_chunks():
    """J = 40 rows (two row tiles) and N = 1155 positions (two chunks of the row statistics)."""
    torch.manual_seed(0)
    leaves = _inputs(1, 48, 35, 33, "softmax_before", inner=40)
    tiling = kernels.Tiling(leaves["x"].detach().flatten(2), rows=40)
    assert (tiling.j_tiles, tiling.n_chunks) == (2, 2)
    out = _call(leaves, "sequential", "softmax_before", "triton")
    assert_matches_reference(out, _call(leaves, "sequential", "softmax_before", "torch"), leaves,
                             dict(atol=1e-4, rtol=1e-4))


def test_pooling_is_stable_for_large_logits():
    """Logits of +-1e4 (the softmax over N of one image concentrates on one position) stay finite."""
    x = torch.randn(1, 4, 9, 9, device=DEVICE)
    w_q = torch.full((4,), 3e3, device=DEVICE)
    outs = [polarized_attention(x, w_q, lambda p: p, lambda m: m, backend="torch")]
    with FusedOps() as ops:
        outs.append(polarized_attention(x, w_q, lambda p: p, lambda m: m, backend="triton"))
    assert ops.ran and torch.isfinite(outs[1]).all()
    torch.testing.assert_close(outs[1], outs[0], **TOL[torch.float32])


def test_fused_takes_non_contiguous_maps():
    leaves = _inputs(2, 7, 6, 5, "softmax_before")
    leaves["x"] = leaves["x"].detach().permute(0, 1, 3, 2).requires_grad_()
    out = _call(leaves, "sequential", "softmax_before", "triton")
    assert_matches_reference(out, _call(leaves, "sequential", "softmax_before", "torch"), leaves, TOL[torch.float32])


@pytest.mark.parametrize("layout,spatial", MODES)
def test_nothing_c_by_n_is_saved_beyond_x(layout, spatial):
    b, c, h, w = 2, 16, 8, 8
    leaves = _inputs(b, c, h, w, spatial)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        _call(leaves, layout, spatial, "triton")
    big = [t for t in saved if t.numel() >= min(c, h * w) * max(c // 2, h * w)]
    assert big and all(t.data_ptr() == leaves["x"].data_ptr() for t in big), [tuple(t.shape) for t in saved]


def test_kernel_tiles_walk_several_channel_and_position_tiles():
    tiling = kernels.Tiling(torch.empty(2, 40, 300))
    assert (tiling.c_tiles, tiling.n_tiles) == (3, 3)


@pytest.mark.parametrize("layout,spatial", MODES)
def test_flop_counter_sees_the_fused_ops(layout, spatial):
    b, c, h, w = 2, 6, 5, 3
    n, inner = h * w, 3
    leaves = _inputs(b, c, h, w, spatial)
    with FlopCounterMode(display=False) as counter:
        _call(leaves, layout, spatial, "triton").sum().backward()
    by_op = {str(op): count for op, count in counter.get_flop_counts()["Global"].items()}
    assert by_op["visattn.polarized_attention"] == 2 * b * c * n
    assert by_op["visattn.polarized_attention_backward"] == (7 if layout == "sequential" else 5) * b * c * n
    assert by_op["visattn.polarized_pool"] == 4 * b * c * n
    assert by_op["visattn.polarized_pool_backward"] == 8 * b * c * n
    if spatial == "softmax_before":
        assert by_op["visattn.polarized_spatial"] == 2 * b * inner * n * (c + 1)
        assert by_op["visattn.polarized_spatial_backward"] == 4 * b * inner * n * (c + 1)
    else:
        assert "visattn.polarized_spatial" not in by_op


def test_flop_counter_on_meta_tensors(monkeypatch):
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    b, c, n = 2, 64, 14 * 14
    x = torch.empty(b, c, 14, 14, device="meta")
    w_v = torch.empty(c // 2, c, device="meta")
    with FlopCounterMode(display=False) as counter:
        polarized_attention(x, torch.empty(c, device="meta"), lambda p: p, lambda m: m[:, : c // 2],
                            layout="sequential", spatial="softmax_before", spatial_value=w_v)
    assert counter.get_total_flops() == 2 * b * c * n + 4 * b * c * n + 2 * b * (c // 2) * n * (c + 1)


def test_torch_compile_traces_the_fused_ops():
    leaves = _inputs(1, 4, 5, 5, "softmax_before")

    def f(x, w_q, a, h, w_v):
        return polarized_attention(x, w_q, lambda p: p @ a, lambda m: m @ h, layout="sequential",
                                   spatial="softmax_before", spatial_value=w_v, backend="triton") * 2

    out = torch.compile(f, fullgraph=True)(**leaves)
    torch.testing.assert_close(out, f(**leaves))


def test_unsupported_inputs_fail_in_one_line_when_the_kernels_are_forced(monkeypatch):
    leaves = {k: t.detach().double() for k, t in _inputs(1, 2, 3, 3, "sigmoid").items()}
    assert fused.unsupported_reason(leaves["x"]) is not None
    with pytest.raises(ValueError, match="float32, float16 or bfloat16.*use backend='torch'"):
        _call(leaves, "parallel", "sigmoid", "triton")
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    with pytest.raises(ValueError, match=r"float32, float16 or bfloat16.*\$VISATTN_BACKEND=triton forces"):
        _call(leaves, "parallel", "sigmoid", None)


X, W = torch.zeros(1, 4, 3, 5), torch.zeros(4)
SAME = (lambda p: p, lambda m: m)
BAD = {
    "x_3d": ((X[0], W, *SAME), {}, r"expected a floating-point x of shape \(B, C, H, W\)"),
    "integer": ((X.long(), W, *SAME), {}, "expected a floating-point x"),
    "query": ((X, W[:3], *SAME), {}, r"channel_query of 4 elements"),
    "callable": ((X, W, None, SAME[1]), {}, "must be callables"),
    "layout": ((X, W, *SAME), {"layout": "diagonal"}, "layout='diagonal'; use one of parallel, sequential"),
    "spatial": ((X, W, *SAME), {"spatial": "tanh"}, "spatial='tanh'; use one of sigmoid"),
    "value_missing": ((X, W, *SAME), {"spatial": "softmax_before"}, "spatial_value .* is needed"),
    "value_shape": ((X, W, *SAME), {"spatial": "softmax_before", "spatial_value": torch.zeros(2, 3)},
                    r"spatial_value of shape \(C', 4\)"),
    "device": ((X, W.to("meta"), *SAME), {}, "must share a device"),
    "transform_shape": ((X, W, lambda p: p[:, :2], SAME[1]), {}, r"channel_transform must return .* \(1, 4\)"),
    "query_shape": ((X, W, SAME[0], lambda m: m), {"spatial": "softmax_before", "spatial_value": torch.zeros(2, 4)},
                    r"spatial_transform must return .* \(1, 2\), got \(1, 4\)"),
}


@pytest.mark.parametrize("args,kwargs,match", BAD.values(), ids=BAD.keys())
def test_bad_arguments_are_one_line_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        polarized_attention(*args, **kwargs)
    assert "\n" not in str(info.value)
