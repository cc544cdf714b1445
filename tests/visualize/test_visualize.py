"""visattn-visualize: a PNG per picture for each family, summary.json, Grad-CAM where the answer is known, one-line
errors; in process through the Python API and the command line, once through the script."""

import json

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image

from tests.tools._runs import assert_one_line_error, script, tool
from visattn.tasks.opened import open_model
from visattn.visualize import grad_cam, model_input, visualize
from visattn.visualize.draw import spread
from visattn.visualize.gradcam import as_map


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A 48 x 60 RGB image."""
    path = tmp_path_factory.mktemp("images") / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (48, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def _png(path):
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 300 and img.height > 300
        img.verify()


@pytest.mark.parametrize("model, picture, layers", [
    ("test_biformer", "routing", 3),
    ("test_sparsifiner", "kept_keys", 4),
    ("test_inline_pvt", "query_attention", 4),
    ("test_herseg", "query_attention", 3),
    ("test_resnet_psa", "gates", 4),
    ("test_tcpa", "prompt_usage", 4),
])
def test_each_family_draws_its_picture_as_a_png_with_its_numbers(model, picture, layers, photo, tmp_path):
    result = visualize(model, photo, str(tmp_path), pictures=[picture], query=(10, 50), device="cpu")
    assert result.files == [str(tmp_path / f"{picture}.png"), str(tmp_path / "summary.json")]
    _png(result.files[0])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["model"] == model and summary["input_size"] == [64, 64]
    assert summary["query"] == {"pixel": [10, 50], "fraction": [10.5 / 48, 50.5 / 60]}
    numbers = summary["pictures"][picture]
    assert numbers["file"] == f"{picture}.png" and len(numbers["layers"]) == layers
    first = next(iter(numbers["layers"].values()))
    if picture == "routing":
        assert first["query_region"] == 1 and len(first["routed_regions"]) == 1  # row 3 of 16, column 13 of 16
    elif picture == "kept_keys":
        assert first["keep_ratio"] == pytest.approx((17 + 16 * 5) / 17**2)
    elif picture == "query_attention":
        assert first["weight_sum"] == pytest.approx(1.0, abs=1e-5) or model == "test_herseg"
    elif picture == "gates":
        assert first["combine"] == "product" and 0 < first["channel_min"] <= first["channel_max"] < 1
    else:
        assert sum(first["usage"]) == pytest.approx(first["tokens"])


def test_default_pictures_are_all_the_model_offers_and_layers_choose(photo, tmp_path):
    result = visualize("test_resnet_psa", photo, str(tmp_path), layers=["layer2", "layer4.0"], device="cpu")
    assert [p.rsplit("/", 1)[-1] for p in result.files] == ["gates.png", "gradcam.png", "summary.json"]
    gates = result.summary["pictures"]["gates"]["layers"]
    assert list(gates) == ["layer2.0.deattn", "layer4.0.deattn"]
    cams = result.summary["pictures"]["gradcam"]["layers"]
    assert list(cams) == ["layer2", "layer4.0"] and [cams[name]["grid"] for name in cams] == [[8, 8], [2, 2]]
    for path in result.files[:2]:
        _png(path)


def test_many_layers_are_thinned_evenly_in_the_picture():
    names = [f"blocks.{i}" for i in range(30)]
    assert spread(names, 4) == ["blocks.0", "blocks.10", "blocks.19", "blocks.29"]
    assert spread(names[:3], 4) == names[:3]


def test_a_training_checkpoint_brings_its_size_normalisation_and_class_names(photo, tmp_path):
    model = timm.create_model("test_biformer", num_classes=3)
    ckpt = {"task": "classification", "model": "test_biformer", "model_kwargs": {}, "dataset": "x", "num_classes": 3,
            "img_size": 32, "classes": ["ant", "bee", "cat"], "state_dict": model.state_dict(),
            "data_cfg": {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "input_size": (3, 32, 32)}}
    torch.save(ckpt, tmp_path / "best.pth")
    result = visualize(str(tmp_path / "best.pth"), photo, str(tmp_path / "vis"), pictures=["gradcam"], device="cpu")
    cam = result.summary["pictures"]["gradcam"]["layers"]["forward_features"]
    assert result.summary["input_size"] == [32, 32] and cam["grid"] == [1, 1]
    x = (torch.from_numpy(np.asarray(Image.open(photo).resize((32, 32), Image.Resampling.BICUBIC)).copy())
         .permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        top = int(model.eval()(x[None]).argmax())
    assert cam["class"] == top and cam["label"] == f"{['ant', 'bee', 'cat'][top]} ({top})"


@pytest.mark.parametrize("interpolation, expected", [("bilinear", Image.Resampling.BILINEAR),
                                                      ("nearest", Image.Resampling.NEAREST), (None, None)])
def test_the_image_is_resized_as_the_model_was_evaluated(interpolation, expected, photo, tmp_path):
    """A checkpoint's stored interpolation resizes the picture the model sees (bicubic where it names none); a
    segmentation network's is bilinear, as its scale resize."""
    model = timm.create_model("test_biformer", num_classes=3)
    data_cfg = {"mean": (0.5,) * 3, "std": (0.25,) * 3, "input_size": (3, 32, 32)}
    if interpolation:
        data_cfg["interpolation"] = interpolation
    ckpt = {"task": "classification", "model": "test_biformer", "model_kwargs": {}, "dataset": "x", "num_classes": 3,
            "img_size": 32, "classes": ["a", "b", "c"], "state_dict": model.state_dict(), "data_cfg": data_cfg}
    torch.save(ckpt, tmp_path / "best.pth")
    picture = Image.open(photo).convert("RGB")
    for source, want in ((str(tmp_path / "best.pth"), Image.Resampling.BICUBIC if expected is None else expected),
                         ("test_fsgnet", Image.Resampling.BILINEAR)):
        opened = open_model(source, device="cpu")
        shown, _ = model_input(opened, picture, 32)
        others = [f for f in (Image.Resampling.BICUBIC, Image.Resampling.BILINEAR, Image.Resampling.NEAREST)
                  if f != want]
        assert np.array_equal(shown, np.asarray(picture.resize((32, 32), want)))
        assert not any(np.array_equal(shown, np.asarray(picture.resize((32, 32), f))) for f in others)


