import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from visattn.errors import UserError
from visattn.tasks.medical.data import (
    FSGNET_AUGMENTATION,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augmentation,
    FolderSource,
    SegmentationEvalSet,
    SegmentationTrainSet,
    SyntheticVessels,
    cutmix,
    cutmix_box,
    open_source,
    parse_synthetic,
    seed_worker_augmentation,
    write_folder,
)


def _pattern(h, w, seed):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.random((h, w)) < 0.2
    fov = np.hypot(*np.mgrid[-h / 2:h / 2, -w / 2:w / 2]) < min(h, w) * 0.45
    return rgb, mask, fov


def _drive(root, split, numbers, suffix, h=12, w=10):
    """DRIVE layout: images/NN_<suffix>.tif, 1st_manual/NN_manual1.gif, mask/NN_<suffix>_mask.gif."""
    for sub in ("images", "1st_manual", "mask"):
        (root / split / sub).mkdir(parents=True, exist_ok=True)
    arrays = {}
    for n in numbers:
        rgb, mask, fov = _pattern(h, w, n)
        Image.fromarray(rgb).save(root / split / "images" / f"{n}_{suffix}.tif")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / split / "1st_manual" / f"{n}_manual1.gif")
        Image.fromarray(fov.astype(np.uint8) * 255).save(root / split / "mask" / f"{n}_{suffix}_mask.gif")
        arrays[n] = (rgb, mask, fov)
    return arrays


def _generic(root, split, names, h=9, w=7, fov=False, mask_scale=1):
    for sub in ("images", "masks") + (("fov",) if fov else ()):
        (root / split / sub).mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        rgb, mask, disc = _pattern(h, w, i)
        Image.fromarray(rgb).save(root / split / "images" / f"{name}.png")
        Image.fromarray(mask.astype(np.uint8) * mask_scale).save(root / split / "masks" / f"{name}.png")
        if fov:
            Image.fromarray(disc.astype(np.uint8) * 255).save(root / split / "fov" / f"{name}.png")


def test_a_drive_image_without_its_manual_names_the_pairing(tmp_path):
    _drive(tmp_path, "training", [21, 22], "training")
    (tmp_path / "training" / "1st_manual" / "22_manual1.gif").rename(tmp_path / "training" / "1st_manual" / "x.gif")
    _one_line_error(r"no mask for .*22_training\.tif in .*1st_manual \(masks pair with images by a name starting "
                    r"with 22\)", FolderSource, str(tmp_path), "train")


def test_drive_layout_pairs_by_leading_number_and_maps_split_names(tmp_path):
    train = _drive(tmp_path, "training", [22, 21], "training")
    test = _drive(tmp_path, "test", [1], "test")
    source = FolderSource(str(tmp_path), "train")
    assert source.names == ["21_training", "22_training"] and source.has_fov
    for i, n in enumerate([21, 22]):
        rgb, mask, fov = source.load(i)
        assert rgb.dtype == np.uint8 and rgb.shape == (12, 10, 3) and mask.dtype == bool and fov.dtype == bool
        assert (rgb == train[n][0]).all() and (mask == train[n][1]).all() and (fov == train[n][2]).all()
    val = FolderSource(str(tmp_path), "val")  # no val/ folder: the test/ split
    assert val.names == ["1_test"]
    assert (val.load(0)[1] == test[1][1]).all()


def test_generic_layout_reads_0_1_masks_and_optional_fov(tmp_path):
    _generic(tmp_path, "train", ["b", "a"], mask_scale=1)
    source = FolderSource(str(tmp_path), "train")
    assert source.names == ["a", "b"] and not source.has_fov
    rgb, mask, fov = source.load(1)
    assert fov is None and (mask == _pattern(9, 7, 0)[1]).all()
    _generic(tmp_path, "val", ["c"], fov=True, mask_scale=255)
    rgb, mask, fov = FolderSource(str(tmp_path), "val").load(0)
    assert (mask == _pattern(9, 7, 0)[1]).all() and (fov == _pattern(9, 7, 0)[2]).all()


