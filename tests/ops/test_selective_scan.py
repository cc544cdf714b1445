"""Selective scan: the reference against hand computations, the fused Triton kernels against the reference (under
Triton's interpreter on CPU tensors in CI, on the GPU with bf16 through ``VISATTN_TEST_DEVICE=cuda``)."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import DEVICE
from tests.ops._compare import assert_matches_reference
from visattn.ops.selective_scan import fused, selective_scan
from visattn.ops.selective_scan import triton as kernels

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=3e-3, rtol=3e-3),
       torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
# The interpreter mishandles bf16: bf16 is checked on a GPU only.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE != "cpu" else [])
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _inputs(batch, d, g, n, length, dtype=torch.float32, D=True, z=True, delta_bias=True, softplus=True):
    """Arguments of selective_scan as leaves that require grad; absent optional ones are None."""

    def leaf(t, dt=dtype):
        return t.to(DEVICE, dt).requires_grad_()

    step = torch.randn(batch, d, length) * 0.5 if softplus else torch.rand(batch, d, length) * 0.5
    return dict(
        u=leaf(torch.randn(batch, d, length)), delta=leaf(step), A=leaf(-0.5 - torch.rand(d, n), torch.float32),
        B=leaf(torch.randn(batch, g, n, length)), C=leaf(torch.randn(batch, g, n, length)),
        D=leaf(torch.randn(d), torch.float32) if D else None, z=leaf(torch.randn(batch, d, length)) if z else None,
        delta_bias=leaf(torch.randn(d) * 0.5, torch.float32) if delta_bias else None, delta_softplus=softplus,
    )


def _check(args):
    ref = selective_scan(**args, backend="torch")
    out = selective_scan(**args, backend="triton")
    assert out.dtype == ref.dtype
    leaves = {name: args[name] for name in NAMES if args[name] is not None}
    assert_matches_reference(out, ref, leaves, TOL[args["u"].dtype])


def _by_hand(u, delta, A, B, C, D, z, delta_bias, softplus):
    """The recurrence in Python floats, one scalar at a time."""
    u, delta, A, B, C, D, z, delta_bias = (t.tolist() for t in (u, delta, A, B, C, D, z, delta_bias))
    d, n, length, per_group = len(A), len(A[0]), len(u[0][0]), len(A) // len(B[0])
    out = []
    for bi in range(len(u)):
        rows = []
        for c in range(d):
            grp, h, row = c // per_group, [0.0] * n, []
            for t in range(length):
                dt = delta[bi][c][t] + delta_bias[c]
                dt = math.log1p(math.exp(dt)) if softplus else dt
                h = [math.exp(dt * A[c][s]) * h[s] + dt * B[bi][grp][s][t] * u[bi][c][t] for s in range(n)]
                y = sum(C[bi][grp][s][t] * h[s] for s in range(n)) + D[c] * u[bi][c][t]
                row.append(y * z[bi][c][t] / (1.0 + math.exp(-z[bi][c][t])))
            rows.append(row)
        out.append(rows)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_three_steps_by_hand(backend):
    args = _inputs(2, 4, 2, 2, 3)  # two groups of two channels
    with torch.no_grad():
        out = selective_scan(**args, backend=backend)
    expected = _by_hand(*(args[name].detach().cpu() for name in NAMES), softplus=True)
    torch.testing.assert_close(out.double().cpu(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_constant_step_and_decay_give_a_geometric_sum(backend):
    # u = B = C = 1, constant dt and A: h_t = dt sum_{s<=t} q^s, q = exp(dt A), y_t = sum_n dt (1 - q^{t+1}) / (1 - q)
    length, step = 11, 0.3
    A = torch.tensor([[-0.2, -1.5]], device=DEVICE)
    ones = torch.ones(1, 1, 2, length, device=DEVICE)
    u = torch.ones(1, 1, length, device=DEVICE)
    out = selective_scan(u, torch.full_like(u, step), A, ones, ones, backend=backend)
    q = torch.exp(step * A.cpu().double())[0, :, None]
    t = torch.arange(length, dtype=torch.float64)
    expected = (step * (1 - q ** (t + 1)) / (1 - q)).sum(0)
    torch.testing.assert_close(out[0, 0].cpu(), expected.float())


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 8 positions, so short sequences already span several chunks (and the interpreter stays fast)."""
    monkeypatch.setattr(fused, "BLOCK_L", 8)


# batch, d, g, n, L and the optional inputs
CASES = {
    "plain_one_chunk": ((1, 4, 1, 4, 8), dict(D=False, z=False, delta_bias=False, softplus=False)),
    "all_options": ((2, 4, 1, 4, 21), dict()),
    "groups_half_of_d": ((1, 4, 2, 4, 13), dict(z=False)),
    "ragged_channels_and_states": ((1, 6, 2, 3, 11), dict(D=False, softplus=False)),  # 3 channels a group, n=3
    "n1": ((1, 3, 3, 1, 9), dict(D=False, delta_bias=False)),
    "n16": ((1, 2, 1, 16, 10), dict()),
    "one_step": ((1, 3, 1, 2, 1), dict()),
}


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,options", CASES.values(), ids=CASES.keys())
def test_forward_and_gradients_match_the_reference(shape, options, dtype):
    _check(_inputs(*shape, dtype=dtype, **options))


@pytest.mark.parametrize("block_l,tile", [(4, 32), (16, 128)])
def test_chunks_and_several_channel_blocks_per_group(monkeypatch, block_l, tile):
    monkeypatch.setattr(fused, "BLOCK_L", block_l)
    monkeypatch.setattr(kernels, "TILE", tile)  # 2 channels a block: 3 blocks share each group's dB, dC
    _check(_inputs(2, 12, 2, 4, 19))


