import re

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import visattn  # noqa: F401
from visattn.blocks import GatedCNNBlock

# Published parameters (M) and MACs (G) at 224x224, as counted from the official code.
PUBLISHED = {"femto": (7.3, 1.15), "kobe": (9.1, 1.51), "tiny": (26.5, 4.47), "small": (48.5, 8.94),
             "base": (84.8, 15.79)}


@pytest.mark.parametrize("variant", sorted(PUBLISHED))
def test_params_and_macs_match_the_paper(variant):
    params, macs = PUBLISHED[variant]
    model = timm.create_model(f"visattn_mambaout_{variant}").eval()
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params, rel=0.01)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    assert counter.get_total_flops() / 2e9 == pytest.approx(macs, rel=0.02)


def test_does_not_shadow_timms_mambaout():
    assert timm.models.model_entrypoint("mambaout_femto").__module__ == "timm.models.mambaout"


def test_gated_cnn_block_matches_its_equation():
    block = GatedCNNBlock(12).double().eval()
    x = torch.randn(2, 5, 6, 12, dtype=torch.float64)
    h = int(8 / 3 * 12)
    g, i, c = block.fc1(torch.nn.functional.layer_norm(x, (12,), block.norm.weight, block.norm.bias, 1e-6)).split(
        [h, h - 12, 12], dim=-1)
    c = torch.nn.functional.conv2d(c.permute(0, 3, 1, 2), block.conv.weight, block.conv.bias, padding=3, groups=12)
    expected = x + block.fc2(torch.nn.functional.gelu(g) * torch.cat([i, c.permute(0, 2, 3, 1)], -1))
    torch.testing.assert_close(block(x), expected)


def test_timm_checkpoint_loads_and_gives_timms_outputs():
    reference = timm.create_model("mambaout_femto").eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ours = timm.create_model("visattn_mambaout_femto").eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 160, 128)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))
        mine = ours.forward_intermediates(x, intermediates_only=True)
        theirs = reference.forward_intermediates(x, intermediates_only=True)
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b)


# The official release layout, written independently of the package's converter.
_TO_OFFICIAL = [
    (r"^stem\.", "downsample_layers.0."),
    (r"^stages\.(\d)\.downsample\.", r"downsample_layers.\1."),
    (r"^stages\.(\d)\.blocks\.(\d+)\.", r"stages.\1.\2."),
    (r"^head\.norm\.", "norm."),
    (r"^head\.pre_logits\.fc\.", "head.fc1."),
    (r"^head\.pre_logits\.norm\.", "head.norm."),
    (r"^head\.fc\.", "head.fc2."),
]


def test_official_checkpoint_loads_through_pretrained(tmp_path):
    source = timm.create_model("visattn_mambaout_femto").eval()
    official = {}
    for key, value in source.state_dict().items():
        for pattern, repl in _TO_OFFICIAL:
            new_key, hits = re.subn(pattern, repl, key)
            if hits:
                key = new_key
                break
        official[key] = value
    assert {"downsample_layers.0.conv1.weight", "downsample_layers.3.norm.bias", "stages.2.8.fc1.weight",
            "norm.weight", "head.fc1.weight", "head.norm.weight", "head.fc2.bias"} <= set(official)
    torch.save(official, tmp_path / "mambaout_femto.pth")
    loaded = timm.create_model("visattn_mambaout_femto", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / "mambaout_femto.pth"))).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))


def test_any_input_size_and_small_input_error():
    model = timm.create_model("visattn_mambaout_femto", features_only=True).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 100, 150))
    assert [m.shape[-2:] for m in maps] == [(25, 38), (13, 19), (7, 10), (4, 5)]
    with pytest.raises(ValueError, match="too small for MambaOut"):
        timm.create_model("visattn_mambaout_femto")(torch.randn(1, 3, 20, 20))
