import importlib
import os
import subprocess
import sys
import warnings

import pytest
import timm
import torch

import visattn.mm
import visattn.weights
from tests.backbones.test_biformer import _randomized, official_state_dict
from tests.meta import NoInitOnMeta
from tests.mm.test_det_seg_pipelines import CITYSCAPES, DET, SEG, backbone_consumers
from visattn.errors import UserError
from visattn.mm import BiFormerBackbone, MambaOutBackbone, VisattnBackbone
from visattn.mm.runner import load_config

CONFIGS = DET + SEG + CITYSCAPES


def test_registered_in_mmdet_and_mmseg():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG

    assert visattn.mm.REGISTERED_IN == ["mmdet", "mmseg"]
    for registry in (DET, SEG):
        backbone = registry.build(dict(type="BiFormerBackbone", arch="tiny", n_win=4, out_indices=(1, 3)))
        assert isinstance(backbone, BiFormerBackbone)
        assert registry.get("VisattnBackbone") is VisattnBackbone


def test_registers_with_only_one_library_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "mmseg.registry", None)  # import mmseg.registry now raises ImportError
    try:
        assert importlib.reload(visattn.mm).REGISTERED_IN == ["mmdet"]
    finally:
        monkeypatch.undo()
        importlib.reload(visattn.mm)


def test_multiscale_outputs_with_output_norms():
    backbone = BiFormerBackbone(arch="tiny", n_win=4, out_indices=(0, 1, 2, 3)).eval()
    feats = backbone(torch.randn(1, 3, 100, 72))
    assert [f.shape[1] for f in feats] == backbone.out_channels == [64, 128, 256, 512]
    assert [f.shape[-2:] for f in feats] == [(25, 18), (13, 9), (7, 5), (4, 3)]
    assert len(backbone.out_norms) == 4
    plain = VisattnBackbone("biformer_tiny", out_indices=(1, -1), model_kwargs=dict(n_win=4)).eval()
    plain.model.load_state_dict(backbone.model.state_dict(), strict=False)
    outs = plain(torch.randn(1, 3, 64, 64))
    assert plain.out_norms is None and [o.shape[1] for o in outs] == [128, 512]


def test_stl_arch_gives_swin_layout_features_of_any_size():
    backbone = BiFormerBackbone(arch="stl", n_win=4).eval()
    feats = backbone(torch.randn(1, 3, 102, 70))
    assert backbone.out_channels == [96, 192, 384, 768]
    assert [f.shape[-2:] for f in feats] == [(26, 18), (13, 9), (7, 5), (4, 3)]


def test_frozen_stages_and_norm_eval():
    backbone = BiFormerBackbone(arch="tiny", n_win=4, frozen_stages=1, norm_eval=True)
    backbone.train()
    model = backbone.model
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert not any(p.requires_grad for p in model.stages[0].parameters())
    assert all(p.requires_grad for p in model.stages[1].parameters())
    assert not model.stem.training and not model.stages[0].training and model.stages[1].training
    assert not model.stages[1].downsample.norm.training  # norm_eval: BatchNorm statistics frozen
    # the output norm of a frozen stage's map is frozen with it (as mmdet's Swin); the others train
    assert [any(p.requires_grad for p in norm.parameters()) for norm in backbone.out_norms] == [False, True, True, True]
    with pytest.raises(UserError, match="frozen_stages=5"):
        BiFormerBackbone(arch="tiny", frozen_stages=5)


def test_frozen_stages_counts_the_models_stages_not_those_out_indices_keeps():
    backbone = BiFormerBackbone(arch="tiny", n_win=4, out_indices=(0, 1), frozen_stages=3).train()
    assert len(backbone.model.stages) == 2  # pruned after the last level asked
    assert not any(p.requires_grad for p in backbone.parameters())
    with pytest.raises(UserError, match="frozen_stages=5 but biformer_tiny has 4 stages"):
        BiFormerBackbone(arch="tiny", out_indices=(0, 1), frozen_stages=5)


