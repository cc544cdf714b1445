"""The timm API, checked on every model visattn registers (classifiers and segmentation networks): each new family
is covered automatically.

What computes runs on the tiny ``test_<family>`` variants (one per model class and layout, each at its default
input size). Every full-size variant is checked where nothing computes, on the meta device: factory device and
dtype, output and feature shapes, optimizer groups, input errors. Their parameter counts, MACs and official parity
are the families' own tests and tests/test_model_table.py's.
"""

import copy
import functools
import re
import warnings
from collections import Counter

import numpy as np
import pytest
import timm
import timm.optim
import torch
from timm.layers import get_notrace_functions, get_notrace_modules
from timm.models import model_entrypoint
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import visattn
from tests.graphs import graph_kwargs
from tests.meta import NoInitOnMeta
from visattn.backbones._vit import GridViT
from visattn.contract import forward_train

MODELS = visattn.list_models()
TEST_MODELS = visattn.list_models(include_test="only")
SEGMENTATION = set(visattn.list_models(kind="segmentation", include_test=True))
# a model's repeated blocks: timm's ViT/pyramid ``blocks.N``, ResNet's ``layerN.M``, HRNet's ``branches.B.K``
BLOCK = re.compile(r"(^|\.)(blocks\.\d+|layer\d\.\d+|branches\.\d+\.\d+)$")


def _is_segmentation(name: str) -> bool:
    return name in SEGMENTATION


def _side(name: str) -> int:
    """The side of the model's default (square) input."""
    return timm.models.get_pretrained_cfg(name).input_size[-1]


def _input_side(model: torch.nn.Module, side: int, dtype: torch.dtype) -> int:
    """``side`` when ``model`` takes a ``side`` x ``side`` input, else the minimum its one-line error names."""
    try:
        with torch.no_grad():
            model(torch.randn(1, model.in_chans, side, side, dtype=dtype))
    except ValueError as err:
        found = re.fullmatch(rf"input {side}x{side} is too small for {type(model).__name__}: both sides must be at "
                             rf"least (\d+) pixels", str(err))
        assert found, str(err)
        return int(found.group(1))
    return side


def test_every_family_is_registered_with_a_kind():
    assert {"biformer_tiny", "biformer_small", "biformer_base", "lamamba_tiny", "lamamba_small", "lamamba_base",
            "inline_deit_tiny", "inline_deit_small", "inline_deit_base", "inline_swin_tiny", "inline_swin_small",
            "inline_swin_base", "sparsifiner_deit_small",
            "tcpa_vit_base_patch16_224"} <= set(visattn.list_models(kind="classification"))
    assert visattn.list_models(kind="segmentation") == ["fsgnet", "fsgnet_nogrm", "herseg"]
    assert sorted(visattn.list_models(kind="classification") + visattn.list_models(kind="segmentation")) == MODELS
    assert visattn.list_models(kind="segmentation", include_test="only") == ["test_fsgnet", "test_fsgnet_nogrm",
                                                                           "test_herseg"]
    assert visattn.list_models(include_test=True) == sorted(MODELS + TEST_MODELS)
    assert all(name.startswith("test_") for name in TEST_MODELS) and not any(n.startswith("test_") for n in MODELS)
    with pytest.raises(ValueError, match="unknown model kind 'detection'"):
        visattn.list_models(kind="detection")
    with pytest.raises(ValueError, match="include_test must be False, True or 'only'"):
        visattn.list_models(include_test="all")
    # timm's first argument: fnmatch patterns over the names
    assert visattn.list_models("biformer_stl*") == ["biformer_stl", "biformer_stl_nchw"]
    assert visattn.list_models(["herseg", "fsgnet_*"]) == ["fsgnet_nogrm", "herseg"]
    assert visattn.list_models("*", kind="segmentation", include_test="only") == ["test_fsgnet", "test_fsgnet_nogrm",
                                                                                "test_herseg"]
    assert visattn.list_models("resnet*") == ["resnet50_psa"]  # timm's own resnets are not visattn's