class RegionNet(nn.Module):
    """A CNN whose class-1 score reads only the top-left quadrant: channel 0 is the brightness everywhere (unused
    by the head), channel 1 the brightness in the top-left quadrant only."""

    num_features = 2

    def forward_features(self, x):
        bright = x.mean(dim=1, keepdim=True)
        mask = torch.zeros_like(bright)
        mask[..., : x.shape[-2] // 2, : x.shape[-1] // 2] = 1
        return nn.functional.avg_pool2d(torch.cat([bright, bright * mask], dim=1), 4)

    def forward_head(self, features):
        pooled = features.mean(dim=(2, 3))
        return torch.stack([torch.zeros_like(pooled[:, 0]), 10 * pooled[:, 1], pooled[:, 1] - 1], dim=1)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_gradcam_highlights_the_region_the_class_depends_on():
    x = torch.zeros(1, 3, 32, 32)
    x[..., 4:12, 4:12] = 1.0  # bright squares in the top-left quadrant (read by the head) and bottom-right (not)
    x[..., 20:28, 20:28] = 1.0
    (cam,) = grad_cam(RegionNet(), x)
    assert cam.layer == "forward_features" and cam.targets == [1] and cam.cam.shape == (1, 8, 8)
    heat = cam.cam[0]
    assert heat[1:3, 1:3].min() > 0 and heat[5:7, 5:7].max() == 0 and heat.max() == heat[1:3, 1:3].max()


def test_gradcam_reshapes_vit_tokens_and_channels_last_maps(photo):
    x = torch.randn(1, 3, 64, 48)
    (vit,) = grad_cam(timm.create_model("test_vit", dynamic_img_size=True).eval(), x)
    assert vit.layer == "blocks.5 (input)" and vit.cam.shape == (1, 4, 3) and vit.cam.max() > 0
    (nhwc,) = grad_cam(timm.create_model("test_inline_swin").eval(), x, ["stages.1"])  # (B, 8, 6, 16) stage output
    assert nhwc.cam.shape == (1, 8, 6)
    t = torch.randn(2, 5, 7, 16)
    assert torch.equal(as_map(t, (40, 56)), t.permute(0, 3, 1, 2))  # NHWC: 5 x 7 keeps one stride
    assert torch.equal(as_map(t.permute(0, 3, 1, 2), (40, 56)), t.permute(0, 3, 1, 2))
    tokens = torch.randn(1, 1 + 12, 8)
    assert torch.equal(as_map(tokens, (30, 40), prefix=1), tokens[:, 1:].reshape(1, 3, 4, 8).permute(0, 3, 1, 2))


@pytest.mark.parametrize("argv, fragment", [
    (["test_biformer", "{bad}"], "cannot read {bad}: cannot identify image file"),
    (["test_biformer", "{photo}", "--query", "48,3"], "--query 48,3 lies outside the 48x60 image"),
    (["test_biformer", "{photo}", "--query", "3"], "--query 3: expected Y,X"),
    (["resnet18", "{photo}", "--picture", "routing"], "resnet18 has no routing picture; it offers gradcam"),
    (["test_herseg", "{photo}", "--picture", "gradcam"], "test_herseg has no gradcam picture"),
    (["test_biformer", "{photo}", "--picture", "routes"], "--picture routes: no such picture"),
    (["test_biformer", "{photo}", "--layer", "stages.9"], "--layer stages.9: the model has no such module"),
    (["test_hrnet_psa", "{photo}", "--layer", "stage2"], "--layer stage2 gives a list, not a feature map"),
    (["test_biformer", "{photo}", "--output", "{photo}"], "--output {photo} is a file"),
])
def test_bad_inputs_are_one_line_errors_that_write_nothing(argv, fragment, photo, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    argv = [a.format(bad=bad, photo=photo) for a in argv]
    result = tool("visualize.py", *argv, *([] if "--output" in argv else ["--output", tmp_path / "out"]),
                  "--device", "cpu")
    assert_one_line_error(result, fragment.format(bad=bad, photo=photo))
    assert not (tmp_path / "out").exists()


def test_the_tools_script_runs_the_command(photo, tmp_path):
    result = script("visualize.py", "test_tcpa", photo, "--output", str(tmp_path), "--picture", "prompt_usage",
                    "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["wrote", str(tmp_path / "prompt_usage.png"), "wrote",
                                     str(tmp_path / "summary.json")]
    _png(tmp_path / "prompt_usage.png")
