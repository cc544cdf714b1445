"""The re-id network on timm and visattn backbones, attention insertion, and the re-id losses."""

import json
import warnings

import pytest
import torch
import torch.nn.functional as F

from visattn.benchmark import count_macs
from visattn.errors import UserError
from visattn.ops import forced_backend
from visattn.tasks.reid.model import REID_ATTENTION, CenterLoss, GeM, ReIDLoss, ReIDModel, batch_hard_triplet_loss
from visattn.weights import load_pretrained

SMALL_BIFORMER = {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128], "n_win": 2, "topks": [1, 2, 4, None],
                  "head_dim": 16}


@pytest.mark.parametrize("name,kwargs,dim", [("resnet18", {}, 512), ("biformer_tiny", SMALL_BIFORMER, 128),
                                             ("vit_tiny_patch16_224", {"img_size": (64, 32)}, 192)])
def test_training_and_test_outputs(name, kwargs, dim):
    model = ReIDModel(name, num_classes=7, model_kwargs=kwargs)
    x = torch.rand(4, 3, 64, 32)
    out = model.train().forward_train(x)
    logits, features = out.output, out.extras["features"]
    assert logits.shape == (4, 7) and features.shape == (4, dim) and model.feature_dim == dim
    logits.sum().backward()
    test = model.eval()(x)
    assert test.shape == (4, dim)
    torch.testing.assert_close(test, model.bottleneck(model.features(x)))  # post-BN at test time


def test_bnneck_and_classifier():
    model = ReIDModel("resnet18", num_classes=5)
    assert not model.bottleneck.bias.requires_grad and model.bottleneck.bias.abs().sum() == 0
    assert model.classifier.bias is None and model.classifier.weight.std() < 0.01


def test_last_stride_one_doubles_the_final_map():
    x = torch.rand(1, 3, 64, 32)
    maps = {s: ReIDModel("resnet18", 3, last_stride=s).backbone.forward_features(x).shape[-2:] for s in (1, 2)}
    assert maps[2] == (2, 1) and maps[1] == (4, 2)
    assert ReIDModel("resnet18", 3).last_stride_applied
    with pytest.warns(UserWarning, match="last stride 1 .* does not apply to biformer_tiny: it has no ResNet last"):
        assert not ReIDModel("biformer_tiny", 3, model_kwargs=SMALL_BIFORMER).last_stride_applied
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # --last-stride 2 asks for nothing to remove
        assert not ReIDModel("biformer_tiny", 3, last_stride=2, model_kwargs=SMALL_BIFORMER).last_stride_applied


def test_normalisation_is_inside_the_model():
    model = ReIDModel("resnet18", 3).eval()
    x = torch.rand(2, 3, 64, 32)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    manual = model.backbone.forward_features((x - mean[:, None, None]) / std[:, None, None]).mean((2, 3))
    torch.testing.assert_close(model.features(x), manual)


def test_gem_with_p_one_is_the_average():
    pool = GeM(p=1.0)
    x = torch.rand(2, 5, 4, 3)
    torch.testing.assert_close(pool(x), x.mean((2, 3)))
    with pytest.raises(ValueError, match="GeM pooling needs a feature map"):
        ReIDModel("vit_tiny_patch16_224", 3, pooling="gem", model_kwargs={"img_size": (32, 32)}).features(
            torch.rand(1, 3, 32, 32))


def test_every_attention_kind_is_offered():
    assert list(REID_ATTENTION) == ["psa_p", "psa_s", "se", "cbam", "nonlocal"]


NARROW = {"channels": (16, 32, 64, 128)}  # a ResNet-18 a quarter as wide


@pytest.mark.parametrize("attn", sorted(REID_ATTENTION))
def test_inserted_attention_starts_as_identity_and_learns(attn):
    torch.manual_seed(0)
    plain = ReIDModel("resnet18", 3, model_kwargs=NARROW).eval()
    model = ReIDModel("resnet18", 3, attn=attn, attn_at=(2, 3), attn_blocks="last", model_kwargs=NARROW)
    assert model.attention_at == ["layer2.1", "layer3.1"]
    # plain-ResNet weights (timm's key names) load through backbone_state; the added modules are the addon keys
    with pytest.warns(UserWarning, match="tensors of the modules ResNet adds to its backbone"):
        loaded = load_pretrained(model.backbone, model.backbone_state(plain.backbone.state_dict()))
    added = {k for k in model.backbone.state_dict()
             if (".attention." in k or k.endswith(".gate")) and not k.endswith("num_batches_tracked")}
    assert added and set(loaded.addons_kept) == added and not loaded.unused
    model.bottleneck.load_state_dict(plain.bottleneck.state_dict())
    x = torch.rand(2, 3, 64, 32)
    torch.testing.assert_close(model.eval()(x), plain(x))
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra > 0
    site = model.backbone.layer3[1]
    start = site.gate if site.gate is not None else site.attention.norm.weight  # the non-local block's BN scale
    model.train()
    model.forward_train(x).extras["features"].square().sum().backward()
    assert start.grad.abs().sum() > 0  # the attention can leave its start
    with torch.no_grad():
        start.fill_(0.5)
    model.zero_grad()
    model.forward_train(x).extras["features"].square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in site.attention.parameters())