@functools.cache
def _built_on_meta(name: str, features_only: bool = False) -> torch.nn.Module:
    """``timm.create_model(name, device="meta", dtype=torch.bfloat16)``, built once per process and shared: read it
    (or run it in evaluation mode), never change it; :func:`_on_meta` gives a copy to change."""
    with NoInitOnMeta():
        return timm.create_model(name, device="meta", dtype=torch.bfloat16, features_only=features_only)


def _on_meta(name: str, features_only: bool = False) -> torch.nn.Module:
    """A copy of :func:`_built_on_meta`'s model, for a test that changes it (a new head, hooks)."""
    return copy.deepcopy(_built_on_meta(name, features_only))


def _smallest_per_paper() -> list[str]:
    """The smallest test variant of each paper's families (``paper_ids`` of the pretrained cfg): one for BiFormer and
    BiFormer-STL, one for the four InLine hosts, ..."""
    families: dict[str, list[str]] = {}
    for name in TEST_MODELS:
        families.setdefault(timm.models.get_pretrained_cfg(name).paper_ids, []).append(name)
    sizes = {name: sum(p.numel() for p in _built_on_meta(name).parameters()) for name in TEST_MODELS}
    return [min(names, key=sizes.get) for names in families.values()]


def test_every_model_class_and_family_has_a_test_variant():
    full = {name: _built_on_meta(name) for name in MODELS}
    tiny = {name: _built_on_meta(name) for name in TEST_MODELS}
    assert {type(m) for m in full.values()} == {type(m) for m in tiny.values()}
    assert {model_entrypoint(n).__module__ for n in MODELS} == {model_entrypoint(n).__module__ for n in TEST_MODELS}
    for name, model in tiny.items():
        # test_hrnet_psa: 11.7 of its 11.8 M parameters are timm's HRNet classification head, of fixed widths
        assert sum(p.numel() for p in model.parameters()) < 0.5e6 or name == "test_hrnet_psa", name


@pytest.fixture(scope="module", params=TEST_MODELS)
def name(request):
    """A tiny test variant: what the behaviour checks run on."""
    return request.param


@pytest.fixture(scope="module", params=MODELS + TEST_MODELS)
def any_name(request):
    """Any registered model, built on the meta device only."""
    return request.param

def _assert_placed(model: torch.nn.Module, device: str, dtype: torch.dtype) -> None:
    tensors = [(n, p) for n, p in model.named_parameters()]
    tensors += [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
    misplaced = [n for n, t in tensors if t.device.type != device or t.dtype != dtype]
    assert not misplaced, f"not on {device} in {dtype}: {misplaced[:5]}"


def test_factory_device_and_dtype(any_name):
    model = _on_meta(any_name)
    _assert_placed(model, "meta", torch.bfloat16)
    if _is_segmentation(any_name):
        model.reset_classifier(5)
    else:
        model.reset_classifier(0)  # the head is empty: the new one takes the model's device and dtype
        model.reset_classifier(5)
    _assert_placed(model, "meta", torch.bfloat16)


def test_a_float64_model_runs_in_float64(name):
    model = timm.create_model(name, dtype=torch.float64).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, _side(name), _side(name), dtype=torch.float64))
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


