"""Attention-guided filter: the reference against an independent float64 formula (explicit window sums clipped at
the borders, as the official cumulative-sum box filter computes them), tiny maps, half inputs, argument errors, and
the fused Triton kernels against the reference (under Triton's interpreter on CPU tensors here, on the GPU through
benchmarks/gpu_suite.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import DEVICE
from tests.ops._compare import assert_matches_reference
from visattn.ops.guided_filter import attention_guided_filter, check_guided_filter_args, fused
from visattn.ops.guided_filter import triton as kernels
from visattn.ops.guided_filter.reference import guided_filter_reference


def window_sum(x: torch.Tensor, r: int) -> torch.Tensor:
    """Sum over each (2r+1) x (2r+1) window clipped to the map, one pixel at a time."""
    h, w = x.shape[-2:]
    out = torch.empty_like(x)
    for i in range(h):
        for j in range(w):
            out[..., i, j] = x[..., max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1].sum((-2, -1))
    return out


def official_formula(x, y, weights, hr, r, eps):
    """FSG-Net's FastGuidedFilter_attention in float64, with the weight total taken per sample."""
    x, y, hr = x.double(), y.double(), hr.double()
    a = weights.double().abs() + 1e-12
    t = a / a.sum((1, 2, 3), keepdim=True)
    n = window_sum(torch.ones(1, 1, *x.shape[-2:], dtype=torch.float64), r)
    mean = lambda v: window_sum(v, r) / n  # noqa: E731
    mean_a, mean_ax, mean_ay, mean_tax = mean(a), mean(a * x), mean(a * y), mean(t * a * x)
    A = (mean(a * a * x * y) - n * mean_tax * mean_ay) / ((mean(a * a * x * x) - n * mean_tax * mean_ax).abs() + eps)
    b = (mean_ay - A * mean_ax) / mean_a
    A = F.interpolate(mean(A), hr.shape[-2:], mode="bilinear", align_corners=True)
    b = F.interpolate(mean(b), hr.shape[-2:], mode="bilinear", align_corners=True)
    return A * hr + b


def _inputs(b, c, h, w, H, W, c_x=None, c_a=1, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    c_x = c if c_x is None else c_x
    x = torch.randn(b, c_x, h, w, generator=g)
    y = torch.randn(b, c, h, w, generator=g)
    a = torch.rand(b, c_a, h, w, generator=g)
    hr = torch.randn(b, c_x, H, W, generator=g)
    return [t.to(dtype) for t in (x, y, a, hr)]


@pytest.mark.parametrize("shape", [(2, 3, 9, 11, 18, 22), (1, 4, 19, 16, 38, 32), (2, 2, 5, 5, 10, 10),
                                   (1, 2, 1, 1, 2, 2), (1, 3, 2, 3, 4, 6), (2, 1, 3, 7, 5, 13)])
@pytest.mark.parametrize("radius", [1, 2])
def test_reference_matches_the_official_formula(shape, radius):
    b, c, h, w, H, W = shape
    x, y, a, hr = _inputs(b, c, h, w, H, W)
    out = attention_guided_filter(x, y, a, hr, radius, 1e-2)
    assert out.shape == (b, c, H, W) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), official_formula(x, y, a, hr, radius, 1e-2), rtol=1e-5, atol=1e-5)


def test_single_channel_guide_and_per_channel_weights_broadcast():
    x, y, a, hr = _inputs(2, 3, 8, 9, 16, 17, c_x=1, c_a=3)
    out = attention_guided_filter(x, y, a, hr, 2, 1e-2)
    assert out.shape == (2, 3, 16, 17)
    torch.testing.assert_close(out.double(), official_formula(x, y, a, hr, 2, 1e-2), rtol=1e-5, atol=1e-5)


def test_samples_are_filtered_independently():
    x, y, a, hr = _inputs(3, 2, 10, 10, 20, 20)
    both = attention_guided_filter(x, y, a, hr)
    one = attention_guided_filter(x[1:2], y[1:2], a[1:2], hr[1:2])
    torch.testing.assert_close(both[1:2], one)


