import re

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.fused import run_both_backends
from tests.meta import NoInitOnMeta
from visattn.blocks import ConvDownsample

# Published parameters (M) and MACs (G) at 224x224.
PUBLISHED = {"biformer_tiny": (13.14, 2.22), "biformer_small": (25.54, 4.46), "biformer_base": (56.80, 9.76),
             "biformer_stl": (28.4, 4.6), "biformer_stl_nchw": (28.4, 4.6)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_params_and_macs_match_the_paper(name):
    params, macs = PUBLISHED[name]
    model = timm.create_model(name).eval()
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params, rel=0.01)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert any("scaled_dot_product" in op for op in counts), f"attention was not counted: {counts}"
    assert counter.get_total_flops() / 2e9 == pytest.approx(macs, rel=0.02)


# The official repository's key layout, written independently of the package's converter.
_TO_OFFICIAL = [
    (r"^stem\.conv1\.", "downsample_layers.0.0."),
    (r"^stem\.norm1\.", "downsample_layers.0.1."),
    (r"^stem\.conv2\.", "downsample_layers.0.3."),
    (r"^stem\.norm2\.", "downsample_layers.0.4."),
    (r"^stages\.(\d)\.downsample\.conv\.", r"downsample_layers.\1.0."),
    (r"^stages\.(\d)\.downsample\.norm\.", r"downsample_layers.\1.1."),
    (r"^stages\.([012])\.blocks\.(\d+)\.attn\.qkv\.", r"stages.\1.\2.attn.qkv.qkv."),
    (r"^stages\.([012])\.blocks\.(\d+)\.attn\.proj\.", r"stages.\1.\2.attn.wo."),
    (r"^stages\.(\d)\.blocks\.(\d+)\.mlp\.fc1\.", r"stages.\1.\2.mlp.0."),
    (r"^stages\.(\d)\.blocks\.(\d+)\.mlp\.fc2\.", r"stages.\1.\2.mlp.3."),
    (r"^stages\.(\d)\.blocks\.(\d+)\.", r"stages.\1.\2."),
    (r"^head\.fc\.", "head."),
]


# BiFormer-STL's two official layouts: ``biformer_stl.py`` (legacy BRA) and ``biformer_stl_nchw.py`` (1x1
# convolutions for every linear layer of the blocks).
_STL_TO_OFFICIAL = [
    (r"^stem\.conv\.", "downsample_layers.0.0."),
    (r"^stem\.norm\.", "downsample_layers.0.1."),
    (r"^stages\.(\d)\.downsample\.norm\.", r"downsample_layers.\1.0."),
    (r"^stages\.(\d)\.downsample\.conv\.", r"downsample_layers.\1.1."),
    (r"\.mlp\.fc1\.", ".mlp.0."),
    (r"\.mlp\.fc2\.", ".mlp.2."),
    (r"^head\.fc\.", "head."),
]
_STL_LEGACY_ATTENTION = [(r"^(stages\.[012]\..*)\.attn\.qkv\.", r"\1.attn.qkv.qkv."),
                         (r"^(stages\.[012]\..*)\.attn\.proj\.", r"\1.attn.wo.")]
_STL_NCHW_ATTENTION = [(r"^(stages\.[012]\..*)\.attn\.qkv\.", r"\1.attn.qkv_linear."),
                       (r"^(stages\.[012]\..*)\.attn\.proj\.", r"\1.attn.output_linear.")]


def official_state_dict(model, rules=_TO_OFFICIAL, conv1x1: bool = False) -> dict:
    out = {}
    for key, value in model.state_dict().items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        if conv1x1 and key.startswith("stages.") and value.dim() == 2:
            value = value[:, :, None, None]
        out[key] = value.clone()
    return out


def _randomized(name: str):
    model = timm.create_model(name).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def test_official_checkpoint_loads_through_pretrained(tmp_path):
    source = _randomized("biformer_tiny")
    official = official_state_dict(source)
    # stem 2 convs + 2 BNs (14), 3 downsamplings conv + BN (21), 12 routed blocks of 16 tensors (pos_embed, 2 norms,
    # qkv, wo and lepe weight + bias, 2 MLP layers), 2 global ones of 15 (a bias-free qkv), final BN + head (7)
    assert len(official) == 14 + 21 + 12 * 16 + 2 * 15 + 7
    assert "stages.0.0.attn.qkv.qkv.bias" in official and "stages.3.0.attn.qkv.bias" not in official
    assert official["stages.0.0.attn.qkv.qkv.weight"].shape == (64 * 3, 64)
    expected = {"downsample_layers.0.4.running_var", "stages.2.7.attn.lepe.weight", "norm.weight", "head.bias"}
    assert expected <= set(official)
    path = tmp_path / "biformer_tiny_in1k.pth"
    torch.save({"model": official, "epoch": 299}, path)
    loaded = timm.create_model("biformer_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 64, 64)  # every weight acts at any input size
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))