def _assert_feature_shapes(model, side: int, final, inters) -> None:
    """``forward_intermediates`` gave one map per ``feature_info`` entry, of its channels and stride."""
    assert len(inters) == len(model.feature_info)
    for feat, meta in zip(inters, model.feature_info, strict=True):
        assert feat.shape == (1, meta["num_chs"], side // meta["reduction"], side // meta["reduction"])
    assert final.shape[-1 if final.dim() == 3 else 1] == model.num_features  # NLC or NCHW


def _assert_output_shapes(name: str, model, side: int, out, pre) -> None:
    """Per-pixel logits of a segmentation network; else logits and ``head_hidden_size`` pre-logits."""
    assert model.head_hidden_size > 0  # timm's contract, segmentation networks included
    if _is_segmentation(name):
        assert out.shape == (out.shape[0], model.num_classes, side, side)
    else:
        assert out.shape == (out.shape[0], model.num_classes) and pre.shape == (out.shape[0], model.head_hidden_size)


def test_full_size_shapes_on_meta(any_name, monkeypatch):
    """Every variant's outputs and features at its default input size, on the meta device (the fused ops' fake
    kernels run: nothing computes)."""
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    model = _built_on_meta(any_name).eval()  # shared: a forward in evaluation mode changes nothing
    side = _side(any_name)
    x = torch.empty(1, 3, side, side, device="meta", dtype=torch.bfloat16)
    final, inters = model.forward_intermediates(x)  # final: forward_features(x) (test_intermediates_... checks)
    _assert_feature_shapes(model, side, final, inters)
    pre = None if _is_segmentation(any_name) else model.forward_head(final, pre_logits=True)
    _assert_output_shapes(any_name, model, side, model(x), pre)


def test_outputs_and_features(name):
    model = timm.create_model(name, num_classes=42 if _is_segmentation(name) else 7).eval()
    side = _side(name)
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model(x)
        pre = None if _is_segmentation(name) else model.forward_head(feats, pre_logits=True)
    assert feats.shape[0] == 2 and feats.shape[-1 if feats.dim() == 3 else 1] == model.num_features  # NLC or NCHW
    _assert_output_shapes(name, model, side, out, pre)
    if not _is_segmentation(name):
        with torch.no_grad():
            torch.testing.assert_close(model.forward_head(feats), out)


def test_intermediates_and_features_only(name):
    torch.manual_seed(1)
    model = timm.create_model(name).eval()
    side = _side(name)
    x = torch.randn(1, 3, side, side)
    info = model.feature_info
    with torch.no_grad():
        final, inters = model.forward_intermediates(x)
        only = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        torch.testing.assert_close(final, model.forward_features(x))
        _assert_feature_shapes(model, side, final, inters)
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
    final, inters = model.forward_intermediates(torch.randn(1, 3, _side(name), _side(name)), indices=indices)
    (final.sum() + sum(t.sum() for t in inters)).backward()
    unused = _without_output_gradient(model, {n: p.grad for n, p in model.named_parameters()})
    assert not unused, f"kept but unused: {unused[:5]}"


def test_grad_checkpointing_recomputes_every_block_and_keeps_the_gradients(name):
    model = timm.create_model(name, num_classes=3).train()
    x = torch.randn(2, 3, _side(name), _side(name))
    blocks = [n for n, _ in model.named_modules() if BLOCK.search(n)]
    assert blocks, "no modules named blocks.<i>, layer<i>.<j> or branches.<i>.<j>"
    calls = Counter()
    for n in blocks:
        model.get_submodule(n).register_forward_pre_hook(lambda module, args, n=n: calls.update([n]))

    def step() -> tuple[dict, dict]:
        calls.clear()
        model.zero_grad()
        torch.manual_seed(0)  # the same drop-path draws in both runs
        out = forward_train(model, x)
        (sum(o.square().mean() for o in out.predictions()) + sum(out.aux_losses.values())).backward()
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


def test_optimizer_groups_cover_every_parameter(any_name):
    model = _built_on_meta(any_name)  # shared: the optimizer only reads it
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.8)
    grouped = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    assert grouped == sum(p.numel() for p in model.parameters() if p.requires_grad)  # frozen ones stay out
    names = {n for n, _ in model.named_parameters()}
    assert set(model.no_weight_decay()) <= names


def test_reset_classifier(name):
    model = timm.create_model(name).eval()
    side = _side(name)
    x = torch.randn(1, 3, side, side)
    model.reset_classifier(5)
    if _is_segmentation(name):
        assert model(x).shape == (1, 5, side, side)
        return
    assert model(x).shape == (1, 5) and model.get_classifier().out_features == 5
    model.reset_classifier(0)
    assert model(x).shape == (1, model.head_hidden_size)