@pytest.mark.parametrize("arch", ["test_biformer", "test_inline_swin", "test_hrnet_psa"])
def test_with_cp_recomputes_the_blocks_and_keeps_outputs_and_gradients(arch):
    """mmdet's ``with_cp``: the model's blocks run under activation checkpointing (each block forward runs again in
    the backward pass), with the same maps and gradients."""
    results = []
    for with_cp in (False, True):
        torch.manual_seed(0)
        backbone = VisattnBackbone(arch, with_cp=with_cp).train()
        calls = []
        block = next(m for name, m in backbone.model.named_modules() if name.endswith("blocks.0") or
                     name.endswith("branches.0.0"))
        block.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        torch.manual_seed(1)
        maps = backbone(torch.randn(2, 3, 64, 64))
        sum(m.square().mean() for m in maps).backward()
        results.append((maps, {n: p.grad for n, p in backbone.named_parameters() if p.grad is not None}, len(calls)))
    (plain, plain_grads, plain_calls), (checkpointed, grads, calls) = results
    assert (plain_calls, calls) == (1, 2)
    torch.testing.assert_close(checkpointed, plain)
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], msg=lambda m, name=name: f"{name}: {m}")


def test_pretrained_init_cfg_loads_official_checkpoints(tmp_path, monkeypatch):
    source = _randomized("biformer_tiny")
    path = tmp_path / "biformer_tiny_in1k.pth"
    torch.save({"model": official_state_dict(source)}, path)
    x = torch.randn(1, 3, 64, 64)
    expected = source.forward_intermediates(x, intermediates_only=True)
    from safetensors.torch import save_file

    save_file(source.state_dict(), str(tmp_path / "converted.safetensors"))
    for checkpoint in (str(path), "visattn://biformer_tiny", str(tmp_path / "converted.safetensors")):
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
        (tmp_path / "home" / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
        torch.save({"model": official_state_dict(source)},
                   tmp_path / "home" / "hub" / "checkpoints" / "biformer_tiny_in1k.pth")
        backbone = BiFormerBackbone(arch="tiny", n_win=7, out_norms=False,
                                    init_cfg=dict(type="Pretrained", checkpoint=checkpoint))
        backbone.init_weights()
        backbone.eval()
        with torch.no_grad():
            for got, want in zip(backbone(x), expected, strict=True):
                torch.testing.assert_close(got, want)


def test_unsupported_init_cfg_is_an_error():
    with pytest.raises(UserError, match="type='Pretrained'"):
        BiFormerBackbone(arch="tiny", init_cfg=dict(type="Kaiming"))



def test_mambaout_backbone_outputs_nchw_features():
    backbone = MambaOutBackbone(arch="femto", out_indices=(1, 2, 3), frozen_stages=0).train()
    feats = backbone(torch.randn(1, 3, 96, 64))
    assert [f.shape for f in feats] == [(1, 96, 12, 8), (1, 192, 6, 4), (1, 288, 3, 2)]
    assert not any(p.requires_grad for p in backbone.model.stem.parameters())


def test_inline_swin_backbone_gives_four_normed_scales_on_any_size():
    from mmseg.registry import MODELS

    backbone = MODELS.build(dict(type="InLineSwinBackbone", arch="tiny", drop_path_rate=0.0)).eval()
    assert isinstance(backbone, visattn.mm.InLineSwinBackbone)
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 72, 104))
    assert [f.shape[1] for f in feats] == backbone.out_channels == [96, 192, 384, 768]
    assert [tuple(f.shape[-2:]) for f in feats] == [(18, 26), (9, 13), (5, 7), (3, 4)]
    assert len(backbone.out_norms) == 4


def test_any_timm_model_with_feature_info_is_a_backbone():
    backbone = VisattnBackbone("inline_deit_tiny", out_indices=(3, 11)).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 192, 4, 6), (1, 192, 4, 6)]
    assert len(backbone.model.blocks) == 12
    with pytest.raises(UserError, match="frozen_stages needs a model with stem and stages"):
        VisattnBackbone("inline_deit_tiny", frozen_stages=1)
    with pytest.raises(UserError, match=r"out_indices \(0, 4\) out of range"):
        VisattnBackbone("biformer_tiny", out_indices=(0, 4))