@pytest.mark.parametrize("name", ["biformer_stl", "biformer_stl_nchw"])
def test_official_stl_checkpoints_load_through_pretrained(name, tmp_path):
    nchw = name.endswith("nchw")
    source = _randomized(name)
    official = official_state_dict(source, _STL_TO_OFFICIAL + (_STL_NCHW_ATTENTION if nchw else _STL_LEGACY_ATTENTION),
                                   conv1x1=nchw)
    # patch stem and 3 mergings conv + BN (28), 10 routed blocks of 14 tensors (no pos_embed), 2 global of 13,
    # final BN + head (7)
    assert len(official) == 28 + 10 * 14 + 2 * 13 + 7
    qkv = "stages.0.blocks.0.attn." + ("qkv_linear.weight" if nchw else "qkv.qkv.weight")
    assert official[qkv].shape == ((96 * 3, 96, 1, 1) if nchw else (96 * 3, 96))
    expected = {"downsample_layers.0.1.running_var", "downsample_layers.3.1.weight", "stages.2.blocks.5.mlp.2.bias",
                "stages.3.blocks.1.attn.qkv.weight", "stages.3.blocks.1.attn.lepe.weight", "norm.weight", "head.bias"}
    assert expected <= set(official)
    assert not any("pos_embed" in key for key in official)
    path = tmp_path / f"{name}_in1k.pth"
    torch.save({"model": official}, path)
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 64, 64)  # every weight acts at any input size
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))


def test_stl_layouts_differ_only_in_the_stage4_lepe_source():
    legacy, nchw = (timm.create_model(name) for name in ("biformer_stl", "biformer_stl_nchw"))
    assert legacy.state_dict().keys() == nchw.state_dict().keys()
    assert {b.attn.lepe_source for b in legacy.stages[3].blocks} == {"input"}
    assert {b.attn.lepe_source for b in nchw.stages[3].blocks} == {"value"}
    assert legacy.stages[0].blocks[0].pos_embed is None and isinstance(legacy.stem, ConvDownsample)


def test_an_unknown_layout_is_a_construction_error():
    with pytest.raises(ValueError, match="layout='stl' is not one of"):
        timm.create_model("biformer_tiny", layout="stl")


def test_raw_official_state_dict_loads_from_the_variant_named_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    source = _randomized("biformer_tiny")
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(official_state_dict(source), tmp_path / "hub" / "checkpoints" / "biformer_tiny_in1k.pth")
    loaded = timm.create_model("biformer_tiny", pretrained=True, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(x), source.forward_features(x))
    assert loaded.get_classifier().out_features == 10


def test_pretrained_cfg_names_the_official_source():
    cfg = timm.create_model("biformer_small").pretrained_cfg
    assert cfg["url"].startswith("https://api.onedrive.com/") and cfg["license"] == "mit"
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["input_size"] == (3, 224, 224)


@pytest.mark.parametrize("size", [(256, 256), (320, 480), (100, 150), (102, 97)])
@pytest.mark.parametrize("name", ["biformer_tiny", "biformer_stl"])
def test_any_input_size(name, size):
    """Feature shapes only: on the meta device (the padded routing runs there too)."""
    with NoInitOnMeta():
        model = timm.create_model(name, features_only=True, device="meta").eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, *size, device="meta"))
    for feat, stride in zip(maps, (4, 8, 16, 32), strict=True):
        assert feat.shape[-2:] == (-(-size[0] // stride), -(-size[1] // stride))


def test_topk_larger_than_region_count_is_a_construction_error():
    with pytest.raises(ValueError, match=r"topk=16 must be between 1 and n_win\*\*2=9"):
        timm.create_model("biformer_tiny", n_win=3)


def test_input_smaller_than_total_stride_is_a_clear_error():
    model = timm.create_model("biformer_tiny").eval()
    with pytest.raises(ValueError, match="input 16x16 is too small for BiFormer: both sides must be at least 32"):
        model(torch.randn(1, 3, 16, 16))


def test_fused_path_matches_the_reference_path(monkeypatch):
    kwargs = dict(depths=(1, 1, 2, 1), dims=(32, 64, 128, 256), n_win=4, num_classes=5)
    model = timm.create_model("biformer_tiny", **kwargs)
    x = torch.randn(1, 3, 80, 72)  # stage maps 20x18, 10x9, 5x5: padded regions at every routed stage

    def run():
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    results = run_both_backends(run, monkeypatch)
    torch.testing.assert_close(results["triton"][0], results["torch"][0], atol=1e-4, rtol=1e-4)
    for name, grad in results["torch"][1].items():
        torch.testing.assert_close(results["triton"][1][name], grad, atol=1e-4, rtol=1e-3, msg=name)
