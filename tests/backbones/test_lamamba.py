import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import visattn  # noqa: F401
from tests.backbones._compare import assert_fused_matches_reference
from visattn.blocks import SS2D, WindowAttention
from visattn.blocks.ss2d import cross_merge, cross_scan

# visattn's own sizing, aimed at Swin-T/S/B's cost at 224 (4.5 / 8.7 / 15.4 GMACs).
MEASURED = {"tiny": (31.00, 4.60), "small": (51.75, 8.72), "base": (91.50, 15.38)}
SWIN_MACS = {"tiny": 4.5, "small": 8.7, "base": 15.4}


@pytest.mark.parametrize("variant", sorted(MEASURED))
def test_params_and_macs_counted_with_the_scan_and_window_ops(variant, monkeypatch):
    monkeypatch.setenv("VISATTN_BACKEND", "triton")  # meta tensors run the fused ops' fake kernels: nothing computes
    model = timm.create_model(f"lamamba_{variant}").to("meta").eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 224, 224, device="meta"))
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert counts["visattn.selective_scan"] > 0 and counts["visattn.window_attention"] > 0
    params, macs = MEASURED[variant]
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params, abs=0.01)
    assert counter.get_total_flops() / 2e9 == pytest.approx(macs, abs=0.01)
    assert macs == pytest.approx(SWIN_MACS[variant], rel=0.03)


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