@pytest.mark.parametrize("family_model", _smallest_per_paper())
def test_torch_compile_matches_eager(family_model):
    # float64: compiled kernels reorder sums, and in float32 that noise grows through networks whose logits reach
    # 1e2 at initialisation (HRNet) past any tolerance that would still catch a real difference
    model = timm.create_model(family_model, num_classes=4, **graph_kwargs(family_model)).eval().double()
    side = _input_side(model, 16, torch.float64)  # the smallest input the model takes: the cheapest eager run
    x = torch.randn(1, 3, side, side, dtype=torch.float64)
    compiled = torch.compile(model, fullgraph=True)
    # The graph goes through inductor's lowering and scheduling whole; its C++ is built the cheapest way (see
    # tests/conftest.py), here also the kernels and their caller as one module (cpp_wrapper: one compiler run instead
    # of one per kernel)
    with torch.no_grad(), torch._inductor.config.patch(cpp_wrapper=True):
        eager = model(x)
        torch.testing.assert_close(compiled(x), eager, rtol=1e-8, atol=1e-8 * max(1.0, eager.abs().max().item()))


@pytest.mark.parametrize("name", TEST_MODELS)
def test_timm_fx_feature_extraction_computes_what_the_model_does(name):
    """torch.fx feature extraction as timm runs it (its notrace modules and functions single calls in the graph)
    traces the model, and the graph's last node is the model's output."""
    model = timm.create_model(name).eval()
    tracer_kwargs = {"leaf_modules": get_notrace_modules(), "autowrap_functions": get_notrace_functions()}
    # LV-ViT's token-labelling head joins the output in evaluation only: the two graphs end in different nodes
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    extractor = create_feature_extractor(model, train_return_nodes=train_nodes[-1:], eval_return_nodes=eval_nodes[-1:],
                                         tracer_kwargs=tracer_kwargs).eval()
    x = torch.randn(2, 3, _side(name), _side(name))
    with torch.no_grad():
        torch.testing.assert_close(extractor(x)[eval_nodes[-1]], model(x))


@pytest.mark.parametrize("name", TEST_MODELS)
def test_torch_jit_trace_computes_what_the_model_does(name):
    """A ``torch.jit.trace`` of the model (as older deployment paths and the TorchScript ONNX exporter record it)
    computes the model's outputs, on the traced batch and on another: nothing the model computes outside the graph
    (Sparsifiner's host-side top-k) is lost or frozen into it."""
    model = timm.create_model(name).eval()
    traced_batch, other_batch = (torch.randn(2, 3, _side(name), _side(name)) for _ in range(2))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the size checks are constants of the trace
        traced = torch.jit.trace(model, traced_batch, check_trace=False)
        for x in (traced_batch, other_batch):
            torch.testing.assert_close(traced(x), model(x))


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
    x = torch.randn(1, in_chans, _side(name), _side(name))
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape[:2] == (1, 3)


def _bad_inputs(channels: int, side: int) -> dict[str, torch.Tensor]:
    return {"3-D": torch.empty(channels, side, side), "5-D": torch.empty(1, 1, channels, side, side),
            "wrong channels": torch.empty(1, channels + 1, side, side),
            "uint8": torch.empty(1, channels, side, side, dtype=torch.uint8)}


def test_a_bad_input_is_a_one_line_error_naming_the_layout_before_any_computation(any_name):
    model = _built_on_meta(any_name).eval()  # shared: its hooks are removed at the end
    backbone = _built_on_meta(any_name, features_only=True).eval()
    called = []
    hooks = [module.register_forward_pre_hook(lambda module, args, n=module_name: called.append(n))
             for net in (model, backbone) for module_name, module in net.named_modules() if module_name]
    layout = rf"^{type(model).__name__} expects (floating-point )?\(B, {model.in_chans}, H, W\) images, got "
    try:
        for case, x in _bad_inputs(model.in_chans, _side(any_name)).items():
            got = re.escape(str(x.dtype) if case == "uint8" else f"shape {tuple(x.shape)}")
            for call in (model, model.forward_features, model.forward_intermediates, backbone):
                with pytest.raises(ValueError, match=layout + got) as err:
                    call(x.to("meta"))
                assert "\n" not in str(err.value), case
    finally:
        for hook in hooks:
            hook.remove()
    assert not called, f"ran before the input check: {called[:3]}"


_BAD_ARGUMENTS = [
    (dict(in_chans=0), "in_chans must be a positive integer"),
    (dict(in_chans=3.0), "in_chans must be a positive integer"),
    (dict(num_classes=-1), "num_classes must be an integer >= 0"),
    (dict(drop_path_rate=1.5), "drop_path_rate must lie in [0, 1)"),
    (dict(out_indices=()), "out_indices must name at least one feature level"),
]


