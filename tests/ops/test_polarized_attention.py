"""Polarized gating: the reference against the formula, argument errors, and the fused Triton kernels against the
reference (under Triton's interpreter on CPU tensors here, on the GPU through benchmarks/gpu_suite.py)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import DEVICE
from tests.ops._compare import assert_matches_reference
from visattn.ops.polarized_attention import fused, polarized_attention
from visattn.ops.polarized_attention import triton as kernels

TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=3e-3, rtol=3e-3),
       torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
# The interpreter mishandles bf16: bf16 is checked on a GPU only.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE != "cpu" else [])
MODES = [("parallel", True), ("parallel", False), ("sequential", False), ("sequential", True)]


def _inputs(b, c, h, w, dtype=torch.float32):
    x = torch.randn(b, c, h, w, device=DEVICE, dtype=dtype).requires_grad_()
    g = torch.randn(b, c, device=DEVICE).requires_grad_()
    s = (torch.randn(b, h, w, device=DEVICE) * 3).requires_grad_()
    return {"x": x, "channel_logits": g, "spatial_logits": s}


def test_reference_matches_the_formula():
    x, g, s = torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64), \
        torch.randn(2, 4, 5, dtype=torch.float64)
    for layout, softmax in MODES:
        out = polarized_attention(x, g, s, layout=layout, spatial_softmax=softmax, backend="torch")
        for bi in range(2):
            t = torch.exp(s[bi]) / torch.exp(s[bi]).sum() if softmax else s[bi]
            a_sp = 1 / (1 + torch.exp(-t))
            for ci in range(3):
                a_ch = 1 / (1 + torch.exp(-g[bi, ci]))
                want = x[bi, ci] * (a_ch + a_sp) if layout == "parallel" else x[bi, ci] * a_ch * a_sp
                torch.testing.assert_close(out[bi, ci], want)


CASES = {"tiny": (1, 1, 1, 1), "odd": (2, 5, 3, 7), "rows": (1, 20, 1, 9), "tiles": (2, 33, 13, 11)}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout,softmax", MODES)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_fused_forward_and_gradients_match_the_reference(case, layout, softmax, dtype):
    leaves = _inputs(*case, dtype=dtype)
    ref_leaves = {k: t.detach().float().requires_grad_() for k, t in leaves.items()}
    out = polarized_attention(**leaves, layout=layout, spatial_softmax=softmax, backend="triton")
    ref = polarized_attention(**ref_leaves, layout=layout, spatial_softmax=softmax, backend="torch")
    assert out.dtype == dtype
    assert_matches_reference(out, ref, leaves, TOL[dtype], ref_leaves)


def test_fused_takes_non_contiguous_maps():
    x = torch.randn(2, 7, 5, 6, device=DEVICE).permute(0, 1, 3, 2).requires_grad_()
    leaves = {"x": x, "channel_logits": torch.randn(2, 7, device=DEVICE).requires_grad_(),
              "spatial_logits": torch.randn(2, 6, 5, device=DEVICE).requires_grad_()}
    out = polarized_attention(**leaves, layout="sequential", backend="triton")
    ref = polarized_attention(**leaves, layout="sequential", backend="torch")
    assert_matches_reference(out, ref, leaves, TOL[torch.float32])


def test_nothing_c_by_n_is_saved_beyond_x():
    b, c, h, w = 2, 16, 8, 8
    leaves = _inputs(b, c, h, w)
    saved = {}

    def pack(t):
        saved[backend].append(t.numel())
        return t

    for backend in ("torch", "triton"):
        saved[backend] = []
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            polarized_attention(**leaves, layout="parallel", spatial_softmax=True, backend=backend)
    big = [n for n in saved["triton"] if n >= c * h * w]
    assert big == [b * c * h * w], saved  # x itself, once
    assert sum(saved["triton"]) - b * c * h * w <= 4 * b * (c + h * w), saved  # the rest are gate-sized
    assert sum(n >= b * c * h * w for n in saved["torch"]) >= 2  # the reference keeps a gated map


def test_kernel_tiles_walk_several_channel_and_position_tiles():
    tiling = kernels.Tiling(torch.empty(2, 40, 300))
    assert (tiling.c_tiles, tiling.n_tiles) == (3, 3)


@pytest.mark.parametrize("layout", ["parallel", "sequential"])
def test_flop_counter_sees_the_fused_op(layout):
    b, c, h, w = 2, 6, 5, 3
    leaves = _inputs(b, c, h, w)
    with FlopCounterMode(display=False) as counter:
        polarized_attention(**leaves, layout=layout, backend="triton").sum().backward()
    by_op = {str(op): count for op, count in counter.get_flop_counts()["Global"].items()}
    assert by_op["visattn.polarized_attention"] == 2 * b * c * h * w
    assert by_op["visattn.polarized_attention_backward"] == (7 if layout == "sequential" else 5) * b * c * h * w


def test_flop_counter_on_meta_tensors(monkeypatch):
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    x = torch.empty(2, 64, 14, 14, device="meta")
    with FlopCounterMode(display=False) as counter:
        polarized_attention(x, torch.empty(2, 64, device="meta"), torch.empty(2, 14, 14, device="meta"))
    assert counter.get_total_flops() == 2 * 2 * 64 * 14 * 14


def test_torch_compile_traces_the_fused_op():
    leaves = _inputs(1, 4, 5, 5)

    def f(x, channel_logits, spatial_logits):
        return polarized_attention(x, channel_logits, spatial_logits, spatial_softmax=True, backend="triton") * 2

    out = torch.compile(f, fullgraph=True)(**leaves)
    torch.testing.assert_close(out, f(**leaves))


def test_unsupported_inputs_fall_back_or_fail_in_one_line(monkeypatch):
    leaves = {k: t.detach().double() for k, t in _inputs(1, 2, 3, 3).items()}
    assert fused.unsupported_reason(leaves["x"]) is not None
    with pytest.raises(ValueError, match="float32, float16 or bfloat16.*use backend='torch'"):
        polarized_attention(**leaves, backend="triton")
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    torch.testing.assert_close(polarized_attention(**leaves), polarized_attention(**leaves, backend="torch"))


X = torch.zeros(1, 3, 4, 5)
G = torch.zeros(1, 3)
S = torch.zeros(1, 4, 5)
BAD = {
    "x_3d": ((X[0], G, S), {}, r"expected x of shape \(B, C, H, W\)"),
    "channel_shape": ((X, G[:, :2], S), {}, r"expected channel_logits \(1, 3\) and spatial_logits \(1, 4, 5\)"),
    "spatial_shape": ((X, G, S[:, :3]), {}, r"spatial_logits \(1, 4, 5\) for x"),
    "integer": ((X.long(), G, S), {}, "must be floating point"),
    "device": ((X, G.to("meta"), S), {}, "must share a device"),
    "layout": ((X, G, S), {"layout": "diagonal"}, "layout='diagonal'; use one of parallel, sequential"),
}


@pytest.mark.parametrize("args,kwargs,match", BAD.values(), ids=BAD.keys())
def test_bad_arguments_are_one_line_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        polarized_attention(*args, **kwargs)
    assert "\n" not in str(info.value)
