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
