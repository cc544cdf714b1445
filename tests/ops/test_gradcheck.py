"""Every op's backward against finite differences in float64 (``torch.autograd.gradcheck``), in every mode it has.

The references are plain autograd graphs, checked element by element. The fused custom ops run on float64 inputs
under Triton's interpreter (CPU tensors; on a GPU the kernels are written for float32 and half): those whose kernels
keep float64 through the forward are gradchecked as well; the others round some inputs or sums to float32, below
what finite differences resolve, and their float64 gradients are compared with the (gradchecked) reference's.
"""

import importlib

import pytest
import torch
from torch.autograd import gradcheck

from tests.conftest import DEVICE
from tests.ops._compare import assert_matches_reference

F64 = dict(dtype=torch.float64, device=DEVICE)
# Ops whose kernels keep float64 through the forward under the interpreter.
FLOAT64_KERNELS = ("routed_attention", "sparse_attention")
# Fused against reference gradients: the float32 sums of the other kernels.
FUSED_TOL = dict(atol=2e-5, rtol=2e-5)


def _randn(*shape):
    return torch.randn(shape, **F64).requires_grad_()


def _positive(*shape):
    return (torch.rand(shape, **F64) + 0.1).requires_grad_()


def routed(b, h, w, c_v, n_win, topk):
    """(B, H, W, 4) q and k and (B, H, W, c_v) v, two heads (the routing has no gradient, and the perturbations of
    finite differences are far too small to change it)."""
    def make(impl):
        q, k, v = _randn(b, h, w, 4), _randn(b, h, w, 4), _randn(b, h, w, c_v)
        return lambda q, k, v: impl(q, k, v, 2, n_win, topk, 0.5), (q, k, v)
    return make


def window(h, w, ws, shift, bias):
    """(1, H, W, 4) q and k and (1, H, W, 6) v, two heads, with or without a bias table."""
    def make(impl):
        tensors = (_randn(1, h, w, 4), _randn(1, h, w, 4), _randn(1, h, w, 6))
        if bias:
            table = _randn(2, (2 * ws - 1) ** 2)
            return lambda q, k, v, table: impl(q, k, v, table, 2, ws, shift, 0.5), (*tensors, table)
        return lambda q, k, v: impl(q, k, v, None, 2, ws, shift, 0.5), tensors
    return make


def sparse(heads_i, dense_keys, normalize):
    """5 queries over 6 keys, 3 indices each with padding and repeats; with no dense keys the first query attends
    nothing."""
    def make(impl):
        idx = torch.tensor([[-1, 9, -1], [0, 0, 5], [2, 3, -1], [5, 4, 1], [1, 1, 1]], device=DEVICE)
        idx = torch.stack([idx, idx.roll(1, 0)])[:heads_i][None]
        tensors = (_randn(1, 2, 5, 4), _randn(1, 2, 6, 4), _randn(1, 2, 6, 3))
        return lambda q, k, v: impl(q, k, v, idx, dense_keys, normalize, 0.5), tensors
    return make


def linear(injective=False, normalize=False, separate=False):
    """(1, 2, 5, 3) q and k (and norm_q, norm_k when ``separate``), (1, 2, 5, 4) v."""
    def make(impl):
        features = _positive if normalize else _randn  # positive normalizers, as after a feature map
        tensors = (features(1, 2, 5, 3), features(1, 2, 5, 3), _randn(1, 2, 5, 4))
        if separate:
            return (lambda q, k, v, nq, nk: impl(q, k, v, 0.3, injective, normalize, nq, nk, 1e-6),
                    (*tensors, _positive(1, 2, 5, 3), _positive(1, 2, 5, 3)))
        return lambda q, k, v: impl(q, k, v, 0.3, injective, normalize, None, None, 1e-6), tensors
    return make


def scan(options, softplus):
    """batch 1, d = 4 in g = 2 groups, n = 3 states, L = 5 steps; ``options`` among D, z, delta_bias."""
    def make(impl):
        delta = _randn(1, 4, 5) if softplus else _positive(1, 4, 5)
        A = (-0.5 - torch.rand(4, 3, **F64)).requires_grad_()
        tensors = {"u": _randn(1, 4, 5), "delta": delta, "A": A, "B": _randn(1, 2, 3, 5), "C": _randn(1, 2, 3, 5),
                   "D": _randn(4), "z": _randn(1, 4, 5), "delta_bias": _randn(4)}
        tensors = {name: t for name, t in tensors.items() if name in ("u", "delta", "A", "B", "C") + options}
        return lambda *t: impl(**dict(zip(tensors, t, strict=True)), delta_softplus=softplus), tuple(tensors.values())
    return make


