import re

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import visattn  # noqa: F401
from tests.backbones._compare import assert_fused_matches_reference
from visattn.backbones._inline import InLineMapBlock
from visattn.blocks import StripeAttention

# Official README rows: params (M) and MACs (G) at each model's training size, as counted on the official code.
PUBLISHED = {
    "inline_deit_tiny": (6.48, 1.11, 224), "inline_deit_small": (16.73, 4.97, 288),
    "inline_deit_base": (23.80, 17.17, 448), "inline_swin_tiny": (29.22, 4.46, 224),
    "inline_swin_small": (49.79, 8.72, 224), "inline_swin_base": (88.35, 15.40, 224),
}


# InLine-PVT's README rows (M params, G MACs, 224), to their one decimal. The large row is the official code's count:
# the checkpoint trained with it (depths 3-8-27-3) holds 51.15 M parameters, where the README says 50.2 M / 10.2 G.
PUBLISHED_PVT = {"inline_pvt_tiny": (12.0, 2.0), "inline_pvt_small": (21.6, 3.9), "inline_pvt_medium": (37.6, 6.9),
                 "inline_pvt_large": (51.2, 10.1)}


def _count(name: str, size: int) -> tuple[float, float, set[str]]:
    """(M parameters, G MACs, ops counted) of ``name`` at size x size, on the meta device."""
    with torch.device("meta"):
        model = timm.create_model(name).eval()
        x = torch.randn(1, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        model(x)
    counts = {str(op) for op in counter.get_flop_counts()["Global"]}
    return sum(p.numel() for p in model.parameters()) / 1e6, counter.get_total_flops() / 2e9, counts


# InLine-CSwin's README MACs (G, 224) and the official code's parameter count (M), which its checkpoints hold: the
# README's 25 / 43 / 96 M are not what models/inline_cswin.py builds.
PUBLISHED_CSWIN = {"inline_cswin_tiny": (20.6, 4.3), "inline_cswin_small": (33.0, 6.8),
                   "inline_cswin_base": (73.4, 14.9)}


@pytest.mark.parametrize("name", sorted(PUBLISHED_CSWIN))
def test_cswin_params_and_macs_match_the_official_code(name, monkeypatch):
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    params, macs, counts = _count(name, 224)
    assert "visattn.linear_attention" in counts
    assert (round(params, 1), round(macs, 1)) == PUBLISHED_CSWIN[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED_PVT))
