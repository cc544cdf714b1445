import pytest
import timm
import torch
import torch.nn as nn
from timm.models.hrnet import cfg_cls

import visattn
from visattn.backbones import psa
from visattn.backbones.psa import (
    AttentionAfter,
    PSABasicBlock,
    PSABottleneck,
    PSAHRNet,
    PSAResNet,
    hrnet_psa_variant,
    insert_psa,
    psa_name,
)
from visattn.blocks import PolarizedSelfAttention
from visattn.blocks.polarized_attention import resolve_layout
from visattn.errors import UserError

HRNETS = ["hrnet_w18_psa", "hrnet_w32_psa", "hrnet_w48_psa", "hrnet_w18_psa_s", "hrnet_w32_psa_s", "hrnet_w48_psa_s"]


def _randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and BN statistic perturbed (so a zero-initialised or unit BN does not hide a wrong key)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.add_(0.05 * torch.randn_like(t).abs() if "running_var" in name else 0.05 * torch.randn_like(t))
    return model


def _psa_params(c: int, layout: str) -> int:
    """Parameters of one official-form PSA module on C channels (network/PSA.py): four bias-free q/v convs
    (C -> 1, C -> C/2, C -> C/2, C -> C/2) and conv_up (p: C/2 -> C bias-free; s: C/2 -> C/8 -> LN -> C, biased)."""
    inner = c // 2
    qv = c + 3 * c * inner
    if layout == "parallel":
        return qv + inner * c
    hidden = inner // 4
    return qv + (inner * hidden + hidden) + 2 * hidden + (hidden * c + c)


def _expected_psa(width: str) -> list[int]:
    """The channels of the PSA modules HRNet-<width> gets: one per BasicBlock of every stage 2-4 branch."""
    out = []
    for stage in ("stage2", "stage3", "stage4"):
        cfg = cfg_cls[f"hrnet_{width}"][stage]
        for _ in range(cfg["num_modules"]):
            for blocks, channels in zip(cfg["num_blocks"], cfg["num_channels"], strict=True):
                out += [channels] * blocks
    return out


@pytest.mark.parametrize("name", HRNETS)
def test_psa_sits_in_every_stage_2_4_basic_block_only(name):
    width = name.split("_")[1]
    layout = "sequential" if name.endswith("_s") else "parallel"
    with torch.device("meta"):
        model = timm.create_model(name)
        plain = timm.create_model(f"hrnet_{width}")
    modules = {n: m for n, m in model.named_modules() if isinstance(m, PolarizedSelfAttention)}
    assert all(n.startswith(("stage2.", "stage3.", "stage4.")) and n.endswith(".deattn") for n in modules)
    assert not any(n.startswith("layer1") for n in modules)  # the stage-1 Bottlenecks are unchanged
    assert sorted(m.channels for m in modules.values()) == sorted(_expected_psa(width))
    assert {(m.layout, m.form) for m in modules.values()} == {(layout, "official")}
    blocks = [m for n, m in model.named_modules() if ".branches." in n and hasattr(m, "conv2")]
    assert len(blocks) == len(modules) and all(b.deattn.channels == b.conv1.out_channels for b in blocks)
    if width == "w18":
        assert len(modules) == 8 + 48 + 48  # stage2 1 x 2 x 4, stage3 4 x 3 x 4, stage4 3 x 4 x 4
    # parameters: timm's HRNet plus exactly the PSA modules (counted from the official shapes)
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in plain.parameters()) + sum(_psa_params(c, layout)
                                                                       for c in _expected_psa(width))
    assert set(model.state_dict()) - set(plain.state_dict()) == {
        k for k in model.state_dict() if ".deattn." in k}


def test_psa_runs_between_conv1_bn_relu_and_conv2():
    model = timm.create_model("hrnet_w18_psa").eval()
    block = model.stage3[1].branches[2][3]
    seen = {}
    block.act1.register_forward_hook(lambda m, a, out: seen.__setitem__("act1", out.clone()))
    block.deattn.register_forward_hook(lambda m, a, out: seen.__setitem__("psa", (a[0].clone(), out.clone())))
    block.conv2.register_forward_pre_hook(lambda m, a: seen.__setitem__("conv2", a[0].clone()))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    torch.testing.assert_close(seen["psa"][0], seen["act1"])
    torch.testing.assert_close(seen["conv2"], seen["psa"][1])