def test_default_chunk_on_a_long_sequence():
    _check(_inputs(1, 2, 1, 2, fused.BLOCK_L * 5 // 2))


def test_strided_views_as_vmamba_passes_them():
    batch, k, d_inner, n, length = 1, 2, 2, 4, 12
    xz = torch.randn(batch, length, 2 * k * d_inner, device=DEVICE).requires_grad_()
    x_dbl = torch.randn(batch, length, k * (1 + 2 * n), device=DEVICE).requires_grad_()
    A = -0.5 - torch.rand(k * d_inner, n, device=DEVICE)
    u, z = xz.transpose(1, 2).chunk(2, dim=1)  # (batch, d, L) views with a channel stride of 1
    dts, bs, cs = x_dbl.view(batch, length, k, 1 + 2 * n).split([1, n, n], dim=-1)
    delta = dts.reshape(batch, length, k).transpose(1, 2).repeat_interleave(d_inner, dim=1)
    B, C = (t.permute(0, 2, 3, 1) for t in (bs, cs))  # (batch, k, n, L) views
    outs = [selective_scan(u, delta, A, B, C, z=z, delta_softplus=True, backend=backend) for backend in
            ("torch", "triton")]
    torch.testing.assert_close(outs[1], outs[0], **TOL[torch.float32])
    grads = [torch.autograd.grad(out.square().sum(), (xz, x_dbl)) for out in outs]
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, **TOL[torch.float32])


def test_backward_saves_chunk_states_only():
    batch, d, g, n, length = 1, 4, 1, 16, 32
    args = _inputs(batch, d, g, n, length)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan(**args, backend="triton")
    all_states = batch * d * n * length
    assert max(saved) < all_states
    assert sum(saved) <= 3 * batch * d * length + 2 * batch * g * n * length + all_states // fused.BLOCK_L + 3 * d * n
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        saved.clear()
        selective_scan(**args, backend="torch")
    assert max(saved) >= all_states


def test_flop_counter_sees_the_fused_op():
    batch, d, n, length = 2, 4, 4, 10
    args = _inputs(batch, d, 2, n, length)
    with FlopCounterMode(display=False) as counter:
        selective_scan(**args, backend="triton").sum().backward()
    by_op = {str(op): count for op, count in counter.get_flop_counts()["Global"].items()}
    assert by_op["visattn.selective_scan"] == 9 * batch * d * n * length
    assert by_op["visattn.selective_scan_backward"] == 24 * batch * d * n * length


def test_backend_environment_variable_picks_the_fused_op(monkeypatch):
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    with FlopCounterMode(display=False) as counter:
        selective_scan(**_inputs(1, 2, 1, 2, 5))
    assert counter.get_total_flops() == 9 * 2 * 2 * 5


def test_torch_compile_traces_the_fused_op():
    args = _inputs(1, 4, 2, 4, 9, z=False)

    def f(args):
        return selective_scan(**args, backend="triton") * 2

    compiled = torch.compile(f, fullgraph=True)
    out = compiled(args)
    torch.testing.assert_close(out, f(args), **TOL[torch.float32])
    grads = torch.autograd.grad(out.sum(), (args["u"], args["A"]))
    expected = torch.autograd.grad(f(args).sum(), (args["u"], args["A"]))
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, **TOL[torch.float32])


def _bad(**changes):
    args = {k: v.detach() if torch.is_tensor(v) else v for k, v in _inputs(2, 4, 2, 3, 5).items()}
    args.update({k: v if v.is_meta else v.to(DEVICE) for k, v in changes.items()})
    return args


BAD = {
    "u_not_3d": (_bad(u=torch.randn(2, 4)), r"u, delta of shape \(batch, d, L\)"),
    "delta_shape": (_bad(delta=torch.randn(2, 4, 6)), r"u, delta of shape \(batch, d, L\)"),
    "A_rows": (_bad(A=-torch.rand(3, 3)), r"A of shape \(d, n\)"),
    "B_state_width": (_bad(B=torch.randn(2, 2, 4, 5)), r"B, C of shape \(batch, g, n, L\)"),
    "C_differs_from_B": (_bad(C=torch.randn(2, 1, 3, 5)), r"B, C of shape \(batch, g, n, L\)"),
    "groups_not_dividing_d": (_bad(B=torch.randn(2, 3, 3, 5), C=torch.randn(2, 3, 3, 5)), "g=3 .* must divide d=4"),
    "D_shape": (_bad(D=torch.randn(3)), "D of shape"),
    "z_shape": (_bad(z=torch.randn(2, 4, 4)), "z of shape"),
    "bias_shape": (_bad(delta_bias=torch.randn(4, 1)), "delta_bias of shape"),
    "integer_u": (_bad(u=torch.ones(2, 4, 5, dtype=torch.long)), "u must be a floating-point tensor"),
    "half_A": (_bad(A=-torch.rand(4, 3).half()), "A must be float32"),
    "double_D": (_bad(D=torch.randn(4, dtype=torch.float64)), "D must be float32"),
    "device": (_bad(A=-torch.rand(4, 3, device="meta")), "A is on meta"),
}


@pytest.mark.parametrize("args,match", BAD.values(), ids=BAD.keys())
def test_bad_arguments_are_clear_errors(args, match):
    with pytest.raises(ValueError, match=match):
        selective_scan(**args)
