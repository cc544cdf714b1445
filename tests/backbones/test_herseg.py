"""HER-Seg: sizes as published, any input size, official checkpoint layout, timm plumbing (the timm API itself is
checked in test_conformance.py)."""

from collections import Counter

import pytest
import timm
import torch
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode

from tests.backbones._compare import assert_fused_matches_reference
from tests.tools.test_convert import convert


def _randomized(**kwargs):
    torch.manual_seed(0)
    model = timm.create_model("herseg", **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                b.normal_(0, 0.1)
    return model.eval()


def official_state_dict(model) -> dict:
    """``model``'s weights in the released MHRMedSeg layout, with the tensors it stores and we do not use."""
    sd = {}
    for key, value in model.state_dict().items():
        if key.startswith(("patch_embed.", "layers.")):
            sd[f"image_encoder.{key}"] = value
            if key.endswith("attn.qk.weight"):  # RoPE angles saved for one 64 x 64 grid
                sd[f"image_encoder.{key.removesuffix('qk.weight')}rope.rotations"] = torch.randn(64, 64, 24, 2)
        elif key == "mask_decoder.no_mask_embed.weight":
            sd["prompt_encoder.no_mask_embed.weight"] = value
        elif key == "mask_decoder.pe_gaussian":
            sd["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = value
        else:
            sd[key] = value
    for i in range(4):
        sd[f"prompt_encoder.point_embeddings.{i}.weight"] = torch.randn(1, 256)
    sd["prompt_encoder.not_a_point_embed.weight"] = torch.randn(1, 256)
    sd["prompt_encoder.mask_downscaling.0.weight"] = torch.randn(4, 1, 2, 2)
    for i in (1, 2):  # the released decoder builds three hypernetwork MLPs and reads mask 0 only
        for j, (cin, cout) in enumerate([(256, 256), (256, 256), (256, 32)]):
            sd[f"mask_decoder.output_hypernetworks_mlps.{i}.layers.{j}.weight"] = torch.randn(cout, cin)
            sd[f"mask_decoder.output_hypernetworks_mlps.{i}.layers.{j}.bias"] = torch.randn(cout)
    return sd


def test_size_as_published():
    model = timm.create_model("herseg")
    count = lambda prefixes: sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes))  # noqa: E731
    assert count(("patch_embed", "layers")) == pytest.approx(0.96e6, rel=0.01)  # encoder 0.96 M
    assert count(("neck",)) == pytest.approx(0.62e6, rel=0.01)  # neck 0.62 M
    # decoder 1.95 M in the released layout, of which two hypernetwork MLPs (0.28 M) never reach the output
    hypernetwork = 2 * (256 * 256 + 256) + 256 * 32 + 32  # Linear 256-256-256-32
    assert count(("mask_decoder",)) + 2 * hypernetwork == pytest.approx(1.95e6, rel=0.01)
    with torch.device("meta"):
        meta = timm.create_model("herseg").eval()
        with FlopCounterMode(display=False) as counter:
            meta(torch.empty(1, 3, 1024, 1024))
    assert counter.get_total_flops() / 2 == pytest.approx(8.23e9, rel=0.01)  # 8.23 GMACs at 1024 x 1024


