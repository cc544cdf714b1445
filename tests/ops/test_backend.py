"""The dispatcher every op shares."""

import pytest
import torch

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


def test_calls_the_kernels_do_not_cover_fall_back_unless_triton_is_explicit(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    assert pick(None, x, reference, fused, unsupported="too wide")() == "reference"
    with pytest.raises(ValueError, match="^too wide; use backend='torch'$"):
        pick("triton", x, reference, fused, unsupported="too wide")
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
