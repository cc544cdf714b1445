"""The one checkpoint loader: sources, family filters, stem adaptation, head handling and one-line errors."""

import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import adapt_input_conv

import visattn
from tests.backbones.test_biformer import official_state_dict
from visattn.errors import UserError
from visattn.weights import checkpoint_filter, family_filter, read_state_dict

KWARGS = dict(depths=(1, 1, 2, 1), dims=(32, 64, 128, 256), n_win=2, topks=(1, 2, 4, None))


def _tiny(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("biformer_tiny", **KWARGS, **kwargs).eval()


def _randomized(**kwargs):
    model = _tiny(**kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _same_outputs(a, b, x):
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("container", ["model", "state_dict", "raw", "ddp"])
def test_official_layout_loads_from_any_container(tmp_path, container):
    source = _randomized()
    official = official_state_dict(source)
    wrapped = {"raw": official, "ddp": {f"module.{k}": v for k, v in official.items()}}.get(
        container, {container: official, "epoch": 3})
    torch.save(wrapped, tmp_path / "official.pth")
    target = _tiny()
    result = visattn.load_pretrained(target, tmp_path / "official.pth")
    assert result.loaded == len(target.state_dict()) and not result.head_kept and not result.unused
    _same_outputs(target, source, torch.randn(1, 3, 64, 64))


def test_safetensors_and_in_memory_state_dicts_load(tmp_path):
    source = _randomized()
    save_file(source.state_dict(), str(tmp_path / "weights.safetensors"))
    for src in (tmp_path / "weights.safetensors", str(tmp_path / "weights.safetensors"), source.state_dict()):
        target = _tiny()
        visattn.load_pretrained(target, src, strict=True)
        _same_outputs(target, source, torch.randn(1, 3, 64, 64))


def test_a_missing_backbone_key_is_a_one_line_error_and_loads_nothing():
    state = _randomized().state_dict()
    del state["stages.2.blocks.1.mlp.fc1.weight"]
    target = _tiny()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(UserError, match=r"does not match the model: 1 missing \(stages\.2\.blocks\.1\.mlp\.fc1\."):
        visattn.load_pretrained(target, state)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_a_checkpoint_of_another_model_is_an_error_not_random_weights(tmp_path):
    torch.save(timm.create_model("inline_deit_tiny").state_dict(), tmp_path / "deit.pth")
    with pytest.raises(UserError, match="missing"):
        visattn.load_pretrained(_tiny(), tmp_path / "deit.pth")
    small = timm.create_model("biformer_tiny", **dict(KWARGS, dims=(64, 128, 256, 512)))
    with pytest.raises(UserError, match="with other shapes .*stem.conv1.weight"):
        visattn.load_pretrained(small, _tiny().state_dict())


def test_an_absent_or_resized_head_is_kept_with_a_warning():
    source = _randomized()
    headless = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    for state, kwargs in ((headless, {}), (source.state_dict(), {"num_classes": 7})):
        target = _tiny(**kwargs)
        head = target.get_classifier().weight.clone()
        with pytest.warns(UserWarning, match="classifier .*head.fc.weight.* keeps its initialisation"):
            result = visattn.load_pretrained(target, state)
        assert result.head_kept == ["head.fc.weight", "head.fc.bias"]
        assert torch.equal(target.get_classifier().weight, head)
        torch.testing.assert_close(target.stem.conv1.weight, source.stem.conv1.weight)
    with pytest.raises(UserError, match="2 missing \\(head.fc.weight, head.fc.bias\\)"):
        visattn.load_pretrained(_tiny(), headless, strict=True)


def test_strict_loading_rejects_unused_keys_that_plain_loading_leaves():
    state = dict(_randomized().state_dict(), extra=torch.zeros(1))
    with pytest.raises(UserError, match=r"1 unexpected \(extra\)"):
        visattn.load_pretrained(_tiny(), state, strict=True)
    assert visattn.load_pretrained(_tiny(), state).unused == ["extra"]


@pytest.mark.parametrize("in_chans", [1, 4])
def test_pretrained_adapts_the_stem_and_drops_a_resized_head(tmp_path, in_chans):
    source = _randomized()
    torch.save({"model": official_state_dict(source)}, tmp_path / "official.pth")
    with pytest.warns(UserWarning, match="sized for other classes"):
        model = timm.create_model("biformer_tiny", pretrained=True, in_chans=in_chans, num_classes=3, **KWARGS,
                                  pretrained_cfg_overlay=dict(file=str(tmp_path / "official.pth")))
    expected = adapt_input_conv(in_chans, source.stem.conv1.weight.detach())
    torch.testing.assert_close(model.stem.conv1.weight, expected)
    torch.testing.assert_close(model.stages[2].blocks[1].mlp.fc1.weight, source.stages[2].blocks[1].mlp.fc1.weight)
    assert model(torch.randn(2, in_chans, 64, 64)).shape == (2, 3)


def test_pretrained_with_a_wrong_checkpoint_is_a_one_line_error(tmp_path):
    torch.save(timm.create_model("inline_deit_tiny").state_dict(), tmp_path / "deit.pth")
    with pytest.raises(UserError, match="does not match the model"):
        timm.create_model("biformer_tiny", pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / "deit.pth")))


