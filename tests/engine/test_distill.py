"""Distillation and the two Sparsifiner training phases in the classification task, a carved validation split,
and a frozen-backbone prompt model trained through the engine."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from tests.engine._logged import assert_logged
from visattn.engine.fit import fit, trainable_summary
from visattn.engine.loop import TrainingForward
from visattn.errors import UserError
from visattn.tasks.classification import distill
from visattn.tasks.classification.task import ClassificationConfig, ClassificationTask, carve_split

VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}
SPARSIFINER = dict(VIT, patch_size=4, img_size=32)
TEACHER = dict(VIT, patch_size=4, img_size=32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of 32x32 images (bright stripes vs dark checks) in train/ and val/."""
    root = tmp_path_factory.mktemp("distill_images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 10), ("val", 4)):
        for label in ("stripes", "checks"):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                yy, xx = np.mgrid[:32, :32]
                pattern = (yy // 4) % 2 if label == "stripes" else ((yy // 4) + (xx // 4)) % 2
                pixels = np.clip(60 + 150 * pattern + rng.normal(0, 12, (32, 32)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, "L").save(root / split / label / f"{i}.png")
    return root


def _config(folder, tmp_path, **kwargs):
    base = dict(output=str(tmp_path / "run"), data=str(folder), img_size=32, epochs=2, batch_size=4, workers=0,
                lr=2e-3, warmup_epochs=0, smoothing=0.0, amp=False)
    return ClassificationConfig(**{**base, **kwargs})


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A training checkpoint of a small dense ViT for the two classes, as a teacher."""
    model = timm.create_model("vit_tiny_patch16_224", num_classes=2, **TEACHER)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save({"task": "classification", "model": "vit_tiny_patch16_224", "model_kwargs": TEACHER,
                "num_classes": 2, "state_dict": model.state_dict()}, path)
    return path, model


def test_carve_split_takes_a_fraction_of_every_class_and_repeats():
    labels = [0] * 10 + [1] * 4 + [2] * 2
    train, val = carve_split(labels, 0.25, seed=3)
    assert sorted(train + val) == list(range(16)) and not set(train) & set(val)
    assert [sum(labels[i] == c for i in val) for c in range(3)] == [2, 1, 1]
    assert carve_split(labels, 0.25, seed=3) == (train, val)


def test_a_carved_validation_split_never_reads_val(folder, tmp_path):
    task = ClassificationTask(_config(folder, tmp_path, model="vit_tiny_patch16_224", model_kwargs=TEACHER,
                                      val_split=0.2))
    _, train_set = task.build(torch.device("cpu"), 0, 1)
    val_paths = [task.val_loader.dataset.dataset.samples[i][0] for i in task.val_loader.dataset.indices]
    assert len(train_set) == 16 and len(val_paths) == 4
    assert all("/train/" in p for p in val_paths)
    assert not {train_set.dataset.samples[i][0] for i in train_set.indices} & set(val_paths)


def test_teacher_from_a_checkpoint_gives_its_logits_and_attention(teacher_file):
    path, reference = teacher_file
    teacher = distill.load_teacher(str(path), None, 2)
    x = torch.randn(2, 3, 32, 32)
    logits, tokens = distill.teacher_outputs(teacher, x)
    torch.testing.assert_close(logits, reference.eval()(x))
    assert tokens.shape == (2, 64, 32)
    maps = distill.teacher_attention(teacher, x)
    assert len(maps) == 2 and maps[0].shape == (2, 2, 65, 65)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 2, 65))
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_teacher_errors_are_one_line(teacher_file, tmp_path):
    path, model = teacher_file
    with pytest.raises(UserError, match="predicts 2 classes, the data has 5"):
        distill.load_teacher(str(path), None, 5)
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)
    with pytest.raises(UserError, match="--teacher-model NAME"):
        distill.load_teacher(str(bare), None, 2)
    with pytest.raises(UserError, match="does not exist"):
        distill.load_teacher(str(tmp_path / "missing.pth"), None, 2)
    with pytest.raises(UserError, match="no timm ViT attention blocks"):
        distill.teacher_attention(timm.create_model("resnet18", num_classes=2), torch.randn(1, 3, 32, 32))


def test_bad_distillation_options_are_one_line_errors(folder, tmp_path):
    with pytest.raises(UserError, match="--phase distill needs --teacher"):
        _config(folder, tmp_path, phase="distill")
    with pytest.raises(UserError, match="--phase sparse"):
        _config(folder, tmp_path, phase="sparse")
    with pytest.raises(UserError, match="--val-split 1.5"):
        _config(folder, tmp_path, val_split=1.5)
    task = ClassificationTask(_config(folder, tmp_path, model="vit_tiny_patch16_224", model_kwargs=TEACHER,
                                      phase="reconstruct"))
    with pytest.raises(UserError, match="has no such training phase; it declares no training phases"):
        task.build(torch.device("cpu"), 0, 1)


def test_phase_one_trains_only_the_predictors_and_lowers_the_reconstruction_loss(folder, tmp_path):
    cfg = _config(folder, tmp_path, model="sparsifiner_deit_small", model_kwargs=SPARSIFINER, phase="reconstruct",
                  epochs=3, lr=1e-2)
    task = ClassificationTask(cfg)
    result = fit(task)
    losses = [row["train_loss"] for row in result["history"]]
    assert losses[-1] < 0.8 * losses[0], losses
    model = timm.create_model("sparsifiner_deit_small", num_classes=2, **SPARSIFINER)
    model.set_training_phase("reconstruct")
    predictors = sum(p.numel() for n, p in model.named_parameters() if ".mask_predictor." in n)
    total = sum(p.numel() for p in model.parameters())
    assert trainable_summary(model) == f"trainable {predictors:,} of {total:,} parameters " \
                                       f"({100 * predictors / total:.2f}%)"
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if ".mask_predictor." in n}


def test_phase_one_against_a_teacher_and_phase_two_with_distillation(folder, tmp_path, teacher_file):
    path, _ = teacher_file
    first = fit(ClassificationTask(_config(folder, tmp_path, model="sparsifiner_deit_small",
                                           model_kwargs=SPARSIFINER, phase="reconstruct", teacher=str(path),
                                           epochs=1)))
    assert np.isfinite(first["history"][0]["train_loss"])
    assert first["history"][0]["keep_ratio"] == 1.0  # reconstructing: every block attends densely
    assert_logged(tmp_path / "run", ["keep_ratio"])
    start = str(tmp_path / "run" / "last.pth")
    cfg = _config(folder, tmp_path, model="sparsifiner_deit_small", model_kwargs=SPARSIFINER, phase="distill",
                  teacher=str(path), init=start, epochs=1, output=str(tmp_path / "phase2"))
    task = ClassificationTask(cfg)
    second = fit(task)
    row = second["history"][0]
    assert np.isfinite(row["train_loss"])
    assert row["ce"] + row["kd"] + row["token_mse"] == pytest.approx(row["train_loss"], rel=1e-4)
    # sparse in the distillation phase: N = 1 + 8 * 8 tokens, the class query attends all, each patch query
    # ceil(0.25 N) = 17 keys
    assert row["keep_ratio"] == pytest.approx((65 + 64 * 17) / 65**2)
    assert_logged(tmp_path / "phase2", ["ce", "kd", "token_mse", "keep_ratio"])
    before = torch.load(start, weights_only=True)["state_dict"]
    after = torch.load(tmp_path / "phase2" / "last.pth", weights_only=True)["state_dict"]
    predictors = [k for k in before if ".mask_predictor." in k]
    assert predictors and all(torch.equal(before[k], after[k]) for k in predictors)
    assert not torch.equal(before["blocks.0.attn.qkv.weight"], after["blocks.0.attn.qkv.weight"])


def test_token_loss_needs_the_teachers_tokens(folder, tmp_path, teacher_file):
    path, _ = teacher_file
    cfg = _config(folder, tmp_path, model="sparsifiner_deit_small",
                  model_kwargs=dict(SPARSIFINER, patch_size=8, coef_topk=2), phase="distill", teacher=str(path))
    with pytest.raises(UserError, match="the token loss needs the same tokens"):
        fit(ClassificationTask(cfg))


def test_prompt_tuning_trains_prompts_and_head_and_leaves_the_backbone_bit_identical(folder, tmp_path, capsys):
    kwargs = dict(VIT, patch_size=8, img_size=32, pool_size=4, top_k=2)
    start = timm.create_model("tcpa_vit_base_patch16_224", num_classes=2, **kwargs).state_dict()
    torch.save(start, tmp_path / "start.pth")
    cfg = _config(folder, tmp_path, model="tcpa_vit_base_patch16_224", model_kwargs=kwargs,
                  init=str(tmp_path / "start.pth"), val_split=0.2, epochs=2, lr=1e-2,
                  save_frozen=True)  # the checkpoint holds the backbone as training left it
    result = fit(ClassificationTask(cfg))
    assert "trainable" in capsys.readouterr().out
    row = result["history"][-1]
    assert np.isfinite(row["train_loss"]) and row["ce"] + row["matching"] == pytest.approx(row["train_loss"], rel=1e-4)
    assert_logged(tmp_path / "run", ["ce", "matching"])
    end = torch.load(tmp_path / "run" / "last.pth", weights_only=True)["state_dict"]
    trained = {k for k in start if not torch.equal(start[k], end[k])}
    assert trained and all(k.startswith(("prompts.", "head.")) for k in trained), sorted(trained)[:5]
    assert {"prompts.cls_keys", "prompts.image_keys", "prompts.cls_prompts", "head.weight"} <= trained


def test_a_models_auxiliary_loss_is_added(folder, tmp_path):
    kwargs = dict(VIT, patch_size=8, img_size=32, pool_size=4, top_k=2)
    task = ClassificationTask(_config(folder, tmp_path, model="tcpa_vit_base_patch16_224", model_kwargs=kwargs))
    model, train_set = task.build(torch.device("cpu"), 0, 1)
    batch = next(iter(torch.utils.data.DataLoader(train_set, batch_size=4)))
    net = TrainingForward(model).train()
    torch.manual_seed(0)
    step = task.compute_loss(net, batch, torch.device("cpu"))
    torch.manual_seed(0)
    out = model.forward_train(batch[0])
    plain = task.criterion(out.output, batch[1])
    matching = out.aux_losses["matching"]
    assert matching > 0
    torch.testing.assert_close(step.loss, plain + matching)
    torch.testing.assert_close(step.parts["matching"], matching)
    torch.testing.assert_close(step.parts["ce"], plain)


def test_prompt_options_on_a_model_without_prompts_are_one_line_errors():
    from visattn.engine.models import build_model

    with pytest.raises(UserError, match="cannot build vit_tiny_patch16_224 .*pool_size"):
        build_model("vit_tiny_patch16_224", pool_size=18, top_k=10)
    with pytest.raises(UserError, match="top_k=20 must lie between 1 and pool_size=18"):
        build_model("tcpa_vit_base_patch16_224", top_k=20, device="meta")