def _macs(**attention) -> float:
    with forced_backend("triton"), torch.device("meta"):
        model = ReIDModel("resnet18", 3, **attention).eval()
    with forced_backend("triton"):
        return count_macs(model, torch.empty(1, 3, 64, 32, device="meta"))


C, N = 128, 8 * 4  # after layer2 of a ResNet-18 at 64x32: 128 channels, an 8x4 map
HAND_MACS = {"se": 2 * C * (C // 16),  # two 1x1 convs on the pooled vector
             "cbam": 2 * 2 * C * (C // 16) + 2 * 7 * 7 * N,  # the shared MLP on two vectors, the 7x7 conv 2 -> 1
             "nonlocal": 3 * N * C * (C // 2) + 2 * N * N * (C // 2) + N * (C // 2) * C}  # theta/phi/g, 2 products, W_z


@pytest.mark.parametrize("attn", HAND_MACS)
def test_the_mac_counter_counts_each_kind(attn):
    assert _macs(attn=attn, attn_at=(2,), attn_blocks="last") - _macs() == HAND_MACS[attn]


BAD = {"unknown": (dict(attn="senet", attn_at=(2,)), "--attn senet: use one of psa_p, psa_s, se, cbam, nonlocal"),
       "stage": (dict(attn="psa_s", attn_at=(5,)), "--attn-at 5: a ResNet's stages are 1-4, got 5"),
       "index": (dict(attn="psa_s", attn_at=(2,), attn_blocks="0,7"),
                 "--attn-blocks 0,7: stage 2 has blocks 0..1, so 7 does not exist"),
       "not indices": (dict(attn="psa_s", attn_at=(2,), attn_blocks="first"), "--attn-blocks first: use all, last"),
       "no stages": (dict(attn="psa_s"), "--attn psa_s needs --attn-at")}


@pytest.mark.parametrize("kwargs,match", BAD.values(), ids=BAD.keys())
def test_bad_attention_arguments(kwargs, match):
    with pytest.raises(UserError, match=match) as err:
        ReIDModel("resnet18", 3, **kwargs)
    assert "\n" not in str(err.value)


def test_attention_needs_a_resnet():
    with pytest.raises(UserError, match="--attn psa_p goes after the residual blocks of a ResNet's stages .* "
                                        "biformer_tiny has none; use a ResNet backbone"):
        ReIDModel("biformer_tiny", 3, attn="psa_p", attn_at=(2,), last_stride=2, model_kwargs=SMALL_BIFORMER)


def test_a_visattn_resnet_is_a_backbone():
    model = ReIDModel("resnet50_psa", 3, model_kwargs=json.loads('{"layers": [1, 1, 1, 1]}'))
    assert model.last_stride_applied and model.eval()(torch.rand(1, 3, 64, 32)).shape == (1, 2048)


def test_bad_input_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\), got \(2, 1, 8, 8\)"):
        ReIDModel("resnet18", 3)(torch.rand(2, 1, 8, 8))


def test_triplet_loss_against_a_loop():
    torch.manual_seed(0)
    f, pids = torch.randn(8, 5), torch.tensor([0, 0, 1, 1, 2, 2, 3, 9])
    want = []
    for a in range(8):
        pos = [torch.dist(f[a], f[p]) for p in range(8) if p != a and pids[p] == pids[a]]
        neg = [torch.dist(f[a], f[n]) for n in range(8) if pids[n] != pids[a]]
        if pos and neg:
            want.append((max(pos), min(neg)))
    hard = torch.tensor(want)
    torch.testing.assert_close(batch_hard_triplet_loss(f, pids, 0.3), F.relu(hard[:, 0] - hard[:, 1] + 0.3).mean())
    torch.testing.assert_close(batch_hard_triplet_loss(f, pids, None), F.softplus(hard[:, 0] - hard[:, 1]).mean())
    lone = torch.randn(3, 5, requires_grad=True)
    zero = batch_hard_triplet_loss(lone, torch.tensor([0, 1, 2]))
    assert zero.item() == 0 and zero.requires_grad


def test_center_and_total_loss():
    center = CenterLoss(3, 4)
    f, pids = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    torch.testing.assert_close(center(f, pids), ((f - center.centers[pids]) ** 2).sum(1).mean() / 2)
    loss = ReIDLoss(3, 4, center_weight=0.5)
    logits = torch.randn(5, 3)
    parts = loss(logits, f, pids)
    assert set(parts) == {"ce", "triplet", "center"} and all(part.dim() == 0 for part in parts.values())
    torch.testing.assert_close(parts["ce"], F.cross_entropy(logits, pids, label_smoothing=0.1))
    torch.testing.assert_close(parts["triplet"], batch_hard_triplet_loss(f, pids, 0.3))
    torch.testing.assert_close(parts["center"], 0.5 * loss.center(f, pids))
    assert ReIDLoss(3, 4).center is None
