import math

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import visattn  # noqa: F401
from tests.backbones._compare import assert_fused_matches_reference
from visattn.blocks import SS2D, WindowAttention
from visattn.blocks.ss2d import cross_merge, cross_scan

# visattn's own sizing (no published model), aimed at Swin-T/S/B's cost at 224 (4.5 / 8.7 / 15.4 GMACs).
VARIANTS = {"tiny": ((2, 2, 3, 2), (96, 192, 384, 768)), "small": ((2, 2, 12, 2), (96, 192, 384, 768)),
            "base": ((2, 2, 12, 2), (128, 256, 512, 1024))}
SWIN_MACS = {"tiny": 4.5, "small": 8.7, "base": 15.4}


def _hand_count(depths, dims, head_dim=32, window=7, size=224, classes=1000, mlp_ratio=4) -> tuple[int, float]:
    """Parameters and MACs of LaMamba written out from its equations (SS2D with d_inner = C, d_state 1, dt rank
    ceil(C / 16) and 4 directions; Swin window attention; a 4C MLP; 4x4 stem and 3x3/2 downsampling convs with LN).
    MACs as the FLOP counter defines them: matmuls and convs, the scan's 9 / 2 per state step, window attention
    over whole windows; norms, activations and pooling are free."""
    params = 3 * 16 * dims[0] + dims[0] + 2 * dims[0]
    side = size // 4
    macs = side * side * 3 * 16 * dims[0]
    for i, (depth, c) in enumerate(zip(depths, dims, strict=True)):
        if i:
            side = -(-side // 2)
            params += 9 * dims[i - 1] * c + c + 2 * c
            macs += side * side * 9 * dims[i - 1] * c
        tokens, rank, hidden = side * side, math.ceil(c / 16), mlp_ratio * c
        ss2d_params = 2 * c * c + 9 * c + c + 4 * (rank + 2) * c + 4 * (c * rank + c) + 4 * c + 4 * c + 2 * c + c * c
        attn_params = 3 * c * c + 3 * c + (c // head_dim) * (2 * window - 1) ** 2 + c * c + c
        params += depth * (3 * 2 * c + ss2d_params + attn_params + 2 * c * hidden + hidden + c)
        ss2d_macs = tokens * (2 * c * c + 9 * c + 4 * (rank + 2) * c + 4 * rank * c + c * c) + 4.5 * 4 * c * tokens
        attn_macs = tokens * 4 * c * c + (-(-side // window)) ** 2 * window**4 * 2 * c
        macs += depth * (ss2d_macs + attn_macs + tokens * 2 * c * hidden)
    return params + 2 * dims[-1] + dims[-1] * classes + classes, macs + dims[-1] * classes


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_params_and_macs_counted_with_the_scan_and_window_ops(variant, monkeypatch):
    monkeypatch.setenv("VISATTN_BACKEND", "triton")  # meta tensors run the fused ops' fake kernels: nothing computes
    model = timm.create_model(f"lamamba_{variant}").to("meta").eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 224, 224, device="meta"))
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert counts["visattn.selective_scan"] > 0 and counts["visattn.window_attention"] > 0
    params, macs = _hand_count(*VARIANTS[variant])
    assert sum(p.numel() for p in model.parameters()) == params
    assert counter.get_total_flops() / 2 == macs
    assert macs / 1e9 == pytest.approx(SWIN_MACS[variant], rel=0.03)


def test_cross_scan_directions_and_merge():
    x = torch.arange(6.0).view(1, 1, 2, 3)
    scans = cross_scan(x)[0, :, 0]
    assert scans.tolist() == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]
    torch.testing.assert_close(cross_merge(cross_scan(x), 2, 3), 4 * x)


def test_ss2d_fused_path_matches_reference_path():
    block = SS2D(16)
    x = torch.randn(2, 3, 5, 16, requires_grad=True)
    block.backend = "torch"
    ref = block(x)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    block.backend = "triton"
    out = block(x)
    (g_out,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g_out, g_ref, atol=1e-5, rtol=1e-4)


def test_window_attention_shifts_only_maps_larger_than_a_window():
    torch.manual_seed(0)
    shifted = WindowAttention(32, 2, window_size=4, shift=True)
    plain = WindowAttention(32, 2, window_size=4, shift=False)
    plain.load_state_dict(shifted.state_dict())
    small, large = torch.randn(1, 4, 4, 32), torch.randn(1, 8, 8, 32)
    torch.testing.assert_close(shifted(small), plain(small))
    assert not torch.allclose(shifted(large), plain(large))


def test_fused_model_matches_reference_model(monkeypatch):
    model = timm.create_model("lamamba_tiny", depths=(1, 1, 1, 1), dims=(32, 64, 96, 128), num_classes=3).eval()
    x = torch.randn(1, 3, 40, 36)  # stage maps 10x9, 5x5, 3x3, 2x2: padded windows everywhere
    assert_fused_matches_reference(model, x, monkeypatch)


def test_any_input_size():
    model = timm.create_model("lamamba_tiny", features_only=True).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 100, 150))
    assert [m.shape[1:] for m in maps] == [(96, 25, 38), (192, 13, 19), (384, 7, 10), (768, 4, 5)]


def test_forcing_the_kernels_where_they_do_not_apply_fails_instead_of_comparing_the_reference_with_itself(
        monkeypatch):
    model = timm.create_model("test_lamamba", window_size=9).eval()  # the kernels take windows up to 8
    with pytest.raises(ValueError, match=r"^the triton backend takes window_size <= 8, got 9; \$VISATTN_BACKEND=triton "
                                         r"forces the kernels: unset it or set it to torch$"):
        assert_fused_matches_reference(model, torch.randn(1, 3, 32, 32), monkeypatch)
