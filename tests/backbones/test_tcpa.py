import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

import visattn
from tests.blocks.test_token_prompts import official_attention, official_mask, official_prompts
from visattn.backbones.tcpa import TCPAViT
from visattn.errors import UserError

SMALL = dict(embed_dim=64, depth=2, num_heads=2, pool_size=4, top_k=2)


def _model(**kwargs) -> TCPAViT:
    return timm.create_model("tcpa_vit_base_patch16_224", **dict(SMALL, **kwargs))


def _randomized(model: TCPAViT) -> TCPAViT:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def official_forward(model: TCPAViT, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Official ``Model_VFPT_TCPA.forward`` (--RDVP, with --TDVP for token matching) on ``model``'s weights and
    prompts, prompt dropout off: (logits, sum of the layers' matching losses or None)."""
    pool, b = model.prompts, x.shape[0]
    z = pool.num_prompts
    x = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    dist = 0
    for i, block in enumerate(model.blocks):
        prompt = official_prompts(pool, i, b)
        mask, dist_layer = official_mask(pool, i, x, block.attn.num_heads)
        dist = None if dist_layer is None else dist + dist_layer
        seq = torch.cat([x[:, :1], prompt, x[:, 1:]], dim=1)
        res = block.norm1(seq)
        res = official_attention(block.attn, torch.cat([res[:, :1], res[:, 1 + z:]], dim=1), res[:, 1: 1 + z], mask)
        x = torch.cat([seq[:, :1], seq[:, 1 + z:]], dim=1)
        x = x + block.drop_path1(block.ls1(res))
        x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return model.forward_head(model.norm(x)), dist


@pytest.mark.parametrize("matching", ["token", "role"])
@pytest.mark.parametrize("fourier", [True, False])
def test_forward_and_matching_loss_match_the_official_model(matching, fourier):
    model = _randomized(_model(matching=matching, fourier=fourier, prompt_len=2, num_classes=5,
                               prompt_drop_rate=0.0, match_loss_weight=0.5))
    x = torch.randn(2, 3, 48, 64)  # 3 x 4 patches
    with torch.no_grad():
        expected, dist = official_forward(model, x)
        torch.testing.assert_close(model.eval()(x), expected)
        assert model.forward_train(x).aux_losses == {}  # no matching loss in evaluation
        torch.testing.assert_close(model.train()(x), expected)  # the backbone stays in eval mode
        out = model.forward_train(x)
    torch.testing.assert_close(out.output, expected)
    if matching == "token":
        torch.testing.assert_close(out.aux_losses["matching"], 0.5 * dist)
    else:
        assert out.aux_losses == {} and dist is None


def official_state_dict(model: TCPAViT) -> dict:
    """``model``'s weights in the official layout (Model_VFPT_TCPA: ``backbone`` and ``Pool``)."""
    out = {}
    for key, value in model.state_dict().items():
        for ours, theirs in (("prompts.cls_", "Pool.Pool_cls."), ("prompts.image_", "Pool.Pool_image.")):
            if key.startswith(ours):
                out[key.replace(ours, theirs)] = value.clone()
                break
        else:
            out[f"backbone.{key}"] = value.clone()
    return out


def test_official_checkpoint_loads_and_matches_the_official_forward(tmp_path):
    source = _randomized(_model(num_classes=5)).eval()
    official = official_state_dict(source)
    assert official["Pool.Pool_cls.keys"].shape == (2, 4, 64)
    assert official["Pool.Pool_image.prompts"].shape == (2, 4, 1, 64)
    assert {"backbone.blocks.1.attn.qkv.weight", "backbone.head.weight", "Pool.Pool_image.keys"} <= set(official)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, _ = official_forward(source, x)
    model = _model(num_classes=5)
    result = visattn.load_pretrained(model, official, strict=True)
    assert result.loaded == len(official) and not result.unused
    path = tmp_path / "tcpa_cub.pth"
    torch.save(official, path)
    created = _model(num_classes=5, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), expected)
        torch.testing.assert_close(created.eval()(x), expected)


def test_official_checkpoint_with_unimplemented_options_warns():
    official = official_state_dict(_model())
    official["ADVP_w"] = torch.ones(1, 8, 64)
    with pytest.warns(UserWarning, match="1 tensors of official options visattn does not implement"):
        visattn.load_pretrained(_model(), official, strict=True)


def test_a_timm_vit_checkpoint_loads_with_the_prompts_kept():
    vit = _randomized(timm.create_model("vit_base_patch16_224", embed_dim=64, depth=2, num_heads=2, img_size=64,
                                        num_classes=5))
    model = _model(num_classes=5)
    prompts = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("prompts.")}
    with pytest.warns(UserWarning, match="4 tensors of the modules TCPAViT adds to its backbone"):
        result = visattn.load_pretrained(model, vit.state_dict())
    assert sorted(result.addons_kept) == sorted(prompts)
    state = model.state_dict()
    for key, value in vit.state_dict().items():
        expected = value if key != "pos_embed" else resample_abs_pos_embed(value, new_size=(14, 14),
                                                                            num_prefix_tokens=1)
        torch.testing.assert_close(state[key], expected, msg=key)
    assert all(torch.equal(state[k], v) for k, v in prompts.items())


