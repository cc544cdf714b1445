"""tests/triton_interpreter.py: the interpreter's reductions and scans with a kernel's own combine function, folded
slice by slice, give bitwise what Triton's element-by-element loop gives."""

import dataclasses
import functools

import pytest
import torch
import triton
import triton.language as tl
from triton.runtime import interpreter

from tests import triton_interpreter
from tests.conftest import DEVICE
from visattn.ops.selective_scan.triton import _affine_combine
from visattn.ops.sparse_attention.triton import _bit_or

pytestmark = pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter runs the kernels on CPU only")


@triton.jit
def _kernel(BITS, A, B, OR_OUT, OR_KEPT, OR_ALL, A_OUT, B_OUT, P: tl.constexpr, R: tl.constexpr, C: tl.constexpr,
            AXIS: tl.constexpr, REVERSE: tl.constexpr):
    """(P, R, C) blocks: the OR of the bit words along AXIS (dropped and kept) and over everything, and the running
    composition of the affine maps (a, b) along AXIS."""
    p = tl.arange(0, P)[:, None, None]
    r = tl.arange(0, R)[None, :, None]
    c = tl.arange(0, C)[None, None, :]
    offs = (p * R + r) * C + c
    bits = tl.load(BITS + offs)
    folded = tl.reduce(bits, AXIS, _bit_or)
    tl.store(OR_OUT + tl.arange(0, folded.numel), tl.reshape(folded, [folded.numel]))
    kept = tl.reduce(bits, AXIS, _bit_or, keep_dims=True)
    tl.store(OR_KEPT + tl.arange(0, kept.numel), tl.reshape(kept, [kept.numel]))
    tl.store(OR_ALL, tl.reduce(tl.reshape(bits, [P * R * C]), 0, _bit_or))
    a_cum, b_cum = tl.associative_scan((tl.load(A + offs), tl.load(B + offs)), AXIS, _affine_combine, reverse=REVERSE)
    tl.store(A_OUT + offs, a_cum)
    tl.store(B_OUT + offs, b_cum)


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    shape = (2, 4, 8)
    bits = torch.ones(shape, dtype=torch.int64) << torch.randint(0, 64, shape)  # bit 63 included: the sign bit
    return bits, torch.rand(shape) + 0.5, torch.randn(shape)


