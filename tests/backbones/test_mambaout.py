"""MambaOut is timm's own ``mambaout_*``: visattn adds official-checkpoint loading through its one loader, the
detection / segmentation backbone (tests/mm) and the benchmark. These tests hold timm's models to the paper and
the official release layout."""

import re

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import visattn
from visattn.mm import MambaOutBackbone

# Published parameters (M) and MACs (G) at 224x224, as counted from the official code.
PUBLISHED = {"femto": (7.3, 1.15), "kobe": (9.1, 1.51), "tiny": (26.5, 4.47), "small": (48.5, 8.94),
             "base": (84.8, 15.79)}


@pytest.mark.parametrize("variant", sorted(PUBLISHED))
def test_timms_models_match_the_paper(variant):
    params, macs = PUBLISHED[variant]
    with torch.device("meta"):
        model = timm.create_model(f"mambaout_{variant}").eval()
        x = torch.empty(1, 3, 224, 224)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params, rel=0.01)
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert counter.get_total_flops() / 2e9 == pytest.approx(macs, rel=0.02)


def test_visattn_registers_no_mambaout_of_its_own():
    assert not [name for name in visattn.list_models() if "mambaout" in name]


# The official release layout, written independently of timm's converter.
_TO_OFFICIAL = [
    (r"^stem\.", "downsample_layers.0."),
    (r"^stages\.(\d)\.downsample\.", r"downsample_layers.\1."),
    (r"^stages\.(\d)\.blocks\.(\d+)\.", r"stages.\1.\2."),
    (r"^head\.norm\.", "norm."),
    (r"^head\.pre_logits\.fc\.", "head.fc1."),
    (r"^head\.pre_logits\.norm\.", "head.norm."),
    (r"^head\.fc\.", "head.fc2."),
]


def official_state_dict(model) -> dict:
    official = {}
    for key, value in model.state_dict().items():
        for pattern, repl in _TO_OFFICIAL:
            new_key, hits = re.subn(pattern, repl, key)
            if hits:
                key = new_key
                break
        official[key] = value.clone()
    return official


def test_official_release_checkpoint_loads_into_timms_model(tmp_path):
    source = timm.create_model("mambaout_femto").eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.02 * torch.randn_like(p))
    official = official_state_dict(source)
    assert {"downsample_layers.0.conv1.weight", "downsample_layers.3.norm.bias", "stages.2.8.fc1.weight",
            "norm.weight", "head.fc1.weight", "head.norm.weight", "head.fc2.bias"} <= set(official)
    torch.save({"model": official}, tmp_path / "mambaout_femto.pth")
    target = timm.create_model("mambaout_femto").eval()
    visattn.load_pretrained(target, tmp_path / "mambaout_femto.pth", strict=True)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))
    backbone = MambaOutBackbone(arch="femto", out_norms=False,
                                init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "mambaout_femto.pth")))
    backbone.init_weights()
    with torch.no_grad():
        for got, want in zip(backbone.eval()(x), source.forward_intermediates(x, intermediates_only=True),
                             strict=True):
            torch.testing.assert_close(got, want)