def test_resnet50_psa_sits_after_the_3x3_conv_of_every_bottleneck():
    with torch.device("meta"):
        model = timm.create_model("resnet50_psa")
        plain = timm.create_model("resnet50")
    blocks = [(n, m) for n, m in model.named_modules() if hasattr(m, "conv3")]
    assert len(blocks) == 16 and all(isinstance(m.deattn, PolarizedSelfAttention) for _, m in blocks)
    assert [m.deattn.channels for _, m in blocks] == [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3
    assert all(m.deattn.channels == m.conv2.out_channels == m.conv3.in_channels for _, m in blocks)
    extra = sum(_psa_params(m.deattn.channels, "parallel") for _, m in blocks)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters()) + extra


def _without_psa(model: nn.Module) -> nn.Module:
    for name, _ in list(model.named_modules()):
        if name.endswith(".deattn"):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, nn.Identity())
    return model


@pytest.mark.parametrize("name, plain", [("hrnet_w18_psa_s", "hrnet_w18"), ("resnet50_psa", "resnet50")])
def test_with_psa_as_identity_the_model_is_timms(name, plain):
    model = _randomized(timm.create_model(name)).eval()
    reference = timm.create_model(plain).eval()
    reference.load_state_dict({k: v for k, v in model.state_dict().items() if ".deattn." not in k})
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        with_psa = model(x)
        torch.testing.assert_close(_without_psa(model)(x), reference(x), rtol=0, atol=0)
    assert not torch.allclose(with_psa, reference(x))


def test_a_timm_hrnet_checkpoint_loads_with_the_psa_modules_kept(tmp_path):
    plain = _randomized(timm.create_model("hrnet_w18"))
    torch.save(plain.state_dict(), tmp_path / "hrnet_w18.pth")
    fresh, weights = timm.create_model("hrnet_w18_psa").state_dict(), plain.state_dict()
    with pytest.warns(UserWarning, match=r"104 tensors|tensors of the modules PSAHRNet adds"):
        model = timm.create_model("hrnet_w18_psa", pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(tmp_path / "hrnet_w18.pth")))
    assert isinstance(model, PSAHRNet)
    for key, value in model.state_dict().items():
        if ".deattn." in key:
            assert value.shape == fresh[key].shape
        else:
            assert torch.equal(value, weights[key]), key
    # a checkpoint missing a backbone key is still an error
    state = plain.state_dict()
    del state["stage3.1.branches.0.2.conv1.weight"]
    with pytest.raises(UserError, match="1 missing"):
        visattn.load_pretrained(timm.create_model("hrnet_w18_psa"), state)


def test_a_timm_resnet50_checkpoint_loads_with_the_psa_modules_kept():
    plain = _randomized(timm.create_model("resnet50"))
    model = timm.create_model("resnet50_psa")
    with pytest.warns(UserWarning, match="PSAResNet adds"):
        result = visattn.load_pretrained(model, plain.state_dict())
    assert len(result.addons_kept) == sum(1 for k in model.state_dict() if ".deattn." in k)
    assert torch.equal(model.state_dict()["layer4.2.conv3.weight"], plain.state_dict()["layer4.2.conv3.weight"])


def official_checkpoint(model: PSAHRNet) -> dict:
    """``model``'s HRNetV2 trunk as the official MscaleOCR checkpoint stores it (DDP ``module.``, ``backbone.``),
    with OCR and scale-attention head tensors beside it."""
    state = {f"module.backbone.{k}": v.clone() for k, v in model.state_dict().items()}
    state["module.ocr.cls_head.weight"] = torch.randn(19, 256, 1, 1)
    state["module.ocr.conv3x3_ocr.0.weight"] = torch.randn(512, 270, 3, 3)
    state["module.scale_attn.conv0.weight"] = torch.randn(256, 512, 3, 3)
    return state


