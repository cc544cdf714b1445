import pytest
import timm
import torch
import torch.nn.functional as F

import visattn
from tests.blocks.test_sparse_attention_block import official_approx, official_attention
from visattn.backbones.sparsifiner import SparsifinerViT

SMALL = dict(embed_dim=64, depth=2, num_heads=2)  # DeiT-S's layout, narrower and shallower


def _randomized(**kwargs) -> SparsifinerViT:
    model = timm.create_model("sparsifiner_deit_small", **dict(SMALL, **kwargs)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def official_keys(depth: int) -> set[str]:
    """The official Sparsifiner-DeiT state dict's keys (src/models/sparsifiner.py)."""
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias",
            "head.weight", "head.bias"}
    for j in range(depth):
        for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2", "attn.mask_predictor.proj_c_q",
                     "attn.mask_predictor.proj_c_k"):
            keys |= {f"blocks.{j}.{name}.weight", f"blocks.{j}.{name}.bias"}
        keys |= {f"blocks.{j}.attn.mask_predictor.proj_n", f"blocks.{j}.attn.mask_predictor.proj_back_n"}
    return keys


def official_forward(model, x):
    """The official forward in eval mode, the attention written out with a dense -inf mask."""
    tokens = model._pos_embed(model.patch_embed(x))
    size = model.patch_embed.dynamic_feat_size(x.shape[-2:])
    for block in model.blocks:
        tokens = tokens + official_attention(block.attn, block.norm1(tokens), size)
        tokens = tokens + block.mlp(block.norm2(tokens))
    return model.head(model.norm(tokens)[:, 0])


def test_parameters_are_deit_small_plus_the_predictors():
    with torch.device("meta"):
        model = timm.create_model("sparsifiner_deit_small")
        deit = timm.create_model("deit_small_patch16_224")
    count = sum(p.numel() for p in model.parameters())
    predictors = sum(p.numel() for n, p in model.named_parameters() if ".mask_predictor." in n)
    assert predictors == 12 * (2 * 197 * 32 + 2 * (64 * 32 + 32))  # P_n, P_b (197, 32); W_q, W_k 64 -> 32
    assert count == sum(p.numel() for p in deit.parameters()) + predictors
    assert round(count / 1e6, 2) == 22.25
    assert set(model.state_dict()) == official_keys(12)


def test_keep_rate_one_is_timm_deit(recwarn):
    deit = timm.create_model("deit_small_patch16_224", **SMALL).eval()
    model = timm.create_model("sparsifiner_deit_small", keep_rate=1.0, **SMALL).eval()
    result = visattn.load_pretrained(model, deit.state_dict())
    assert len(result.addons_kept) == 12 and all(".mask_predictor." in k for k in result.addons_kept)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), deit(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [224, 96])  # the training grid, and a resampled one
def test_eval_matches_the_official_dense_masked_forward(size):
    model = _randomized(basis_threshold=0.01).double()  # float64: no near-tied coefficients or scores
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), official_forward(model, x), rtol=1e-5, atol=1e-5)


def test_official_checkpoint_loads_and_resamples(tmp_path):
    source = _randomized()
    official = {k: v.clone() for k, v in source.state_dict().items()}
    assert set(official) == official_keys(2)
    assert official["blocks.1.attn.mask_predictor.proj_back_n"].shape == (197, 32)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": official, "epoch": 49}, path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = source(x)
        model = timm.create_model("sparsifiner_deit_small", pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(path)), **SMALL).eval()
        torch.testing.assert_close(model(x), expected)
        other = timm.create_model("sparsifiner_deit_small", **SMALL).eval()
        assert visattn.load_pretrained(other, path, strict=True).loaded == len(official)
        torch.testing.assert_close(other(x), expected)
        small = timm.create_model("sparsifiner_deit_small", img_size=160, num_basis=32, **SMALL).eval()
        visattn.load_pretrained(small, path)  # a 160 model: P_n, P_b and the position embedding resampled to 10 x 10
        assert small.blocks[0].attn.mask_predictor.proj_n.shape == (101, 32)
        x = torch.randn(1, 3, 160, 160)
        torch.testing.assert_close(small(x), source(x))  # the same resampling as the 224 model does on the fly


def test_pretrained_deit_leaves_the_predictors_initialised(tmp_path, monkeypatch):
    deit = timm.create_model("deit_small_patch16_224", **SMALL)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # where pretrained=True finds the download
    (tmp_path / "checkpoints").mkdir()
    torch.save({"model": deit.state_dict()}, tmp_path / "checkpoints" / "sparsifiner_deit_small_fb_in1k.pth")
    with pytest.warns(UserWarning, match=r"12 tensors .* \(blocks\.0\.attn\.mask_predictor\.proj_n"):
        model = timm.create_model("sparsifiner_deit_small", pretrained=True, **SMALL)
    for key, value in deit.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.pretrained_cfg["url"].endswith("deit_small_patch16_224-cd65a155.pth")


