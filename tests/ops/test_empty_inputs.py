"""Zero-sized inputs: a batch of 0, and every other dimension that leaves the output empty, gives an empty output of
the right shape and zero gradients for every input on both backends; an empty input that still has a defined,
non-empty output computes it; bad ranks stay one-line errors."""

import pytest
import torch

from tests.conftest import DEVICE
from visattn.ops.guided_filter import attention_guided_filter
from visattn.ops.linear_attention import linear_attention
from visattn.ops.polarized_attention import polarized_attention
from visattn.ops.routed_attention import routed_attention
from visattn.ops.selective_scan import selective_scan
from visattn.ops.sparse_attention import sparse_attention
from visattn.ops.window_attention import window_attention


def _leaf(*shape):
    return torch.randn(shape, device=DEVICE).requires_grad_()


def routed(b, h, w, c_v):
    return ([(b, h, w, 8), (b, h, w, 8), (b, h, w, c_v)],
            lambda backend, q, k, v: routed_attention(q, k, v, 2, 3, 2, backend=backend), (b, h, w, c_v))


def window(b, h, w, c_v):
    return ([(b, h, w, 8), (b, h, w, 8), (b, h, w, c_v), (2, 49)],
            lambda backend, q, k, v, table: window_attention(q, k, v, 2, 4, 2, table, backend=backend), (b, h, w, c_v))


def sparse(b, h, n_q, d_v, normalize):
    idx = torch.zeros(b, 1, n_q, 2, dtype=torch.long, device=DEVICE)
    return ([(b, h, n_q, 8), (b, h, 5, 8), (b, h, 5, d_v)],
            lambda backend, q, k, v: sparse_attention(q, k, v, idx, dense_keys=1, normalize=normalize, backend=backend),
            (b, h, n_q, d_v))


def linear(b, h, n, e, separate=False, **mode):
    shapes = [(b, h, n, 8), (b, h, n, 8), (b, h, n, e)] + ([(b, h, n, 8)] * 2 if separate else [])

    def call(backend, q, k, v, norm_q=None, norm_k=None):
        return linear_attention(q, k, v, 0.5, **mode, norm_q=norm_q, norm_k=norm_k, backend=backend)
    return shapes, call, (b, h, n, e)


def scan(b, d, length):
    shapes = [(b, d, length), (b, d, length), (d, 3), (b, 1, 3, length), (b, 1, 3, length), (d,), (b, d, length), (d,)]
    return shapes, lambda backend, *t: selective_scan(*t, delta_softplus=True, backend=backend), (b, d, length)


def polarized(shape, layout, spatial):
    """With transforms closing over weights A (C, C) and H (C, C or 2): they get zero gradients too."""
    c = shape[1]
    width = 2 if spatial == "softmax_before" else c

    def call(backend, x, w_q, a, h, w_v=None):
        return polarized_attention(x, w_q, lambda p: p @ a, lambda m: m @ h, layout=layout, spatial=spatial,
                                   spatial_value=w_v, backend=backend)
    return [shape, (c,), (c, c), (c, width)] + ([(2, c)] if width == 2 else []), call, shape


def guided(b, c, high):
    return ([(b, c, 4, 5), (b, c, 4, 5), (b, 1, 4, 5), (b, c, *high)],
            lambda backend, *t: attention_guided_filter(*t, radius=2, backend=backend), (b, c, *high))


CASES = {
    "routed_batch0": routed(0, 5, 7, 8), "routed_no_rows": routed(1, 0, 7, 8), "routed_no_columns": routed(1, 5, 0, 8),
    "routed_no_value_channels": routed(1, 5, 7, 0),
    "window_batch0": window(0, 5, 7, 8), "window_no_rows": window(1, 0, 7, 8),
    "window_no_value_channels": window(1, 5, 7, 0),
    "sparse_batch0": sparse(0, 2, 4, 8, "attended"), "sparse_no_heads": sparse(1, 0, 4, 8, "all"),
    "sparse_no_queries": sparse(1, 2, 0, 8, "all"), "sparse_no_value_channels": sparse(1, 2, 4, 0, "attended"),
    "linear_batch0": linear(0, 2, 6, 8, normalize=True, separate=True), "linear_no_heads": linear(1, 0, 6, 8),
    "linear_no_tokens": linear(1, 2, 0, 8, injective=True), "linear_no_value_channels": linear(1, 2, 6, 0),
    "scan_batch0": scan(0, 4, 5), "scan_no_channels": scan(1, 0, 5), "scan_no_steps": scan(1, 4, 0),
    "polarized_batch0": polarized((0, 4, 3, 3), "sequential", "softmax_before"),
    "polarized_no_channels": polarized((1, 0, 3, 3), "parallel", "sigmoid"),
    "polarized_no_rows": polarized((1, 4, 0, 3), "sequential", "softmax_after"),
    "guided_batch0": guided(0, 2, (8, 9)), "guided_no_channels": guided(1, 0, (8, 9)),
    "guided_no_output_rows": guided(1, 2, (0, 9)),
}


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("shapes,call,out_shape", CASES.values(), ids=CASES.keys())
def test_empty_outputs_and_zero_gradients(shapes, call, out_shape, backend):
    leaves = [_leaf(*shape) for shape in shapes]
    out = call(backend, *leaves)
    assert out.shape == out_shape and out.dtype == torch.float32 and out.device == leaves[0].device
    grads = torch.autograd.grad(out.sum(), leaves)
    for leaf, grad in zip(leaves, grads, strict=True):
        assert grad.shape == leaf.shape and grad.dtype == leaf.dtype and not grad.any()