def test_float32_reaches_float64_accuracy_at_model_sizes():
    x, y, a, hr = _inputs(1, 4, 76, 76, 152, 152, seed=3)
    x, y, hr = x * 3, y * 3, hr * 3  # activations of a trained network are not unit-sized
    out = attention_guided_filter(x, y, a, hr)
    expected = guided_filter_reference(x.double(), y.double(), a.double(), hr.double(), 2, 1e-2)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32(dtype):
    x, y, a, hr = _inputs(2, 3, 12, 10, 24, 20, dtype=dtype)
    out = attention_guided_filter(x, y, a, hr)
    assert out.dtype == dtype
    expected = official_formula(x, y, a, hr, 2, 1e-2)  # from the same half-precision inputs
    # the only error is rounding the float32 result to the output dtype
    torch.testing.assert_close(out.double(), expected, rtol=torch.finfo(dtype).eps, atol=1e-3)


def test_float64_fails_in_one_line_when_the_kernels_are_forced(monkeypatch):
    x, y, a, hr = (t.double() for t in _inputs(1, 2, 6, 6, 12, 12))
    with pytest.raises(ValueError, match=r"float32, float16 or bfloat16, got torch.float64; use backend='torch'$"):
        attention_guided_filter(x, y, a, hr, backend="triton")
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    with pytest.raises(ValueError, match=r"got torch.float64; \$VISATTN_BACKEND=triton forces the kernels"):
        attention_guided_filter(x, y, a, hr)
    torch.testing.assert_close(attention_guided_filter(x, y, a, hr, backend="torch"),
                               guided_filter_reference(x, y, a, hr, 2, 1e-2))


def test_meta_tensors_give_the_output_shape():
    x, y, a, hr = (t.to("meta") for t in _inputs(2, 3, 8, 8, 16, 16))
    assert attention_guided_filter(x, y, a, hr).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("change, message", [
    (dict(radius=0), "radius must be an integer >= 1, got 0"),
    (dict(radius=1.5), "radius must be an integer >= 1, got 1.5"),
    (dict(eps=0.0), "eps must be > 0, got 0.0"),
    (dict(eps=-1e-3), "eps must be > 0"),
    (dict(target_lowres=torch.randn(2, 3, 7, 8)), "target_lowres (2, 3, 7, 8) must be"),
    (dict(guide_lowres=torch.randn(2, 2, 8, 8)), "target_lowres (2, 3, 8, 8) must be"),
    (dict(weights=torch.rand(2, 2, 8, 8)), "weights (2, 2, 8, 8) must be"),
    (dict(weights=torch.rand(1, 1, 8, 8)), "weights (1, 1, 8, 8) must be"),
    (dict(guide_highres=torch.randn(2, 1, 16, 16)), "guide_highres (2, 1, 16, 16) must be"),
    (dict(guide_highres=torch.randn(2, 3, 16)), "expected (B, C, H, W)"),
    (dict(weights=torch.rand(2, 1, 8, 8, dtype=torch.float64)), "inputs must share one floating dtype"),
])
def test_bad_arguments_are_one_line_errors(change, message):
    x, y, a, hr = _inputs(2, 3, 8, 8, 16, 16)
    args = dict(guide_lowres=x, target_lowres=y, weights=a, guide_highres=hr, radius=2, eps=1e-2) | change
    with pytest.raises(ValueError) as info:
        check_guided_filter_args(**args)
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError):
        attention_guided_filter(**args)


# ---- the fused Triton path -------------------------------------------------------------------------------------

FUSED_TOL = {torch.float32: dict(atol=3e-5, rtol=3e-5), torch.float16: dict(atol=3e-3, rtol=3e-3),
             torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
# The interpreter mishandles bf16: bf16 is checked on a GPU only.
FUSED_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE != "cpu" else [])
# (B, C_y, h, w, H, W, C_x, C_a): tiny maps, odd maps, a one-channel guide for several targets, per-channel weights
FUSED_CASES = {
    "1x1": (1, 2, 1, 1, 2, 2, 2, 1),
    "2x3": (1, 3, 2, 3, 4, 6, 1, 3),
    "7x5": (2, 3, 7, 5, 13, 11, 3, 1),
    "16x16": (1, 2, 16, 16, 32, 32, 1, 1),
}


