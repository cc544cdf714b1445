"""LV-ViT and Sparsifiner on LV-ViT against the official layouts and computations (zihangJiang/TokenLabeling
``tlt/models/lvvit.py``, lim142857/Sparsifiner ``src/models/sparsifiner_lvvit.py``), written out here."""

import pytest
import timm
import torch
import torch.nn.functional as F

import visattn
from tests.blocks.test_sparse_attention_block import official_attention

NARROW = dict(embed_dim=64, depth=2, num_heads=2, stem_chs=16)  # LV-ViT-S's layout, narrower and shallower


def _randomized(name: str, **kwargs) -> torch.nn.Module:
    """``name`` in eval mode with every tensor moved off its initialisation (BatchNorm statistics included)."""
    model = timm.create_model(name, **dict(NARROW, **kwargs)).eval()
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if key.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif t.is_floating_point():
                t.add_(0.05 * torch.randn_like(t))
    return model


def official_keys(depth: int, sparsifiner: bool = False) -> set[str]:
    """The official LV-ViT (``return_dense=True``) state dict's keys; with the predictors of Sparsifiner's."""
    keys = {"cls_token", "pos_embed", "patch_embed.conv1.weight", "patch_embed.conv2.weight",
            "patch_embed.conv3.weight", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias",
            "head.weight", "head.bias", "aux_head.weight", "aux_head.bias"}
    for bn in ("bn1", "bn2", "bn3"):
        keys |= {f"patch_embed.{bn}.{t}" for t in ("weight", "bias", "running_mean", "running_var",
                                                   "num_batches_tracked")}
    for j in range(depth):
        keys.add(f"blocks.{j}.attn.qkv.weight")  # no qkv bias
        for name in ("norm1", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{j}.{name}.weight", f"blocks.{j}.{name}.bias"}
        if sparsifiner:
            for name in ("proj_c_q", "proj_c_k"):
                keys |= {f"blocks.{j}.attn.mask_predictor.{name}.weight", f"blocks.{j}.attn.mask_predictor.{name}.bias"}
            keys |= {f"blocks.{j}.attn.mask_predictor.proj_n", f"blocks.{j}.attn.mask_predictor.proj_back_n"}
    return keys


def official_stem(stem, x):
    """``PatchEmbed4_2`` in eval mode: three conv-BN-ReLU, the projection, flattened to (B, H*W, C)."""
    for conv, bn in ((stem.conv1, stem.bn1), (stem.conv2, stem.bn2), (stem.conv3, stem.bn3)):
        x = F.relu(F.batch_norm(conv(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps))
    return stem.proj(x).flatten(2).transpose(1, 2)


def dense_attention(attn, x):
    """The official LV-ViT attention: softmax((s q) k^T) v, no qkv bias."""
    b, n, c = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(x, attn.qkv.weight).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    probs = ((q * (c // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
    return attn.proj((probs @ v).transpose(1, 2).reshape(b, n, c))


def official_forward(model, x, attention, training=False):
    """The official forward (eval: class logits + 0.5 max over tokens of the aux logits; training: class logits)
    with ``attention(block.attn, tokens, grid)`` for each block's attention; residuals divided by lambda = 2."""
    grid = (x.shape[-2] // 16, x.shape[-1] // 16)
    tokens = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), official_stem(model.patch_embed, x)], dim=1)
    pos = model.pos_embed
    if pos.shape[1] != tokens.shape[1]:  # the model's table resampled to the input's grid, as its checkpoint filter
        pos = timm.layers.resample_abs_pos_embed(pos, new_size=grid, num_prefix_tokens=1)
    tokens = tokens + pos
    for block in model.blocks:
        tokens = tokens + attention(block.attn, F.layer_norm(tokens, (tokens.shape[-1],), block.norm1.weight,
                                                             block.norm1.bias, eps=1e-5), grid) / 2
        tokens = tokens + block.mlp(F.layer_norm(tokens, (tokens.shape[-1],), block.norm2.weight, block.norm2.bias,
                                                 eps=1e-5)) / 2
    tokens = F.layer_norm(tokens, (tokens.shape[-1],), model.norm.weight, model.norm.bias, eps=1e-5)
    logits = model.head(tokens[:, 0])
    return logits if training else logits + 0.5 * model.aux_head(tokens[:, 1:]).max(1)[0]


def test_parameters_equal_the_official_models_and_keys():
    # counted by running the official code (TokenLabeling LV_ViT, Sparsifiner SparsifinerLVViT); TokenLabeling's
    # README: 26.15 M and 55.83 M
    official = {"lvvit_small": 26_151_824, "lvvit_medium": 55_830_544, "sparsifiner_lvvit_small": 26_420_112,
                "sparsifiner_lvvit_medium": 56_165_904}
    depth = {"small": 16, "medium": 20}
    for name, count in official.items():
        with torch.device("meta"):
            model = timm.create_model(name)
        assert sum(p.numel() for p in model.parameters()) == count, name
        size = name.rsplit("_", 1)[1]
        assert set(model.state_dict()) == official_keys(depth[size], name.startswith("sparsifiner")), name
        if name.startswith("sparsifiner"):  # 64-channel heads, 197 tokens, K = 197 // 6 = 32 basis vectors
            predictors = sum(p.numel() for n, p in model.named_parameters() if ".mask_predictor." in n)
            assert predictors == depth[size] * (2 * 197 * 32 + 2 * (64 * 32 + 32))
            assert count - predictors == official[f"lvvit_{size}"]


@pytest.mark.parametrize("size", [224, 96])
def test_lvvit_matches_the_official_forward(size):
    model = _randomized("lvvit_small", img_size=224).double()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        expected = official_forward(model, x, lambda attn, t, grid: dense_attention(attn, t))
        torch.testing.assert_close(model(x), expected)
        model.train().patch_embed.eval()  # training mode but for the stem's BatchNorm statistics
        torch.testing.assert_close(model(x), official_forward(model, x, lambda a, t, g: dense_attention(a, t),
                                                              training=True))


@pytest.mark.parametrize("size", [224, 96])  # the training grid, and a resampled one
def test_sparsifiner_lvvit_matches_the_official_dense_masked_forward(size):
    model = _randomized("sparsifiner_lvvit_small", img_size=224, basis_threshold=0.01).double()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), official_forward(model, x, official_attention))


def test_keep_rate_one_is_lvvit():
    dense = _randomized("lvvit_small")
    model = timm.create_model("sparsifiner_lvvit_small", keep_rate=1.0, **NARROW).eval()
    result = visattn.load_pretrained(model, {"state_dict": dense.state_dict()})  # a TokenLabeling release file
    assert len(result.addons_kept) == 12 and all(".mask_predictor." in k for k in result.addons_kept)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["lvvit_small", "sparsifiner_lvvit_small"])
