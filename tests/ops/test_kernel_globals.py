"""Compiled Triton rejects a kernel that reads a module global other than a constexpr, a function or a module;
the interpreter used on CPU accepts it. Check every kernel here so such a kernel cannot reach a GPU run."""

import importlib
import inspect
import pathlib
import types

import pytest
import triton
import triton.language as tl

import visattn.ops

OPS = ("guided_filter", "linear_attention", "polarized_attention", "routed_attention",
       "selective_scan", "sparse_attention", "window_attention")
# Imported here, never skipped: a kernel module that fails to import fails the collection.
KERNEL_MODULES = [importlib.import_module(f"visattn.ops.{op}.triton") for op in OPS]
SHARED = importlib.import_module("visattn.ops._triton")


def _jit_functions(module):
    for value in vars(module).values():
        if isinstance(value, triton.runtime.jit.KernelInterface):  # JITFunction, or InterpretedFunction on CPU
            while isinstance(value.fn, triton.runtime.jit.KernelInterface):  # autotuned: the jitted kernel inside
                value = value.fn
            yield value


def _name(module):
    return module.__name__.removeprefix("visattn.ops.")


def test_the_op_folders_are_exactly_the_ops():
    folders = {p.name for p in pathlib.Path(visattn.ops.__path__[0]).iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(OPS)


@pytest.mark.parametrize("module", KERNEL_MODULES, ids=_name)
def test_every_op_has_kernels(module):
    assert list(_jit_functions(module))


@pytest.mark.parametrize("module", [*KERNEL_MODULES, SHARED], ids=_name)
def test_kernels_read_only_constexpr_globals(module):
    for kernel in _jit_functions(module):
        fn = inspect.unwrap(kernel.fn)
        for name in fn.__code__.co_names:
            if name not in fn.__globals__:
                continue
            value = fn.__globals__[name]
            allowed = isinstance(value, (tl.constexpr, types.ModuleType)) or callable(value)
            assert allowed, f"{module.__name__}.{fn.__name__} reads global {name}={value!r}; wrap it in tl.constexpr"