def _leaves(b, c, h, w, H, W, c_x, c_a, dtype=torch.float32, seed=0):
    x, y, a, hr = _inputs(b, c, h, w, H, W, c_x=c_x, c_a=c_a, seed=seed)
    a = a * 2 - 1  # signed weights: their absolute value is used
    names = ("guide_lowres", "target_lowres", "weights", "guide_highres")
    return {k: t.to(DEVICE, dtype).requires_grad_() for k, t in zip(names, (x, y, a, hr), strict=True)}


@pytest.mark.parametrize("dtype", FUSED_DTYPES, ids=str)
@pytest.mark.parametrize("radius", [1, 2, 3])
@pytest.mark.parametrize("case", FUSED_CASES.values(), ids=FUSED_CASES.keys())
def test_fused_forward_and_gradients_match_the_reference(case, radius, dtype):
    leaves = _leaves(*case, dtype=dtype)
    ref_leaves = {k: t.detach().float().requires_grad_() for k, t in leaves.items()}
    out = attention_guided_filter(**leaves, radius=radius, backend="triton")
    ref = attention_guided_filter(**ref_leaves, radius=radius, backend="torch")
    assert out.dtype == dtype and out.shape == (case[0], case[1], case[4], case[5])
    assert_matches_reference(out, ref, leaves, FUSED_TOL[dtype], ref_leaves)


def test_fused_radius_beyond_the_map_is_the_whole_map():
    leaves = _leaves(2, 2, 3, 4, 5, 9, 2, 2)
    out = attention_guided_filter(**leaves, radius=9, backend="triton")
    whole = attention_guided_filter(**leaves, radius=3, backend="torch")  # covers 3 x 4 from every pixel
    assert_matches_reference(out, whole, leaves, FUSED_TOL[torch.float32])


def test_fused_downsampling_and_one_pixel_outputs():
    for shape in [(1, 2, 6, 5, 3, 1, 2, 1), (1, 1, 4, 4, 1, 1, 1, 1), (1, 2, 5, 6, 5, 6, 1, 2)]:
        leaves = _leaves(*shape)
        out = attention_guided_filter(**leaves, radius=2, backend="triton")
        ref = attention_guided_filter(**leaves, radius=2, backend="torch")
        assert_matches_reference(out, ref, leaves, FUSED_TOL[torch.float32])


def test_fused_takes_non_contiguous_inputs():
    leaves = _leaves(1, 2, 5, 7, 9, 13, 2, 1)
    leaves = {k: t.detach().transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_()
              for k, t in leaves.items()}
    out = attention_guided_filter(**leaves, backend="triton")
    ref = attention_guided_filter(**leaves, backend="torch")
    assert_matches_reference(out, ref, leaves, FUSED_TOL[torch.float32])


def test_fused_half_inputs_stay_accurate_at_model_sizes():
    """float16 inputs: every sum in float32, so the output is the float64 result of the same half inputs up to the
    output's rounding."""
    leaves = _leaves(1, 2, 38, 38, 76, 76, 2, 1, dtype=torch.float16, seed=3)
    args = [t.detach() for t in leaves.values()]
    out = attention_guided_filter(*args, backend="triton")
    expected = guided_filter_reference(*(t.double() for t in args), 2, 1e-2)
    torch.testing.assert_close(out.double(), expected, rtol=torch.finfo(torch.float16).eps, atol=2e-3)


def test_only_inputs_and_low_res_tensors_are_saved():
    b, c, h, w, H, W = 2, 3, 8, 8, 16, 16
    leaves = _leaves(b, c, h, w, H, W, c, 1)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attention_guided_filter(**leaves, backend="triton")
    inputs = {t.data_ptr() for t in leaves.values()}
    extra = [t for t in saved if t.data_ptr() not in inputs]
    assert len(saved) == 6 and len(extra) == 2, [tuple(t.shape) for t in saved]
    assert all(tuple(t.shape) == (b, c, h, w) and t.dtype == torch.float32 for t in extra)