def test_masks_named_as_public_sets_name_them_pair_with_their_images(tmp_path):
    """HRF (01_dr.jpg, 01_dr.tif, 01_dr_mask.tif), CHASE_DB1 (Image_01L_1stHO.png) and STARE (im0001.ah.ppm) masks
    carry the image's stem and a suffix; the longest image stem wins (01 and 01_dr both present)."""
    for sub in ("images", "masks", "fov"):
        (tmp_path / "train" / sub).mkdir(parents=True)
    files = {"01_dr": ("01_dr.tif", "01_dr_mask.tif"), "01": ("01.png", "01-fov.png"),
             "Image_01L": ("Image_01L_1stHO.png", "Image_01L.png"), "im0001": ("im0001.ah.ppm", "im0001.fov.png")}
    for i, (stem, (mask_name, fov_name)) in enumerate(files.items()):
        rgb, mask, fov = _pattern(9, 7, i)
        Image.fromarray(rgb).save(tmp_path / "train" / "images" / f"{stem}.png")
        mode = "RGB" if mask_name.endswith(".ppm") else "L"
        Image.fromarray(mask.astype(np.uint8) * 255).convert(mode).save(tmp_path / "train" / "masks" / mask_name)
        Image.fromarray(fov.astype(np.uint8) * 255).save(tmp_path / "train" / "fov" / fov_name)
    source = FolderSource(str(tmp_path), "train")
    assert source.names == sorted(files)
    for i, stem in enumerate(files):
        _, mask, fov = source.load(source.names.index(stem))
        assert (mask == _pattern(9, 7, i)[1]).all() and (fov == _pattern(9, 7, i)[2]).all(), stem
    (tmp_path / "train" / "masks" / "01_dr_manual1.tif").write_bytes(
        (tmp_path / "train" / "masks" / "01_dr.tif").read_bytes())
    _one_line_error("has two files for '01_dr': 01_dr.tif and 01_dr_manual1.tif", FolderSource, str(tmp_path),
                    "train")


def test_sixteen_bit_images_are_scaled(tmp_path):
    _generic(tmp_path, "train", ["a"])
    Image.fromarray((np.arange(63).reshape(9, 7) * 1000).astype(np.uint16)).save(tmp_path / "train/images/a.png")
    rgb = FolderSource(str(tmp_path), "train").load(0)[0]
    assert rgb.shape == (9, 7, 3) and rgb.max() == 255 and rgb[0, 0, 0] == 0


def _one_line_error(match, fn, *args):
    with pytest.raises(UserError, match=match) as err:
        fn(*args)
    assert "\n" not in str(err.value)


def test_folder_errors_are_one_line(tmp_path):
    _one_line_error("data folder .*nowhere does not exist", FolderSource, str(tmp_path / "nowhere"), "train")
    _one_line_error("has no train/ or training/ folder", FolderSource, str(tmp_path), "train")
    (tmp_path / "train").mkdir()
    _one_line_error("has no images/ folder", FolderSource, str(tmp_path), "train")
    (tmp_path / "train" / "images").mkdir()
    _one_line_error("has no masks/ .*folder", FolderSource, str(tmp_path), "train")
    (tmp_path / "train" / "masks").mkdir()
    _one_line_error("no images in", FolderSource, str(tmp_path), "train")
    _generic(tmp_path, "train", ["a", "b"])
    (tmp_path / "train" / "masks" / "b.png").unlink()
    _one_line_error(r"no mask for .*b\.png in .*masks \(masks pair with images by the file name stem b \(or b and "
                    r"a suffix", FolderSource, str(tmp_path), "train")
    _generic(tmp_path, "train", ["a", "b"], fov=True)
    (tmp_path / "train" / "fov" / "a.png").unlink()
    _one_line_error(r"no FOV mask for .*a\.png", FolderSource, str(tmp_path), "train")
    _generic(tmp_path, "train", ["a", "b"], fov=True)
    Image.fromarray(np.zeros((8, 7), np.uint8)).save(tmp_path / "train" / "masks" / "a.png")
    _one_line_error(r"masks/a\.png is 7x8 but .*images/a\.png is 7x9", FolderSource, str(tmp_path), "train")
    _generic(tmp_path, "train", ["a", "b"], fov=True)
    (tmp_path / "train" / "fov" / "b.png").write_bytes(b"\x89PNG not really")
    _one_line_error(r"cannot read .*fov/b\.png", FolderSource, str(tmp_path), "train")
    _generic(tmp_path, "train", ["a", "b"], fov=True)
    Image.fromarray(np.zeros((9, 7, 3), np.uint8)).save(tmp_path / "train" / "images" / "a.jpg")
    _one_line_error("two files for 'a'", FolderSource, str(tmp_path), "train")