def test_pvt_params_and_macs_match_the_paper(name, monkeypatch):
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    params, macs, counts = _count(name, 224)
    assert "visattn.linear_attention" in counts and "visattn.window_attention" not in counts
    assert (round(params, 1), round(macs, 1)) == PUBLISHED_PVT[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_params_and_macs_match_the_paper(name, monkeypatch):
    monkeypatch.setenv("VISATTN_BACKEND", "triton")  # meta tensors run the fused ops' fake kernels: nothing computes
    params, macs, size = PUBLISHED[name]
    counted_params, counted_macs, counts = _count(name, size)
    assert "visattn.linear_attention" in counts
    assert ("visattn.window_attention" in counts) == name.startswith("inline_swin")
    assert counted_params == pytest.approx(params, rel=0.01)
    assert counted_macs == pytest.approx(macs, rel=0.01)


def _randomized(name: str, **kwargs):
    model = timm.create_model(name, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


# The official Swin layout (models/inline_swin.py), written independently of the package's converter.
_SWIN_TO_OFFICIAL = [
    (r"^stem\.", "patch_embed."),
    (r"^stages\.(\d)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample."),
    (r"^stages\.(\d)\.blocks\.", r"layers.\1.blocks."),
    (r"^head\.fc\.", "head."),
]


def official_swin_state_dict(model) -> dict:
    out = {}
    for key, value in model.state_dict().items():
        for pattern, repl in _SWIN_TO_OFFICIAL:
            key = re.sub(pattern, repl, key)
        if key.endswith("relative_position_bias_table"):  # official: ((2 ws - 1)^2, heads) plus buffers
            value = value.t()
            out[key.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(49, 49).long()
            out[key.replace("attn.relative_position_bias_table", "attn_mask")] = torch.zeros(4, 49, 49)
        out[key] = value.clone()
    return out


def test_official_swin_checkpoint_loads_through_pretrained(tmp_path):
    narrow = dict(embed_dim=32, num_heads=(1, 2, 4, 8))  # Swin-T's depths and attention types, narrower
    source = _randomized("inline_swin_tiny", **narrow)
    official = official_swin_state_dict(source)
    assert official["layers.0.downsample.reduction.weight"].shape == (64, 128)
    assert official["layers.2.blocks.5.attn.residual.2.weight"].shape == (9 * 128, 32, 1)
    assert official["layers.3.blocks.1.attn.relative_position_bias_table"].shape == (169, 8)
    assert not any(k.startswith("layers.3.downsample") for k in official)
    assert {"patch_embed.proj.weight", "patch_embed.norm.bias", "norm.weight", "head.weight"} <= set(official)
    path = tmp_path / "inline_swin_tiny_in1k.pth"
    torch.save({"model": official, "epoch": 299}, path)
    loaded = timm.create_model("inline_swin_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                               **narrow)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), source(x))


# The official PVT layout (models/inline_pvt.py): per-stage patch_embed{i}/pos_embed{i}/block{i}, separate q and kv
# linears, written independently of the package's converter.
_PVT_TO_OFFICIAL = [
    (r"^stem\.pos_embed$", "pos_embed1"),
    (r"^stem\.", "patch_embed1."),
    (r"^stages\.(\d)\.downsample\.pos_embed$", lambda m: f"pos_embed{int(m.group(1)) + 1}"),
    (r"^stages\.(\d)\.downsample\.", lambda m: f"patch_embed{int(m.group(1)) + 1}."),
    (r"^stages\.(\d)\.blocks\.(\d+)\.", lambda m: f"block{int(m.group(1)) + 1}.{m.group(2)}."),
    (r"^head\.fc\.", "head."),
]
_PVT_NARROW = dict(depths=(1, 2, 1, 1), dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4))


def official_pvt_state_dict(model) -> dict:
    out = {}
    for key, value in model.state_dict().items():
        for pattern, repl in _PVT_TO_OFFICIAL:
            key = re.sub(pattern, repl, key)
        if ".attn.qkv." in key:
            dim = value.shape[0] // 3
            out[key.replace(".qkv.", ".q.")] = value[:dim].clone()
            out[key.replace(".qkv.", ".kv.")] = value[dim:].clone()
        else:
            out[key] = value.clone()
    return out


@pytest.mark.parametrize("img_size", [224, 64])
def test_official_pvt_checkpoint_loads_through_pretrained(img_size, tmp_path):
    source = _randomized("inline_pvt_tiny", **_PVT_NARROW)
    official = official_pvt_state_dict(source)
    assert official["pos_embed1"].shape == (1, 56 * 56, 16) and official["pos_embed4"].shape == (1, 49, 64)
    assert official["block2.1.attn.q.weight"].shape == (32, 32) and official["block2.1.attn.kv.bias"].shape == (64,)
    assert official["block3.0.attn.residual.2.weight"].shape == (9 * 48, 16, 1)
    assert {"patch_embed4.proj.weight", "patch_embed1.norm.bias", "block4.0.mlp.fc2.weight", "head.weight"} <= set(
        official)
    assert not any(k.startswith("norm.") or ".qkv." in k for k in official)
    path = tmp_path / "inline_pvt_tiny_in1k.pth"
    torch.save({"model": official}, path)
    loaded = timm.create_model("inline_pvt_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                               img_size=img_size, **_PVT_NARROW).eval()
    assert loaded.stages[3].downsample.pos_embed.shape == (1, (img_size // 32) ** 2, 64)
    x = torch.randn(2, 3, 64, 64)  # the 224 tables resampled per call (source) or once by the filter (64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))


def test_pvt_resamples_position_tables_bilinearly_for_other_grids():
    model = timm.create_model("inline_pvt_tiny", **_PVT_NARROW).eval()
    embed = model.stages[1].downsample
    x = torch.randn(1, 40, 30, 16)
    table = embed.pos_embed.view(1, 28, 28, 32).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(table, size=(20, 15), mode="bilinear").permute(0, 2, 3, 1)
    tokens = embed.norm(embed.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
    torch.testing.assert_close(embed(x), tokens + expected)
    assert model.no_weight_decay() == {"stem.pos_embed"} | {f"stages.{i}.downsample.pos_embed" for i in (1, 2, 3)}


# The official CSWin layout (models/inline_cswin.py), written independently of the package's converter.
_CSWIN_TO_OFFICIAL = [
    (r"^stem\.conv\.", "stage1_conv_embed.0."),
    (r"^stem\.norm\.", "stage1_conv_embed.2."),
    (r"^stages\.(\d)\.downsample\.", r"merge\1."),
    (r"^stages\.(\d)\.blocks\.(\d+)\.", lambda m: f"stage{int(m.group(1)) + 1}.{m.group(2)}."),
    (r"^head\.fc\.", "head."),
]
_CSWIN_NARROW = dict(depths=(1, 1, 2, 1), embed_dim=16, num_heads=(1, 2, 4, 8))


def official_cswin_state_dict(model) -> dict:
    official = {}
    for key, value in model.state_dict().items():
        for pattern, repl in _CSWIN_TO_OFFICIAL:
            key = re.sub(pattern, repl, key)
        official[key] = value.clone()
    return official


def test_official_cswin_checkpoint_loads_through_pretrained(tmp_path):
    source = _randomized("inline_cswin_tiny", **_CSWIN_NARROW)
    official = official_cswin_state_dict(source)
    assert official["stage1_conv_embed.0.weight"].shape == (16, 3, 7, 7)
    assert official["merge3.conv.weight"].shape == (128, 64, 3, 3)
    assert official["stage1.0.attns.0.residual.2.weight"].shape == (9 * 16, 16, 1)
    assert official["stage3.1.attns.1.get_v.weight"].shape == (32, 1, 3, 3)  # two stripe branches of 32 channels
    assert not any(k.startswith("stage3") and "residual" in k for k in official)
    assert {"stage4.0.attns.0.get_v.bias", "stage2.0.qkv.bias", "norm.weight", "head.weight"} <= set(official)
    assert not any(k.startswith("stage4.0.attns.1") for k in official)
    path = tmp_path / "inline_cswin_tiny_in1k.pth"
    torch.save({"model": official}, path)
    loaded = timm.create_model("inline_cswin_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                               **_CSWIN_NARROW).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))


@pytest.mark.parametrize("mode", ["vertical", "horizontal", "global"])
def test_cswin_stripes_attend_within_their_real_tokens_only(mode):
    branch = StripeAttention(8, 2, mode, split=4, inline=False).double()
    q, k, v = (torch.randn(2, 9, 10, 8, dtype=torch.float64) for _ in range(3))
    bands = {"vertical": [(slice(None), slice(c, c + 4)) for c in (0, 4, 8)],
             "horizontal": [(slice(r, r + 4), slice(None)) for r in (0, 4, 8)],
             "global": [(slice(None), slice(None))]}[mode]
    expected = torch.empty_like(q)
    for rows, cols in bands:  # each stripe alone: its real tokens, its LePE with zeros outside it
        qs, ks, vs = (t[:, rows, cols] for t in (q, k, v))
        b, h, w, c = qs.shape
        heads = [t.reshape(b, h * w, 2, 4).transpose(1, 2) for t in (qs, ks, vs)]
        attn = ((heads[0] @ heads[1].transpose(-1, -2)) / 2.0).softmax(-1) @ heads[2]
        lepe = branch.get_v(vs.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        expected[:, rows, cols] = attn.transpose(1, 2).reshape(b, h, w, c) + lepe
    torch.testing.assert_close(branch(q, k, v, None), expected)


def test_cswin_inline_branches_are_global_only():
    with pytest.raises(ValueError, match="InLine branches attend over the whole map"):
        StripeAttention(8, 2, "vertical", split=4, inline=True)
    with pytest.raises(ValueError, match=r"attn_types \(of 'I' and 'S'\) need one entry per stage"):
        timm.create_model("inline_cswin_tiny", attn_types="IIXS")


def test_official_deit_checkpoint_loads_at_another_size(tmp_path):
    source = _randomized("inline_deit_tiny")  # official keys are timm ViT keys plus blocks.j.attn.residual.*
    official = {k: v.clone() for k, v in source.state_dict().items()}
    assert official["pos_embed"].shape == (1, 197, 192)
    assert official["blocks.11.attn.residual.0.weight"].shape == (192, 32, 1)
    path = tmp_path / "inline_deit_tiny_in1k.pth"
    torch.save({"model": official}, path)
    loaded = timm.create_model("inline_deit_tiny", pretrained=True, img_size=64, num_classes=10,
                               pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert loaded.pos_embed.shape == (1, 17, 192)  # resampled by the filter, as the source does per call
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(x), source.forward_features(x))


def test_inline_windows_attend_over_their_real_tokens_only():
    block = InLineMapBlock(16, 2, inline=True, inline_window=4).double().eval()
    x = torch.randn(2, 6, 7, 16, dtype=torch.float64)  # windows 4x4, 4x3, 2x4, 2x3 from the top-left
    y = block.norm1(x)
    attn = torch.zeros_like(x)
    for r0, r1 in ((0, 4), (4, 6)):
        for c0, c1 in ((0, 4), (4, 7)):
            tile = y[:, r0:r1, c0:c1].reshape(2, -1, 16)
            attn[:, r0:r1, c0:c1] = block.attn(tile, (r1 - r0, c1 - c0)).reshape(2, r1 - r0, c1 - c0, 16)
    expected = x + attn
    torch.testing.assert_close(block(x), expected + block.mlp(block.norm2(expected)))


_SMALL = {
    "inline_swin_tiny": dict(depths=(1, 2, 1, 1), num_heads=(1, 2, 4, 8), embed_dim=32, inline_depths=(1, 2, 1, 0),
                             inline_window=4),
    "inline_deit_tiny": dict(depth=2, embed_dim=64, num_heads=2),
    "inline_pvt_tiny": _PVT_NARROW,
    "inline_cswin_tiny": dict(_CSWIN_NARROW, split=3),
}


@pytest.mark.parametrize("name", sorted(_SMALL))
def test_fused_model_matches_reference_model(name, monkeypatch):
    model = timm.create_model(name, num_classes=3, **_SMALL[name]).eval()
    x = torch.randn(1, 3, 40, 36)  # Swin stage maps 10x9 (edge windows), 5x5, 3x3, 2x2; DeiT 3x3 after padding
    assert_fused_matches_reference(model, x, monkeypatch)


def test_any_input_size():
    swin = timm.create_model("inline_swin_tiny", features_only=True).eval()
    deit = timm.create_model("inline_deit_tiny", features_only=True, out_indices=(5, 11)).eval()
    pvt = timm.create_model("inline_pvt_tiny", features_only=True).eval()
    cswin = timm.create_model("inline_cswin_tiny", features_only=True).eval()
    with torch.no_grad():
        swin_maps = swin(torch.randn(1, 3, 60, 90))
        deit_maps = deit(torch.randn(1, 3, 50, 70))
        pvt_maps = pvt(torch.randn(1, 3, 60, 90))
        cswin_maps = cswin(torch.randn(1, 3, 60, 90))
    assert [m.shape[1:] for m in cswin_maps] == [(64, 15, 23), (128, 8, 12), (256, 4, 6), (512, 2, 3)]
    assert [m.shape[1:] for m in swin_maps] == [(96, 15, 23), (192, 8, 12), (384, 4, 6), (768, 2, 3)]
    assert [m.shape[1:] for m in pvt_maps] == [(64, 15, 23), (128, 8, 12), (320, 4, 6), (512, 2, 3)]
    assert [m.shape[1:] for m in deit_maps] == [(192, 4, 5)] * 2


def test_pretrained_cfgs_name_the_official_source():
    small = timm.create_model("inline_deit_small", pretrained=False).pretrained_cfg
    swin = timm.create_model("inline_swin_tiny", depths=(1, 1, 1, 1), inline_depths=(1, 1, 1, 0)).pretrained_cfg
    assert small["input_size"] == (3, 288, 288) and swin["input_size"] == (3, 224, 224)
    for cfg in (small, swin):
        assert cfg["url"].startswith("https://cloud.tsinghua.edu.cn/f/") and "no LICENSE" in cfg["license"]
        assert cfg["crop_pct"] == 0.875 and cfg["crop_mode"] == "squash"


def test_swin_exempts_only_relative_position_tables_from_weight_decay():
    model = timm.create_model("inline_swin_tiny", depths=(1, 1, 2, 1), inline_depths=(1, 1, 0, 0))
    assert model.no_weight_decay() == {"stages.2.blocks.0.attn.relative_position_bias_table",
                                       "stages.2.blocks.1.attn.relative_position_bias_table",
                                       "stages.3.blocks.0.attn.relative_position_bias_table"}


def test_bad_configurations_are_clear_errors():
    with pytest.raises(ValueError, match=r"inline_depths \(2, 3, 0, 0\) must lie between 0 and depths"):
        timm.create_model("inline_swin_tiny", inline_depths=(2, 3, 0, 0))
    with pytest.raises(ValueError, match="does not support patch dropout"):
        timm.create_model("inline_deit_tiny", patch_drop_rate=0.1)
    with pytest.raises(ValueError, match="do not support init_values"):
        timm.create_model("inline_deit_tiny", init_values=1e-5)