def polarized(layout, spatial):
    """x (1, 3, 2, 3) and linear transforms closing over A (3, 3) and H (3, 3), or H (3, 2) and W_v (2, 3)."""
    def make(impl):
        before = spatial == "softmax_before"
        tensors = (_randn(1, 3, 2, 3), _randn(3), _randn(3, 3), _randn(3, 2 if before else 3))

        def call(x, w_q, a, h, w_v=None):
            return impl(x, w_q, lambda p: p @ a, lambda m: m @ h, layout, spatial, w_v)
        return call, tensors + ((_randn(2, 3),) if before else ())
    return make


def guided(c_x, c_a, radius):
    """(1, 2, 3, 4) target upsampled to (5, 7), guides of ``c_x`` channels, weights of ``c_a``."""
    def make(impl):
        weights = (torch.rand(1, c_a, 3, 4, **F64) + 0.2).requires_grad_()
        tensors = (_randn(1, c_x, 3, 4), _randn(1, 2, 3, 4), weights, _randn(1, c_x, 5, 7))
        return lambda x, y, a, f: impl(x, y, a, f, radius, 1e-2), tensors
    return make


CASES = {
    "routed_attention": {"padded": routed(1, 3, 5, 6, 2, 2), "map_smaller_than_grid": routed(2, 2, 3, 4, 3, 4)},
    "window_attention": {"bias": window(4, 4, 2, 0, True), "shift_padded_bias": window(4, 5, 3, 1, True),
                         "map_smaller_than_window": window(3, 2, 4, 2, False)},
    "sparse_attention": {f"{normalize}_{name}": sparse(*args, normalize) for normalize in ("attended", "all")
                         for name, args in {"sparse": (2, 0), "dense_keys_shared": (1, 2)}.items()},
    "linear_attention": {"plain": linear(), "injective": linear(injective=True), "normalize": linear(normalize=True),
                         "normalize_separate": linear(normalize=True, separate=True)},
    "selective_scan": {"all_options": scan(("D", "z", "delta_bias"), True), "plain": scan((), False)},
    "polarized_attention": {f"{layout}_{spatial}": polarized(layout, spatial) for layout in ("parallel", "sequential")
                            for spatial in ("sigmoid", "softmax_after", "softmax_before")},
    "guided_filter": {"radius1": guided(2, 1, 1), "one_channel_guide": guided(1, 2, 2),
                      "radius_beyond_map": guided(2, 2, 5)},
}
PARAMS = [pytest.param(op, make, id=f"{op}-{name}") for op, cases in CASES.items() for name, make in cases.items()]


def _impl(op, kind):
    return getattr(importlib.import_module(f"visattn.ops.{op}.{kind}"), f"{op}_{kind}")


@pytest.mark.parametrize("op,make", PARAMS)
def test_reference_backward_matches_finite_differences(op, make):
    fn, inputs = make(_impl(op, "reference"))
    assert gradcheck(fn, inputs)


@pytest.mark.skipif(DEVICE != "cpu", reason="float64 kernels run under the interpreter only")
@pytest.mark.parametrize("op,make", [p for p in PARAMS if p.values[0] in FLOAT64_KERNELS])
def test_fused_backward_matches_finite_differences(op, make):
    fn, inputs = make(_impl(op, "fused"))
    assert gradcheck(fn, inputs, fast_mode=True)


@pytest.mark.skipif(DEVICE != "cpu", reason="float64 kernels run under the interpreter only")
@pytest.mark.parametrize("op,make", PARAMS)
def test_fused_float64_gradients_match_the_reference(op, make):
    torch.manual_seed(0)
    fn, inputs = make(_impl(op, "fused"))
    torch.manual_seed(0)
    ref_fn, ref_inputs = make(_impl(op, "reference"))
    assert_matches_reference(fn(*inputs), ref_fn(*ref_inputs), dict(enumerate(inputs)), FUSED_TOL,
                             dict(enumerate(ref_inputs)))