def test_every_pruned_parameter_is_trained():
    backbone = MambaOutBackbone(arch="femto", out_indices=(0, 1))
    sum(f.sum() for f in backbone(torch.randn(1, 3, 64, 64))).backward()
    assert all(p.grad is not None for p in backbone.parameters())


def test_init_cfg_with_another_models_checkpoint_is_an_error(tmp_path):
    from visattn.errors import UserError

    torch.save(_randomized("biformer_tiny").state_dict(), tmp_path / "tiny.pth")
    backbone = BiFormerBackbone(arch="small", init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "tiny.pth")))
    with pytest.raises(UserError, match="does not match the model: .* missing"):
        backbone.init_weights()


def test_importing_changes_no_global_state():
    code = ("import sys, mmengine.logging as ml; before = ml.HistoryBuffer.__dict__.get('__getstate__'); "
            "import visattn.mm; assert 'mmcv._ext' not in sys.modules, 'stand-in installed on import'; "
            "assert ml.HistoryBuffer.__dict__.get('__getstate__') is before, 'HistoryBuffer patched on import'; "
            "visattn.mm.setup(); assert sys.modules['mmcv._ext'].__visattn_fallback__")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_psa_hrnet_backbone_loads_an_official_psa_checkpoint_and_gives_hrnetv2_branches(tmp_path):
    import timm
    from mmseg.registry import MODELS

    from tests.backbones.test_psa import _randomized as randomized_psa
    from tests.backbones.test_psa import official_checkpoint

    source = randomized_psa(timm.create_model("hrnet_w18_psa_s", head="", upsample="bilinear")).eval()
    torch.save({"state_dict": official_checkpoint(source)}, tmp_path / "psa_s_official.pth")
    backbone = MODELS.build(dict(type="PSAHRNetBackbone", arch="w18", layout="sequential",
                                 init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "psa_s_official.pth"))))
    backbone.init_weights()
    backbone.eval()
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        feats = backbone(x)
        expected = source.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
    assert backbone.out_channels == [18, 36, 72, 144]
    assert [f.shape for f in feats] == [(1, 18, 18, 23), (1, 36, 9, 12), (1, 72, 5, 6), (1, 144, 3, 3)]
    for got, want in zip(feats, expected, strict=True):
        torch.testing.assert_close(got, want)
    assert not hasattr(backbone.model, "incre_modules") or backbone.model.incre_modules is None


