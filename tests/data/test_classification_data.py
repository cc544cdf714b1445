import numpy as np
import pytest
from PIL import Image

from visattn.errors import UserError
from visattn.tasks.classification.data import DigitsDataset, ImageFolderDataset


def _write(path, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    size = (12, 10)
    if mode == "L":
        Image.fromarray(np.full(size, 200, np.uint8), "L").save(path)
    elif mode == "RGBA":
        Image.fromarray(np.full((*size, 4), 90, np.uint8), "RGBA").save(path)
    else:
        Image.fromarray(np.full((*size, 3), 30, np.uint8), "RGB").save(path)


def test_image_folder_converts_every_mode_to_rgb_and_skips_corrupt_files(tmp_path):
    _write(tmp_path / "cat" / "a.png", "L")
    _write(tmp_path / "cat" / "b.png", "RGBA")
    _write(tmp_path / "dog" / "c.png", "RGB")
    (tmp_path / "dog" / "broken.png").write_bytes(b"not an image at all")
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image file\(s\) .*broken\.png"):
        ds = ImageFolderDataset(str(tmp_path))
    assert ds.classes == ["cat", "dog"] and len(ds) == 3 and ds.num_skipped == 1
    for i in range(3):
        img, label = ds[i]
        assert img.mode == "RGB" and img.size == (10, 12)
    assert [ds[i][1] for i in range(3)] == [0, 0, 1]


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ImageFolderDataset(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="no class folders"):
        ImageFolderDataset(str(tmp_path))
    _write(tmp_path / "cat" / "a.png", "RGB")
    with pytest.raises(UserError, match="has cat, which the training split lacks: the model knows only the 1 "):
        ImageFolderDataset(str(tmp_path), classes=["dog"])


def test_digits_split_is_stratified_and_disjoint():
    train, val = DigitsDataset("train"), DigitsDataset("val")
    assert len(train) + len(val) == 1797 and len(val) == 360
    assert set(np.bincount(val.targets).tolist()) <= {35, 36, 37}
    img, label = train[0]
    assert img.mode == "RGB" and img.size == (8, 8) and 0 <= label < 10
    train_rows = {t.tobytes() for t in train.images}
    assert sum(v.tobytes() in train_rows for v in val.images) < 5  # only exact duplicate digits overlap


def _jpeg(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=90)


def test_truncated_and_empty_files_are_found_up_front_and_a_file_failing_later_is_replaced(tmp_path):
    for i in range(3):
        _jpeg(tmp_path / "cat" / f"{i}.jpg", i)
    _jpeg(tmp_path / "dog" / "0.jpg", 9)
    whole = (tmp_path / "cat" / "0.jpg").read_bytes()
    (tmp_path / "cat" / "half.jpg").write_bytes(whole[: len(whole) // 2])  # passes PIL's verify()
    png = tmp_path / "dog" / "cut.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(png)
    png.write_bytes(png.read_bytes()[:-20])
    (tmp_path / "dog" / "empty.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"skipped 3 unreadable image file\(s\) .*half\.jpg"):
        ds = ImageFolderDataset(str(tmp_path))
    assert [p.rsplit("/", 1)[1] for p, _ in ds.samples] == ["0.jpg", "1.jpg", "2.jpg", "0.jpg"]

    (tmp_path / "cat" / "1.jpg").write_bytes(whole[: len(whole) // 2])  # damaged after the check
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*cat/1\.jpg: image file is truncated"):
        img, label = ds[1]
    assert label == 0 and img.size == (64, 64)
    assert list(np.asarray(img).flat[:9]) == list(np.asarray(Image.open(tmp_path / "cat" / "2.jpg")).flat[:9])
    assert ds[1][1] == 0 and 1 in ds.failed  # not retried
