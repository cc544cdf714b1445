"""visattn-predict and the prediction API of each task, on checkpoints the tasks' own train() writes (tiny models,
one epoch) and on zoo models by name."""

import csv
import inspect
import json
import os

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from tests.tools._runs import assert_one_line_error, script
from visattn.cli.predict import main
from visattn.errors import UserError
from visattn.tasks.classification.predict import Classifier
from visattn.tasks.images import collect_images, output_names
from visattn.tasks.medical.predict import Segmenter
from visattn.tasks.reid.predict import FeatureExtractor, rank


def _save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)
    return str(path)


def _noise(rng, h, w, level=128):
    return np.clip(level + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """best.pth of a classification (test_biformer, classes bright/dark), a medical-seg (test_herseg, 32 crops)
    and a re-id run (test_resnet_psa at 64x32), one epoch each on tiny data."""
    from visattn.tasks.classification.task import ClassificationConfig
    from visattn.tasks.classification.task import train as train_classifier
    from visattn.tasks.medical.task import MedicalConfig
    from visattn.tasks.medical.task import train as train_segmenter
    from visattn.tasks.reid.data import write_synthetic_reid
    from visattn.tasks.reid.task import ReIDConfig
    from visattn.tasks.reid.task import train as train_reid

    root = tmp_path_factory.mktemp("predict_runs")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for label, level in (("bright", 220), ("dark", 30)):
            for i in range(count):
                _save(root / "images" / split / label / f"{i}.png", _noise(rng, 40, 40, level))
    common = dict(epochs=1, workers=0, warmup_epochs=0, amp=False)
    train_classifier(ClassificationConfig(output=str(root / "cls"), data=str(root / "images"), model="test_biformer",
                                          img_size=32, batch_size=4, **common))
    train_segmenter(MedicalConfig(output=str(root / "seg"), model="test_herseg", img_size=32, batch_size=4,
                                  data="synthetic-vessels:size=64,train=2,val=1", crops_per_image=1,
                                  inference="padded", **common))
    market = write_synthetic_reid(str(root / "market"), num_train_ids=4, num_test_ids=2, num_cameras=2,
                                  size=(64, 32))
    train_reid(ReIDConfig(output=str(root / "reid"), data=market, model="test_resnet_psa", input_size=(64, 32),
                          batch_size=4, instances=2, milestones=(5,), **common))
    return {"cls": str(root / "cls" / "best.pth"), "seg": str(root / "seg" / "best.pth"),
            "reid": str(root / "reid" / "best.pth"), "market": market}


# ------------------------------------------------------------------------------------------------ classification

def test_classification_checkpoint_writes_topk_csv_and_json_with_softmax_probabilities(checkpoints, tmp_path,
                                                                                      capsys):
    rng = np.random.default_rng(1)
    photos = tmp_path / "photos"
    files = [_save(photos / "a.png", _noise(rng, 40, 40, 220)), _save(photos / "sub" / "b.jpg", _noise(rng, 57, 31)),
             _save(photos / "c.png", _noise(rng, 20, 70, 30))]
    (photos / "broken.png").write_bytes(b"\x89PNG cut short")
    out = tmp_path / "out"
    assert main([checkpoints["cls"], str(photos), "--output", str(out), "--topk", "2"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable file: " in printed and "broken.png" in printed

    # independent: timm's eval transform from the stored data config, the model with the stored weights
    ckpt = torch.load(checkpoints["cls"], weights_only=True)
    model = timm.create_model("test_biformer", num_classes=2).eval()
    model.load_state_dict(ckpt["state_dict"])
    cfg = ckpt["data_cfg"]
    transform = timm.data.create_transform(input_size=(3, 32, 32), mean=cfg["mean"], std=cfg["std"],
                                           interpolation=cfg["interpolation"], crop_pct=cfg["crop_pct"])
    order = sorted(files)  # a folder is read in sorted order, subfolders included
    with torch.no_grad():
        probs = model(torch.stack([transform(Image.open(f).convert("RGB")) for f in order])).softmax(1)

    rows = _rows(out / "predictions.csv")
    assert [(r["file"], r["rank"]) for r in rows] == [(f, str(k)) for f in order for k in (1, 2)]
    for r in rows:
        i = order.index(r["file"])
        expected = probs[i].sort(descending=True)
        k = int(r["rank"]) - 1
        assert int(r["index"]) == expected.indices[k].item()
        assert r["class"] == ckpt["classes"][int(r["index"])]
        assert float(r["probability"]) == pytest.approx(expected.values[k].item(), abs=1e-6)
    saved = json.loads((out / "predictions.json").read_text())
    assert saved["model"] == "test_biformer" and saved["task"] == "classification" and saved["topk"] == 2
    assert [image["file"] for image in saved["images"]] == order
    top = [[(t["index"], t["class"], t["probability"]) for t in image["topk"]] for image in saved["images"]]
    for i, image in enumerate(top):
        assert [t[0] for t in image] == probs[i].argsort(descending=True).tolist()
        assert [t[2] for t in image] == pytest.approx(probs[i].sort(descending=True).values.tolist(), abs=1e-6)
    assert list(saved["skipped"]) == [str(photos / "broken.png")]


def test_zoo_model_with_weights_file_uses_timm_preprocessing_and_imagenet_names(tmp_path):
    weights = timm.create_model("test_biformer").eval()
    torch.save(weights.state_dict(), tmp_path / "w.pth")
    image = _noise(np.random.default_rng(2), 50, 45)
    path = _save(tmp_path / "x.png", image)
    assert main(["test_biformer", "--weights", str(tmp_path / "w.pth"), path, "--output", str(tmp_path / "o"),
                 "--topk", "3"]) == 0
    config = timm.data.resolve_data_config(model=weights)
    with torch.no_grad():
        probs = weights(timm.data.create_transform(**config)(Image.open(path).convert("RGB"))[None]).softmax(1)[0]
    info = timm.data.ImageNetInfo()
    expected = probs.topk(3)
    rows = _rows(tmp_path / "o" / "predictions.csv")
    assert [int(r["index"]) for r in rows] == expected.indices.tolist()
    assert [r["class"] for r in rows] == [info.index_to_description(i) for i in expected.indices.tolist()]
    assert [float(r["probability"]) for r in rows] == pytest.approx(expected.values.tolist(), abs=1e-6)

    other = Classifier("test_biformer", model_kwargs={"num_classes": 3}, topk=5)
    assert other.classes == ["0", "1", "2"] and other.topk == 3  # no ImageNet names; top-k capped at the classes


def test_classifier_takes_paths_arrays_and_pil_images_alike(checkpoints, tmp_path):
    image = _noise(np.random.default_rng(3), 36, 44)
    path = _save(tmp_path / "x.png", image)
    classifier = Classifier(checkpoints["cls"], topk=2)
    by_path, by_array, by_pil = classifier([path, image, Image.fromarray(image)])
    assert by_path == by_array == by_pil
    assert by_path.classes == [["bright", "dark"][i] for i in by_path.indices]
    assert classifier(path) == [by_path]


# -------------------------------------------------------------------------------------------------- segmentation

def test_segmentation_writes_maps_at_original_sizes_and_areas(checkpoints, tmp_path):
    rng = np.random.default_rng(4)
    sizes = {"small": (24, 20), "large": (64, 48), "odd": (33, 45)}  # the training crop is 32: two slide
    paths = [_save(tmp_path / "in" / f"{name}.png", _noise(rng, *size)) for name, size in sizes.items()]
    (tmp_path / "list.txt").write_text("\n".join(paths) + "\n")
    out = tmp_path / "out"
    assert main([checkpoints["seg"], str(tmp_path / "list.txt"), "--output", str(out)]) == 0
    rows = {r["name"]: r for r in _rows(out / "areas.csv")}
    assert set(rows) == set(sizes)
    for name, (h, w) in sizes.items():
        for kind in ("prob", "pred", "overlay"):
            with Image.open(out / f"{name}_{kind}.png") as img:
                assert img.size == (w, h), (name, kind)
        mask = np.asarray(Image.open(out / f"{name}_pred.png")) == 255
        assert int(rows[name]["foreground_pixels"]) == mask.sum()
        assert float(rows[name]["foreground_fraction"]) == pytest.approx(mask.sum() / (h * w), abs=1e-6)
        assert (int(rows[name]["height"]), int(rows[name]["width"])) == (h, w)
    rgb = np.asarray(Image.open(paths[0]).convert("RGB")).astype(float)
    overlay = np.asarray(Image.open(out / "small_overlay.png")).astype(float)
    mask = np.asarray(Image.open(out / "small_pred.png")) == 255
    assert mask.any() and (~mask).any()
    np.testing.assert_array_equal(overlay[~mask], rgb[~mask])  # predicted foreground green, the rest unchanged
    np.testing.assert_allclose(overlay[mask], (0.4 * rgb + 0.6 * np.array([0, 255, 0]))[mask], atol=0.51)


def _broken_stream_png(path, rgb):
    """A PNG whose chunks (and their CRCs) are whole but whose compressed pixels are not: it passes PIL's verify(),
    the up-front check, and fails when decoded."""
    import struct
    import zlib

    _save(path, rgb)
    data = bytearray(path.read_bytes())
    start = data.find(b"IDAT")
    length = struct.unpack(">I", data[start - 4:start])[0]
    for k in range(start + 10, start + 4 + length - 4):
        data[k] ^= 0x5A
    data[start + 4 + length:start + 8 + length] = struct.pack(">I", zlib.crc32(bytes(data[start:start + 4 + length])))
    path.write_bytes(bytes(data))


def test_a_file_that_fails_to_decode_is_skipped_not_the_whole_prediction(checkpoints, tmp_path):
    """A file that passed the up-front check and failed to decode stopped the prediction, with no areas.csv."""
    rng = np.random.default_rng(9)
    _broken_stream_png(tmp_path / "in" / "a_broken.png", _noise(rng, 24, 20))
    _save(tmp_path / "in" / "b_good.png", _noise(rng, 24, 20))
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match=r"skipped 1 of 2 images that failed to decode, left out of areas\.csv "
                                         r"\(first: cannot read .*a_broken\.png: "):
        assert main([checkpoints["seg"], str(tmp_path / "in"), "--output", str(out)]) == 0
    assert [r["name"] for r in _rows(out / "areas.csv")] == ["b_good"]
    assert not (out / "a_broken_prob.png").exists()
    with pytest.raises(UserError, match=r"none of the 1 images could be decoded \(first: cannot read "):
        main([checkpoints["seg"], str(tmp_path / "in" / "a_broken.png"), "--output", str(tmp_path / "out2")])


def test_a_checkpoint_segments_as_its_run_evaluated_and_a_zoo_model_pads_small_images_and_slides_over_large(
        checkpoints):
    segmenter = Segmenter(checkpoints["seg"], batch_size=16)
    ckpt = torch.load(checkpoints["seg"], weights_only=True)
    assert ckpt["inference"]["mode"] == "padded"
    seen = []
    segmenter.model.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    rng = np.random.default_rng(5)
    small, large = _noise(rng, 24, 20), _noise(rng, 64, 48)
    result_small, result_large = segmenter([small, large])
    # the run evaluated whole images zero-padded (centred) to its multiple: so both, the large one too
    multiple = ckpt["inference"]["pad_multiple"]
    assert seen == [(1, 3, 32, 32), (1, 3, -(-64 // multiple) * multiple, -(-48 // multiple) * multiple)]
    assert result_small.probability.shape == (24, 20) and result_large.mask.shape == (64, 48)

    mean, std = torch.tensor(ckpt["mean"])[:, None, None], torch.tensor(ckpt["std"])[:, None, None]
    x = (torch.from_numpy(small).permute(2, 0, 1).float() / 255 - mean) / std
    padded = torch.nn.functional.pad(x, (6, 6, 4, 4))[None]
    with torch.no_grad():
        expected = torch.sigmoid(segmenter.model(padded))[0, 0, 4:28, 6:26].numpy()
    np.testing.assert_allclose(result_small.probability, expected, atol=1e-5)
    assert (result_small.mask == (expected >= ckpt["threshold"])).all()
    assert result_small.area == result_small.mask.sum()

    zoo = Segmenter("test_herseg", tile=32, batch_size=16)
    seen.clear()
    zoo.model.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    assert [r.probability.shape for r in zoo([small, Image.fromarray(large)])] == [(24, 20), (64, 48)]
    assert seen == [(1, 3, 32, 32), (6, 3, 32, 32)]  # padded to the 32 tile; 32 x 32 windows at stride 16
    assert Segmenter(checkpoints["seg"], inference="sliding", tile=32)(large)[0].mask.shape == (64, 48)


# ------------------------------------------------------------------------------------------------------------ re-id

def test_reid_rankings_follow_the_feature_distances_and_pictures_are_written(checkpoints, tmp_path):
    market = checkpoints["market"]
    queries = sorted(os.path.join(market, "query", f) for f in os.listdir(os.path.join(market, "query")))
    gallery_dir = os.path.join(market, "bounding_box_test")
    out = tmp_path / "out"
    assert main([checkpoints["reid"], *queries, "--gallery", gallery_dir, "--output", str(out), "--topk", "3"]) == 0

    extractor = FeatureExtractor(checkpoints["reid"])
    gallery = collect_images([gallery_dir]).paths
    q, g = extractor(queries), extractor(gallery)
    dist = ((q[:, None] - g[None]) ** 2).sum(-1)  # squared euclidean, the run's metric
    rows = _rows(out / "rankings.csv")
    assert len(rows) == 3 * len(queries)
    for i, query in enumerate(queries):
        mine = [r for r in rows if r["query"] == query]
        order = dist[i].argsort().tolist()[:3]
        assert [r["rank"] for r in mine] == ["1", "2", "3"]
        assert [r["gallery"] for r in mine] == [gallery[j] for j in order]
        assert [float(r["distance"]) for r in mine] == pytest.approx(dist[i, order].tolist(), rel=1e-4, abs=1e-4)
    for name in output_names(queries):
        with Image.open(out / f"rank_{name}.png") as img:
            assert img.format == "PNG" and img.width > 4 * 64  # the query and three ranks side by side

    indices, distances = rank(q, g, "cosine", topk=2)
    cosine = 1 - torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(g, dim=1).T
    assert indices.tolist() == cosine.argsort(dim=1)[:, :2].tolist()
    np.testing.assert_allclose(distances, cosine.sort(dim=1).values[:, :2], atol=1e-5)


def test_feature_extractor_takes_paths_arrays_and_pil_images_and_flips(checkpoints):
    market = checkpoints["market"]
    path = os.path.join(market, "query", sorted(os.listdir(os.path.join(market, "query")))[0])
    array = np.asarray(Image.open(path).convert("RGB"))
    extractor = FeatureExtractor(checkpoints["reid"], device="cpu")
    features = extractor([path, array, Image.fromarray(array)])
    assert features.dtype == torch.float32 and features.shape == (3, extractor.model.feature_dim)
    assert torch.equal(features[0], features[1]) and torch.equal(features[0], features[2])

    flipped = FeatureExtractor(checkpoints["reid"], flip=True)(array)
    mirror = extractor(np.ascontiguousarray(array[:, ::-1]))
    torch.testing.assert_close(flipped[0], (features[0] + mirror[0]) / 2, atol=1e-5, rtol=1e-5)

    zoo = FeatureExtractor("test_biformer")  # a classification model: its pooled pre-logits features
    assert zoo([path, array]).shape == (2, zoo.model.num_features)
    assert extractor([]).shape == (0, extractor.model.feature_dim) and zoo([]).shape == (0, zoo.model.num_features)
    assert extractor.file_features([]).shape == (0, extractor.model.feature_dim)


def test_reid_preprocessing_describes_the_evaluation_transform(checkpoints):
    """What export's JSON and visualize read: timm's eval transform built from it gives the run's evaluation input."""
    from visattn.tasks.opened import open_model
    from visattn.tasks.reid.data import reid_eval_transform

    opened = open_model(checkpoints["reid"], device="cpu")
    spec = opened.preprocessing()
    size = opened.input_size()
    transform = timm.data.create_transform(input_size=(3, *size), mean=spec["mean"], std=spec["std"],
                                           interpolation=spec["interpolation"], crop_pct=spec["crop_pct"],
                                           crop_mode=spec["crop_mode"])
    image = Image.fromarray(_noise(np.random.default_rng(3), 90, 70))  # not the input's 2:1 aspect
    torch.testing.assert_close(transform(image), reid_eval_transform(size)(image), atol=1e-6, rtol=0)


def test_a_reid_exports_json_names_its_embedding_not_the_training_identities(checkpoints, tmp_path):
    """The exported network outputs the (B, D) embedding: the JSON gives D and the run's metric, not the number of
    training identities its classifier (left out of the export) had."""
    from visattn.export import export_opened
    from visattn.tasks.opened import open_model

    opened = open_model(checkpoints["reid"], device="cpu")
    info = json.loads(open(export_opened(opened, str(tmp_path)).json_path).read())
    assert info["embedding_dim"] == opened.model.feature_dim and info["metric"] == opened.checkpoint["metric"]
    assert "num_classes" not in info and "embedding" in info["preprocessing"]


@pytest.mark.parametrize("task,module,function", [("cls", "classification", "evaluate"),
                                                   ("seg", "medical", "evaluate"),
                                                   ("reid", "reid", "extract_features")])
@pytest.mark.parametrize("amp", [False, True])
def test_evaluating_a_checkpoint_uses_autocast_as_its_run_did(checkpoints, tmp_path, monkeypatch, task, module,
                                                              function, amp):
    """tools/eval.py scores a --no-amp run in float32 (on a GPU it evaluated in bfloat16 whatever the run did)."""
    import importlib

    tasks = importlib.import_module(f"visattn.tasks.{module}.task")
    ckpt = torch.load(checkpoints[task], map_location="cpu", weights_only=False)
    ckpt["config"]["amp"] = amp
    torch.save(ckpt, tmp_path / "best.pth")
    used = []
    scored = getattr(tasks, function)

    def spy(*args, **kwargs):
        bound = inspect.signature(scored).bind(*args, **kwargs)
        bound.apply_defaults()
        used.append(bound.arguments["amp"])
        return scored(*args, **kwargs)

    monkeypatch.setattr(tasks, function, spy)
    data = {"cls": None, "seg": None, "reid": checkpoints["market"]}[task]
    tasks.evaluate_checkpoint(str(tmp_path / "best.pth"), data=data, device="cpu", workers=0,
                              **({} if task == "cls" else {"output": str(tmp_path / "eval")}))
    assert used and set(used) == {amp}


# --------------------------------------------------------------------------------------------------- inputs, errors

def test_inputs_from_folders_globs_and_list_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(6)
    a = _save(tmp_path / "one" / "a.png", _noise(rng, 8, 8))
    b = _save(tmp_path / "one" / "deep" / "b.jpg", _noise(rng, 8, 8))
    c = _save(tmp_path / "two" / "a.png", _noise(rng, 8, 8))
    (tmp_path / "one" / "notes.md").write_text("not an image")
    (tmp_path / "two" / "zero.png").write_bytes(b"")
    (tmp_path / "two" / "list.txt").write_text("# queries\na.png\n\nzero.png\nmissing.png\n")
    found = collect_images([str(tmp_path / "one"), str(tmp_path / "two" / "list.txt"), str(tmp_path / "*" / "a.png")])
    assert found.paths == [a, b, c]  # recursive, in order, each once
    assert set(found.skipped) == {str(tmp_path / "two" / "zero.png"), str(tmp_path / "two" / "missing.png")}
    assert found.skipped_line().startswith("skipped 2 unreadable files: ")
    assert collect_images([str(tmp_path / "**" / "*.jpg")]).paths == [b]
    assert output_names([a, b, c]) == ["one_a", "b", "two_a"]
    assert found.modes_line is None  # all RGB: nothing to say
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "one" / "gray16.png")
    assert collect_images([str(tmp_path / "one")]).modes_line == (
        f"images under {tmp_path / 'one'} read as RGB: 1 I;16 (16/32-bit integer grayscale, scaled by each image's "
        "maximum to 8 bits); 2 RGB")


def test_images_with_an_exif_orientation_are_said(tmp_path):
    """A photo whose EXIF orientation turns it in viewers was segmented as stored, the maps turned from what the user
    sees, without a word."""
    rng = np.random.default_rng(8)
    _save(tmp_path / "plain.png", _noise(rng, 8, 12))
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to display
    Image.fromarray(_noise(rng, 8, 12)).save(tmp_path / "phone.jpg", exif=exif.tobytes())
    found = collect_images([str(tmp_path)])
    assert len(found.paths) == 2
    assert found.turned_line == (f"1 image carries an EXIF orientation (first: {tmp_path / 'phone.jpg'}): read as "
                                 "stored, not turned as photo viewers show them, so what is written about them follows "
                                 "the stored pixels")
    assert collect_images([str(tmp_path / "plain.png")]).turned_line is None


def test_a_previous_runs_outputs_in_the_input_folder_are_left_out(checkpoints, tmp_path, capsys):
    """With --output inside the input folder, a second run segmented the first run's PNGs as new inputs."""
    _save(tmp_path / "fundus" / "eye.png", _noise(np.random.default_rng(10), 24, 20))
    out = tmp_path / "fundus" / "seg"
    for _ in range(2):
        assert main([checkpoints["seg"], str(tmp_path / "fundus"), "--output", str(out)]) == 0
        assert [r["name"] for r in _rows(out / "areas.csv")] == ["eye"]
    assert (f"left out 3 image files under the output folder {out} (first: {out / 'eye_overlay.png'}): the outputs "
            "of a run are not its inputs") in capsys.readouterr().out


@pytest.mark.parametrize("case, message", [
    ("empty folder", "no images found in"),
    ("missing input", "no such file or folder"),
    ("unknown model", "unknown model 'no_such_model'"),
    ("missing weights", "--weights"),
    ("reid without gallery", "give --gallery DIR"),
    ("option of another kind", "--gallery is for reid models"),
])
def test_bad_inputs_are_one_line_errors(checkpoints, tmp_path, case, message):
    image = _save(tmp_path / "x.png", _noise(np.random.default_rng(7), 16, 16))
    (tmp_path / "empty").mkdir()
    argv = {"empty folder": [checkpoints["cls"], str(tmp_path / "empty")],
            "missing input": [checkpoints["cls"], str(tmp_path / "nothing.png")],
            "unknown model": ["no_such_model", image],
            "missing weights": ["test_biformer", image, "--weights", str(tmp_path / "absent.pth")],
            "reid without gallery": [checkpoints["reid"], image],
            "option of another kind": [checkpoints["cls"], image, "--gallery", str(tmp_path)]}[case]
    with pytest.raises(UserError, match=message) as err:
        main([*argv, "--output", str(tmp_path / "out")])
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_predictor_of_another_kind_names_the_one_to_use(checkpoints):
    with pytest.raises(UserError, match="is a reid model; Classifier takes classification models "
                                        r"\(use FeatureExtractor\)"):
        Classifier(checkpoints["reid"])
    with pytest.raises(UserError, match="is a classification model; Segmenter takes segmentation models"):
        Segmenter(checkpoints["cls"])


def test_the_tools_script_runs_the_command(tmp_path):
    result = script("predict.py", "no_such_model", str(tmp_path), "--output", str(tmp_path / "out"))
    assert_one_line_error(result, "no images found in")