def test_official_weights_scheme_reads_the_cached_download(tmp_path, monkeypatch):
    source = _randomized()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save({"model": official_state_dict(source)}, tmp_path / "hub" / "checkpoints" / "biformer_tiny_in1k.pth")
    target = _tiny()
    visattn.load_pretrained(target, "visattn://biformer_tiny")
    _same_outputs(target, source, torch.randn(1, 3, 64, 64))
    with pytest.raises(UserError, match="unknown model 'biformr_tiny'"):
        read_state_dict("visattn://biformr_tiny")
    with pytest.raises(UserError, match="lamamba_tiny has no published weights"):
        read_state_dict("visattn://lamamba_tiny")


@pytest.mark.parametrize("content, message", [(None, "does not exist"), (b"not a checkpoint", "cannot read"),
                                              ([1, 2], "holds a list, not a state dict")])
def test_unreadable_sources_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(UserError, match=message) as info:
        read_state_dict(path)
    assert "\n" not in str(info.value)


def test_family_filters_are_found_through_the_class_hierarchy():
    class Custom(torch.nn.Linear):
        pass

    class Derived(Custom):
        pass

    @checkpoint_filter(Custom)
    def rename(state, model):
        return {k.removeprefix("old."): v for k, v in state.items()}

    assert family_filter(Derived(2, 2)) is rename and family_filter(torch.nn.Linear(2, 2)) is None
    model = Derived(2, 2)
    visattn.load_pretrained(model, {"old.weight": torch.ones(2, 2), "old.bias": torch.zeros(2)}, strict=True)
    assert torch.equal(model.weight, torch.ones(2, 2))
    assert family_filter(timm.create_model("mambaout_femto")) is timm.models.mambaout.checkpoint_filter_fn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert family_filter(timm.create_model("biformer_tiny")).__module__ == "visattn.backbones.biformer"


class _WithAddon(torch.nn.Module):
    """A backbone plus a module it adds on top (as Sparsifiner's predictors or TCPA's prompts)."""

    addon_keys = r"^extra\."

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(3, 3)
        self.extra = torch.nn.Linear(3, 2)


def test_absent_addon_modules_keep_their_initialisation_with_a_warning_unless_strict():
    model, donor = _WithAddon(), _WithAddon()
    extra = model.extra.weight.detach().clone()
    backbone_only = {k: v for k, v in donor.state_dict().items() if k.startswith("body.")}
    with pytest.warns(UserWarning, match=r"2 tensors of the modules _WithAddon adds .* keep their initialisation"):
        result = visattn.load_pretrained(model, backbone_only)
    assert sorted(result.addons_kept) == ["extra.bias", "extra.weight"]
    assert torch.equal(model.body.weight, donor.body.weight) and torch.equal(model.extra.weight, extra)
    with pytest.raises(UserError, match="2 missing"):
        visattn.load_pretrained(model, backbone_only, strict=True)
    with pytest.raises(UserError, match="missing .body.weight"):
        visattn.load_pretrained(model, {k: v for k, v in donor.state_dict().items() if k != "body.weight"})


def test_a_source_of_another_type_is_a_type_error_naming_what_is_taken():
    model = timm.create_model("test_biformer")
    with pytest.raises(TypeError, match="^load_pretrained takes a file path, a URL, 'visattn://<model>' or a state "
                                        "dict, got int$"):
        visattn.load_pretrained(model, 3)