def test_kernel_tiles_cover_the_maps():
    tiling = kernels.Tiling(torch.empty(1, 1, 40, 100), torch.empty(1, 3, 40, 100), torch.empty(1, 1, 80, 200), 9)
    bh, bw, tiles = tiling.low
    assert bw == 64 and tiles == -(-40 // bh) * 2 and (tiling.ry, tiling.rx) == (9, 9)
    tiny = kernels.Tiling(torch.empty(1, 1, 1, 2), torch.empty(1, 1, 1, 2), torch.empty(1, 1, 1, 5), 3)
    assert (tiny.ry, tiny.rx, tiny.scale_y, tiny.scale_x) == (0, 1, 0.0, 0.25)


def _flops(b, c, h, w, H, W, radius, backward):
    window = (2 * min(radius, h - 1) + 1) * (2 * min(radius, w - 1) + 1)
    low, high = b * c * h * w, b * c * H * W
    if backward:
        return low * (8 * window + fused.LOW_POINTWISE_BACKWARD) + high * fused.HIGH_BACKWARD
    return low * (8 * window + fused.LOW_POINTWISE_FORWARD) + high * fused.HIGH_FORWARD


def test_flop_counter_sees_the_fused_op():
    leaves = _leaves(2, 3, 5, 4, 10, 8, 1, 1)
    with FlopCounterMode(display=False) as counter:
        attention_guided_filter(**leaves, radius=2, backend="triton").sum().backward()
    by_op = {str(op): count for op, count in counter.get_flop_counts()["Global"].items()}
    assert by_op["visattn.guided_filter"] == _flops(2, 3, 5, 4, 10, 8, 2, False)
    assert by_op["visattn.guided_filter_backward"] == _flops(2, 3, 5, 4, 10, 8, 2, True)


def test_flop_counter_on_meta_tensors(monkeypatch):
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    x, y, a, hr = (torch.empty(s, device="meta") for s in [(2, 16, 38, 38), (2, 16, 38, 38), (2, 1, 38, 38),
                                                            (2, 16, 76, 76)])
    with FlopCounterMode(display=False) as counter:
        out = attention_guided_filter(x, y, a, hr, radius=2)
    assert out.shape == (2, 16, 76, 76) and out.is_meta
    assert counter.get_total_flops() == _flops(2, 16, 38, 38, 76, 76, 2, False) == 2 * 16 * (
        38 * 38 * (8 * 25 + 20) + 76 * 76 * 18)


def test_torch_compile_traces_the_fused_op():
    leaves = _leaves(1, 2, 5, 6, 9, 11, 1, 1)

    def f(guide_lowres, target_lowres, weights, guide_highres):
        return attention_guided_filter(guide_lowres, target_lowres, weights, guide_highres, backend="triton") * 2

    out = torch.compile(f, fullgraph=True)(**leaves)
    torch.testing.assert_close(out, f(**leaves))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_mixed_dtypes_under_autocast_compute_in_float32(backend):
    """Autocast hands the filter half maps next to float32 ones (a norm's output): both backends take them, read each
    in its own dtype, return the promoted dtype and give each input a gradient of its dtype."""
    leaves = _leaves(1, 2, 6, 7, 12, 14, 2, 1, dtype=torch.float16)
    leaves["target_lowres"] = leaves["target_lowres"].detach().float().requires_grad_()
    ref_leaves = {k: t.detach().float().requires_grad_() for k, t in leaves.items()}
    with pytest.raises(ValueError, match="inputs must share one floating dtype"):
        attention_guided_filter(**leaves, backend=backend)
    with torch.autocast(DEVICE, dtype=torch.float16):
        out = attention_guided_filter(**leaves, backend=backend)
    assert out.dtype == torch.float32
    ref = attention_guided_filter(**ref_leaves, backend="torch")
    assert_matches_reference(out, ref, leaves, FUSED_TOL[torch.float16], ref_leaves, fused=backend == "triton")


@pytest.mark.parametrize("radius", [0, 1, 3, 9])
def test_box_mean_is_the_mean_of_each_clipped_window_even_under_autocast(radius):
    """Against the windows averaged one by one in float64: float32 sums stay accurate, also where CPU autocast would
    take convolutions to bfloat16, and a radius past the map clips to it."""
    from visattn.ops.guided_filter.reference import box_mean

    x = torch.rand(2, 3, 7, 5) * 100
    expected = torch.empty(2, 3, 7, 5, dtype=torch.float64)
    for i in range(7):
        for j in range(5):
            window = x.double()[..., max(i - radius, 0):i + radius + 1, max(j - radius, 0):j + radius + 1]
            expected[..., i, j] = window.mean(dim=(-2, -1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mean = box_mean(x, radius)
    assert mean.dtype == torch.float32
    torch.testing.assert_close(mean.double(), expected, rtol=1e-6, atol=0)
