"""Polarized self-attention: each layout and form against formulas written here from the official code's behaviour
and from the paper's equations (full maps, no pooling-first shortcut), official state dicts, gradients, errors."""

import pytest
import torch
import torch.nn.functional as F

from tests.fused import run_both_backends
from visattn.blocks import PolarizedSelfAttention

CASES = [(layout, form) for layout in ("parallel", "sequential") for form in ("official", "paper")]


def _conv(x, weight, bias=None):
    return F.conv2d(x, weight, bias)


def official_formula(sd, x, layout):
    """What DeLightCMU/PSA network/PSA.py computes, step by step on the full maps, from a state dict."""
    b, c, h, w = x.shape
    n = h * w

    def spatial_pool(x):  # the official name: the channel-only branch
        v = _conv(x, sd["conv_v_right.weight"]).view(b, -1, n)
        mask = _conv(x, sd["conv_q_right.weight"]).view(b, 1, n).softmax(dim=2)
        ctx = torch.matmul(v, mask.transpose(1, 2)).unsqueeze(-1)  # (B, C', 1, 1)
        if layout == "parallel":
            ctx = _conv(ctx, sd["conv_up.weight"])
        else:
            ctx = _conv(ctx, sd["conv_up.0.weight"], sd["conv_up.0.bias"])
            ctx = F.layer_norm(ctx, ctx.shape[1:], sd["conv_up.1.weight"], sd["conv_up.1.bias"])
            ctx = _conv(ctx.relu(), sd["conv_up.3.weight"], sd["conv_up.3.bias"])
        return x * ctx.sigmoid()

    def channel_pool(x):  # the official name: the spatial-only branch
        g = _conv(x, sd["conv_q_left.weight"])
        avg = F.adaptive_avg_pool2d(g, 1).view(b, -1, 1).permute(0, 2, 1)  # (B, 1, C')
        theta = _conv(x, sd["conv_v_left.weight"]).view(b, -1, n)
        if layout == "parallel":
            ctx = torch.matmul(avg, theta).softmax(dim=2)  # softmax after the product
        else:
            ctx = torch.matmul(avg, theta.softmax(dim=2))  # softmax of each channel, before it
        return x * ctx.view(b, 1, h, w).sigmoid()

    if layout == "parallel":
        return spatial_pool(x) + channel_pool(x)
    return channel_pool(spatial_pool(x))


def paper_formula(sd, x, layout):
    """The paper's equations on the full maps."""
    b, c, h, w = x.shape

    def channel_gate(x):
        v = _conv(x, sd["conv_v_right.weight"]).flatten(2)  # (B, C', N)
        q = _conv(x, sd["conv_q_right.weight"]).flatten(2).softmax(-1)  # (B, 1, N)
        z = torch.einsum("bkn,bn->bk", v, q[:, 0])
        wz = z @ sd["conv_up.weight"].flatten(1).T + sd["conv_up.bias"]  # (B, C)
        return F.layer_norm(wz, (c,), sd["norm.weight"], sd["norm.bias"]).sigmoid()[..., None, None]

    def spatial_gate(x):
        q = _conv(x, sd["conv_q_left.weight"]).mean((2, 3)).softmax(-1)  # (B, C')
        v = _conv(x, sd["conv_v_left.weight"]).flatten(2)
        return torch.einsum("bk,bkn->bn", q, v).sigmoid().view(b, 1, h, w)

    z_ch = channel_gate(x) * x
    if layout == "parallel":
        return z_ch + spatial_gate(x) * x
    return spatial_gate(z_ch) * z_ch


