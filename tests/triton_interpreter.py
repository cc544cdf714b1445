"""Triton's interpreter runs a ``tl.reduce`` or ``tl.associative_scan`` whose combine function is the kernel's own (the
OR of sparse attention's bit words, the selective scan's affine maps) one element at a time, a Python call per element:
4096 for a 64 x 64 tile, most of the CPU time of the kernels that use one. A combine function is elementwise, so
:func:`install` makes the interpreter fold whole slices along the axis instead: every element still sees the same
combines in the same order, in its input's dtype, so the results are bitwise the element loop's
(tests/ops/test_triton_interpreter.py compares the two). It also patches the language once per launch instead of at
every helper call, looks its NumPy types up once, and turns off its integer overflow checks, whose device asserts
assert nothing without ``debug``.

Installed by tests/conftest.py when the kernels run under the interpreter (CPU tests).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import triton
import triton.language as tl
from triton.runtime import interpreter


def _fallback(cls: type, name: str):
    """``cls.name``, the element loop that ``cls.apply_impl`` falls back to: an error if this Triton has no such
    method or no longer calls it (patching it would then change nothing, and the tests would silently run slowly)."""
    method = getattr(cls, name, None)
    if method is None or name not in cls.apply_impl.__code__.co_names:
        raise RuntimeError(f"triton {triton.__version__}: triton.runtime.interpreter.{cls.__name__}.apply_impl no "
                           f"longer falls back to {name}; update tests/triton_interpreter.py for this Triton")
    return method


ELEMENTWISE_REDUCE = _fallback(interpreter.ReduceOps, "generic_reduce")
ELEMENTWISE_SCAN = _fallback(interpreter.ScanOps, "generic_scan")


def _combine(op, acc: list[np.ndarray], cur: list[np.ndarray], inputs) -> list[np.ndarray]:
    """``op.combine_fn`` of the slices ``acc`` and ``cur``, each result cast to its input's dtype (the element loop
    stores every partial result in an array of that dtype)."""
    ret = op.combine_fn.fn(*(op.to_tensor(a, arg.dtype) for a, arg in zip(acc, inputs, strict=True)),
                           *(op.to_tensor(c, arg.dtype) for c, arg in zip(cur, inputs, strict=True)))
    ret = ret if isinstance(ret, tuple) else (ret,)
    return [_as_slice(r.handle.data if isinstance(r, tl.core.tensor) else r, c) for r, c in zip(ret, cur, strict=True)]


def _as_slice(result, like: np.ndarray) -> np.ndarray:
    """A combine result as an array shaped and typed like the slice ``like`` (a scalar result applies to all)."""
    result = np.asarray(result)
    result = result.reshape(like.shape) if result.size == like.size else np.broadcast_to(result.reshape(()), like.shape)
    return result.astype(like.dtype)


def _sliced_reduce(self, input):
    """``ReduceOps.generic_reduce``, folding along the axis slice by slice."""
    original_axis = self.axis
    input, axis = self.unravel(input, self.axis)
    data = [arg.handle.data for arg in input]
    acc = [np.take(d, 0, axis=axis) for d in data]
    for i in range(1, data[0].shape[axis]):
        acc = _combine(self, acc, [np.take(d, i, axis=axis) for d in data], input)
    ret = []
    for arg, out in zip(input, acc, strict=True):
        if self.keep_dims:
            out = np.expand_dims(out, axis) if original_axis is not None else out.reshape((1,) * data[0].ndim)
        elif original_axis is None:
            out = out.item()
        ret.append(self.to_tensor(out, arg.dtype))
    return ret


def _sliced_scan(self, input):
    """``ScanOps.generic_scan``, the running combine along the axis slice by slice."""
    data = [arg.handle.data for arg in input]
    out = [np.empty_like(d) for d in data]
    acc = None
    for i in range(data[0].shape[self.axis]):
        cur = [np.take(d, i, axis=self.axis) for d in data]
        acc = cur if acc is None else _combine(self, acc, cur, input)
        for o, a in zip(out, acc, strict=True):
            index = [slice(None)] * o.ndim
            index[self.axis] = i
            o[tuple(index)] = a
    return [self.to_tensor(o, arg.dtype) for o, arg in zip(out, input, strict=True)]


def _options_without_overflow_checks():
    """The interpreter's options with ``sanitize_overflow`` off (kept on with ``debug``, where its asserts assert): an
    error if this Triton's interpreter has no such option (turning it off would then change nothing)."""
    options = interpreter.interpreter_builder.options
    if getattr(options, "debug", False):
        return options
    if not getattr(options, "sanitize_overflow", False):
        raise RuntimeError(f"triton {triton.__version__}: the interpreter's options have no sanitize_overflow on; "
                           "update tests/triton_interpreter.py for this Triton")
    return dataclasses.replace(options, sanitize_overflow=False)


PATCH_LANG = interpreter._patch_lang


def _patch_lang_once(fn):
    """``interpreter._patch_lang`` except where ``fn``'s language modules are patched already: a device function
    (a ``@triton.jit`` helper) called inside a launch, which the interpreter patched on entry and restores on exit.
    Unchanged, every helper call re-lists the members of ``triton.language`` (``inspect.getmembers``) to patch them
    again, for each program of the grid: a fifth of the interpreter's time in helper-heavy kernels."""
    langs = [value for value in fn.__globals__.values() if value is tl or value is tl.core]
    if langs and all(not tl.core.is_builtin(lang.load) for lang in langs):  # tl.load is the patched wrapper
        return interpreter._LangPatchScope()
    return PATCH_LANG(fn)


GET_NP_DTYPE = interpreter._get_np_dtype
_NP_DTYPES: dict = {}


def _np_dtype(tt_dtype):
    """``interpreter._get_np_dtype``, which builds its table of Triton-to-NumPy types at every call (several per
    interpreted op), looked up once per element type."""
    element = tt_dtype.element_ty if isinstance(tt_dtype, tl.block_type) else tt_dtype
    if isinstance(element, tl.pointer_type):  # unhashable; an address, uint64
        return GET_NP_DTYPE(element)
    found = _NP_DTYPES.get(element)
    if found is None:
        found = _NP_DTYPES[element] = GET_NP_DTYPE(element)
    return found


def install() -> None:
    """Make the interpreter's reductions and scans with a kernel's own combine function fold slices, patch the
    language once per launch (:func:`_patch_lang_once`), look its NumPy types up once (:func:`_np_dtype`), and turn
    off its integer overflow checks: it recomputes every int32 add, sub and mul in int64 and compares the result with
    the int32 range, a fifth of its time, for a device assert that asserts nothing without ``debug`` (as in a kernel
    compiled for a GPU)."""
    interpreter.ReduceOps.generic_reduce = _sliced_reduce
    interpreter.ScanOps.generic_scan = _sliced_scan
    interpreter.interpreter_builder.options = _options_without_overflow_checks()
    interpreter._patch_lang = _patch_lang_once
    interpreter._get_np_dtype = _np_dtype
