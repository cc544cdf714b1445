import argparse
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from tests.engine._logged import assert_logged
from visattn.contract import TrainOutput
from visattn.engine.fit import train_pass
from visattn.engine.loop import TrainingForward
from visattn.errors import UserError
from visattn.tasks.medical.data import (
    FSGNET_AUGMENTATION,
    IMAGENET_MEAN,
    Augmentation,
    SegmentationEvalSet,
    SegmentationTrainSet,
    SyntheticVessels,
)
from visattn.tasks.medical.task import (
    Inference,
    MedicalConfig,
    MedicalTask,
    bce_dice_loss,
    check_model_output,
    evaluate,
    evaluate_checkpoint,
    inference_size,
    pad_to_multiple,
    predict_logits,
    train,
)

# HER-Seg cut down to run in seconds on a CPU (the released model is embed_dim 96, depths 2/2/6/2).
HERSEG_SMALL = {"embed_dim": 32, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 2], "decoder_dim": 32,
                "decoder_heads": 2, "decoder_depth": 1}
TINY_DATA = "synthetic-vessels:size=64,train=4,val=2"


class Pointwise(nn.Module):
    """A 1x1 convolution: the same logits whichever window a pixel is seen in."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        self.sizes = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return self.conv(x)


class SmallConvNet(nn.Module):
    def __init__(self, width=12):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.ReLU(),
                                  nn.Conv2d(width, 1, 1))

    def forward(self, x):
        return self.body(x)


def test_bce_dice_loss_matches_its_definition_and_ignores_pixels_outside_the_fov():
    logits, target = torch.randn(2, 1, 6, 5), (torch.rand(2, 1, 6, 5) > 0.7).float()
    fov = torch.ones_like(target)
    fov[:, :, :2] = 0
    p = torch.sigmoid(logits)
    bce = F.binary_cross_entropy(p, target, reduction="none")
    expected_bce = (bce * fov).sum() / fov.sum()
    dice = (2 * (p * target * fov).sum((1, 2, 3)) + 1) / ((p * fov).sum((1, 2, 3)) + (target * fov).sum((1, 2, 3)) + 1)
    assert torch.allclose(bce_dice_loss(logits, target, fov), expected_bce + (1 - dice).mean(), atol=1e-6)
    changed = logits.clone()
    changed[:, :, :2] = 100.0
    assert torch.allclose(bce_dice_loss(changed, target, fov), bce_dice_loss(logits, target, fov))
    assert bce_dice_loss((target * 2 - 1) * 30, target, fov) < 1e-3


def test_pad_to_multiple_centres_the_content():
    x = torch.randn(1, 3, 13, 30)
    padded, box = pad_to_multiple(x, 8)
    assert padded.shape == (1, 3, 16, 32) and box == (1, 1, 13, 30)
    assert torch.equal(padded[..., 1:14, 1:31], x) and padded[..., 0, :].abs().sum() == 0
    padded, box = pad_to_multiple(x, 1, minimum=20)
    assert padded.shape == (1, 3, 20, 30) and box == (3, 0, 13, 30)


@pytest.mark.parametrize("size", [(50, 37), (20, 20), (12, 9)])
def test_sliding_and_padded_inference_agree_with_a_pointwise_model(size):
    model = Pointwise().eval()
    image = torch.randn(1, 3, *size)
    with torch.no_grad():
        direct = model(image)
        sliding = predict_logits(model, image, Inference("sliding", tile=16, overlap=0.5, batch_size=3))
        padded = predict_logits(model, image, Inference("padded", pad_multiple=16))
    assert sliding.shape == padded.shape == (1, 1, *size)
    assert torch.allclose(sliding, direct, atol=1e-6) and torch.allclose(padded, direct, atol=1e-6)
    assert set(model.sizes[1:-1]) == {(16, 16)} and all(s % 16 == 0 for s in model.sizes[-1])


def test_sliding_window_averages_overlapping_logits():
    class ColumnIndex(nn.Module):
        def forward(self, x):
            return torch.arange(x.shape[-1], dtype=torch.float32).expand(x.shape[0], 1, *x.shape[-2:])

    logits = predict_logits(ColumnIndex(), torch.zeros(1, 3, 4, 6), Inference("sliding", tile=4, overlap=0.5))
    # Windows start at columns 0 and 2: columns 2 and 3 are seen as 2, 3 by the first and 0, 1 by the second.
    assert logits[0, 0, 0].tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 3.0]


def test_inference_settings_are_validated():
    with pytest.raises(UserError, match="inference must be one of sliding, padded"):
        Inference("tiled")
    with pytest.raises(UserError, match="overlap"):
        Inference("sliding", overlap=1.0)


def test_models_must_return_full_resolution_single_channel_logits():
    class Strided(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 1, 4, stride=4)

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(UserError, match=r"returns \(1, 1, 8, 8\) for a \(1, 3, 32, 32\) image"):
        check_model_output(Strided(), 32, "strided")

    class Picky(Pointwise):
        def forward(self, x):
            raise RuntimeError("size must be a multiple of 7\nsecond line")

    with pytest.raises(UserError, match="^image size 32 does not work with picky: size must be a multiple of 7$"):
        check_model_output(Picky(), 32, "picky")
    check_model_output(Pointwise(), 32, "pointwise")


def test_evaluate_maps_predictions_to_the_original_resolution_and_writes_pngs(tmp_path):
    model = Pointwise().eval()
    source = SyntheticVessels(2, (40, 52), seed=3)
    result = evaluate(model, SegmentationEvalSet(source, scale=0.5), torch.device("cpu"),
                      Inference("sliding", tile=16), predictions=str(tmp_path))
    assert result["region"] == "fov" and result["count"] == 2 and "full_image" in result
    assert [m["name"] for m in result["images"]] == source.names
    assert set(result["pooled"]) == {"dice", "iou", "sensitivity", "specificity", "accuracy", "auc", "hd95"}
    assert math.isfinite(result["loss"])
    prob = np.asarray(Image.open(tmp_path / f"{source.names[0]}_prob.png"))
    pred = np.asarray(Image.open(tmp_path / f"{source.names[0]}_pred.png"))
    overlay = np.asarray(Image.open(tmp_path / f"{source.names[0]}_overlay.png"))
    assert prob.shape == pred.shape == (40, 52) and overlay.shape == (40, 52, 3)
    assert set(np.unique(pred)) <= {0, 255} and ((prob >= 128) == (pred == 255)).mean() > 0.99
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]

    full = SegmentationEvalSet(source)[0]
    with torch.no_grad():
        expected = torch.sigmoid(model(full["image"][None]))[0, 0].numpy()
    exact = evaluate(model, SegmentationEvalSet(source), torch.device("cpu"), Inference("padded"),
                     predictions=str(tmp_path / "exact"))
    saved = np.asarray(Image.open(tmp_path / "exact" / f"{source.names[0]}_prob.png")).astype(float) / 255
    assert np.abs(saved - expected).max() <= 0.5 / 255 + 1e-6
    assert exact["images"][0]["auc"] != result["images"][0]["auc"]  # scale 0.5 really resized


def test_overlay_colours_true_false_and_missed_vessels(tmp_path):
    from visattn.tasks.medical.task import save_prediction

    rgb = np.full((2, 3, 3), 100, np.uint8)
    mask = np.array([[1, 1, 0], [0, 0, 0]], bool)
    pred = np.array([[1, 0, 1], [0, 0, 0]], bool)
    save_prediction(str(tmp_path), "x", rgb, pred * 0.9, pred, mask)
    overlay = np.asarray(Image.open(tmp_path / "x_overlay.png")).astype(int)
    assert overlay[0, 0, 1] > 150 and overlay[0, 0, 0] < 100  # true positive: green
    assert overlay[0, 2, 0] > 150 and overlay[0, 2, 1] < 100  # false positive: red
    assert overlay[0, 1, 2] > 150 and overlay[0, 1, 0] < 100  # missed vessel: blue
    assert (overlay[1] == 100).all()


def test_a_small_conv_net_learns_the_synthetic_vessels():
    """Crops, augmentation, loss, sliding-window inference and metrics together: vessels are learnable."""
    torch.manual_seed(0)
    model = SmallConvNet()
    cfg = MedicalConfig(output="unused", epochs=12, lr=0.03, amp=False)
    loader = torch.utils.data.DataLoader(SegmentationTrainSet(SyntheticVessels(8, 64), 32, repeats=4, seed=0),
                                         batch_size=8, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    class Constant:
        def step_update(self, step):
            pass

    for epoch in range(cfg.epochs):
        train_pass(MedicalTask(cfg), TrainingForward(model), model, loader, optimizer, Constant(), torch.device("cpu"),
                   epoch, False)
    val = SegmentationEvalSet(SyntheticVessels(2, 64, seed=1))
    result = evaluate(model, val, torch.device("cpu"), Inference("sliding", tile=32))
    assert result["pooled"]["auc"] > 0.9 and result["pooled"]["dice"] > 0.5


def test_train_resume_and_evaluate_herseg(tmp_path):
    cfg = MedicalConfig(output=str(tmp_path / "run"), model="herseg", model_kwargs=HERSEG_SMALL, data=TINY_DATA,
                        img_size=32, epochs=1, batch_size=4, workers=0, inference="padded")
    result = train(cfg)
    assert [h["epoch"] for h in result["history"]] == [1]
    run = tmp_path / "run"
    assert {"last.pth", "best.pth", "metrics.json", "curves.png", "tensorboard"} <= {p.name for p in run.iterdir()}
    last = torch.load(run / "last.pth", weights_only=True)
    assert last["task"] == "medical-seg" and last["model"] == "herseg" and last["inference"]["mode"] == "padded"
    assert set(last["history"][0]) >= {"train_loss", "val_loss", "val_dice", "val_auc", "val_hd95"}

    resumed = MedicalConfig(**{**vars(cfg), "epochs": 2, "resume": str(run / "last.pth")})
    history = train(resumed)["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert json.loads((run / "metrics.json").read_text())["history"][-1]["epoch"] == 2

    metrics = evaluate_checkpoint(str(run / "last.pth"), inference="sliding", tile=32, output=str(tmp_path / "ev"))
    assert metrics["count"] == 2 and metrics["split"] == "val" and metrics["inference"]["mode"] == "sliding"
    text = (tmp_path / "ev" / "metrics.json").read_text()
    saved = json.loads(text)
    assert "NaN" not in text  # undefined values are written as null
    assert saved["pooled"].keys() == metrics["pooled"].keys() and len(saved["images"]) == 2
    assert len(list((tmp_path / "ev" / "predictions").glob("*_overlay.png"))) == 2

    with pytest.raises(UserError, match="was trained as medical-seg / 'herseg', not medical-seg / 'tiny'"):
        train(MedicalConfig(**{**vars(resumed), "model": "tiny"}))


class DeepSupervision(nn.Module):
    """A logit map from ``forward``, two more as deep-supervision outputs in training: FSG-Net's contract."""

    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleList(nn.Conv2d(3, 1, 1) for _ in range(3))

    def forward(self, x):
        return self.heads[0](x)

    def forward_train(self, x):
        return TrainOutput(self(x), aux_outputs={"coarse": self.heads[1](x), "coarser": self.heads[2](x)})