def _served_weights(name: str) -> dict:
    """What ``visattn://<name>`` serves, in its file's key layout, on the meta device: timm's weights for a Hugging
    Face hub id (PSA HRNet starts from timm's ImageNet HRNet, MambaOut is timm's), else the official release."""
    from tests.backbones.test_biformer import _STL_LEGACY_ATTENTION, _STL_TO_OFFICIAL
    from tests.backbones.test_inline import official_cswin_state_dict, official_pvt_state_dict, official_swin_state_dict

    cfg = timm.models.get_pretrained_cfg(name)
    source = cfg.hf_hub_id.split("/")[-1] if cfg.hf_hub_id else name
    with NoInitOnMeta():
        state = timm.create_model(source, device="meta").state_dict()
        if cfg.hf_hub_id:
            return state
        converters = {  # first match wins
            "biformer_stl": lambda model: official_state_dict(model, _STL_TO_OFFICIAL + _STL_LEGACY_ATTENTION),
            "biformer_": official_state_dict, "inline_swin_": official_swin_state_dict,
            "inline_pvt_": official_pvt_state_dict, "inline_cswin_": official_cswin_state_dict}
        convert = next(fn for prefix, fn in converters.items() if name.startswith(prefix))
        return convert(timm.create_model(name, device="meta"))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_shipped_config_backbone_feeds_its_neck_and_loads_its_checkpoint(path, monkeypatch):
    """The shipped full-size backbone, which the pipeline tests swap for a tiny one, built from the config on the meta
    device: its levels at the config's out_indices have strides 4-32 and the channels the neck (or the heads) take
    (the maps' channels are their feature_info's: tests/backbones/test_conformance.py runs every full-size model on
    meta, the pipelines run the backbone wrapper); the weights its init_cfg names load into it in their file's key
    layout (a config without init_cfg: its family publishes none)."""
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG

    cfg = load_config(path)
    with NoInitOnMeta(), torch.device("meta"):
        backbone = (DET if "/det/" in path else SEG).build(cfg.model.backbone)
    assert backbone.out_indices == tuple(cfg.model.backbone.out_indices)
    info = backbone.model.feature_info
    assert [info[i]["reduction"] for i in backbone.out_indices] == [4, 8, 16, 32]
    assert backbone.out_channels == [info[i]["num_chs"] for i in backbone.out_indices]
    for consumer in backbone_consumers(cfg.model):
        expected = backbone.out_channels if isinstance(consumer.in_channels, list) else \
            backbone.out_channels[consumer.in_index]
        assert consumer.in_channels == expected, consumer.type
    init_cfg = cfg.model.backbone.get("init_cfg")
    model_cfg = backbone.model.pretrained_cfg
    if init_cfg is None:
        assert not (model_cfg.get("url") or model_cfg.get("hf_hub_id")), "published weights left out"
        return
    checkpoint = init_cfg["checkpoint"]
    assert checkpoint.startswith("visattn://")
    read = []

    def served(source):  # a state dict passes through, as read_state_dict returns one
        if isinstance(source, dict):
            return source
        read.append(source)
        return _served_weights(source.removeprefix("visattn://"))

    monkeypatch.setattr(visattn.weights, "read_state_dict", served)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backbone.init_weights()  # a missing or reshaped backbone key is an error
    assert read == [checkpoint]
    # PSA HRNet starts from timm's ImageNet HRNet: its PSA modules keep their initialisation, as the configs say
    kept = [str(w.message) for w in caught if "adds to its backbone" in str(w.message)]
    assert bool(kept) == isinstance(backbone, visattn.mm.PSAHRNetBackbone), kept


@pytest.mark.parametrize("kind, channels, normed", [("InLinePVTBackbone", [64, 128, 320, 512], False),
                                                    ("InLineCSwinBackbone", [64, 128, 256, 512], True)])
def test_inline_pvt_and_cswin_backbones_give_four_scales_on_any_size(kind, channels, normed):
    from mmdet.registry import MODELS

    with NoInitOnMeta(), torch.device("meta"):  # shapes only: the full-size model on the meta device
        backbone = MODELS.build(dict(type=kind, arch="tiny", out_norms=normed)).eval()
        assert type(backbone) is getattr(visattn.mm, kind)
        assert backbone.model.stages[-1].blocks[-1].drop_path.drop_prob == pytest.approx(
            backbone.default_drop_path_rate)  # the family's det/seg default, linear over the blocks
        feats = backbone(torch.randn(1, 3, 70, 100))
    assert [f.shape[1] for f in feats] == backbone.out_channels == channels
    assert [tuple(f.shape[-2:]) for f in feats] == [(18, 25), (9, 13), (5, 7), (3, 4)]
    assert (backbone.out_norms is not None) == normed


@pytest.mark.parametrize("name", ["test_biformer", "test_inline_pvt", "test_hrnet_psa", "mambaout_femto"])
def test_maps_are_timms_features_in_the_order_asked(name, tmp_path):
    """The backbone's maps for out_indices in any order (repeats, negatives, an int) are timm's
    ``features_only=True`` maps of the same weights at those levels, on an odd input size."""
    source = timm.create_model(name)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = str(tmp_path / "weights.pth")
    torch.save(source.state_dict(), path)
    reference = timm.create_model(name, features_only=True, out_indices=tuple(range(len(source.feature_info))),
                                  pretrained=True, pretrained_cfg_overlay=dict(file=path)).eval()
    x = torch.randn(2, 3, 70, 99)
    with torch.no_grad():
        levels = reference(x)
    if name.startswith("mambaout"):  # timm's MambaOut features are NHWC
        levels = [f.permute(0, 3, 1, 2) for f in levels]
    for out_indices, picked in (((3, 1, -len(levels)), [3, 1, 0]), ((2, 2), [2, 2]), (-1, [len(levels) - 1])):
        backbone = VisattnBackbone(name, out_indices=out_indices,
                                   init_cfg=dict(type="Pretrained", checkpoint=path))
        backbone.init_weights()
        with torch.no_grad():
            feats = backbone.eval()(x)
        assert backbone.out_indices == tuple(picked)
        assert backbone.out_channels == [levels[i].shape[1] for i in picked]
        for got, level in zip(feats, picked, strict=True):
            torch.testing.assert_close(got, levels[level], rtol=0, atol=0)