def _run(axis: int, reverse: bool) -> list[torch.Tensor]:
    bits, a, b = _inputs()
    shape = tuple(bits.shape)
    outs = [torch.zeros(bits.numel() // shape[axis], dtype=torch.int64),
            torch.zeros(bits.numel() // shape[axis], dtype=torch.int64), torch.zeros(1, dtype=torch.int64),
            torch.zeros(shape), torch.zeros(shape)]
    _kernel[(1,)](bits, a, b, *outs, *shape, axis, reverse)
    return outs


def _expected(axis: int, reverse: bool) -> list[torch.Tensor]:
    """The same folds in torch, element for element."""
    bits, a, b = _inputs()
    folded = functools.reduce(torch.bitwise_or, bits.unbind(axis))
    everything = functools.reduce(torch.bitwise_or, bits.flatten().unbind(0))
    steps = range(a.shape[axis] - 1, -1, -1) if reverse else range(a.shape[axis])
    a_cum, b_cum = torch.empty_like(a), torch.empty_like(b)
    acc = None
    for i in steps:
        a_i, b_i = a.select(axis, i), b.select(axis, i)
        acc = (a_i, b_i) if acc is None else (acc[0] * a_i, a_i * acc[1] + b_i)
        a_cum.select(axis, i).copy_(acc[0])
        b_cum.select(axis, i).copy_(acc[1])
    return [folded.flatten(), folded.flatten(), everything.reshape(1), a_cum, b_cum]


@pytest.mark.parametrize("axis,reverse", [(2, False), (2, True), (1, True), (0, False)])
def test_sliced_reduce_and_scan_equal_the_element_loop(axis, reverse, monkeypatch):
    assert interpreter.ReduceOps.generic_reduce is triton_interpreter._sliced_reduce  # installed by conftest
    assert interpreter.ScanOps.generic_scan is triton_interpreter._sliced_scan
    calls = []
    for cls, name, sliced_fn in ((interpreter.ReduceOps, "generic_reduce", triton_interpreter._sliced_reduce),
                                 (interpreter.ScanOps, "generic_scan", triton_interpreter._sliced_scan)):
        monkeypatch.setattr(cls, name, lambda self, input, fn=sliced_fn: calls.append(fn) or fn(self, input))
    sliced = _run(axis, reverse)
    assert calls.count(triton_interpreter._sliced_reduce) == 3 and calls.count(triton_interpreter._sliced_scan) == 1
    monkeypatch.setattr(interpreter.ReduceOps, "generic_reduce", triton_interpreter.ELEMENTWISE_REDUCE)
    monkeypatch.setattr(interpreter.ScanOps, "generic_scan", triton_interpreter.ELEMENTWISE_SCAN)
    looped = _run(axis, reverse)
    for got, want, expected in zip(sliced, looped, _expected(axis, reverse), strict=True):
        assert torch.equal(got, want)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_a_triton_without_the_patched_fallback_is_an_error():
    class Ops:
        def apply_impl(self, input):
            return self.renamed_reduce(input)

        def renamed_reduce(self, input):
            return input

    with pytest.raises(RuntimeError, match="no longer falls back to generic_reduce"):
        triton_interpreter._fallback(Ops, "generic_reduce")
    Ops.generic_reduce = Ops.renamed_reduce  # still there, but no longer called
    with pytest.raises(RuntimeError, match="no longer falls back to generic_reduce"):
        triton_interpreter._fallback(Ops, "generic_reduce")


@triton.jit
def _scaled(x, factor):
    """A device function: called once per program by :func:`_helper_kernel`."""
    return x * factor + tl.full(x.shape, 1, x.dtype)


@triton.jit
def _helper_kernel(X, OUT, N: tl.constexpr):
    offs = tl.program_id(0) * N + tl.arange(0, N)
    tl.store(OUT + offs, _scaled(_scaled(tl.load(X + offs), 2), 3))


def test_the_language_is_patched_once_per_launch_and_restored_after_it(monkeypatch):
    assert interpreter._patch_lang is triton_interpreter._patch_lang_once  # installed by conftest
    patched, original = [], triton_interpreter.PATCH_LANG
    monkeypatch.setattr(triton_interpreter, "PATCH_LANG", lambda fn: patched.append(fn.__name__) or original(fn))
    x = torch.arange(12, dtype=torch.float32)
    out = torch.empty_like(x)
    _helper_kernel[(3,)](x, out, 4)
    assert patched == ["_helper_kernel"]  # the launch; not the six helper calls of its three programs
    torch.testing.assert_close(out, (x * 2 + 1) * 3 + 1)
    assert tl.core.is_builtin(tl.load)  # restored after the launch


@triton.jit
def _double_kernel(X, OUT):
    tl.store(OUT, tl.load(X) + tl.load(X))


def test_int32_arithmetic_wraps_with_or_without_the_overflow_checks(monkeypatch):
    """The interpreter's overflow checks end in a device assert that, without ``debug``, asserts nothing: turning them
    off changes no result."""
    x = torch.tensor([2**30 + 5], dtype=torch.int32)
    unchecked, checked = torch.empty_like(x), torch.empty_like(x)
    _double_kernel[(1,)](x, unchecked)
    options = interpreter.interpreter_builder.options
    assert not options.sanitize_overflow and not options.debug
    checked_options = dataclasses.replace(options, sanitize_overflow=True)
    monkeypatch.setattr(interpreter.interpreter_builder, "options", checked_options)
    _double_kernel[(1,)](x, checked)
    assert unchecked.item() == checked.item() == 2 * (2**30 + 5) - 2**32


def test_the_overflow_checks_stay_under_debug_and_a_triton_without_them_is_an_error(monkeypatch):
    debugging = dataclasses.replace(interpreter.interpreter_builder.options, debug=True, sanitize_overflow=True)
    monkeypatch.setattr(interpreter.interpreter_builder, "options", debugging)
    assert triton_interpreter._options_without_overflow_checks() is debugging
    monkeypatch.setattr(interpreter.interpreter_builder, "options", object())
    with pytest.raises(RuntimeError, match="no sanitize_overflow"):
        triton_interpreter._options_without_overflow_checks()


def test_the_numpy_type_lookup_gives_the_interpreters_types():
    types = [tl.float16, tl.float32, tl.bfloat16, tl.int1, tl.int32, tl.int64, tl.uint8, tl.pointer_type(tl.float32)]
    for ty in types + [tl.block_type(ty, [4, 2]) for ty in types]:
        assert triton_interpreter._np_dtype(ty) == triton_interpreter.GET_NP_DTYPE(ty), ty
