"""Compiled Triton rejects a kernel that reads a module global other than a constexpr, a function or a module;
the interpreter used on CPU accepts it. Check every kernel here so such a kernel cannot reach a GPU run."""

import importlib
import inspect
import pkgutil
import types

import pytest
import triton
import triton.language as tl

import visattn.ops


def _kernel_modules():
    for info in pkgutil.iter_modules(visattn.ops.__path__):
        if info.ispkg:
            try:
                yield importlib.import_module(f"visattn.ops.{info.name}.triton")
            except ModuleNotFoundError:
                continue


def _jit_functions(module):
    for value in vars(module).values():
        if isinstance(value, triton.runtime.jit.KernelInterface):  # JITFunction, or InterpretedFunction on CPU
            yield value


MODULES = list(_kernel_modules())


def test_every_op_has_a_kernel_module():
    assert {m.__name__.split(".")[2] for m in MODULES} >= {"routed_attention", "selective_scan", "window_attention"}


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.split(".")[2])
def test_kernels_read_only_constexpr_globals(module):
    kernels = list(_jit_functions(module))
    assert kernels
    for kernel in kernels:
        fn = inspect.unwrap(kernel.fn)
        for name in fn.__code__.co_names:
            if name not in fn.__globals__:
                continue
            value = fn.__globals__[name]
            allowed = isinstance(value, (tl.constexpr, types.ModuleType)) or callable(value)
            assert allowed, f"{module.__name__}.{fn.__name__} reads global {name}={value!r}; wrap it in tl.constexpr"