def test_a_checkpoint_with_other_pool_shapes_is_a_one_line_error():
    official = official_state_dict(_model(pool_size=6))
    with pytest.raises(UserError, match=r"4 with other shapes \(prompts.cls_keys \(2, 6, 64\) vs \(2, 4, 64\)"):
        visattn.load_pretrained(_model(), official)


def test_only_prompts_and_head_train_and_the_backbone_stays_bit_identical():
    model = _model(num_classes=5, drop_path_rate=0.5, proj_drop_rate=0.5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias", "prompts.cls_keys", "prompts.cls_prompts", "prompts.image_keys",
                         "prompts.image_prompts"}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    assert not any(m.training for n, m in model.named_modules() if n.startswith(("blocks", "patch_embed", "norm")))
    assert model.prompts.training and model.head.training
    for _ in range(3):
        out = model.forward_train(torch.randn(2, 3, 32, 32))
        loss = torch.nn.functional.cross_entropy(out.output, torch.tensor([0, 3]))
        (loss + out.aux_losses["matching"]).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    model.reset_classifier(7)
    assert model.head.weight.requires_grad and model.head.training


def test_grad_checkpointing_keeps_outputs_aux_loss_and_gradients():
    model = _model(num_classes=3).train()
    x = torch.randn(2, 3, 32, 32)

    def step():
        model.zero_grad()
        torch.manual_seed(0)  # the same prompt dropout in both runs
        out = model.forward_train(x)
        (out.output.square().mean() + out.aux_losses["matching"]).backward()
        return out.aux_losses["matching"].detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                     if p.requires_grad}

    plain_loss, plain = step()
    model.set_grad_checkpointing(True)
    loss, grads = step()
    torch.testing.assert_close(loss, plain_loss)
    for name, grad in plain.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_set_epoch_switches_random_matching_for_the_first_epochs():
    model = _model(random_topk_epochs=2)
    assert not model.prompts.random
    model.set_epoch(0)
    assert model.prompts.random
    model.set_epoch(1)
    assert model.prompts.random
    model.set_epoch(2)
    assert not model.prompts.random
    model.set_epoch(0)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        first = model.eval()(x)
        torch.testing.assert_close(model(x), first)  # evaluation matches by similarity
        model.train()
        indices = [model.prompts.match(0, model._embed(x)[0])[0] for _ in range(2)]
    assert not torch.equal(*indices)


def test_any_input_size_and_intermediates():
    model = _model().eval()
    x = torch.randn(1, 3, 40, 72)  # padded to 48 x 80: 3 x 5 patches
    with torch.no_grad():
        final, inters = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
    assert [t.shape for t in inters] == [(1, 64, 3, 5)] * 2


@pytest.mark.parametrize("args, message", [
    (dict(top_k=5), r"top_k=5 must lie between 1 and pool_size=4"),
    (dict(pool_size=0, top_k=1), r"pool_size, prompt_len and depth >= 1"),
    (dict(matching="tokens"), r"matching='tokens'; use 'token'"),
    (dict(class_token=False, global_pool="avg"), r"TCPA needs exactly one prefix token"),
    (dict(reg_tokens=4), r"TCPA needs exactly one prefix token"),
    (dict(qk_norm=True), r"TCPA blocks do not support qk_norm"),
])
def test_bad_arguments_are_one_line_errors(args, message):
    with pytest.raises(ValueError, match=message) as err:
        _model(**args)
    assert "\n" not in str(err.value)


def test_full_size_model_counts_and_cfg():
    with torch.device("meta"):
        model = timm.create_model("tcpa_vit_base_patch16_224", num_classes=100)
    cfg = model.pretrained_cfg
    assert cfg["hf_hub_id"] == "timm/vit_base_patch16_224.augreg_in21k" and cfg["paper_ids"] == "arXiv:2505.02406"
    assert timm.models.get_pretrained_cfg("tcpa_vit_base_patch16_224").num_classes == 21843
    assert model.prompts.cls_keys.shape == (12, 18, 768) and model.prompts.image_prompts.shape == (12, 18, 1, 768)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 4 * 12 * 18 * 768 + 768 * 100 + 100  # 0.66M prompt and key parameters plus the head