def test_construction_arguments_of_numpy_types_and_lists_are_accepted():
    model = timm.create_model("test_sparsifiner", in_chans=np.int64(1), num_classes=np.int32(4), img_size=[48, 64],
                              drop_path_rate=np.float32(0.1), out_indices=[2, 3], features_only=True)
    assert [f.shape[1] for f in model(torch.randn(1, 1, 48, 64))] == model.feature_info.channels()


def test_a_bad_construction_argument_is_a_one_line_error(any_name):
    """Arguments no model can take fail at ``create_model`` with what was wrong, not in a layer or at the first
    forward: timm's common arguments for every model, ``img_size`` for the ViT hosts (a position grid of at least one
    patch), ``num_classes`` for the segmentation networks (one logit map at least)."""
    cases = list(_BAD_ARGUMENTS)
    if isinstance(_built_on_meta(any_name), GridViT):
        cases += [(dict(img_size=(224,)), "img_size must be a positive integer or an (H, W) pair"),
                  (dict(img_size=8), "img_size=8 is smaller than one 16x16 patch")]
    if _is_segmentation(any_name):
        cases.append((dict(num_classes=0), "a segmentation model needs num_classes >= 1"))
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)) as err:
            timm.create_model(any_name, device="meta", **kwargs)
        assert "\n" not in str(err.value), kwargs
    if _is_segmentation(any_name):
        message = "a segmentation model needs num_classes >= 1 (one logit map per class), got 0"
        with pytest.raises(ValueError, match=re.escape(message)):
            _built_on_meta(any_name).reset_classifier(0)


def _shapes(out) -> list[tuple[int, ...]]:
    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    return [shape for item in out for shape in _shapes(item)]


def test_an_empty_batch_gives_empty_outputs_and_zero_gradients(name):
    model = timm.create_model(name, num_classes=3).eval()
    side = _side(name)
    empty = torch.randn(0, model.in_chans, side, side)
    shaped = timm.create_model(name, num_classes=3, device="meta").eval()  # one image's shapes, no compute
    one = torch.empty(1, model.in_chans, side, side, device="meta")
    with torch.no_grad():
        for call in ("forward_features", "forward_intermediates"):
            expected = [(0, *shape[1:]) for shape in _shapes(getattr(shaped, call)(one))]
            assert _shapes(getattr(model, call)(empty)) == expected, call
    logits = (0, 3, side, side) if _is_segmentation(name) else (0, 3)
    for training in (False, True):
        model.train(training).zero_grad()
        buffers = {n: b.clone() for n, b in model.named_buffers() if b.is_floating_point()}
        x = empty.clone().requires_grad_()
        out = forward_train(model, x)
        outs = out.predictions()
        assert _shapes(outs) == [logits] * len(outs)
        # auxiliary losses (TCPA's matching) are zero, not the NaN of a mean over no tokens
        loss = sum(o.sum() for o in outs) + sum(out.aux_losses.values())
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
    backbone = timm.create_model(name, features_only=True).eval()
    with torch.no_grad():
        maps = backbone(empty)
    assert _shapes(maps) == [(0, c, side // r, side // r) for c, r in zip(backbone.feature_info.channels(),
                                                                          backbone.feature_info.reduction(),
                                                                          strict=True)]


def test_channels_last_and_tiny_inputs(name):
    # float64: HRNet's logits reach 1e2 to 1e8 at initialisation, and the float32 noise of another conv algorithm
    # grows with them past any tolerance
    model = timm.create_model(name, dtype=torch.float64).eval()
    x = torch.randn(1, model.in_chans, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), out, rtol=1e-7,
                                   atol=1e-7 * max(1.0, out.abs().max().item()))
        for side in (1, 8):  # works, or says the minimum size, and that size works
            side = _input_side(model, side, torch.float64)
            tiny = model(torch.randn(1, model.in_chans, side, side, dtype=torch.float64))
            assert tiny.shape == ((1, model.num_classes, side, side) if _is_segmentation(name)
                                  else (1, model.num_classes))
            assert torch.isfinite(tiny).all()