@pytest.mark.parametrize("out_indices", [(), (1.0,), [True]])
def test_out_indices_that_are_not_levels_are_one_line_errors(out_indices):
    with pytest.raises(UserError, match=r"out_indices must be a level or a non-empty sequence of levels \(ints\)"):
        VisattnBackbone("test_biformer", out_indices=out_indices)


def test_init_cfg_prefix_loads_the_backbone_of_a_detector_checkpoint(tmp_path):
    """mmengine's ``prefix``: an mmdet checkpoint's ``backbone.*`` (the timm model and the output norms) gives the
    trained detector's maps; an official-layout checkpoint under a prefix goes through the family filter."""
    trained = BiFormerBackbone(arch="tiny", n_win=4, out_indices=(1, 2))
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    detector = {"meta": {"epoch": 12}, "state_dict": {
        **{f"backbone.{k}": v for k, v in trained.state_dict().items()}, "neck.lateral.weight": torch.ones(3)}}
    torch.save(detector, tmp_path / "detector.pth")
    x = torch.randn(1, 3, 70, 99)
    with torch.no_grad():
        expected = trained.eval()(x)
    checkpoint = str(tmp_path / "detector.pth")
    backbone = BiFormerBackbone(arch="tiny", n_win=4, out_indices=(1, 2),
                                init_cfg=dict(type="Pretrained", checkpoint=checkpoint, prefix="backbone."))
    backbone.init_weights()
    with torch.no_grad():
        for got, want in zip(backbone.eval()(x), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    unprefixed = BiFormerBackbone(arch="tiny", n_win=4, init_cfg=dict(type="Pretrained", checkpoint=checkpoint))
    with pytest.raises(UserError, match=r"does not match the model: .*; it holds a whole detector or segmentor: add "
                                        r"prefix='backbone.' to init_cfg"):
        unprefixed.init_weights()
    other = BiFormerBackbone(arch="tiny", init_cfg=dict(type="Pretrained", checkpoint=checkpoint, prefix="student."))
    with pytest.raises(UserError, match=r"has no keys starting with init_cfg's prefix 'student.'"):
        other.init_weights()

    source = _randomized("biformer_tiny")
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in official_state_dict(source).items()}},
               tmp_path / "official_det.pth")
    official = BiFormerBackbone(arch="tiny", n_win=7, out_norms=False, init_cfg=dict(
        type="Pretrained", checkpoint=str(tmp_path / "official_det.pth"), prefix="backbone."))
    official.init_weights()
    with torch.no_grad():
        for got, want in zip(official.eval()(x), source.forward_intermediates(x, intermediates_only=True),
                             strict=True):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("init_cfg, message", [
    (dict(type="Pretrained"), r"init_cfg=dict\(type='Pretrained'\) needs checkpoint=: a file, a URL or"),
    (dict(type="Pretrained", checkpoint="a.pth", prefx="backbone."), "init_cfg takes checkpoint, prefix and "
                                                                     "map_location, not prefx"),
    ([dict(type="Pretrained", checkpoint="a.pth")], r"init_cfg must be one dict\(type='Pretrained', checkpoint=...\)"),
])
def test_an_init_cfg_the_backbone_cannot_follow_is_one_line(init_cfg, message):
    with pytest.raises(UserError, match=message):
        BiFormerBackbone(arch="tiny", init_cfg=init_cfg)