def test_synthetic_vessels_are_deterministic_fundus_like_images():
    a, b = SyntheticVessels(3, 64, seed=5), SyntheticVessels(3, 64, seed=5)
    for i in range(3):
        for x, y in zip(a.load(i), b.load(i), strict=True):
            assert np.array_equal(x, y)
    assert not np.array_equal(a.load(0)[1], SyntheticVessels(1, 64, seed=6).load(0)[1])
    assert not np.array_equal(a.load(0)[1], a.load(1)[1])
    rgb, mask, fov = SyntheticVessels(1, (80, 96)).load(0)
    assert rgb.shape == (80, 96, 3) and rgb.dtype == np.uint8 and mask.shape == fov.shape == (80, 96)
    assert not (mask & ~fov).any()
    assert 0.5 < fov.mean() < 0.6 and 0.04 < mask[fov].mean() < 0.25
    assert rgb[~fov].mean() < 15
    assert rgb[mask, 1].mean() < 0.9 * rgb[fov & ~mask, 1].mean()  # vessels are darker (most in green)


def test_synthetic_spec_and_splits():
    assert parse_synthetic("synthetic-vessels") == {"size": 192, "train": 32, "val": 6, "seed": 0}
    assert parse_synthetic("synthetic-vessels:size=48,train=3,val=2")["size"] == 48
    train, val = open_source("synthetic-vessels:size=48,train=3,val=2", "train"), open_source(
        "synthetic-vessels:size=48,train=3,val=2", "val")
    assert len(train) == 3 and len(val) == 2 and train.height == 48 and set(train.names).isdisjoint(val.names)
    assert len(open_source(None, "train")) == 32
    _one_line_error("bad synthetic-vessels option 'depth=3'", parse_synthetic, "synthetic-vessels:depth=3")
    _one_line_error("size >= 16", SyntheticVessels, 2, 8)
    assert open_source("synthetic-vessels:size=48,val=2", "test").names == val.names  # test: the evaluation split
    _one_line_error("--split tset: synthetic-vessels has a training split", open_source, None, "tset")


def test_write_folder_round_trips_through_the_generic_layout(tmp_path):
    synthetic = SyntheticVessels(2, 40, seed=1)
    write_folder(synthetic, str(tmp_path), "val")
    source = FolderSource(str(tmp_path), "val")
    assert source.names == synthetic.names and source.has_fov
    for x, y in zip(source.load(1), synthetic.load(1), strict=True):
        assert np.array_equal(x, y)


def _marked_source(h=48, w=40):
    """The image's red channel marks the mask and its green channel the FOV, to check they move together."""

    class Marked:
        names, has_fov = ["m"], True

        def __len__(self):
            return 1

        def load(self, index):
            _, mask, fov = _pattern(h, w, 3)
            rgb = np.stack([mask * 255, fov * 255, np.zeros_like(mask)], -1).astype(np.uint8)
            return rgb, mask, fov

    return Marked()


def _denormalize(image):
    return image * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]


def test_training_crops_move_image_mask_and_fov_together():
    ds = SegmentationTrainSet(_marked_source(), crop=32, repeats=6, seed=0)
    assert len(ds) == 6
    agreement = []
    for i in range(len(ds)):
        image, mask, fov = ds[i]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert mask.shape == fov.shape == (1, 32, 32) and set(mask.unique().tolist()) <= {0.0, 1.0}
        rgb = _denormalize(image)
        agreement.append(((rgb[0] > 0.5) == (mask[0] > 0)).float().mean().item())
        agreement.append(((rgb[1] > 0.5) == (fov[0] > 0)).float().mean().item())
    assert min(agreement) > 0.85 and np.mean(agreement) > 0.93
    assert not torch.equal(ds[0][1], ds[1][1])  # a new random crop each time
    again = SegmentationTrainSet(_marked_source(), crop=32, seed=0)
    assert torch.equal(again[0][0], SegmentationTrainSet(_marked_source(), crop=32, seed=0)[0][0])


def test_crops_larger_than_the_image_are_padded_outside_the_fov(tmp_path):
    image, mask, fov = SegmentationTrainSet(SyntheticVessels(1, 24), crop=40, seed=0)[0]
    assert image.shape == (3, 40, 40) and 0 < fov.sum() < 24 * 24
    image, mask, fov = SegmentationTrainSet(SyntheticVessels(1, 48), crop=40, scale=0.5, seed=0)[0]
    assert image.shape == (3, 40, 40) and 0 < fov.sum() < 24 * 24  # resized to 24 x 24 before cropping
    _generic(tmp_path, "train", ["a"])  # no FOV masks: the whole image is the FOV, the padding is not
    image, mask, fov = SegmentationTrainSet(FolderSource(str(tmp_path), "train"), crop=16, seed=0)[0]
    assert image.shape == (3, 16, 16) and 20 < fov.sum() < 9 * 7 * 1.6 and not (mask > fov).any()