def test_official_checkpoint_loads_strictly(name, tmp_path):
    source = _randomized(name)
    # the TokenLabeling release files are timm training checkpoints; Sparsifiner's hold a raw state dict
    official = {k: v.clone() for k, v in source.state_dict().items()}
    assert set(official) == official_keys(2, name.startswith("sparsifiner"))
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 299, "arch": "lvvit_s", "state_dict": official}, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **NARROW)
        torch.testing.assert_close(model.eval()(x), source(x))
        other = timm.create_model(name, **NARROW).eval()
        assert visattn.load_pretrained(other, path, strict=True).loaded == len(official)
        torch.testing.assert_close(other(x), source(x))
        small = timm.create_model(name, img_size=160, **({"num_basis": 32} if "sparsifiner" in name else {}),
                                  **NARROW).eval()
        visattn.load_pretrained(small, path)  # position embedding (and predictor projections) resampled to 10 x 10
        assert small.pos_embed.shape == (1, 101, 64)
        x = torch.randn(1, 3, 160, 160)
        torch.testing.assert_close(small(x), source(x))  # the same resampling as the 224 model does on the fly
    assert model.pretrained_cfg["url"].endswith("lvvit_s-26M-224-83.3.pth.tar")


def test_forward_train_gives_the_token_labelling_logits():
    model = _randomized("lvvit_small").train()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model.forward_train(x)
        tokens = model.forward_features(x)
        torch.testing.assert_close(out.output, model.head(tokens[:, 0]))  # training: the class token's logits
        torch.testing.assert_close(out.extras["tokens"], model.aux_head(tokens[:, 1:]))  # (B, H*W, classes)
        assert out.extras["tokens"].shape == (2, 16, 1000)
        assert out.extras["token_logits"] is out.extras["tokens"]
        model.reset_classifier(0)
        assert model.aux_head is None and model.eval()(x).shape == (2, 64)
        assert model.forward_train(x).extras["tokens"].shape == (2, 16, 64)  # the normed patch tokens
        model.reset_classifier(5)
        assert model.aux_head.out_features == 5 and model(x).shape == (2, 5)