@pytest.mark.parametrize("name", ["hrnet_w18_psa", "hrnet_w18_psa_s"])
def test_official_checkpoint_keys_map(name, tmp_path):
    source = _randomized(timm.create_model(name, head=""))
    state = official_checkpoint(source)
    key = "module.backbone.stage2.0.branches.0.0.deattn.conv_q_right.weight"
    assert key in state
    if name.endswith("_s"):
        assert "module.backbone.stage4.2.branches.3.3.deattn.conv_up.1.weight" in state  # the LayerNorm
    else:
        assert state["module.backbone.stage4.2.branches.3.3.deattn.conv_up.weight"].shape == (144, 72, 1, 1)
    torch.save({"state_dict": state}, tmp_path / "psa_official.pth")
    model = timm.create_model(name, head="")
    result = visattn.load_pretrained(model, str(tmp_path / "psa_official.pth"), strict=True)
    assert result.loaded == len(source.state_dict()) and not result.unused
    loaded = model.state_dict()
    for k, v in source.state_dict().items():
        assert torch.equal(loaded[k], v), k


@pytest.mark.parametrize("name", ["hrnet_w18_psa", "resnet50_psa"])
@pytest.mark.parametrize("size", [(67, 75), (33, 47)])
def test_any_input_size(name, size):
    model = timm.create_model(name, num_classes=5).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        out = model(x)
        _, feats = model.forward_intermediates(x)
    assert out.shape == (1, 5)
    for f, info in zip(feats, model.feature_info, strict=True):
        expected = tuple(-(-s // info["reduction"]) for s in size)
        assert f.shape[1] == info["num_chs"] and tuple(f.shape[-2:]) == expected


def test_bilinear_fusion_takes_any_size_and_is_the_official_resize():
    model = _randomized(timm.create_model("hrnet_w18_psa_s", head="", upsample="bilinear")).eval()
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        feats = model.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
        module = model.stage2[0]
        branches = [torch.randn(1, 18, 9, 12), torch.randn(1, 36, 5, 6)]
        out = module([b.clone() for b in branches])
        x0 = module.branches[0](branches[0].clone())
        x1 = module.branches[1](branches[1].clone())
        up = torch.nn.functional.interpolate(module.fuse_layers[0][1][1](module.fuse_layers[0][1][0](x1)),
                                             size=(9, 12), mode="bilinear", align_corners=False)
    assert [tuple(f.shape[-2:]) for f in feats] == [(18, 23), (9, 12), (5, 6), (3, 3)]
    torch.testing.assert_close(out[0], torch.relu(x0 + up))


def test_branch_features_hrnetv2_style():
    torch.manual_seed(0)
    backbone = timm.create_model("hrnet_w18_psa", features_only=True, feature_location="",
                                 out_indices=(1, 2, 3, 4)).eval()
    assert backbone.feature_info.channels() == [18, 36, 72, 144]
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]
    torch.manual_seed(0)
    model = timm.create_model("hrnet_w18_psa", head="").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), model.forward_intermediates(x, indices=[1, 2, 3, 4],
                                                                            intermediates_only=True))
    with pytest.raises(ValueError, match="feature_location"):
        timm.create_model("hrnet_w18_psa", feature_location="")


def test_pruning_to_the_first_branch_drops_the_fusion_it_does_not_need():
    model = timm.create_model("hrnet_w18_psa").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, full = model.forward_intermediates(x)
        assert model.prune_intermediate_layers([0, 1]) == [0, 1]
        final, feats = model.forward_intermediates(x)
    assert len(model.stage4[-1].fuse_layers) == 1 and len(model.incre_modules) == 1
    assert model.final_layer is None and isinstance(model.classifier, nn.Identity)
    torch.testing.assert_close(feats, full[:2])
    torch.testing.assert_close(final, full[1])


def test_grad_checkpointing_recomputes_every_residual_block():
    model = timm.create_model("hrnet_w18_psa", num_classes=3).train()
    blocks = [m for n, m in model.named_modules() if n.startswith("layer1.") or ".branches." in n
              if hasattr(m, "conv2") and n.count(".") in (1, 4)]
    assert len(blocks) == 4 + 104
    calls = []
    for block in blocks:
        block.register_forward_pre_hook(lambda m, a: calls.append(m))
    x = torch.randn(2, 3, 32, 32)

    def step():
        calls.clear()
        model.zero_grad()
        model(x).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = step()
    assert len(calls) == len(blocks)
    model.set_grad_checkpointing(True)
    checkpointed = step()
    assert len(calls) == 2 * len(blocks)
    for n, g in plain.items():
        torch.testing.assert_close(checkpointed[n], g, rtol=1e-4, atol=1e-5, msg=n)


