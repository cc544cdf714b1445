"""The timm API, checked on every model visattn registers (classifiers and segmentation networks): each new family
is covered automatically."""

import re
from collections import Counter

import pytest
import timm
import timm.optim
import torch
from timm.models import model_entrypoint

import visattn

MODELS = visattn.list_models()
SEGMENTATION = visattn.list_models(kind="segmentation")
SIZE = 64
# a model's repeated blocks: timm's ViT/pyramid ``blocks.N``, ResNet's ``layerN.M``, HRNet's ``branches.B.K``
BLOCK = re.compile(r"(^|\.)(blocks\.\d+|layer\d\.\d+|branches\.\d+\.\d+)$")


def _is_segmentation(name: str) -> bool:
    return name in SEGMENTATION


def _model_classes_and_sizes() -> dict[str, tuple[type, int]]:
    with torch.device("meta"):
        models = {name: timm.create_model(name) for name in MODELS}
    return {name: (type(model), sum(p.numel() for p in model.parameters())) for name, model in models.items()}


CLASSES_AND_SIZES = _model_classes_and_sizes()


def _smallest(group) -> list[str]:
    """The smallest model of each group of models with the same ``group(name)``."""
    groups: dict[object, list[str]] = {}
    for name in MODELS:
        groups.setdefault(group(name), []).append(name)
    return [min(names, key=lambda n: CLASSES_AND_SIZES[n][1]) for names in groups.values()]


def _smallest_per_family() -> list[str]:
    return _smallest(lambda name: model_entrypoint(name).__module__)


def _smallest_per_class() -> list[str]:
    """One model per model class (a family module may hold two: PSA HRNet and ResNet)."""
    return _smallest(lambda name: CLASSES_AND_SIZES[name][0])


def test_every_family_is_registered_with_a_kind():
    assert {"biformer_tiny", "biformer_small", "biformer_base", "lamamba_tiny", "lamamba_small", "lamamba_base",
            "inline_deit_tiny", "inline_deit_small", "inline_deit_base", "inline_swin_tiny", "inline_swin_small",
            "inline_swin_base", "sparsifiner_deit_small",
            "tcpa_vit_base_patch16_224"} <= set(visattn.list_models(kind="classification"))
    assert SEGMENTATION == ["fsgnet", "fsgnet_nogrm", "herseg"]
    assert sorted(visattn.list_models(kind="classification") + SEGMENTATION) == MODELS
    with pytest.raises(ValueError, match="unknown model kind 'detection'"):
        visattn.list_models(kind="detection")


@pytest.fixture(scope="module", params=MODELS)
def name(request):
    return request.param


def _assert_placed(model: torch.nn.Module, device: str, dtype: torch.dtype) -> None:
    tensors = [(n, p) for n, p in model.named_parameters()]
    tensors += [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
    misplaced = [n for n, t in tensors if t.device.type != device or t.dtype != dtype]
    assert not misplaced, f"not on {device} in {dtype}: {misplaced[:5]}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_factory_device_and_dtype(name, dtype):
    model = timm.create_model(name, device="meta", dtype=dtype)
    _assert_placed(model, "meta", dtype)
    if _is_segmentation(name):
        model.reset_classifier(5)
    else:
        model.reset_classifier(0)  # the head is empty: the new one takes the model's device and dtype
        model.reset_classifier(5)
    _assert_placed(model, "meta", dtype)


@pytest.mark.parametrize("family_model", _smallest_per_family())
def test_a_float64_model_runs_in_float64(family_model):
    model = timm.create_model(family_model, dtype=torch.float64).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, SIZE, SIZE, dtype=torch.float64))
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


def test_outputs_and_features(name):
    model = timm.create_model(name, num_classes=42 if _is_segmentation(name) else 7).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model(x)
    assert feats.shape[0] == 2 and feats.shape[-1 if feats.dim() == 3 else 1] == model.num_features  # NLC or NCHW
    if _is_segmentation(name):
        assert out.shape == (2, 42, SIZE, SIZE)
        return
    assert out.shape == (2, 7)
    with torch.no_grad():
        pre = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(model.forward_head(feats), out)
    assert pre.shape == (2, model.head_hidden_size)


