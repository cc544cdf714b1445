"""Non-causal linear attention: the reference against an explicit N x N weight matrix, the fused Triton kernels
against the reference (under Triton's interpreter on CPU tensors in CI, on the GPU with bf16 through
``VISATTN_TEST_DEVICE=cuda``)."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import DEVICE
from tests.ops._compare import assert_matches_reference
from visattn.ops.linear_attention import linear_attention
from visattn.ops.linear_attention import triton as kernels

TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=4e-3, rtol=4e-3),
       torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}
# The interpreter mishandles bf16: bf16 is checked on a GPU only.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE != "cpu" else [])
MODES = {"plain": {}, "injective": {"injective": True}, "normalize": {"normalize": True},
         "normalize_separate": {"normalize": True, "separate": True}}
# phi = ELU + 1 and rotary tables applied inside the op; the first is HER-Seg's attention
FEATURE_MODES = {"normalize_elu_rope": {"normalize": True, "feature_map": "elu+1", "rope": True},
                 "normalize_separate_rope": {"normalize": True, "separate": True, "rope": True},
                 "injective_rope": {"injective": True, "rope": True},
                 "plain_elu": {"feature_map": "elu+1"}}


def _inputs(b, h, n, d, e, mode, dtype=torch.float32, device=DEVICE, heads_inside_tokens=False):
    """Keyword arguments of linear_attention for ``mode``, tensors as leaves that require grad.

    Normalizing modes get positive features (as after phi, or raw values with the op's ``feature_map``) and scale
    1 / N; the others scale (N D)^-1/2, or (N D)^-1 with a feature map, so every output is O(1). With
    ``heads_inside_tokens`` q, k, v (and the norms) are (B, N, H, C) maps viewed as (B, H, N, C), the way attention
    blocks pass them. ``rope`` modes get (cos, sin) tables of random angles, (N, H D / 2) float32.
    """
    positive = mode.get("normalize", False) and "feature_map" not in mode

    def leaf(width, features=False):
        t = torch.rand(b, n, h, width) + 0.1 if features else torch.randn(b, n, h, width)
        t = t.to(device, dtype).transpose(1, 2)
        return (t if heads_inside_tokens else t.contiguous()).requires_grad_()

    normalize, separate = mode.get("normalize", False), mode.get("separate", False)
    angles = 6.3 * torch.rand(n, h * d // 2, device=device)
    scale = 1 / n if normalize else 1 / (n * d) if "feature_map" in mode else (n * d) ** -0.5  # positive q.k ~ d
    return dict(q=leaf(d, positive), k=leaf(d, positive), v=leaf(e), scale=scale,
                injective=mode.get("injective", False), normalize=normalize,
                norm_q=leaf(d, True) if separate else None, norm_k=leaf(d, True) if separate else None,
                feature_map=mode.get("feature_map"), rope=(angles.cos(), angles.sin()) if mode.get("rope") else None)


def _leaves(args):
    return {name: args[name] for name in ("q", "k", "v", "norm_q", "norm_k") if args[name] is not None}


def _rotate_complex(x, cos, sin):
    """Channel pairs of (B, H, N, D) heads as complex numbers times exp(i angle), angles of (N, H D / 2) tables."""
    b, h, n, d = x.shape
    turn = torch.complex(cos, sin).to(torch.complex128).reshape(n, h, d // 2).transpose(0, 1)
    z = torch.view_as_complex(x.double().reshape(b, h, n, d // 2, 2).contiguous()) * turn
    return torch.view_as_real(z).reshape(b, h, n, d).to(x.dtype)


def dense_linear_attention(q, k, v, scale, injective, normalize, norm_q, norm_k, eps=1e-6, feature_map=None,
                           rope=None):
    """O = W V with the explicit (N x N) weights of features q' = phi(q), k' = phi(k) and their rotations q~, k~:
    W_ij = scale q~_i . k~_j, or scale q~_i . (k~_j - mean k~) + 1 / N (injective), or divided by
    mean_j qn_i . kn_j + eps (normalize; qn = norm_q or q', kn = norm_k or k')."""
    if feature_map is not None:
        q, k = F.elu(q) + 1, F.elu(k) + 1
    q_rot, k_rot = (q, k) if rope is None else (_rotate_complex(t, *rope) for t in (q, k))
    if injective:
        k_rot = k_rot - k_rot.mean(-2, keepdim=True)
    weights = scale * q_rot @ k_rot.transpose(-2, -1) + (1 / q.shape[-2] if injective else 0)
    if normalize:
        qn = q if norm_q is None else norm_q
        kn = k if norm_k is None else norm_k
        weights = weights / ((qn @ kn.transpose(-2, -1)).mean(-1, keepdim=True) + eps)
    return weights @ v


@pytest.mark.parametrize("mode", (MODES | FEATURE_MODES).values(), ids=(MODES | FEATURE_MODES).keys())
def test_reference_matches_dense_weights(mode):
    args = _inputs(2, 3, 13, 6, 7, mode, torch.float64, device="cpu")
    out = linear_attention(**args, backend="torch")
    expected = dense_linear_attention(**args)
    assert out.shape == (2, 3, 13, 7) and out.dtype == torch.float64
    torch.testing.assert_close(out, expected)
    leaves = _leaves(args)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, list(leaves.values()), grad)
    want = torch.autograd.grad(expected, list(leaves.values()), grad)
    for name, g, w in zip(leaves, got, want, strict=True):
        torch.testing.assert_close(g, w, msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_injective_attention_rows_sum_to_one(backend):
    n = 20
    args = _inputs(1, 2, n, 8, n, MODES["injective"])
    args["v"] = torch.eye(n, device=DEVICE).expand(1, 2, n, n)  # one-hot values: the output is W itself
    weights = linear_attention(**args, backend=backend)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, n, device=DEVICE))
    args["v"] = torch.full((1, 2, n, 3), 2.5, device=DEVICE)  # constant values pass through unchanged
    torch.testing.assert_close(linear_attention(**args, backend=backend), args["v"])


def _check(args):
    """Fused kernels in the inputs' dtype against the float32 reference on the same values, output and every
    input's gradient."""
    leaves = _leaves(args)
    upcast = {name: t.detach().float().requires_grad_() for name, t in leaves.items()}
    ref = linear_attention(**{**args, **upcast}, backend="torch")
    out = linear_attention(**args, backend="triton")
    assert out.dtype == args["q"].dtype
    assert_matches_reference(out, ref, leaves, TOL[out.dtype], ref_leaves=upcast)


# B, H, N, D, E
FUSED_CASES = {
    "d32": (2, 2, 64, 32, 32),
    "d8_padded_n50": (1, 3, 50, 8, 8),
    "e_differs_n77": (1, 2, 77, 16, 24),  # two token blocks, the last partial (too few to split)
    "d4_one_token": (2, 1, 1, 4, 4),
    "odd_widths_d5_e7": (1, 3, 13, 5, 7),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
@pytest.mark.parametrize("case", FUSED_CASES.values(), ids=FUSED_CASES.keys())
def test_fused_forward_and_gradients_match_the_reference(case, mode, dtype):
    _check(_inputs(*case, mode, dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", FEATURE_MODES.values(), ids=FEATURE_MODES.keys())
@pytest.mark.parametrize("case", [(2, 3, 50, 8, 8), (1, 2, 77, 16, 24), (1, 6, 70, 4, 4), (1, 1, 40, 128, 72)],
                         ids=["d8", "e_differs_n77", "d4_six_heads", "d128"])
def test_fused_feature_map_and_rope_match_the_reference(case, mode, dtype):
    _check(_inputs(*case, mode, dtype, heads_inside_tokens=True))


def test_rope_tables_are_constants():
    args = _inputs(1, 2, 9, 4, 4, FEATURE_MODES["normalize_elu_rope"])
    angles = torch.rand(9, 4, device=DEVICE, requires_grad=True)
    args["rope"] = (angles.cos(), angles.sin())
    for backend in ("torch", "triton"):
        out = linear_attention(**args, backend=backend)
        assert torch.autograd.grad(out.sum(), angles, allow_unused=True) == (None,)


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
def test_fused_head_widths_up_to_128(mode):
    _check(_inputs(1, 1, 40, 128, 72, mode))


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
def test_fused_reads_transposed_views_in_place(mode):
    args = _inputs(2, 3, 50, 8, 8, mode, heads_inside_tokens=True)
    assert not args["q"].is_contiguous()
    _check(args)
    out = linear_attention(**args, backend="triton")
    assert out.transpose(1, 2).is_contiguous()  # laid out like q: merging the heads back copies nothing


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
def test_fused_splits_the_token_reductions_of_few_heads(mode, dtype):
    args = _inputs(1, 2, 600, 16, 16, mode, dtype)
    tiling = kernels.Tiling(args["q"], args["v"])
    assert tiling.splits > 1 and tiling.splits * tiling.blocks_per_split >= tiling.n_blocks
    _check(args)


def test_fused_split_with_a_short_last_split(monkeypatch):
    monkeypatch.setattr(kernels, "BLOCK_N", 16)
    monkeypatch.setattr(kernels, "SPLIT_MIN_BLOCKS", 1)
    monkeypatch.setattr(kernels, "PROGRAMS_PER_SM", 2)
    monkeypatch.setattr(kernels, "_sm_count", lambda device: 4)  # 13 blocks in 4 splits of 4, 4, 4, 1
    args = _inputs(1, 2, 197, 8, 8, MODES["normalize_separate"])
    tiling = kernels.Tiling(args["q"], args["v"])
    assert (tiling.splits, tiling.blocks_per_split, tiling.n_blocks) == (4, 4, 13)
    _check(args)


def test_backward_saves_no_token_sized_intermediates():
    b, h, n, d, e = 1, 2, 64, 16, 8
    args = _inputs(b, h, n, d, e, MODES["normalize_separate"])
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        linear_attention(**args, backend="triton")
    inputs = 3 * b * h * n * d + b * h * n * e  # q, k, v and norm_q; norm_k is not needed
    assert sum(saved) == inputs + b * h * (d * e + d + e)  # and the packed float32 sums


def test_flop_counter_sees_the_fused_op():
    b, h, n, d, e = 2, 2, 30, 8, 16
    macs, normalizer = b * h * n * d * e, b * h * n * d
    for name, mode in MODES.items():
        args = _inputs(b, h, n, d, e, mode)
        with FlopCounterMode(display=False) as counter:
            linear_attention(**args, backend="triton").sum().backward()
        by_op = {str(op): count for op, count in counter.get_flop_counts()["Global"].items()}
        forward = 4 * macs + (2 * normalizer if mode.get("normalize") else 0)
        backward = 8 * macs + (2 * macs + 4 * normalizer if mode.get("normalize") else 0)
        assert by_op["visattn.linear_attention"] == forward, name
        assert by_op["visattn.linear_attention_backward"] == backward, name
    args = _inputs(b, h, n, d, e, MODES["plain"])
    counts = []
    for backend in ("torch", "triton"):
        with FlopCounterMode(display=False) as counter:
            linear_attention(**args, backend=backend)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 4 * macs


def test_backend_dispatch(monkeypatch):
    args = _inputs(1, 2, 9, 4, 4, MODES["injective"])
    reference = dense_linear_attention(**{k: t.detach() if torch.is_tensor(t) else t for k, t in args.items()})
    torch.testing.assert_close(linear_attention(**args, backend="torch"), reference, **TOL[torch.float32])
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        linear_attention(**args, backend="cuda")
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    with FlopCounterMode(display=False) as counter:
        linear_attention(**args)
    assert "visattn.linear_attention" in {str(op) for op in counter.get_flop_counts()["Global"]}  # the fused op ran
    monkeypatch.setenv("VISATTN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="unknown backend 'bogus'"):
        linear_attention(**args)


def test_torch_compile_traces_the_fused_op():
    args = _inputs(1, 2, 40, 8, 8, MODES["normalize_separate"])

    def f(args):
        return linear_attention(**args, backend="triton") * 2

    compiled = torch.compile(f, fullgraph=True)
    out = compiled(args)
    torch.testing.assert_close(out, f(args), **TOL[torch.float32])
    leaves = list(_leaves(args).values())
    for got, want in zip(torch.autograd.grad(out.sum(), leaves), torch.autograd.grad(f(args).sum(), leaves),
                         strict=True):
        torch.testing.assert_close(got, want, **TOL[torch.float32])


def _bad(**changes):
    args = {name: t.detach() if torch.is_tensor(t) else t for name, t in _inputs(1, 2, 6, 4, 4, {}).items()}
    return {**args, **changes}


X = torch.randn(1, 2, 6, 4, device=DEVICE)
BAD = {
    "q_3d": (_bad(q=X[0]), r"q, k of shape \(B, H, N, D\)"),
    "k_shape": (_bad(k=X[..., :3]), r"q, k of shape \(B, H, N, D\)"),
    "v_tokens": (_bad(v=X[:, :, :5]), r"v of shape \(B, H, N, E\)"),
    "no_channels": (_bad(q=X[..., :0], k=X[..., :0]), "at least one channel, got D=0"),
    "injective_and_normalize": (_bad(injective=True, normalize=True), "exclude each other"),
    "norm_q_alone": (_bad(normalize=True, norm_q=X), "norm_q and norm_k together"),
    "norm_k_alone": (_bad(normalize=True, norm_k=X), "norm_q and norm_k together"),
    "norms_without_normalize": (_bad(norm_q=X, norm_k=X), "only used with normalize=True"),
    "norm_shape": (_bad(normalize=True, norm_q=X[..., :3], norm_k=X[..., :3]), "norm_q of q's shape"),
    "dtype": (_bad(v=X.double()), "v is torch.float64 but q is torch.float32"),
    "norm_dtype": (_bad(normalize=True, norm_q=X, norm_k=X.half()), "norm_k is torch.float16"),
    "integer": (_bad(q=X.long(), k=X.long()), "q must be a floating-point tensor"),
    "device": (_bad(k=X.to("meta")), "k is on meta"),
    "triton_width": ({**_bad(), "v": torch.randn(1, 2, 6, 129, device=DEVICE), "backend": "triton"},
                     "D, E <= 128"),
    "feature_map": (_bad(feature_map="relu"), "unknown feature_map 'relu'"),
    "rope_odd_width": (_bad(q=X[..., :3], k=X[..., :3], rope=(X[0, 0, :, :3], X[0, 0, :, :3])), "even head width"),
    "rope_table_shape": (_bad(rope=(X[0, 0, :, :3], X[0, 0, :, :3])),
                         r"rope cos table of shape \(N, H \* D / 2\) = \(6, 4\)"),
    "rope_integer": (_bad(rope=(X[0, 0, :, :4], X[0, 0, :, :4].long())), "floating-point rope sin"),
    "rope_not_a_pair": (_bad(rope=(X[0, 0, :, :4],)), r"\(cos, sin\) pair"),
}


@pytest.mark.parametrize("args,match", BAD.values(), ids=BAD.keys())
def test_bad_arguments_are_clear_errors(args, match):
    with pytest.raises(ValueError, match=match):
        linear_attention(**args)


def test_the_elu_feature_map_has_elus_values_and_gradient_on_transposed_views():
    """phi = ELU + 1, on a transposed (B, H, N, d) head view as the blocks pass it: the values of ELU + 1 (exp(x)
    exactly for x <= 0, x + 1 above) and ELU's gradient, 1 at x = 0 too (zero-padded tokens give exact zeros)."""
    from visattn.ops.linear_attention.reference import elu_plus_one

    x = torch.randn(2, 7, 3, 4).transpose(1, 2)
    x[0, 0, 0] = 0.0
    x.requires_grad_(True)
    out = elu_plus_one(x)
    expected = torch.where(x > 0, x + 1.0, torch.exp(x))
    assert torch.equal(out, expected) and out.min() > 0
    (grad,) = torch.autograd.grad(out.sum(), x)
    (elu_grad,) = torch.autograd.grad((F.elu(x) + 1.0).sum(), x)
    torch.testing.assert_close(grad, elu_grad)
    assert torch.equal(grad[0, 0, 0], torch.ones(4))