def test_bad_options_are_errors():
    with pytest.raises(ValueError, match="layout"):
        timm.create_model("hrnet_w18_psa", psa_layout="diagonal", device="meta")
    with pytest.raises(ValueError, match="upsample"):
        timm.create_model("hrnet_w18_psa", upsample="bicubic", device="meta")
    with pytest.raises(ValueError, match="own blocks"):
        PSAResNet(block=None, layers=(1, 1, 1, 1))


def test_paper_form_builds_on_both_backbones():
    hr = timm.create_model("hrnet_w18_psa", psa_form="paper", device="meta")
    rn = timm.create_model("resnet50_psa", psa_form="paper", psa_layout="sequential", device="meta")
    assert {m.form for m in hr.modules() if isinstance(m, PolarizedSelfAttention)} == {"paper"}
    assert {(m.form, m.layout) for m in rn.modules() if isinstance(m, PolarizedSelfAttention)} == {
        ("paper", "sequential")}


def test_layout_and_variant_names_are_the_papers():
    assert [resolve_layout(name) for name in ("p", "s", "parallel", "sequential")] == [
        "parallel", "sequential", "parallel", "sequential"]
    with pytest.raises(ValueError, match="layout='x'; use one of parallel, sequential"):
        resolve_layout("x")
    registered = {n for n in visattn.list_models() if n.startswith("hrnet_")}
    assert registered == {hrnet_psa_variant(w, layout) for w in ("w18", "w32", "w48") for layout in ("p", "s")}
    assert hrnet_psa_variant("w48", "sequential") == "hrnet_w48_psa_s" and psa_name("parallel") == "psa_p"


def _resnet_stage() -> nn.Sequential:
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=0).layer2.eval()


def test_insert_psa_after_blocks_is_gated_and_starts_as_identity():
    stage, plain = _resnet_stage(), _resnet_stage()
    assert insert_psa(stage, [1], placement="after", layout="s", backend="torch") == [1]
    assert isinstance(stage[1], AttentionAfter) and isinstance(stage[0], type(plain[0]))
    assert {k.split(".")[1] for k in stage.state_dict() if k.startswith("1.")} == {"block", "attention", "gate"}
    assert stage[1].attention.channels == 128 and stage[1].attention.backend == "torch"
    x = torch.randn(2, 64, 16, 8)
    with torch.no_grad():
        torch.testing.assert_close(stage(x), plain(x), rtol=0, atol=0)  # g = 0
        stage[1].gate.fill_(0.25)
        y = plain(x)
        torch.testing.assert_close(stage(x), y + 0.25 * (stage[1].attention(y) - y))


def test_insert_psa_inside_runs_psa_before_the_last_conv():
    stage, plain = _resnet_stage(), _resnet_stage()
    insert_psa(stage, layout="p")
    assert all(isinstance(b, PSABasicBlock) and b.deattn.channels == b.conv1.out_channels for b in stage)
    assert set(stage.state_dict()) - set(plain.state_dict()) == {k for k in stage.state_dict() if ".deattn." in k}
    for block in stage:
        block.deattn = nn.Identity()
    x = torch.randn(2, 64, 16, 8)
    with torch.no_grad():
        torch.testing.assert_close(stage(x), plain(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="placement='inside' takes timm's .* got AttentionAfter"):
        insert_psa(nn.Sequential(AttentionAfter(plain[0], PolarizedSelfAttention(128))))
    with pytest.raises(ValueError, match="placement='before'; use one of inside, after"):
        insert_psa(plain, placement="before")


def test_no_private_method_of_timm_is_overridden():
    """The PSA classes override timm's public methods only, so timm's private helpers may change freely."""
    for cls in (PSAHRNet, PSAResNet, PSABasicBlock, PSABottleneck, psa._PSAModule):
        timm_bases = [base for base in cls.__mro__[1:] if base.__module__.startswith("timm.")]
        own = {name for name in vars(cls) if name.startswith("_") and not name.startswith("__")}
        assert not {name for name in own if any(name in vars(base) for base in timm_bases)}, cls