def _randomised(module):
    """The module with every parameter random (LayerNorms too), so no term can hide behind an init value."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return module


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (8, 8), (3, 1)])
@pytest.mark.parametrize("layout,form", CASES)
def test_matches_the_formula(layout, form, size):
    block = _randomised(PolarizedSelfAttention(16, layout, form)).double()
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    formula = official_formula if form == "official" else paper_formula
    want = formula(block.state_dict(), x, layout)
    torch.testing.assert_close(block(x), want)


def test_odd_channels():
    for layout, form in CASES:
        block = _randomised(PolarizedSelfAttention(9, layout, form)).double()
        x = torch.randn(1, 9, 3, 5, dtype=torch.float64)
        formula = official_formula if form == "official" else paper_formula
        torch.testing.assert_close(block(x), formula(block.state_dict(), x, layout))


def _official_state_dict(channels, layout):
    """A state dict with the official module's keys and shapes (PSA_p / PSA_s with inplanes = planes = C)."""
    inner = channels // 2
    sd = {"conv_q_right.weight": torch.randn(1, channels, 1, 1),
          "conv_v_right.weight": torch.randn(inner, channels, 1, 1),
          "conv_q_left.weight": torch.randn(inner, channels, 1, 1),
          "conv_v_left.weight": torch.randn(inner, channels, 1, 1)}
    if layout == "parallel":
        sd["conv_up.weight"] = torch.randn(channels, inner, 1, 1)
    else:
        hidden = inner // 4
        sd.update({"conv_up.0.weight": torch.randn(hidden, inner, 1, 1), "conv_up.0.bias": torch.randn(hidden),
                   "conv_up.1.weight": torch.randn(hidden, 1, 1), "conv_up.1.bias": torch.randn(hidden, 1, 1),
                   "conv_up.3.weight": torch.randn(channels, hidden, 1, 1), "conv_up.3.bias": torch.randn(channels)})
    return sd


@pytest.mark.parametrize("layout", ["parallel", "sequential"])
def test_an_official_state_dict_loads_strictly(layout):
    block = PolarizedSelfAttention(48, layout, "official")
    sd = _official_state_dict(48, layout)
    block.load_state_dict(sd, strict=True)
    x = torch.randn(1, 48, 6, 5)
    torch.testing.assert_close(block(x), official_formula(sd, x, layout), atol=1e-4, rtol=1e-4)


def test_init_is_kaiming_fan_in_without_bias():
    block = PolarizedSelfAttention(256, "parallel", "official")
    for name in ("conv_q_right", "conv_v_right", "conv_q_left", "conv_v_left"):
        conv = getattr(block, name)
        assert conv.bias is None
        torch.testing.assert_close(conv.weight.std().item(), (2 / 256) ** 0.5, atol=0.01, rtol=0.1)


@pytest.mark.parametrize("layout,form", CASES)
def test_gradients_flow(layout, form):
    # 16 channels: with 8 the official sequential bottleneck is 1 wide and its LayerNorm outputs a constant
    block = _randomised(PolarizedSelfAttention(16, layout, form))
    x = torch.randn(2, 16, 5, 3, requires_grad=True)
    block(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_factory_arguments():
    block = PolarizedSelfAttention(8, "sequential", "paper", device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in block.parameters())
    assert block(torch.randn(1, 8, 2, 2, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("args,match", [
    ((8, "diagonal"), r"layout='diagonal'; use one of parallel, sequential"),
    ((8, "parallel", "blog"), r"form='blog'; use one of official, paper"),
    ((1,), r"channels must be an int >= 2"),
    ((4, "sequential", "official"), r"channels must be an int >= 8"),
])
def test_bad_arguments_are_one_line_errors(args, match):
    with pytest.raises(ValueError, match=match) as info:
        PolarizedSelfAttention(*args)
    assert "\n" not in str(info.value)


def test_wrong_input_channels():
    block = PolarizedSelfAttention(8)
    with pytest.raises(ValueError, match=r"expected input \(B, 8, H, W\), got \(1, 6, 4, 4\)") as info:
        block(torch.randn(1, 6, 4, 4))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("layout,form", CASES)
def test_the_fused_gating_matches_the_reference_in_the_block(layout, form, monkeypatch):
    """The block on the Triton op (the interpreter on CPU) gives the reference's output and gradients."""
    block = _randomised(PolarizedSelfAttention(16, layout, form))
    x = torch.randn(2, 16, 5, 3, requires_grad=True)

    def run():
        out = block(x)
        return out.detach(), torch.autograd.grad(out.square().sum(), [x, *block.parameters()])

    results = run_both_backends(run, monkeypatch)
    torch.testing.assert_close(results["triton"][0], results["torch"][0], atol=1e-5, rtol=1e-5)
    for got, want in zip(results["triton"][1], results["torch"][1], strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