def test_training_phases_set_gradients_and_attention():
    model = _randomized()
    predictor = {n for n, _ in model.named_parameters() if ".mask_predictor." in n}
    x = torch.randn(2, 3, 64, 64)
    model.set_training_phase("reconstruct")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == predictor
    out = model.train().forward_train(x)
    extras = out.extras
    assert [a.shape for a in extras["attention"]] == [(2, 2, 17, 17)] * 2
    assert [a.shape for a in extras["approx"]] == [(2, 2, 16, 17)] * 2
    assert extras["tokens"].shape == (2, 16, 64) and out.output.shape == (2, 1000)
    assert out.stats["keep_ratio"].item() == 1.0  # dense while reconstructing
    torch.testing.assert_close(extras["attention"][0].sum(-1), torch.ones(2, 2, 17))
    loss = sum(F.mse_loss(a, t[:, :, 1:], reduction="sum") for a, t in zip(extras["approx"], extras["attention"],
                                                                            strict=True))
    loss.backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == predictor
    with torch.no_grad():
        dense = timm.create_model("sparsifiner_deit_small", keep_rate=1.0, **SMALL).eval()
        dense.load_state_dict(model.state_dict())
        torch.testing.assert_close(model(x), dense(x))  # reconstructing: dense attention in training
        sparse = model.eval().forward_train(x)  # and sparse in eval
        assert "attention" not in sparse.extras
        torch.testing.assert_close(model(x), sparse.output)
        assert not torch.allclose(sparse.output, dense(x))
        # 17 tokens: the class query attends all 17 keys, each patch query ceil(0.25 * 17) = 5
        assert sparse.stats["keep_ratio"].item() == pytest.approx((17 + 16 * 5) / 17**2)
    model.set_training_phase("distill")
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == predictor
    with torch.no_grad():
        assert "attention" not in model.train().forward_train(x).extras
        torch.testing.assert_close(model(x), sparse.output)  # sparse in training too
    model.set_training_phase(None)
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():  # no loss reads the approximation outside the reconstruction phase: it is not returned
        assert "approx" not in model.train().forward_train(x).extras
    with pytest.raises(ValueError, match="phase='joint'; use 'reconstruct', 'distill' or None"):
        model.set_training_phase("joint")


def test_grad_checkpointing_keeps_the_reconstruction_gradients():
    model = _randomized().train()
    model.set_training_phase("reconstruct")
    x = torch.randn(2, 3, 64, 64)

    def grads():
        model.zero_grad()
        extras = model.forward_train(x).extras
        sum(F.mse_loss(a, t[:, :, 1:]) for a, t in zip(extras["approx"], extras["attention"], strict=True)).backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and plain
    for n, grad in plain.items():
        torch.testing.assert_close(checkpointed[n], grad, msg=n)


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="exactly one prefix token, the class token"):
        timm.create_model("sparsifiner_deit_small", class_token=False, global_pool="avg", **SMALL)
    with pytest.raises(ValueError, match="exactly one prefix token"):
        timm.create_model("sparsifiner_deit_small", reg_tokens=4, **SMALL)
    with pytest.raises(ValueError, match=r"keep_rate=2 must lie in \(0, 1\]"):
        timm.create_model("sparsifiner_deit_small", keep_rate=2, **SMALL)
    with pytest.raises(ValueError, match="do not support init_values"):
        timm.create_model("sparsifiner_deit_small", init_values=1e-5, **SMALL)
    with pytest.raises(ValueError, match="coef_topk=8 must lie between 1 and the 2 basis vectors"):
        timm.create_model("sparsifiner_deit_small", img_size=64, **SMALL)


def test_the_approximation_uses_the_predictor_formula():
    model = _randomized().double()  # float64: no near-tied coefficients
    x = torch.randn(1, 3, 80, 80, dtype=torch.float64)
    with torch.no_grad():
        extras = model.forward_train(x).extras
        tokens = model._pos_embed(model.patch_embed(x))
        attn = model.blocks[0].attn
        q, k, _ = attn.qkv(model.blocks[0].norm1(tokens)).reshape(1, 26, 3, 2, 32).permute(2, 0, 3, 1, 4)
        torch.testing.assert_close(extras["approx"][0], official_approx(attn.mask_predictor, q, k, (5, 5)))