@pytest.mark.parametrize("size", [(64, 64), (40, 72), (33, 50)])
def test_any_input_size_gives_logits_at_that_size_and_features_at_stride_16(size):
    model = timm.create_model("herseg", num_classes=2).eval()
    encoder = timm.create_model("herseg", features_only=True).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
        maps = encoder(torch.randn(1, 3, *size))
    assert out.shape == (1, 2, *size) and torch.isfinite(out).all()
    assert [m.shape[1:] for m in maps] == [(96, -(-size[0] // 16), -(-size[1] // 16))] * 4


def test_the_neck_is_the_final_norm_of_the_features():
    model = _randomized()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        final, inters = model.forward_intermediates(x)
        normed = model.forward_intermediates(x, norm=True, intermediates_only=True)
    assert [f.shape[1] for f in normed] == [info["num_chs_norm"] for info in model.feature_info] == [256] * 4
    torch.testing.assert_close(normed, [model.neck(f) for f in inters])
    torch.testing.assert_close(final, normed[-1])
    model.prune_intermediate_layers([0, 1], prune_norm=True)
    assert [info["num_chs_norm"] for info in model.feature_info] == [96] * 4
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), inters[1])
    assert isinstance(model.get_classifier(), torch.nn.Identity)
    with pytest.raises(ValueError, match="mask decoder was pruned"):
        model.reset_classifier(2)


def test_padding_does_not_reach_the_top_left_crop_when_the_size_is_a_multiple_of_16():
    model = _randomized()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x[..., :48, :64]))
    with pytest.raises(ValueError, match=r"^HerSeg expects \(B, 3, H, W\) images, got shape \(3, 48, 64\)$"):
        model(torch.randn(3, 48, 64))


def test_official_checkpoint_loads_through_the_pretrained_path_and_tools_convert(tmp_path):
    source = _randomized()
    path = tmp_path / "herseg_official.pth"
    torch.save(official_state_dict(source), path)
    loaded = timm.create_model("herseg", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))
    out = tmp_path / "herseg.safetensors"
    result = convert("--model", "herseg", "--checkpoint", str(path), "--output", str(out))
    assert result.returncode == 0, result.stderr
    converted = timm.create_model("herseg").eval()
    converted.load_state_dict(load_file(out))
    with torch.no_grad():
        torch.testing.assert_close(converted(x), source(x))


def test_pretrained_without_a_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="no official checkpoint URL"):
        timm.create_model("herseg", pretrained=True)


def test_fused_model_matches_reference_model(monkeypatch):
    model = timm.create_model("herseg", embed_dim=32, depths=(1, 1, 2, 1), num_heads=(2, 2, 4, 8), decoder_dim=32,
                              decoder_heads=2).eval()
    x = torch.randn(1, 3, 48, 80)  # a 3 x 5 token map; heads of 16, 8 and 4 channels
    assert_fused_matches_reference(model, x, monkeypatch)


def test_every_parameter_gets_a_gradient_and_checkpointing_recomputes_the_decoder_too():
    model = _randomized().train()
    x = torch.randn(2, 3, 32, 48)
    layers = [f"mask_decoder.transformer.layers.{i}" for i in range(2)]
    calls = Counter()
    for n in layers:
        model.get_submodule(n).register_forward_pre_hook(lambda module, args, n=n: calls.update([n]))
    torch.manual_seed(1)  # the same drop-path draws in both passes
    model(x).square().mean().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for g in plain.values())
    assert calls == dict.fromkeys(layers, 1)
    model.zero_grad()
    calls.clear()
    model.set_grad_checkpointing(True)
    torch.manual_seed(1)
    model(x).square().mean().backward()
    assert calls == dict.fromkeys(layers, 2)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], rtol=1e-4, atol=1e-6, msg=n)


def test_at_least_one_class():
    model = timm.create_model("herseg")
    with pytest.raises(ValueError, match="num_classes >= 1"):
        model.reset_classifier(0)


def test_head_hidden_size_is_the_width_of_the_features_the_classifier_reads():
    model = timm.create_model("test_herseg", num_classes=3).eval()
    read = []
    decoder = model.mask_decoder
    decoder.output_upscaling.register_forward_hook(lambda module, args, out: read.append(out.shape[1]))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)
        assert read == [model.head_hidden_size] == [decoder.output_hypernetworks_mlps[0].layers[-1].out_features] == [4]
        model.prune_intermediate_layers([0, 1, 2, 3], prune_head=True)  # forward then returns the embedding
        assert model(x).shape[1] == model.head_hidden_size == 32  # decoder_dim
