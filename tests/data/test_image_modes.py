"""Data that would train on something other than what the user gave: image modes and bit depths (each converted one
stated way, said once per folder; a mask that would lose what it says is an error), and the splits checked against
each other up front (class folders, FOV masks, identities shared between training and test, queries that cannot be
scored)."""

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from visattn.errors import UserError
from visattn.tasks.classification.data import ImageFolderDataset
from visattn.tasks.images import load_rgb
from visattn.tasks.medical.data import FolderSource, read_binary
from visattn.tasks.medical.task import MedicalConfig, MedicalTask
from visattn.tasks.reid.data import load_reid_data


def _save(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path)
    return str(path)


def test_a_16_bit_image_is_scaled_by_its_maximum_not_clipped_at_255(tmp_path):
    values = np.array([[0, 1000], [2000, 4000]], np.uint16)  # a 12-bit sensor in a 16-bit PNG
    path = _save(tmp_path / "x.png", Image.fromarray(values))
    assert Image.open(path).mode == "I;16"
    rgb = np.asarray(load_rgb(path))
    assert rgb.shape == (2, 2, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    assert rgb[..., 0].tolist() == [[0, 64], [128, 255]]  # round(v * 255 / 4000); PIL's own conversion gives 255s
    assert np.asarray(Image.open(path).convert("RGB"))[..., 0].tolist() == [[0, 255], [255, 255]]


def test_image_modes_are_said_once_per_folder_with_how_each_is_converted(tmp_path):
    pixels = np.full((8, 8, 3), 90, np.uint8)
    _save(tmp_path / "a" / "rgb.png", Image.fromarray(pixels))
    _save(tmp_path / "a" / "gray.png", Image.fromarray(pixels[..., 0]))
    _save(tmp_path / "a" / "alpha.png", Image.fromarray(np.dstack([pixels, pixels[..., :1]]), "RGBA"))
    _save(tmp_path / "b" / "deep.png", Image.fromarray(np.full((8, 8), 3000, np.uint16)))
    _save(tmp_path / "b" / "print.jpg", Image.new("CMYK", (8, 8), (10, 20, 30, 40)))
    _save(tmp_path / "b" / "palette.png", Image.fromarray(pixels).convert("P"))
    with pytest.warns(UserWarning) as caught:
        data = ImageFolderDataset(str(tmp_path))
    assert [str(w.message) for w in caught] == [
        f"images under {tmp_path} read as RGB: 1 CMYK (CMYK, converted without a colour profile); 1 I;16 (16/32-bit "
        "integer grayscale, scaled by each image's maximum to 8 bits); 1 L (grayscale, copied to the 3 channels); "
        "1 P (palette, its colours); 1 RGBA (alpha dropped: transparent pixels keep their stored colour); 1 RGB"]
    assert all(data[i][0].mode == "RGB" for i in range(len(data)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # RGB only: nothing to say
        _save(tmp_path / "only_rgb" / "c" / "x.png", Image.fromarray(pixels))
        ImageFolderDataset(str(tmp_path / "only_rgb"))


def test_another_splits_classes_must_be_among_the_training_classes(tmp_path):
    pixels = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    for split, classes in (("train", ["cat", "dog"]), ("val", ["cat", "dog", "fox"])):
        for name in classes:
            _save(tmp_path / split / name / "0.png", pixels)
    with pytest.raises(UserError, match=r"val has fox, which the training split lacks: the model knows only the 2 "
                                        r"classes of its training split"):
        ImageFolderDataset(str(tmp_path / "val"), classes=["cat", "dog"])
    # a class without a folder, like one without a readable image, is not scored: a test split may cover part of them
    with pytest.warns(UserWarning, match=r"has no readable image of 2 of the 5 classes \(eel, owl\): they are not"):
        part = ImageFolderDataset(str(tmp_path / "val"), classes=["cat", "dog", "eel", "fox", "owl"])
    assert sorted({label for _, label in part.samples}) == [0, 1, 3]  # labels are the training split's indices
    os.makedirs(tmp_path / "train" / "owl")
    with pytest.raises(UserError, match=r"the class folder\(s\) owl hold no readable image"):
        ImageFolderDataset(str(tmp_path / "train"))
    os.makedirs(tmp_path / "val" / "owl")
    with pytest.warns(UserWarning, match=r"has no readable image of 1 of the 4 classes \(owl\): they are not scored"):
        ImageFolderDataset(str(tmp_path / "val"), classes=["cat", "dog", "fox", "owl"])


def _seg(root, split, mask, fov=None, image=None):
    _save(root / split / "images" / "a.png", image or Image.fromarray(np.full((6, 6, 3), 100, np.uint8)))
    _save(root / split / "masks" / "a.png", mask)
    if fov is not None:
        _save(root / split / "fov" / "a.png", fov)


def test_masks_that_would_lose_what_they_say_are_errors(tmp_path):
    arteries_and_veins = np.zeros((6, 6, 3), np.uint8)
    arteries_and_veins[1, :, 0] = 255  # red
    arteries_and_veins[4, :, 2] = 255  # blue: as a gray level below half of red's, it would vanish
    _seg(tmp_path / "colour", "train", Image.fromarray(arteries_and_veins))
    with pytest.raises(UserError, match=r"has colours \(RGB: \(0, 0, 0\), \(0, 0, 255\), \(255, 0, 0\)\): a "
                                        r"colour-coded label map"):
        FolderSource(str(tmp_path / "colour"), "train")
    labels = np.zeros((6, 6), np.uint16)
    labels[1], labels[3], labels[5] = 1, 2, 3
    _seg(tmp_path / "labels", "train", Image.fromarray(labels))
    with pytest.raises(UserError, match=r"is a 16-bit image with more than two values \(0, 1, 2, 3, \.\.\.\): a label "
                                        r"map"):
        FolderSource(str(tmp_path / "labels"), "train")
    alpha = np.zeros((6, 6, 4), np.uint8)
    alpha[2, :, 3] = 255  # black everywhere, the vessel drawn in the alpha channel only
    _seg(tmp_path / "alpha", "train", Image.fromarray(alpha, "RGBA"))
    with pytest.raises(UserError, match=r"has one colour and its shape only in the alpha channel"):
        FolderSource(str(tmp_path / "alpha"), "train")
    binary = np.zeros((6, 6), np.uint16)
    binary[2] = 65535  # a 16-bit 0/65535 mask reads as it is
    _seg(tmp_path / "deep", "train", Image.fromarray(binary),
         image=Image.fromarray(np.full((6, 6), 4000, np.uint16)))
    with pytest.warns(UserWarning, match=r"read as RGB: 1 I;16 \(16/32-bit integer grayscale, scaled by each image's "
                                         r"maximum"):
        source = FolderSource(str(tmp_path / "deep"), "train")
    image, mask, _ = source.load(0)
    assert (image == 255).all() and mask.tolist() == (binary > 0).tolist()
    assert read_binary(str(tmp_path / "deep" / "train" / "masks" / "a.png")).sum() == 6


def test_a_mask_of_black_and_one_colour_reads_as_binary(tmp_path):
    """Vessels drawn in one colour on black (a VOC-style palette PNG, red strokes) lose nothing as a binary mask;
    they were refused as a colour-coded label map."""
    vessels = np.zeros((6, 6), bool)
    vessels[1, :] = vessels[:, 4] = True
    palette = Image.fromarray(vessels.astype(np.uint8), "P")
    palette.putpalette([0, 0, 0, 128, 0, 0])  # VOC's class 1 colour, dark: its gray level is 38
    red = np.zeros((6, 6, 3), np.uint8)
    red[vessels] = (255, 0, 0)
    for name, mask in (("voc", palette), ("red", Image.fromarray(red))):
        _seg(tmp_path / name, "train", mask)
        assert FolderSource(str(tmp_path / name), "train").load(0)[1].tolist() == vessels.tolist()


def test_fov_masks_in_one_split_only_are_said(tmp_path):
    mask = Image.fromarray(np.eye(40, dtype=np.uint8) * 255)
    _seg(tmp_path, "train", mask, fov=Image.fromarray(np.full((40, 40), 255, np.uint8)),
         image=Image.fromarray(np.full((40, 40, 3), 100, np.uint8)))
    _seg(tmp_path, "val", mask, image=Image.fromarray(np.full((40, 40, 3), 100, np.uint8)))
    cfg = MedicalConfig(output=str(tmp_path / "run"), data=str(tmp_path), model="test_herseg", img_size=32)
    with pytest.warns(UserWarning, match="the train split has FOV masks and the val split none: validation scores "
                                         "whole images"):
        MedicalTask(cfg).build(torch.device("cpu"), 0, 1)


def _jpg(path):
    _save(path, Image.fromarray(np.full((16, 8, 3), 128, np.uint8)))


def test_reid_identities_in_training_and_test_and_queries_without_a_match_are_said(tmp_path):
    for split, pids in (("train", ["ann", "bob"]), ("query", ["bob", "cid", "dan"]), ("gallery", ["bob", "cid"])):
        for pid in pids:
            for cam in ("0", "1"):
                if not (split == "gallery" and pid == "cid" and cam == "1"):
                    _jpg(tmp_path / split / pid / f"{cam}_x.jpg")
    with pytest.warns(UserWarning) as caught:
        data = load_reid_data(str(tmp_path))
    said = [str(w.message) for w in caught]
    assert said[0].startswith(f"{tmp_path}: 3 of 6 queries have no gallery image of their identity from another "
                              "camera (first: ") and said[0].endswith("mAP, CMC and mINP skip them")
    assert said[1].startswith(f"{tmp_path}: 1 identities are in the train split and in query or gallery (first: pid ")
    assert len(said) == 2 and data.num_train_ids == 2


def test_reid_ranking_picture_shows_a_16_bit_image_as_the_model_reads_it(tmp_path):
    """ranking.png scales a 16-bit image by its maximum, as training and evaluation read it (PIL's convert clips)."""
    from visattn.tasks.reid.data import ReIDItem
    from visattn.tasks.reid.task import ranking_figure

    deep = tmp_path / "deep.png"
    Image.fromarray(np.repeat([[1000, 1000, 4000, 4000]], 8, 0).astype(np.uint16)).save(deep)  # 12-bit data
    plain = tmp_path / "plain.png"
    Image.fromarray(np.full((8, 4, 3), 30, np.uint8)).save(plain)
    query, gallery = [ReIDItem(str(deep), 1, 0)], [ReIDItem(str(plain), 2, 1)]
    ranking_figure(torch.zeros(1, 1), query, gallery, str(tmp_path / "ranking.png"), top=1, cell=(8, 4))
    picture = np.asarray(Image.open(tmp_path / "ranking.png").convert("RGB"))
    border = 4
    np.testing.assert_array_equal(picture[border + 4, border:border + 4], [[64] * 3] * 2 + [[255] * 3] * 2)
    np.testing.assert_array_equal(picture[border + 4, 2 * border + 4 + 12 + border + 2], [30, 30, 30])