def test_empty_half_outputs_keep_the_input_dtype():
    q = torch.randn(0, 4, 4, 8, device=DEVICE, dtype=torch.float16)
    for backend in ("torch", "triton"):
        assert routed_attention(q, q, q, 2, 2, 2, backend=backend).dtype == torch.float16


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("normalize", ["attended", "all"])
def test_sparse_attention_over_no_keys_gives_zeros(backend, normalize):
    q, k, v = _leaf(1, 2, 3, 8), _leaf(1, 2, 0, 8), _leaf(1, 2, 0, 4)
    idx = torch.zeros(1, 2, 3, 0, dtype=torch.long, device=DEVICE)
    out = sparse_attention(q, k, v, idx, normalize=normalize, backend=backend)
    assert out.shape == (1, 2, 3, 4) and not out.any()
    dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
    assert not dq.any() and dk.shape == k.shape and dv.shape == v.shape


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_selective_scan_without_states_is_the_skip_and_gate(backend):
    u, delta, z = _leaf(1, 3, 5), _leaf(1, 3, 5), _leaf(1, 3, 5)
    A, B, D = _leaf(3, 0), _leaf(1, 1, 0, 5), _leaf(3)
    y = selective_scan(u, delta, A, B, B, D, z, backend=backend)
    torch.testing.assert_close(y, D[:, None] * u * torch.nn.functional.silu(z))
    grads = torch.autograd.grad(y.sum(), (u, A, B, D))
    assert [g.shape for g in grads] == [u.shape, A.shape, B.shape, D.shape]


X = torch.zeros(0, 4, 4, 8, device=DEVICE)
BAD = {
    "routed_rank": (lambda: routed_attention(X[:, 0], X[:, 0], X[:, 0], 2, 2, 2), r"\(B, H, W, C_qk\)"),
    "routed_no_qk_channels": (lambda: routed_attention(X[..., :0], X[..., :0], X, 2, 2, 2), "C_qk=0"),
    "window_rank": (lambda: window_attention(X[..., 0], X[..., 0], X[..., 0], 2, 4), r"\(B, H, W, C_qk\)"),
    "window_no_qk_channels": (lambda: window_attention(X[..., :0], X[..., :0], X, 2, 4), "C_qk=0"),
    "sparse_rank": (lambda: sparse_attention(X[:, 0], X[:, 0], X[:, 0], X[:, 0].long()), r"q \(B, H, N_q, D\)"),
    "sparse_no_qk_channels": (lambda: sparse_attention(X[..., :0], X[..., :0], X, X[..., :1].long()), "D=0"),
    "linear_rank": (lambda: linear_attention(X[:, 0], X[:, 0], X[:, 0]), r"q, k of shape \(B, H, N, D\)"),
    "linear_no_qk_channels": (lambda: linear_attention(X[..., :0], X[..., :0], X), "D=0"),
    "scan_rank": (lambda: selective_scan(X, X, X[:, 0, 0], X, X), r"u, delta of shape \(batch, d, L\)"),
    "polarized_rank": (lambda: polarized_attention(X[:, 0], torch.zeros(4), abs, abs), r"x of shape \(B, C, H, W\)"),
    "guided_rank": (lambda: attention_guided_filter(X[:, 0], X, X, X), r"expected \(B, C, H, W\)"),
    "guided_no_lowres_rows": (lambda: attention_guided_filter(X[:, :, :0], X[:, :, :0], X[:, :1, :0], X),
                              "empty low-res maps"),
}


@pytest.mark.parametrize("call,match", BAD.values(), ids=BAD.keys())
def test_bad_shapes_of_empty_tensors_stay_one_line_errors(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