def test_sparsifiner_lvvit_training_phases():
    model = _randomized("sparsifiner_lvvit_small")
    predictor = {n for n, _ in model.named_parameters() if ".mask_predictor." in n}
    x = torch.randn(2, 3, 64, 64)
    model.set_training_phase("reconstruct")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == predictor  # the aux head is frozen too
    out = model.train().forward_train(x)
    assert [a.shape for a in out.extras["attention"]] == [(2, 2, 17, 17)] * 2
    assert [a.shape for a in out.extras["approx"]] == [(2, 2, 16, 17)] * 2
    sum(F.mse_loss(a, t[:, :, 1:], reduction="sum") for a, t in zip(out.extras["approx"], out.extras["attention"],
                                                                     strict=True)).backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == predictor
    model.set_training_phase("distill")
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == predictor
    model.zero_grad()
    out = model.train().forward_train(x)
    tokens = out.extras["tokens"]
    assert tokens.shape == (2, 16, 1000) and out.output.shape == (2, 1000)
    (out.output.sum() + tokens.square().mean()).backward()  # CE and KL read the logits, token MSE the aux logits
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained == {n for n, _ in model.named_parameters()} - predictor
    with torch.no_grad():
        sparse = model.eval().forward_train(x)
        torch.testing.assert_close(sparse.output, official_forward(model, x, official_attention))
        assert sparse.stats["keep_ratio"].item() == pytest.approx((17 + 16 * 5) / 17**2)


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="exactly one prefix token, the class token, and class-token pooling"):
        timm.create_model("lvvit_small", global_pool="avg", **NARROW)
    with pytest.raises(ValueError, match="skip_lam=0 must be > 0"):
        timm.create_model("lvvit_small", skip_lam=0, **NARROW)
    with pytest.raises(ValueError, match="skip_lam=-1 must be > 0"):
        timm.create_model("sparsifiner_lvvit_small", skip_lam=-1, **NARROW)
    with pytest.raises(ValueError, match="patch_size=15: LV-ViT's stem halves the image first, use an even size"):
        timm.create_model("lvvit_small", patch_size=15, **NARROW)
    with pytest.raises(ValueError, match="do not support init_values"):
        timm.create_model("lvvit_small", init_values=1e-5, **NARROW)


def test_sparsifiner_lvvit_shows_its_kept_keys():
    model = _randomized("sparsifiner_lvvit_small")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        found = model.inspect(x, (0.5, 0.5))
        torch.testing.assert_close(found.output, model(x))  # the evaluation output, aux logits included
    assert list(found.maps) == ["blocks.0.attn", "blocks.1.attn"]
    assert all(m.kind == "kept_keys" and m.data["keys"].shape == (1, 2, 5) for m in found.maps.values())
