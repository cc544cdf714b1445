"""The timm API, checked on every model visattn registers: each new family is covered automatically."""

import pytest
import timm
import timm.optim
import torch
from timm.models import model_entrypoint

import visattn

MODELS = visattn.list_models(task="classification")
SIZE = 64


def _smallest_per_family() -> list[str]:
    families: dict[str, list[str]] = {}
    for name in MODELS:
        families.setdefault(model_entrypoint(name).__module__, []).append(name)
    return [min(names, key=lambda n: sum(p.numel() for p in timm.create_model(n).parameters()))
            for names in families.values()]


def test_every_family_is_registered():
    assert {"biformer_tiny", "biformer_small", "biformer_base", "visattn_mambaout_femto", "visattn_mambaout_kobe",
            "visattn_mambaout_tiny", "visattn_mambaout_small", "visattn_mambaout_base", "lamamba_tiny",
            "lamamba_small", "lamamba_base", "inline_deit_tiny", "inline_deit_small", "inline_deit_base",
            "inline_swin_tiny", "inline_swin_small", "inline_swin_base"} <= set(MODELS)


@pytest.fixture(scope="module", params=MODELS)
def name(request):
    return request.param


def test_classifier_and_features(name):
    model = timm.create_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
        pre = model.forward_head(feats, pre_logits=True)
    assert logits.shape == (2, 7)
    assert feats.shape[0] == 2 and feats.shape[-1 if feats.dim() == 3 else 1] == model.num_features  # NLC or NCHW
    assert pre.shape == (2, model.head_hidden_size)
    torch.testing.assert_close(model.forward_head(feats), logits)


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


def test_reset_classifier(name):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    model.reset_classifier(5)
    assert model(x).shape == (1, 5) and model.get_classifier().out_features == 5
    model.reset_classifier(0)
    assert model(x).shape == (1, model.head_hidden_size)


def test_grad_checkpointing_gives_the_same_gradients(name):
    model = timm.create_model(name, num_classes=3)
    model.train()
    x = torch.randn(2, 3, SIZE, SIZE)
    model(x).square().sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g is not None for g in plain.values())
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], rtol=1e-4, atol=1e-5, msg=n)


def test_optimizer_groups_cover_every_parameter(name):
    model = timm.create_model(name)
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.8)
    grouped = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    assert grouped == sum(p.numel() for p in model.parameters())
    names = {n for n, _ in model.named_parameters()}
    assert set(model.no_weight_decay()) <= names


@pytest.mark.parametrize("family_model", _smallest_per_family())
def test_torch_compile_matches_eager(family_model):
    model = timm.create_model(family_model, num_classes=4).eval()
    x = torch.randn(1, 3, 32, 32)  # the smallest input: the reference selective scan unrolls over every token
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