def test_the_loss_of_a_deep_supervision_network_averages_its_outputs():
    task = MedicalTask(MedicalConfig(output="unused", amp=False))
    net = DeepSupervision().train()
    images, masks = torch.randn(2, 3, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    step = task.compute_loss(TrainingForward(net), (images, masks, torch.ones_like(masks)), torch.device("cpu"))
    each = [bce_dice_loss(head(images), masks, torch.ones_like(masks)) for head in net.heads]
    assert step.samples == 2
    torch.testing.assert_close(step.loss, sum(each) / 3)
    assert step.parts.keys() == {"bce_dice_main", "bce_dice_coarse", "bce_dice_coarser"}
    torch.testing.assert_close(step.parts["bce_dice_coarser"], each[2] / 3)


def test_train_fsgnet_with_deep_supervision(tmp_path):
    cfg = MedicalConfig(output=str(tmp_path / "run"), model="fsgnet",
                        model_kwargs={"base_c": 8, "depths": [1, 1, 1, 1]}, data=TINY_DATA, img_size=32, epochs=1,
                        batch_size=2, workers=0, inference="padded")
    result = train(cfg)
    row = result["history"][0]
    assert math.isfinite(row["train_loss"]) and "val_dice" in row
    parts = ("bce_dice_main", "bce_dice_level2", "bce_dice_level3")
    assert sum(row[k] for k in parts) == pytest.approx(row["train_loss"], rel=1e-5)
    assert_logged(tmp_path / "run", parts)


def test_the_fsgnet_recipe_sets_the_augmentation_and_explicit_values_win():
    assert MedicalConfig(output="x").augmentation() == Augmentation()  # the defaults are unchanged
    assert MedicalConfig(output="x").resolved_normalization() == "model"
    cfg = MedicalConfig(output="x", model="fsgnet", recipe="fsgnet")
    assert cfg.augmentation() == FSGNET_AUGMENTATION and cfg.resolved_normalization() == "imagenet"
    cfg = MedicalConfig(output="x", model="fsgnet", recipe="fsgnet", cutmix_prob=0.5, blur_kernel=(3, 5),
                        normalization="model")
    assert cfg.augmentation() == dataclasses.replace(FSGNET_AUGMENTATION, cutmix=0.5, blur_kernel=(3, 5))
    assert cfg.resolved_normalization() == "model"
    # tools/train.py rebuilds the config from vars(base) plus the options given: the recipe still applies.
    rebuilt = MedicalConfig(**{**vars(MedicalConfig(output="x")), "recipe": "fsgnet", "model": "fsgnet"})
    assert rebuilt.augmentation() == FSGNET_AUGMENTATION


def _train_parser():
    parser = argparse.ArgumentParser(exit_on_error=False)
    for flag, kind in (("--lr", float), ("--weight-decay", float), ("--warmup-epochs", int), ("--batch-size", int),
                       ("--img-size", int), ("--model", str)):
        parser.add_argument(flag, type=kind)
    MedicalTask.add_train_arguments(parser)
    return parser


def test_the_recipe_switch_sets_the_official_training_values_unless_given():
    args = _train_parser().parse_args(["--recipe", "fsgnet"])
    assert (args.recipe, args.model, args.lr, args.weight_decay, args.warmup_epochs, args.batch_size,
            args.img_size) == ("fsgnet", "fsgnet", 1e-3, 0.05, 20, 4, 288)
    for argv in (["--lr", "0.01", "--recipe", "fsgnet", "--img-size", "64"],
                 ["--recipe", "fsgnet", "--lr", "0.01", "--img-size", "64"]):
        args = _train_parser().parse_args(argv)
        assert (args.lr, args.img_size, args.batch_size) == (0.01, 64, 4)
    args = _train_parser().parse_args(["--cutmix-prob", "0.8", "--resize-range", "0.5,2", "--blur-kernel", "3,11",
                                       "--jitter", "0.2,0.2,0.2,0.1", "--pad-to", "608"])
    assert (args.cutmix_prob, args.resize_range, args.blur_kernel, args.jitter, args.pad_to) == \
        (0.8, (0.5, 2.0), (3, 11), (0.2, 0.2, 0.2, 0.1), 608)
    assert args.recipe is None and args.lr is None


@pytest.mark.parametrize("argv, match", [(["--cutmix-prob", "1.5"], "1.5: must be in [0, 1]"),
                                         (["--blur-prob", "x"], "x: not a number"),
                                         (["--resize-range", "0.5"], "0.5: expected LOW,HIGH such as 0.5,2"),
                                         (["--jitter", "0.2,0.2"], "0.2,0.2: expected BRIGHTNESS,CONTRAST"),
                                         (["--jitter", "0.2,0.2,-1,0"], "every value must be >= 0"),
                                         (["--blur-kernel", "3.5,11"], "3.5,11: expected odd LOW,HIGH")])
def test_bad_augmentation_options_are_refused_where_they_are_parsed(argv, match):
    with pytest.raises(argparse.ArgumentError) as err:
        _train_parser().parse_args(argv)
    assert match in str(err.value) and argv[0] in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("values, match", [({"cutmix_prob": 1.5}, "cutmix probability"),
                                           ({"resize_range": (-1, 2)}, "resize range needs 0 < LOW"),
                                           ({"blur_kernel": (4, 11)}, "blur kernel"),
                                           ({"recipe": "unet"}, "recipe must be one of fsgnet"),
                                           ({"normalization": "none"}, "normalization must be one of"),
                                           ({"pad_to": -1}, "pad-to must be >= 0")])
def test_bad_config_values_are_one_line_errors(values, match):
    with pytest.raises(UserError, match=match) as err:
        MedicalConfig(output="x", **values)
    assert "\n" not in str(err.value)


def test_pad_to_pads_centred_to_the_canvas():
    model = Pointwise().eval()
    image = torch.randn(1, 3, 20, 27)
    with torch.no_grad():
        out = predict_logits(model, image, Inference("padded", pad_multiple=32, pad_to=64))
        assert torch.allclose(out, model.conv(image), atol=1e-6)
    assert model.sizes == [(64, 64)]
    padded, box = pad_to_multiple(image, 32, minimum=64)
    assert box == (22, 18, 20, 27) and torch.equal(padded[..., 22:42, 18:45], image)
    assert inference_size(Inference("padded", tile=32, pad_multiple=32, pad_to=608)) == 608
    assert inference_size(Inference("padded", tile=32, pad_multiple=32)) == 32


def test_train_fsgnet_with_the_official_recipe(tmp_path):
    cfg = MedicalConfig(output=str(tmp_path / "run"), model="fsgnet", recipe="fsgnet",
                        model_kwargs={"base_c": 8, "depths": [1, 1, 1, 1]}, data=TINY_DATA, img_size=32, epochs=1,
                        batch_size=4, workers=0, inference="padded", pad_to=64)
    result = train(cfg)
    row = result["history"][0]
    assert math.isfinite(row["train_loss"]) and "val_dice" in row
    parts = ("bce_dice_main", "bce_dice_level2", "bce_dice_level3")
    assert sum(row[k] for k in parts) == pytest.approx(row["train_loss"], rel=1e-5)
    assert_logged(tmp_path / "run", parts)
    ckpt = torch.load(tmp_path / "run" / "best.pth", map_location="cpu", weights_only=False)
    assert ckpt["augmentation"] == dataclasses.asdict(FSGNET_AUGMENTATION)
    assert tuple(ckpt["mean"]) == IMAGENET_MEAN and ckpt["inference"]["pad_to"] == 64