def test_intermediates_and_features_only(name):
    torch.manual_seed(1)
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    info = model.feature_info
    with torch.no_grad():
        final, inters = model.forward_intermediates(x)
        only = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(inters) == len(info)
        for feat, meta in zip(inters, info, strict=True):
            assert feat.shape == (1, meta["num_chs"], SIZE // meta["reduction"], SIZE // meta["reduction"])
        torch.testing.assert_close(only, [inters[1], inters[3]])
        torch.manual_seed(1)
        backbone = timm.create_model(name, features_only=True, out_indices=(1, 3)).eval()
        maps = backbone(x)
    assert backbone.feature_info.channels() == [info[1]["num_chs"], info[3]["num_chs"]]
    assert backbone.feature_info.reduction() == [info[1]["reduction"], info[3]["reduction"]]
    torch.testing.assert_close(maps, only)


def _without_output_gradient(model: torch.nn.Module, grads: dict) -> list[str]:
    """Trainable parameters the output gave no gradient, but for those a model trains by a loss of their own
    (``aux_loss_keys``: Sparsifiner's connectivity predictors, whose mask is detached)."""
    own_loss = getattr(model, "aux_loss_keys", None)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return [n for n, g in grads.items() if g is None and n in trainable and not (own_loss and re.search(own_loss, n))]


@pytest.mark.parametrize("prune_norm", [False, True])
@pytest.mark.parametrize("keep", ["first two", "all"])
def test_pruned_model_uses_every_parameter_it_keeps(name, keep, prune_norm):
    model = timm.create_model(name).eval()
    levels = len(model.feature_info)
    indices = [0, 1] if keep == "first two" else list(range(levels))
    assert model.prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=True) == indices
    final, inters = model.forward_intermediates(torch.randn(1, 3, SIZE, SIZE), indices=indices)
    (final.sum() + sum(t.sum() for t in inters)).backward()
    unused = _without_output_gradient(model, {n: p.grad for n, p in model.named_parameters()})
    assert not unused, f"kept but unused: {unused[:5]}"


def test_grad_checkpointing_recomputes_every_block_and_keeps_the_gradients(name):
    model = timm.create_model(name, num_classes=3).train()
    x = torch.randn(2, 3, SIZE, SIZE)
    blocks = [n for n, _ in model.named_modules() if BLOCK.search(n)]
    assert blocks, "no modules named blocks.<i>, layer<i>.<j> or branches.<i>.<j>"
    calls = Counter()
    for n in blocks:
        model.get_submodule(n).register_forward_pre_hook(lambda module, args, n=n: calls.update([n]))

    def step() -> tuple[dict, dict]:
        calls.clear()
        model.zero_grad()
        torch.manual_seed(0)  # the same drop-path draws in both runs
        out = model(x)
        sum(o.square().mean() for o in (out if isinstance(out, tuple) else (out,))).backward()  # deep supervision
        return dict(calls), {n: p.grad for n, p in model.named_parameters()}

    plain_calls, plain = step()
    assert not _without_output_gradient(model, plain), "every parameter gets a gradient in training"
    model.set_grad_checkpointing(True)
    checkpointed_calls, checkpointed = step()
    assert plain_calls == dict.fromkeys(blocks, 1)
    assert checkpointed_calls == dict.fromkeys(blocks, 2)  # forward, then again in backward
    for n, grad in plain.items():
        if grad is None:  # frozen, or trained by a loss of its own
            assert checkpointed[n] is None, n
        else:
            torch.testing.assert_close(checkpointed[n], grad, rtol=1e-4, atol=1e-5, msg=n)


def test_optimizer_groups_cover_every_parameter(name):
    model = timm.create_model(name)
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.8)
    grouped = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    assert grouped == sum(p.numel() for p in model.parameters() if p.requires_grad)  # frozen ones stay out
    names = {n for n, _ in model.named_parameters()}
    assert set(model.no_weight_decay()) <= names


def test_reset_classifier(name):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    model.reset_classifier(5)
    if _is_segmentation(name):
        assert model(x).shape == (1, 5, SIZE, SIZE)
        return
    assert model(x).shape == (1, 5) and model.get_classifier().out_features == 5
    model.reset_classifier(0)
    assert model(x).shape == (1, model.head_hidden_size)


@pytest.mark.parametrize("family_model", _smallest_per_family())
def test_torch_compile_matches_eager(family_model):
    # float64: compiled kernels reorder sums, and in float32 that noise grows through networks whose logits reach
    # 1e2 at initialisation (HRNet) past any tolerance that would still catch a real difference
    model = timm.create_model(family_model, num_classes=4).eval().double()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)  # the smallest input: the reference scan unrolls every token
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        eager = model(x)
        torch.testing.assert_close(compiled(x), eager, rtol=1e-8, atol=1e-8 * max(1.0, eager.abs().max().item()))


@pytest.mark.parametrize("in_chans", [1, 4])
def test_pretrained_adapts_the_stem_and_drops_a_resized_head(name, in_chans, tmp_path):
    from timm.models import adapt_input_conv

    source = timm.create_model(name)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    first_conv = source.pretrained_cfg["first_conv"]
    with pytest.warns(UserWarning, match="sized for other classes"):
        model = timm.create_model(name, pretrained=True, in_chans=in_chans, num_classes=3,
                                  pretrained_cfg_overlay=dict(file=str(tmp_path / "weights.pth")))
    loaded = model.state_dict()
    for key, value in source.state_dict().items():
        if key == f"{first_conv}.weight":
            torch.testing.assert_close(loaded[key], adapt_input_conv(in_chans, value))
        elif loaded[key].shape == value.shape:
            assert torch.equal(loaded[key], value), key
    x = torch.randn(1, in_chans, SIZE, SIZE)
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape[:2] == (1, 3)


