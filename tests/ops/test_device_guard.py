"""Kernels launch on their tensors' GPU, never on whichever CUDA device is current.

On CPU: the guard against a recorded ``torch.cuda.device``, and a check that every launcher is guarded. With two
GPUs (``benchmarks/gpu_suite.py`` runs ``tests/ops`` on CUDA): every op on ``cuda:1`` while device 0 is current.
"""

import contextlib
import importlib
import inspect
from types import SimpleNamespace

import pytest
import torch
import triton

from tests.fused import fused_ops_in_graph
from visattn.ops import _triton
from visattn.ops.guided_filter import attention_guided_filter
from visattn.ops.linear_attention import linear_attention
from visattn.ops.polarized_attention import polarized_attention
from visattn.ops.routed_attention import routed_attention
from visattn.ops.selective_scan import selective_scan
from visattn.ops.sparse_attention import sparse_attention
from visattn.ops.window_attention import window_attention

OPS = ("guided_filter", "linear_attention", "polarized_attention", "routed_attention",
       "selective_scan", "sparse_attention", "window_attention")
KERNEL_MODULES = [importlib.import_module(f"visattn.ops.{op}.triton") for op in OPS]


@pytest.fixture
def device_switches(monkeypatch):
    """Replace ``torch.cuda.device`` by a recorder: each entry appends ("enter", device), each exit ("exit",)."""
    events = []

    @contextlib.contextmanager
    def device(where):
        events.append(("enter", torch.device(where)))
        yield
        events.append(("exit",))

    monkeypatch.setattr(torch.cuda, "device", device)
    return events


def test_the_guard_makes_the_first_arguments_gpu_current_for_the_launch(device_switches):
    @_triton.on_tensor_device
    def launch(t, value, scale=1):
        device_switches.append(("launch", value * scale))
        return value * scale

    assert launch(SimpleNamespace(device=torch.device("cuda", 1)), 3, scale=2) == 6
    assert device_switches == [("enter", torch.device("cuda", 1)), ("launch", 6), ("exit",)]
    assert launch.device_guarded and launch.__name__ == "launch"


def test_the_guard_leaves_cpu_tensors_alone(device_switches):
    @_triton.on_tensor_device
    def launch(t):
        return t.device

    assert launch(torch.zeros(1)) == torch.device("cpu")
    assert device_switches == []


@pytest.mark.parametrize("module", KERNEL_MODULES, ids=lambda m: m.__name__.split(".")[2])
def test_every_launcher_is_guarded(module):
    """Every function of a kernel module that launches one of its kernels carries the guard."""
    launchers = set()
    for name, value in vars(module).items():
        if not inspect.isfunction(value) or value.__module__ != module.__name__:
            continue
        code = inspect.unwrap(value).__code__
        kernels = [n for n in code.co_names if isinstance(vars(module).get(n), triton.runtime.jit.KernelInterface)]
        if kernels:
            assert getattr(value, "device_guarded", False), f"{module.__name__}.{name} launches {kernels} unguarded"
            launchers.add(name)
    assert {"forward", "backward"} <= launchers


def _guided(device, backend):
    x, y, a = (torch.randn(1, 3, 7, 9, device=device, requires_grad=True) for _ in range(3))
    hr = torch.randn(1, 3, 14, 18, device=device, requires_grad=True)
    return attention_guided_filter(x, y, a, hr, 2, 1e-2, backend=backend), (x, y, a, hr)


def _routed(device, backend):
    q, k, v = (torch.randn(1, 10, 12, 32, device=device, requires_grad=True) for _ in range(3))
    return routed_attention(q, k, v, 2, 2, 2, backend=backend), (q, k, v)


def _window(device, backend):
    q, k, v = (torch.randn(1, 9, 9, 32, device=device, requires_grad=True) for _ in range(3))
    table = torch.randn(2, 49, device=device, requires_grad=True)
    return window_attention(q, k, v, 2, 4, 2, table, backend=backend), (q, k, v, table)


def _linear(device, backend):
    q, k, v = (torch.rand(1, 2, 50, 16, device=device, requires_grad=True) for _ in range(3))
    return linear_attention(q, k, v, 1 / 50, normalize=True, backend=backend), (q, k, v)


def _sparse(device, backend):
    q, k, v = (torch.randn(1, 2, 37, 16, device=device, requires_grad=True) for _ in range(3))
    idx = torch.randint(-1, 37, (1, 2, 37, 5), device=device)
    return sparse_attention(q, k, v, idx, dense_keys=1, normalize="all", backend=backend), (q, k, v)


def _polarized(device, backend):
    x = torch.randn(1, 6, 9, 7, device=device, requires_grad=True)
    w_q = torch.randn(6, device=device, requires_grad=True)
    w_v = torch.randn(3, 6, device=device, requires_grad=True)
    out = polarized_attention(x, w_q, lambda p: p, lambda m: m[:, :3], layout="sequential", spatial="softmax_before",
                              spatial_value=w_v, backend=backend)
    return out, (x, w_q, w_v)


def _scan(device, backend):
    u, delta, z = (torch.randn(1, 4, 40, device=device, requires_grad=True) for _ in range(3))
    B, C = (torch.randn(1, 2, 4, 40, device=device, requires_grad=True) for _ in range(2))
    A = (-0.5 - torch.rand(4, 4, device=device)).requires_grad_()
    leaves = (u, delta, A, B, C, z)
    return selective_scan(u, delta, A, B, C, z=z, delta_softplus=True, backend=backend), leaves


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (benchmarks/gpu_suite.py runs "
                                                          "tests/ops on a GPU machine)")
@pytest.mark.parametrize("run", [_routed, _window, _linear, _scan, _sparse, _polarized, _guided],
                         ids=["routed", "window", "linear", "scan", "sparse", "polarized", "guided"])
def test_every_op_runs_on_the_second_gpu_while_the_first_is_current(run):
    with torch.cuda.device(0):
        torch.manual_seed(0)
        out, leaves = run("cuda:1", "triton")
        torch.manual_seed(0)
        ref, ref_leaves = run("cuda:1", "torch")
        grad = torch.randn_like(ref)
        got = torch.autograd.grad(out, leaves, grad)
        want = torch.autograd.grad(ref, ref_leaves, grad)
        torch.cuda.synchronize(1)
        assert torch.cuda.current_device() == 0
    assert out.device == torch.device("cuda", 1)
    assert fused_ops_in_graph(out) and not fused_ops_in_graph(ref)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
