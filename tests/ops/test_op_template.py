"""Every op folder follows one template: the same files, the same names, dispatch through ``pick`` with the
kernels' ``unsupported_reason`` and the output shape, and a ``fused.py`` that registers the op (fake kernels
included) without Triton."""

import ast
import importlib
import pathlib
import subprocess
import sys

import pytest

OPS = ("guided_filter", "linear_attention", "polarized_attention", "routed_attention",
       "selective_scan", "sparse_attention", "window_attention")
OPS_DIR = pathlib.Path(importlib.import_module("visattn.ops").__path__[0])


def _tree(op, name):
    return ast.parse((OPS_DIR / op / name).read_text())


@pytest.mark.parametrize("op", OPS)
def test_files_and_names(op):
    assert {p.name for p in (OPS_DIR / op).glob("*.py")} == {"__init__.py", "reference.py", "fused.py", "triton.py"}
    package = importlib.import_module(f"visattn.ops.{op}")
    assert callable(getattr(package, op)) and callable(getattr(package, f"check_{op}_args"))
    assert callable(getattr(importlib.import_module(f"visattn.ops.{op}.reference"), f"{op}_reference"))
    fused = importlib.import_module(f"visattn.ops.{op}.fused")
    assert callable(getattr(fused, f"{op}_fused")) and callable(fused.unsupported_reason)
    kernels = importlib.import_module(f"visattn.ops.{op}.triton")
    assert isinstance(kernels.Tiling, type) and callable(kernels.forward) and callable(kernels.backward)


@pytest.mark.parametrize("op", OPS)
def test_dispatch_is_one_pick_call_with_the_unsupported_reason(op):
    calls = [node for node in ast.walk(_tree(op, "__init__.py"))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "pick"]
    assert len(calls) == 1
    args = calls[0].args
    assert [getattr(a, "id", None) for a in args[:4]] == ["backend", args[1].id, f"{op}_reference", f"{op}_fused"]
    assert len(args) == 5 and isinstance(args[4], ast.Call) and args[4].func.id == "unsupported_reason"
    assert "out_shape" in {kw.arg for kw in calls[0].keywords}  # empty outputs skip the kernels


@pytest.mark.parametrize("op", OPS)
def test_kernels_never_import_the_registration(op):
    for node in ast.walk(_tree(op, "triton.py")):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            assert node.module != "fused" and "fused" not in {alias.name for alias in node.names}


# Runs in a fresh interpreter where importing Triton fails once torch is in (torch's FLOP counter then tries, and
# copes); records who tried.
NO_TRITON = r'''
import importlib.abc
import sys

import torch  # probes for Triton with find_spec; imports none

tried = []


class NoTriton(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] != "triton":
            return None
        frame = sys._getframe(1)
        while frame.f_code.co_filename.startswith("<frozen"):
            frame = frame.f_back
        tried.append((name, frame.f_globals.get("__name__")))
        raise ImportError(f"Triton is blocked in this test: {name}")


sys.meta_path.insert(0, NoTriton())
assert "triton" not in sys.modules

from visattn.ops.guided_filter.fused import guided_filter_fused
from visattn.ops.linear_attention.fused import linear_attention_fused
from visattn.ops.polarized_attention.fused import polarized_attention_fused
from visattn.ops.routed_attention.fused import routed_attention_fused
from visattn.ops.selective_scan.fused import num_chunks, selective_scan_fused
from visattn.ops.sparse_attention.fused import sparse_attention_fused
from visattn.ops.window_attention.fused import window_attention_fused


def meta(*shape, dtype=torch.float32, grad=True):
    return torch.empty(shape, device="meta", dtype=dtype, requires_grad=grad)


def forward_and_backward(fn, leaves, *args):
    out = fn(*args)
    out.sum().backward()
    assert all(t.grad is not None and t.grad.shape == t.shape and t.grad.is_meta for t in leaves)
    return tuple(out.shape)


q, k, v = meta(1, 8, 8, 16), meta(1, 8, 8, 16), meta(1, 8, 8, 24)
assert forward_and_backward(routed_attention_fused, (q, k, v), q, k, v, 2, 2, 2, 0.25) == (1, 8, 8, 24)

q, k, v, bias = meta(1, 9, 9, 16), meta(1, 9, 9, 16), meta(1, 9, 9, 8), meta(2, 49)
assert forward_and_backward(window_attention_fused, (q, k, v, bias), q, k, v, bias, 2, 4, 2, 0.25) == (1, 9, 9, 8)

q, k, v, nq, nk = meta(1, 2, 10, 8), meta(1, 2, 10, 8), meta(1, 2, 10, 6), meta(1, 2, 10, 8), meta(1, 2, 10, 8)
assert forward_and_backward(linear_attention_fused, (q, k, v, nq, nk), q, k, v, 0.1, False, True, nq, nk,
                            1e-6) == (1, 2, 10, 6)

u, delta, A, B, C, D, z, bias = (meta(2, 4, 40), meta(2, 4, 40), meta(4, 3), meta(2, 2, 3, 40), meta(2, 2, 3, 40),
                                 meta(4), meta(2, 4, 40), meta(4))
scan_args = (u, delta, A, B, C, D, z, bias)
assert forward_and_backward(selective_scan_fused, scan_args, *scan_args, True) == (2, 4, 40)
_, states = torch.ops.visattn.selective_scan(*scan_args, True)
assert tuple(states.shape) == (2, 4, num_chunks(40), 3)

q, k, v = meta(1, 2, 10, 8), meta(1, 2, 70, 8), meta(1, 2, 70, 6)
idx = torch.empty(1, 1, 10, 3, device="meta", dtype=torch.int64)
for normalize in ("attended", "all"):
    assert forward_and_backward(sparse_attention_fused, (q, k, v), q, k, v, idx, 2, normalize, 0.25) == (1, 2, 10, 6)

x, w_q, w_v = meta(2, 6, 5, 7), meta(6), meta(3, 6)
for layout in ("parallel", "sequential"):
    for spatial, value, query in (("softmax_after", None, lambda m: m), ("softmax_before", w_v, lambda m: m[:, :3])):
        leaves = (x, w_q) + ((w_v,) if value is not None else ())
        assert forward_and_backward(polarized_attention_fused, leaves, x, w_q, lambda p: p, query, layout, spatial,
                                    value) == (2, 6, 5, 7)

x, y, a, hr = meta(2, 1, 5, 4), meta(2, 3, 5, 4), meta(2, 3, 5, 4), meta(2, 1, 9, 7)
assert forward_and_backward(guided_filter_fused, (x, y, a, hr), x, y, a, hr, 2, 1e-2) == (2, 3, 9, 7)

from_visattn = [(name, by) for name, by in tried if (by or "").startswith("visattn")]
assert not from_visattn, f"visattn imported Triton: {from_visattn}"
assert "triton" not in sys.modules
loaded = [name for name in sys.modules if name.startswith("visattn.ops.") and name.endswith("triton")]
assert not loaded, f"kernel modules loaded: {loaded}"
print("ok")
'''


def test_registration_and_fake_kernels_need_no_triton():
    """``import visattn.ops.<op>.fused`` and every fake kernel (forward and backward, on meta tensors) in a process
    where ``import triton`` fails: nothing of visattn tries it, and no kernel module loads."""
    root = pathlib.Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", NO_TRITON], cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