def _bad_inputs(channels: int) -> dict[str, torch.Tensor]:
    return {"3-D": torch.empty(channels, SIZE, SIZE), "5-D": torch.empty(1, 1, channels, SIZE, SIZE),
            "wrong channels": torch.empty(1, channels + 1, SIZE, SIZE),
            "uint8": torch.empty(1, channels, SIZE, SIZE, dtype=torch.uint8)}


def test_a_bad_input_is_a_one_line_error_naming_the_layout_before_any_computation(name):
    model = timm.create_model(name, device="meta").eval()
    backbone = timm.create_model(name, device="meta", features_only=True).eval()
    called = []
    for net in (model, backbone):
        for module_name, module in net.named_modules():
            if module_name:
                module.register_forward_pre_hook(lambda module, args, n=module_name: called.append(n))
    layout = rf"^{type(model).__name__} expects (floating-point )?\(B, {model.in_chans}, H, W\) images, got "
    for case, x in _bad_inputs(model.in_chans).items():
        got = re.escape(str(x.dtype) if case == "uint8" else f"shape {tuple(x.shape)}")
        for call in (model, model.forward_features, model.forward_intermediates, backbone):
            with pytest.raises(ValueError, match=layout + got) as err:
                call(x.to("meta"))
            assert "\n" not in str(err.value), case
    assert not called, f"ran before the input check: {called[:3]}"


def _shapes(out) -> list[tuple[int, ...]]:
    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    return [shape for item in out for shape in _shapes(item)]


@pytest.mark.parametrize("class_model", _smallest_per_class())
def test_an_empty_batch_gives_empty_outputs_and_zero_gradients(class_model):
    model = timm.create_model(class_model, num_classes=3).eval()
    empty = torch.randn(0, model.in_chans, SIZE, SIZE)
    shaped = timm.create_model(class_model, num_classes=3, device="meta").eval()  # one image's shapes, no compute
    one = torch.empty(1, model.in_chans, SIZE, SIZE, device="meta")
    with torch.no_grad():
        for call in ("forward_features", "forward_intermediates"):
            expected = [(0, *shape[1:]) for shape in _shapes(getattr(shaped, call)(one))]
            assert _shapes(getattr(model, call)(empty)) == expected, call
    logits = (0, 3, SIZE, SIZE) if _is_segmentation(class_model) else (0, 3)
    for training in (False, True):
        model.train(training).zero_grad()
        buffers = {n: b.clone() for n, b in model.named_buffers() if b.is_floating_point()}
        x = empty.clone().requires_grad_()
        out = model(x)
        outs = out if isinstance(out, tuple) else (out,)  # FSG-Net's deep supervision in training
        assert _shapes(outs) == [logits] * len(outs)
        aux = getattr(model, "aux_loss", None)  # TCPA's matching loss: zero, not the NaN of a mean over no tokens
        loss = sum(o.sum() for o in outs) + (aux if aux is not None else 0)
        assert loss.item() == 0
        loss.backward()
        assert x.grad.shape == x.shape
        grads = {n: p.grad for n, p in model.named_parameters()}
        nonzero = [n for n, g in grads.items() if g is not None and g.any()]
        assert not nonzero, f"non-zero (or NaN) gradients from an empty batch: {nonzero[:3]}"
        if training:
            unused = _without_output_gradient(model, grads)
            assert not unused, f"no gradient from an empty batch: {unused[:3]}"
        changed = [n for n, b in buffers.items() if not torch.equal(model.get_buffer(n), b)]
        assert not changed, f"an empty batch changed {changed[:3]}"  # e.g. BatchNorm running statistics
    backbone = timm.create_model(class_model, features_only=True).eval()
    with torch.no_grad():
        maps = backbone(empty)
    assert _shapes(maps) == [(0, c, SIZE // r, SIZE // r) for c, r in zip(backbone.feature_info.channels(),
                                                                          backbone.feature_info.reduction(),
                                                                          strict=True)]


@pytest.mark.parametrize("class_model", _smallest_per_class())
def test_channels_last_and_tiny_inputs(class_model):
    # float64: HRNet's logits reach 1e2 to 1e8 at initialisation, and the float32 noise of another conv algorithm
    # grows with them past any tolerance
    model = timm.create_model(class_model, dtype=torch.float64).eval()
    x = torch.randn(1, model.in_chans, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), out, rtol=1e-7,
                                   atol=1e-7 * max(1.0, out.abs().max().item()))
        for side in (1, 8):  # works, or says the minimum size, and that size works
            try:
                tiny = model(torch.randn(1, model.in_chans, side, side, dtype=torch.float64))
            except ValueError as err:
                found = re.fullmatch(rf"input {side}x{side} is too small for {type(model).__name__}: both sides must "
                                     rf"be at least (\d+) pixels", str(err))
                assert found, str(err)
                side = int(found.group(1))
                tiny = model(torch.randn(1, model.in_chans, side, side, dtype=torch.float64))
            assert tiny.shape == ((1, model.num_classes, side, side) if _is_segmentation(class_model)
                                  else (1, model.num_classes))
            assert torch.isfinite(tiny).all()
