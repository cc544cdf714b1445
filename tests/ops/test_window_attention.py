"""(Shifted) window attention: the reference against a dense masked definition, and the fused Triton kernels
against the reference (under Triton's interpreter on CPU tensors in CI, on the GPU, bf16 included, through
benchmarks/gpu_suite.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import DEVICE
from tests.fused import fused_ops_in_graph
from visattn.ops.window_attention import triton as kernels
from visattn.ops.window_attention import window_attention

TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=3e-3, rtol=3e-3),
       torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
# The interpreter mishandles bf16 dot products: bf16 is checked on a GPU only.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE != "cpu" else [])


def dense_window_attention(q, k, v, num_heads, ws, shift, table, scale):
    """Full attention over the whole padded, unrolled map with a per-token-pair mask and bias.

    Token (y, x) of the padded map sits at ((y - shift) % hp, (x - shift) % wp) of the rolled map; a pair may
    attend iff both sit in the same window and the same Swin region of the rolled map and the key is no padding.
    The bias of a pair is the table entry of their (dy, dx) offset inside the window.
    """
    b, h, w, _ = q.shape
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    q, k, v = (F.pad(t, (0, 0, 0, wp - w, 0, hp - h)) for t in (q, k, v))
    ys, xs = (c.reshape(-1) for c in torch.meshgrid(torch.arange(hp), torch.arange(wp), indexing="ij"))
    yr, xr = (ys - shift) % hp, (xs - shift) % wp

    def region(pos, n):
        label = torch.zeros_like(pos)
        if shift:
            for r, (lo, hi) in enumerate(((0, n - ws), (n - ws, n - shift), (n - shift, n))):
                label[(pos >= lo) & (pos < hi)] = r
        return label

    window = (yr // ws) * (wp // ws) + xr // ws
    group = window * 9 + region(yr, hp) * 3 + region(xr, wp)
    real = (ys < h) & (xs < w)
    mask = (group[:, None] == group[None, :]) & real[None, :]
    mask |= ~real[:, None]  # padded queries are cropped away: let them see everything rather than nothing

    def heads(t):
        return t.reshape(b, hp * wp, num_heads, -1).transpose(1, 2)

    logits = (heads(q) @ heads(k).transpose(-2, -1)) * scale
    if table is not None:
        dy = (yr % ws)[:, None] - (yr % ws)[None, :]
        dx = (xr % ws)[:, None] - (xr % ws)[None, :]
        logits = logits + table[:, (dy + ws - 1) * (2 * ws - 1) + dx + ws - 1]
    attn = logits.masked_fill(~mask, float("-inf")).softmax(-1)
    out = (attn @ heads(v)).transpose(1, 2).reshape(b, hp, wp, -1)
    return out[:, :h, :w]


def _inputs(b, h, w, c_qk, c_v, heads, ws, bias, dtype, device=DEVICE):
    shapes = [(b, h, w, c_qk), (b, h, w, c_qk), (b, h, w, c_v)]
    tensors = [torch.randn(s, dtype=dtype, device=device).requires_grad_() for s in shapes]
    if bias:
        tensors.append(torch.randn(heads, (2 * ws - 1) ** 2, dtype=dtype, device=device).requires_grad_())
    return tensors


DENSE_CASES = [
    # B, H, W, C_qk, C_v, heads, ws, shift, bias
    (2, 8, 8, 8, 8, 2, 4, 0, True),
    (1, 9, 12, 8, 12, 2, 4, 2, True),  # padded on both sides, C_v != C_qk, shifted
    (1, 14, 14, 8, 8, 2, 7, 3, False),
    (1, 5, 3, 4, 4, 1, 4, 3, True),  # map smaller than one window
]


@pytest.mark.parametrize("b,h,w,cqk,cv,heads,ws,shift,bias", DENSE_CASES)
def test_reference_matches_dense_masked_attention(b, h, w, cqk, cv, heads, ws, shift, bias):
    tensors = _inputs(b, h, w, cqk, cv, heads, ws, bias, torch.float64, device="cpu")
    q, k, v, *table = tensors
    table = table[0] if table else None
    scale = (cqk // heads) ** -0.5
    out = window_attention(q, k, v, heads, ws, shift, table, backend="torch")
    expected = dense_window_attention(q, k, v, heads, ws, shift, table, scale)
    assert out.shape == (b, h, w, cv) and out.dtype == q.dtype
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    for name, got, want in zip("qkvb"[: len(tensors)], torch.autograd.grad(out, tensors, grad),
                               torch.autograd.grad(expected, tensors, grad), strict=True):
        torch.testing.assert_close(got, want, msg=lambda m, name=name: f"d{name}: {m}")


def test_bias_table_is_indexed_by_query_minus_key_offset():
    ws = 4
    q = k = torch.zeros(1, ws, ws, 1)
    v = torch.randn(1, ws, ws, 1)
    table = torch.zeros(1, (2 * ws - 1) ** 2)
    table[0, (0 + ws - 1) * (2 * ws - 1) + (1 + ws - 1)] = 50.0  # (dy, dx) = (0, 1): the key left of the query
    out = window_attention(q, k, v, 1, ws, rel_pos_bias=table, backend="torch")
    torch.testing.assert_close(out[:, :, 1:], v[:, :, :-1])


def test_default_scale_is_head_dim():
    q, k, v = torch.randn(3, 1, 8, 8, 16)
    torch.testing.assert_close(window_attention(q, k, v, 4, 4), window_attention(q, k, v, 4, 4, scale=4**-0.5))


def test_bad_inputs_are_clear_errors():
    q = torch.randn(1, 8, 8, 8)
    with pytest.raises(ValueError, match=r"\(B, H, W, C_qk\)"):
        window_attention(q, torch.randn(1, 8, 7, 8), q, 2, 4)
    with pytest.raises(ValueError, match="share dtype and device"):
        window_attention(q, q, q.double(), 2, 4)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        window_attention(q, q, q, 3, 4)
    for shift in (-1, 4):
        with pytest.raises(ValueError, match="shift"):
            window_attention(q, q, q, 2, 4, shift)
    with pytest.raises(ValueError, match="window_size must be"):
        window_attention(q, q, q, 2, 0)
    with pytest.raises(ValueError, match=r"rel_pos_bias must be a float table of shape \(2, 49\)"):
        window_attention(q, q, q, 2, 4, rel_pos_bias=torch.zeros(2, 64))
    with pytest.raises(ValueError, match="triton backend takes window_size <= 8"):
        window_attention(q, q, q, 2, 12, backend="triton")


def _check(q, k, v, table, heads, ws, shift):
    """Fused kernels in the inputs' dtype against the reference in float32 on the same values.

    The float32 reference is the yardstick for half inputs too: a half reference rounds its logits, and sums
    the bias-table gradient over all windows, in half precision, and strays further from it than the kernels.
    """
    inputs = (q, k, v) + ((table,) if table is not None and table.requires_grad else ())
    upcast = [t.detach().float().requires_grad_(t.requires_grad) for t in (q, k, v)]
    table32 = None if table is None else table.detach().float().requires_grad_(table.requires_grad)
    ref = window_attention(*upcast, heads, ws, shift, table32, backend="torch")
    out = window_attention(q, k, v, heads, ws, shift, table, backend="triton")
    assert out.dtype == q.dtype and fused_ops_in_graph(out) and not fused_ops_in_graph(ref)
    tol = TOL[q.dtype]
    torch.testing.assert_close(out.float(), ref, **tol)
    grad = torch.randn_like(ref)
    expected = torch.autograd.grad(ref, upcast + ([table32] if len(inputs) == 4 else []), grad)
    got = torch.autograd.grad(out, inputs, grad.to(out.dtype))
    for name, g, e in zip("qkvb"[: len(got)], got, expected, strict=True):
        assert g.dtype == (q.dtype if name != "b" else table.dtype)
        torch.testing.assert_close(g.float(), e, **tol, msg=lambda m, name=name: f"d{name}: {m}")


# B, H, W, heads, head_dim, ws, shift, bias
FUSED_CASES = {
    "ws7_bias": (1, 14, 14, 2, 16, 7, 0, True),
    "ws7_shift3_padded_bias": (1, 9, 12, 2, 16, 7, 3, True),
    "ws8_shift4_padded": (2, 9, 12, 1, 32, 8, 4, False),
    "ws8_bias_d32": (1, 16, 8, 2, 32, 8, 0, True),
    "ws3_packed_shift1_bias": (1, 10, 7, 2, 16, 3, 1, True),  # 7 windows of 9 tokens per tile
    "map_smaller_than_window_d6": (1, 5, 3, 2, 6, 7, 3, True),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", FUSED_CASES.values(), ids=FUSED_CASES.keys())
def test_fused_forward_and_gradients_match_the_reference(case, dtype):
    b, h, w, heads, d, ws, shift, bias = case
    q, k, v, *table = _inputs(b, h, w, heads * d, heads * d, heads, ws, bias, dtype)
    _check(q, k, v, table[0] if table else None, heads, ws, shift)


@pytest.mark.parametrize("head_dim,dtype", [(24, torch.float32), (64, torch.float32), (128, torch.float16)])
def test_fused_head_dims(head_dim, dtype):
    _check(*_inputs(1, 7, 7, head_dim, head_dim, 1, 7, True, dtype), 1, 7, 3)


def test_inputs_the_kernels_do_not_cover_run_the_reference_unless_triton_is_asked_for(monkeypatch):
    q = torch.randn(1, 7, 7, 128, device=DEVICE)
    with pytest.raises(ValueError, match="float32 heads of at most 64 channels, got 128"):
        window_attention(q, q, q, 1, 7, backend="triton")
    monkeypatch.setattr("visattn.ops._backend.resolve_backend", lambda backend, tensor: backend or "triton")
    fallback = window_attention(q.requires_grad_(), q, q, 1, 7)
    assert not fused_ops_in_graph(fallback)  # the automatic choice ran the reference
    torch.testing.assert_close(fallback, window_attention(q, q, q, 1, 7, backend="torch"))
    torch.testing.assert_close(window_attention(q, q, q, 2, 12), window_attention(q, q, q, 2, 12, backend="torch"))


def test_fused_value_width_differs_from_query_width():
    _check(*_inputs(1, 8, 8, 32, 64, 2, 8, True, torch.float32), 2, 8, 4)


def test_fused_half_inputs_with_a_float32_bias_table():
    q, k, v = _inputs(1, 14, 14, 32, 32, 2, 7, False, torch.float16)
    table = torch.randn(2, 169, device=DEVICE, requires_grad=True)
    _check(q, k, v, table, 2, 7, 3)
    frozen = table.detach()  # no bias gradient wanted: the kernel skips its reduction
    _check(q, k, v, frozen, 2, 7, 3)


def test_fused_bias_gradient_summed_over_several_programs(monkeypatch):
    monkeypatch.setattr(kernels, "BIAS_TILES_PER_PROGRAM", 3)  # 4 windows: two programs per (batch, head)
    _check(*_inputs(2, 14, 14, 32, 32, 2, 7, True, torch.float32), 2, 7, 3)


def test_fused_strided_views_from_a_fused_projection():
    qkv = torch.randn(1, 8, 8, 96, device=DEVICE, requires_grad=True)
    q, k, v = qkv.split(32, dim=-1)  # views with a channel stride of 1 and a row stride of 96
    ref = window_attention(q, k, v, 2, 8, 4, backend="torch")
    out = window_attention(q, k, v, 2, 8, 4, backend="triton")
    assert fused_ops_in_graph(out) and not fused_ops_in_graph(ref)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    (g_ref,) = torch.autograd.grad(ref.sum(), qkv)
    (g_out,) = torch.autograd.grad(out.sum(), qkv)
    torch.testing.assert_close(g_out, g_ref, **TOL[torch.float32])


def test_flop_counter_sees_the_fused_op():
    q, k, v, table = _inputs(2, 9, 12, 32, 32, 2, 7, True, torch.float32)
    counts = {}
    for backend in ("torch", "triton"):
        with FlopCounterMode(display=False) as counter:
            window_attention(q, k, v, 2, 7, 3, table, backend=backend)
        counts[backend] = counter.get_total_flops()
    assert counts["triton"] == counts["torch"] == 2 * 2 * 4 * 49**2 * (32 + 32)
    with FlopCounterMode(display=False) as counter:
        window_attention(q, k, v, 2, 7, 3, table, backend="triton").sum().backward()
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert by_op["visattn.window_attention_backward"] == 2.5 * by_op["visattn.window_attention"]


def test_torch_compile_traces_the_fused_op():
    q, k, v, table = _inputs(1, 9, 12, 32, 32, 2, 7, True, torch.float32)

    def f(q, k, v, table):
        return window_attention(q, k, v, 2, 7, 3, table, backend="triton") * 2

    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, table), f(q, k, v, table))
