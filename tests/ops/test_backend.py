"""The dispatcher every op shares."""

import os

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from tests.fused import run_both_backends
from tests.ops._compare import assert_matches_reference
from visattn.ops._backend import pick


def reference():
    return "reference"


def fused():
    return "fused"


def test_cpu_tensors_run_the_reference_unless_triton_is_asked_for(monkeypatch):
    monkeypatch.delenv("VISATTN_BACKEND", raising=False)
    x = torch.zeros(1)
    assert pick(None, x, reference, fused)() == "reference"
    assert pick("triton", x, reference, fused)() == "fused"
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    assert pick(None, x, reference, fused)() == "fused"
    assert pick("torch", x, reference, fused)() == "reference"


def test_calls_the_kernels_do_not_cover_fall_back_only_when_the_choice_is_automatic(monkeypatch):
    monkeypatch.delenv("VISATTN_BACKEND", raising=False)
    with FakeTensorMode():  # a CUDA tensor on a machine without a GPU: the automatic choice is Triton
        on_gpu = torch.empty(1, device="cuda")
    assert pick(None, on_gpu, reference, fused)() == "fused"
    assert pick(None, on_gpu, reference, fused, unsupported="too wide")() == "reference"
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="^too wide; use backend='torch'$"):
        pick("triton", x, reference, fused, unsupported="too wide")
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    for tensor in (x, on_gpu):  # forced by the environment: an error, never the reference in the kernels' place
        with pytest.raises(ValueError, match=r"^too wide; \$VISATTN_BACKEND=triton forces the kernels: unset it or "
                                             r"set it to torch$"):
            pick(None, tensor, reference, fused, unsupported="too wide")
    assert pick("torch", x, reference, fused, unsupported="too wide")() == "reference"


def test_an_empty_output_runs_neither_implementation_but_empty(monkeypatch):
    monkeypatch.delenv("VISATTN_BACKEND", raising=False)
    x = torch.randn(0, 3, dtype=torch.float16, requires_grad=True)
    w = torch.randn(3, 2, requires_grad=True)
    for backend in (None, "torch", "triton"):
        impl = pick(backend, x, reference, fused, unsupported="too wide", out_shape=(0, 2))
        out = impl(x, w, 2.0, scale=w)
        assert out.shape == (0, 2) and out.dtype == torch.float16 and out.device == x.device
        dx, dw = torch.autograd.grad(out.sum(), (x, w))
        assert dx.shape == x.shape and dw.shape == w.shape and dw.dtype == w.dtype and not dw.any()
    assert pick("torch", x, reference, fused, out_shape=(0,), out_dtype=torch.float64)(x).dtype == torch.float64
    assert pick("torch", x, reference, fused, out_shape=(2, 3))() == "reference"
    assert pick("triton", x, reference, fused, out_shape=(0,), empty=reference)() == "reference"
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        pick("cuda", x, reference, fused, out_shape=(0, 2))


def _float64_calls(backend: str | None = "triton"):
    """One float64 call of each op with ``backend``: (name, call)."""
    from visattn.ops.guided_filter import attention_guided_filter
    from visattn.ops.linear_attention import linear_attention
    from visattn.ops.routed_attention import routed_attention
    from visattn.ops.selective_scan import selective_scan
    from visattn.ops.sparse_attention import sparse_attention
    from visattn.ops.window_attention import window_attention

    f64 = dict(dtype=torch.float64)
    maps = [torch.randn(1, 4, 4, 8, **f64) for _ in range(3)]
    u = torch.randn(1, 4, 6, **f64)
    bc = torch.randn(1, 1, 2, 6, **f64)
    q = torch.randn(1, 2, 5, 4, **f64)
    x, a = torch.randn(1, 1, 4, 4, **f64), torch.randn(1, 2, 4, 4, **f64)
    return {
        "routed": lambda: routed_attention(*maps, 2, 2, 1, backend=backend),
        "window": lambda: window_attention(*maps, 2, 2, 0, None, backend=backend),
        "scan": lambda: selective_scan(u, u, -torch.rand(4, 2), bc, bc, backend=backend),
        "sparse": lambda: sparse_attention(q, q, q, torch.zeros(1, 1, 5, 2, dtype=torch.long), backend=backend),
        "linear": lambda: linear_attention(q, q, q, 0.5, backend=backend),
        "guided": lambda: attention_guided_filter(x, a, a, torch.randn(1, 1, 8, 8, **f64), 1, 1e-2, backend=backend),
    }


@pytest.mark.parametrize("op", ["routed", "window", "scan", "sparse", "linear", "guided"])
def test_float64_is_refused_by_the_kernels_in_one_line(op, monkeypatch):
    with pytest.raises(ValueError, match=r"^the triton backend takes float32, float16 or bfloat16, got torch\.float64; "
                                         r"use backend='torch'$"):
        _float64_calls()[op]()
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    with pytest.raises(ValueError, match=r"^the triton backend takes float32, float16 or bfloat16, got torch\.float64; "
                                         r"\$VISATTN_BACKEND=triton forces the kernels: unset it or set it to torch$"):
        _float64_calls(backend=None)[op]()


def test_a_fused_comparison_in_which_no_fused_op_runs_fails(monkeypatch):
    layer = torch.nn.Linear(4, 4)  # no visattn op: both backends run the same code
    with pytest.raises(AssertionError, match="no visattn:: op ran with VISATTN_BACKEND=triton"):
        run_both_backends(lambda: layer(torch.randn(2, 4)), monkeypatch)
    with pytest.raises(AssertionError, match="the fused path did not run"):
        assert_matches_reference(layer(torch.randn(2, 4, requires_grad=True)), torch.zeros(2, 4), {}, {})


def test_an_environment_where_the_forced_kernels_cannot_run_is_named(monkeypatch):
    from visattn.ops import environment_problem

    monkeypatch.delenv("VISATTN_BACKEND", raising=False)
    assert environment_problem() is None
    monkeypatch.setenv("VISATTN_BACKEND", "cuda")
    assert environment_problem() == "$VISATTN_BACKEND=cuda is no backend: use one of torch, triton, or unset it"
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert environment_problem() is None  # the interpreter runs the kernels on CPU tensors
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    problem = environment_problem()
    assert problem is None if torch.cuda.is_available() else problem.startswith(
        "$VISATTN_BACKEND=triton forces the Triton kernels, which need a CUDA device (none is available)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA driver is active: Triton can take CPU tensors' launches")
def test_kernels_forced_on_cpu_tensors_without_the_interpreter_are_a_one_line_value_error():
    import subprocess
    import sys

    probe = ("import torch, timm, visattn\nmodel = timm.create_model('test_biformer').eval()\n"
             "try:\n    model(torch.randn(1, 3, 64, 64))\nexcept ValueError as err:\n    print(err)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"VISATTN_BACKEND": "triton"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert out.stdout.strip() == ("the triton backend runs on CUDA tensors, got a cpu tensor: use backend='torch' "
                                  "(unset $VISATTN_BACKEND), or set TRITON_INTERPRET=1 before importing visattn to "
                                  "run the kernels in Triton's interpreter"), out.stderr[-2000:]