def test_worker_seeding_gives_each_worker_and_epoch_its_own_augmentation():
    ds = SegmentationTrainSet(SyntheticVessels(1, 48), crop=24, repeats=4, seed=0)
    torch.manual_seed(0)
    loader = DataLoader(ds, batch_size=1, num_workers=2, worker_init_fn=seed_worker_augmentation)
    masks = [m for _ in range(2) for _, m, _ in loader]
    distinct = {m.numpy().tobytes() for m in masks}
    assert len(distinct) == len(masks) == 8


def test_eval_items_keep_original_resolution_targets():
    ds = SegmentationEvalSet(SyntheticVessels(1, 50), scale=0.5)
    item = ds[0]
    assert item["image"].shape == (3, 25, 25) and item["rgb"].shape == (50, 50, 3)
    assert item["mask"].shape == item["fov"].shape == (50, 50) and item["name"] == "synthetic_0_0000"
    full = SegmentationEvalSet(SyntheticVessels(1, 50))[0]
    expected = (torch.from_numpy(full["rgb"]).permute(2, 0, 1) / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None])
    assert torch.allclose(full["image"], expected / torch.tensor(IMAGENET_STD)[:, None, None], atol=1e-6)


def test_importing_the_medical_modules_loads_no_heavy_dependencies():
    probe = ("import json, sys; import visattn.tasks.medical.data, visattn.tasks.medical.metrics; "
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             "{'albumentations', 'cv2', 'scipy', 'sklearn'})))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _blocks(rng, h, w, block=16):
    """0/255 blocks of ``block`` pixels (about half set), the size of an (h, w) image."""
    grid = rng.random((h // block + 1, w // block + 1)) < 0.5
    return np.kron(grid, np.ones((block, block), dtype=bool))[:h, :w]


class _AlignedSource:
    """Images whose red channel is the mask and green channel the FOV (0 or 255): any misalignment between
    image, mask and FOV after augmentation shows as pixels where the mask != (red > 0.5)."""

    has_fov = True

    def __init__(self, count=3, size=(64, 64)):
        self.items = []
        for i in range(count):
            rng = np.random.default_rng(i)
            h, w = size if i % 2 == 0 else (size[0] + 16, size[1] - 8)  # sizes differ: cutmix resizes
            mask, fov = _blocks(rng, h, w), _blocks(rng, h, w)
            rgb = np.stack([mask * 255, fov * 255, np.full((h, w), 40)], -1).astype(np.uint8)
            self.items.append((rgb, mask, fov))
        self.names = [f"aligned_{i}" for i in range(count)]

    def __len__(self):
        return len(self.items)

    def load(self, index):
        return self.items[index]


def _agreement(image, mask, fov):
    """Fractions of pixels where mask == (red > 0.5) and fov == (green > 0.5) (mean 0, std 1 normalisation)."""
    red, green = image[0] > 0.5, image[1] > 0.5
    return (mask[0].bool() == red).float().mean().item(), (fov[0].bool() == green).float().mean().item()


GEOMETRIC = {"resize": {"resize": 1.0}, "hflip": {"hflip": 1.0}, "vflip": {"vflip": 1.0},
             "rotate": {"rotate": 1.0}, "perspective": {"perspective": 1.0}, "cutmix": {"cutmix": 1.0},
             "fsgnet-geometry": {"cutmix": 1.0, "resize": 1.0, "hflip": 0.5, "perspective": 1.0}}


@pytest.mark.parametrize("name", list(GEOMETRIC))
def test_each_geometric_augmentation_keeps_image_mask_and_fov_aligned(name):
    off = Augmentation(hflip=0, vflip=0, rotate=0, jitter_prob=0)
    aug = dataclasses.replace(off, **GEOMETRIC[name])
    ds = SegmentationTrainSet(_AlignedSource(), 48, repeats=4, mean=(0, 0, 0), std=(1, 1, 1), seed=3,
                              augmentation=aug)
    changed = 0
    for i in range(len(ds)):
        image, mask, fov = ds[i]
        assert image.shape == (3, 48, 48) and mask.shape == fov.shape == (1, 48, 48)
        assert set(mask.unique().tolist()) <= {0.0, 1.0} and set(fov.unique().tolist()) <= {0.0, 1.0}
        mask_ok, fov_ok = _agreement(image, mask, fov)
        # only interpolated block edges differ (misaligned masks would agree on about half the pixels)
        assert mask_ok > 0.93 and fov_ok > 0.93, (name, i, mask_ok, fov_ok)
        changed += not torch.equal(mask, torch.from_numpy(ds.source.load(i % 3)[1][:48, :48]).float()[None])
    assert changed > 0  # the augmentation did something


@pytest.mark.parametrize("aug", [{"jitter_prob": 1.0, "jitter": (0.2, 0.2, 0.2, 0.1)}, {"blur": 1.0}])
def test_photometric_augmentations_change_the_image_but_not_the_masks(aug):
    off = Augmentation(hflip=0, vflip=0, rotate=0, jitter_prob=0)
    rgb, mask, fov = _pattern(64, 64, 1)

    class One:
        has_fov, names = True, ["one"]

        def __len__(self):
            return 1

        def load(self, index):
            return rgb, mask, fov

    plain = SegmentationTrainSet(One(), 64, augmentation=off, seed=0)[0]
    out = SegmentationTrainSet(One(), 64, augmentation=dataclasses.replace(off, **aug), seed=0)[0]
    assert not torch.allclose(out[0], plain[0])
    assert torch.equal(out[1], plain[1]) and torch.equal(out[2], plain[2])
    assert torch.equal(out[1][0], torch.from_numpy(mask).float())
    assert torch.equal(out[2][0], torch.from_numpy(fov).float())


def test_cutmix_pastes_the_same_box_into_image_mask_and_fov():
    h, w = 40, 50
    sample = (np.full((h, w, 3), 10, np.uint8), np.zeros((h, w), np.uint8), np.ones((h, w), np.uint8))
    other = (np.full((h, w, 3), 200, np.uint8), np.ones((h, w), np.uint8), np.zeros((h, w), np.uint8))
    rng = np.random.default_rng(0)
    for _ in range(20):
        box = cutmix_box(rng)
        assert 0 <= box[0] < 0.75 and 0 <= box[1] < 0.75 and 0 < box[2] <= 0.75 and 0 < box[3] <= 0.75
        rgb, mask, fov, (top, left, bh, bw) = cutmix(sample, other, box)
        expected = np.zeros((h, w), bool)
        expected[top:top + bh, left:left + bw] = True
        assert bh * bw > 0 and np.array_equal((rgb == 200).all(-1), expected)
        assert np.array_equal(mask == 1, expected) and np.array_equal(fov == 0, expected)
        assert (sample[0] == 10).all() and (sample[1] == 0).all()  # the inputs are not modified
    # Another image of a different size: the same relative box, resized, still aligned in all three.
    src = _AlignedSource()
    big, small = src.load(1), src.load(0)
    rgb, mask, fov, (top, left, bh, bw) = cutmix(small, big, (0.25, 0.25, 0.5, 0.5))
    assert (top, left, bh, bw) == (16, 16, 32, 32)
    assert (mask.astype(bool) == (rgb[..., 0] > 127)).mean() > 0.97  # all but bilinear block edges
    assert (fov.astype(bool) == (rgb[..., 1] > 127)).mean() > 0.97
    assert not np.array_equal(mask, small[1])


def test_augmentation_values_are_checked_with_one_line_errors():
    for bad, match in [({"cutmix": 1.5}, "cutmix probability must be in"), ({"blur": -0.1}, "blur probability"),
                       ({"resize_range": (0, 2)}, "resize range"), ({"resize_range": (2, 1)}, "resize range"),
                       ({"blur_kernel": (4, 11)}, "blur kernel"), ({"blur_kernel": (1, 3)}, "blur kernel"),
                       ({"jitter": (0.2, 0.2, 0.2, 0.7)}, "colour jitter"), ({"jitter": (0.2, 0.2)}, "colour jitter")]:
        with pytest.raises(UserError, match=match) as err:
            Augmentation(**bad)
        assert "\n" not in str(err.value)


def test_the_fsgnet_augmentation_is_the_official_recipe():
    a = FSGNET_AUGMENTATION
    assert (a.cutmix, a.resize, a.resize_range, a.blur, a.blur_kernel, a.perspective) == (0.8, 0.8, (0.5, 2.0), 0.5,
                                                                                         (3, 11), 0.3)
    assert (a.hflip, a.vflip, a.rotate, a.jitter, a.jitter_prob) == (0.5, 0.0, 0.0, (0.2, 0.2, 0.2, 0.1), 0.8)
    ds = SegmentationTrainSet(SyntheticVessels(3, 48), 32, repeats=2, seed=0, augmentation=a)
    for i in range(len(ds)):
        image, mask, fov = ds[i]
        assert image.shape == (3, 32, 32) and mask.shape == fov.shape == (1, 32, 32)
        assert torch.isfinite(image).all()


def test_masks_read_in_a_way_their_author_may_not_mean_are_counted_in_warnings(tmp_path):
    _generic(tmp_path, "train", ["a", "b", "c"], mask_scale=255)
    three = np.zeros((9, 7), np.uint8)
    three[0, :3], three[1, :3] = 100, 255
    Image.fromarray(three).save(tmp_path / "train/masks/b.png")
    Image.fromarray(np.zeros((9, 7), np.uint8)).save(tmp_path / "train/masks/c.png")
    with pytest.warns(UserWarning) as caught:
        source = FolderSource(str(tmp_path), "train")
    messages = [str(w.message) for w in caught]
    assert any("1 of 3 masks have more than two values (first: " in m and "b.png: 0, 100, 255)" in m
               for m in messages), messages
    assert any("1 of 3 masks have no vessel pixels (first: " in m and "c.png" in m and "AUC" in m
               for m in messages), messages
    assert source.load(1)[1].sum() == 3  # 100 is below half of 255: background, as the warning says


def test_an_empty_fov_mask_is_a_one_line_error(tmp_path):
    """An FOV mask with no pixel inside left its image with nothing scored and Dice 1.0, raising per-image Dice."""
    _generic(tmp_path, "val", ["a", "b"], fov=True)
    Image.fromarray(np.zeros((9, 7), np.uint8)).save(tmp_path / "val" / "fov" / "b.png")
    _one_line_error(r"FOV mask .*fov/b\.png has no pixel inside .*images/b\.png would be scored", FolderSource,
                    str(tmp_path), "val")


def test_masks_without_an_image_are_said(tmp_path):
    """A mask (or FOV mask) whose image is missing, misnamed or of an extension not read was dropped silently."""
    _generic(tmp_path, "val", ["a", "b"], fov=True)
    Image.fromarray(np.zeros((9, 7), np.uint8)).save(tmp_path / "val" / "masks" / "c.png")
    Image.fromarray(np.zeros((9, 7), np.uint8)).save(tmp_path / "val" / "fov" / "d.png")
    with pytest.warns(UserWarning, match=r"2 mask file\(s\) under .*val have no image in .*images and are not used "
                                         r"\(first: .*masks/c\.png\); images pair with masks by file name stem"):
        source = FolderSource(str(tmp_path), "val")
    assert source.names == ["a", "b"]


def test_a_mask_the_size_of_an_exif_turned_image_says_why_they_differ(tmp_path):
    """A phone photo turned by its EXIF orientation, annotated as viewers show it: the size error said only that the
    sizes differ, which the user could not see."""
    _generic(tmp_path, "train", ["a"], h=9, w=7)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((7, 9, 3), np.uint8)).save(tmp_path / "train" / "images" / "a.jpg", exif=exif.tobytes())
    (tmp_path / "train" / "images" / "a.png").unlink()
    _one_line_error(r"masks/a\.png is 7x9 but .*images/a\.jpg is 9x7; .*a\.jpg carries an EXIF orientation that turns "
                    r"it in viewers, but its stored pixels are read: save it turned", FolderSource, str(tmp_path),
                    "train")


def test_a_mask_that_is_vessel_everywhere_is_said(tmp_path):
    """A mask of vessel everywhere in the FOV (inverted, or saved blank white) was scored without a word, with no
    specificity or AUC."""
    _generic(tmp_path, "val", ["a", "b"], fov=True, mask_scale=255)
    fov = np.asarray(Image.open(tmp_path / "val" / "fov" / "b.png")) > 0
    Image.fromarray(fov.astype(np.uint8) * 255).save(tmp_path / "val" / "masks" / "b.png")  # vessel = the whole FOV
    with pytest.warns(UserWarning, match=r"1 of 2 masks are vessel everywhere \(inside the FOV where there is one; "
                                         r"first: .*masks/b\.png\): an inverted or blank mask\?"):
        FolderSource(str(tmp_path), "val")
