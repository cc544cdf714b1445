"""FSG-Net: sizes as published, any input size, deep supervision in training, official checkpoint layout, DropBlock
(the timm API itself is checked in test_conformance.py)."""

import pytest
import timm
import torch

import visattn
from visattn.backbones.fsgnet import DropBlock

SMALL = dict(base_c=8, depths=(1, 1, 2, 1))


def _randomized(name="fsgnet", **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, **SMALL, **kwargs)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.add_(torch.randn_like(p) * 0.05)
            if n.endswith("gamma"):
                p.uniform_(0.2, 1.0)  # the 1e-6 layer scale would hide the ConvNext blocks
        for n, b in model.named_buffers():
            if n.endswith("running_var"):
                b.uniform_(0.5, 1.5)
            elif n.endswith("running_mean"):
                b.normal_(0, 0.1)
    return model.eval()


def official_state_dict(model) -> dict:
    """``model``'s weights in the released layout: ``FSGNet.`` prefix, ``input_layer`` / ``down_conv_<i>`` as one
    Sequential (the stem or stride-2 conv at 0, the ConvNext blocks after it)."""
    sd = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[1:2] == ["entry"]:
            parts[1:2] = ["0"]
        elif parts[1:2] == ["blocks"]:
            parts[1:3] = [str(int(parts[2]) + 1)]
        sd["FSGNet." + ".".join(parts)] = value
    return sd


@pytest.mark.parametrize("name, params, tensors", [("fsgnet", 18.32e6, 412), ("fsgnet_nogrm", 16.85e6, 326)])
def test_size_as_published(name, params, tensors):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, abs=0.005e6)
    assert len(model.state_dict()) == tensors  # the official checkpoints hold 412 / 326 tensors


@pytest.mark.parametrize("size", [(67, 93), (32, 40), (8, 8), (5, 3)])
def test_any_input_size_gives_logits_at_that_size(size):
    model = _randomized(num_classes=2)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 2, *size) and torch.isfinite(out).all()
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)
    h, w = max(size[0], 8), max(size[1], 8)
    assert [tuple(f.shape[1:]) for f in feats] == [(16, h, w), (32, h // 2, w // 2), (64, h // 4, w // 4),
                                                    (64, h // 8, w // 8)]


def test_samples_of_a_batch_are_independent():
    model = _randomized()
    x = torch.randn(3, 3, 40, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[1:2], model(x[1:2]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["fsgnet", "fsgnet_nogrm"])
def test_training_returns_the_three_deep_supervision_logits(name):
    model = _randomized(name).train()
    x = torch.randn(2, 3, 35, 42)
    torch.manual_seed(0)
    out = model.forward_train(x)
    assert list(out.aux_outputs) == ["level2", "level3"]
    outs = out.predictions()
    assert [o.shape for o in outs] == [(2, 1, 35, 42)] * 3
    torch.manual_seed(0)  # the same DropBlock draws
    with torch.no_grad():
        torch.testing.assert_close(model(x), out.output)  # forward is the main logits in training too
    sum(o.square().mean() for o in outs).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


def test_official_checkpoint_loads_through_load_pretrained_and_timm(tmp_path):
    source = _randomized()
    path = tmp_path / "fsgnet_official.pth"
    torch.save(official_state_dict(source), path)
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        expected = source(x)
    model = timm.create_model("fsgnet", **SMALL).eval()
    result = visattn.load_pretrained(model, str(path), strict=True)
    assert result.loaded == len(source.state_dict()) and not result.unused
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
    model = timm.create_model("fsgnet", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


def test_a_checkpoint_of_the_ablation_does_not_load_into_the_full_model(tmp_path):
    path = tmp_path / "nogrm.pth"
    torch.save(official_state_dict(timm.create_model("fsgnet_nogrm", **SMALL)), path)
    with pytest.raises(visattn.errors.UserError, match=r"missing \(attn\.conv\.weight"):
        visattn.load_pretrained(timm.create_model("fsgnet", **SMALL), str(path))


def test_bad_input_channels_are_a_one_line_error():
    model = timm.create_model("fsgnet", **SMALL).eval()
    with pytest.raises(ValueError, match=r"^FSGNet expects \(B, 3, H, W\) images, got shape \(1, 4, 32, 32\)$"):
        model(torch.randn(1, 4, 32, 32))


def test_at_least_one_class():
    model = timm.create_model("fsgnet", **SMALL)
    with pytest.raises(ValueError, match="num_classes >= 1"):
        model.reset_classifier(0)


def test_dropblock_drops_square_blocks_per_channel_and_keeps_the_mean():
    torch.manual_seed(0)
    drop = DropBlock(7, 0.5).train()
    y = drop(torch.ones(8, 16, 40, 40))
    kept = y > 0
    assert 0.2 < 1 - kept.float().mean() < 0.6  # the official rate at p = 0.5
    assert not torch.equal(kept[:, 0], kept[:, 1])  # a mask per channel
    assert torch.allclose(y[kept].unique(), y[kept].max())  # one rescale factor
    assert y.mean() == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(drop.eval()(y), y)
    assert drop.train()(torch.ones(1, 1, 3, 2)).shape == (1, 1, 3, 2)  # maps smaller than the block


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_trains_and_predicts_under_half_autocast(dtype):
    """Autocast hands the guided filter maps of mixed dtypes; it computes in float32 and matches float32 closely."""
    model = _randomized()
    x = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(x))
        with torch.autocast("cpu", dtype=dtype):
            got = torch.sigmoid(model(x).float())
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0)
    model.train()
    with torch.autocast("cpu", dtype=dtype):
        out = model.forward_train(x)
    sum(o.float().square().mean() for o in (out.output, *out.aux_outputs.values())).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["test_fsgnet", "test_fsgnet_nogrm"])
def test_head_hidden_size_is_the_width_of_the_features_the_classifier_reads(name):
    model = timm.create_model(name, num_classes=3).eval()
    read = []
    model.get_classifier().register_forward_pre_hook(lambda module, args: read.append(args[0].shape[1]))
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        model(x)
        assert read == [model.head_hidden_size] and model.head_hidden_size == 2  # base_c
        model.prune_intermediate_layers([0, 1, 2, 3], prune_head=True)  # forward then returns the encoder's map
        assert model(x).shape[1] == model.head_hidden_size == 16  # 8 base_c
