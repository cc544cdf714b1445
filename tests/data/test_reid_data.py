"""Re-id data: the layouts, their errors, the synthetic set, the PK sampler and the transforms."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from visattn.data.reid import (
    PKBatchSampler,
    ReIDImageSet,
    load_reid_data,
    reid_eval_transform,
    reid_train_transform,
    write_synthetic_reid,
)
from visattn.errors import UserError


def _jpg(path, value=128):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((16, 8, 3), value, np.uint8)).save(path)


def _market(root):
    for name in ("0002_c1s1_000451_03.jpg", "0002_c2s1_000452_01.jpg", "0007_c1s1_000001_00.jpg",
                 "0005_c3s1_000002_00.jpg"):
        _jpg(os.path.join(root, "bounding_box_train", name))
    _jpg(os.path.join(root, "query", "0010_c1s1_000100_00.jpg"))
    for name in ("0010_c2s1_000101_00.jpg", "0000_c3s1_000102_00.jpg", "-1_c1s1_000103_00.jpg"):
        _jpg(os.path.join(root, "bounding_box_test", name))


@pytest.mark.parametrize("nested", [False, True])
def test_market_drops_junk_keeps_distractors_and_relabels(tmp_path, nested):
    _market(tmp_path / "Market-1501-v15.09.15" if nested else tmp_path)
    data = load_reid_data(str(tmp_path))
    assert sorted((i.pid, i.camid) for i in data.train) == [(0, 0), (0, 1), (1, 2), (2, 0)]  # 2, 5, 7 -> 0, 1, 2
    assert data.num_train_ids == 3 and [(i.pid, i.camid) for i in data.query] == [(10, 0)]
    assert sorted(i.pid for i in data.gallery) == [0, 10]  # -1 dropped, 0 kept


def test_msmt_list_files(tmp_path):
    for split, names in (("train", ["0000_000_01_0303morning_0015_0.jpg", "0001_001_05_0303morning_0016_0.jpg"]),
                         ("test", ["0003_000_02_0303noon_0001_0.jpg", "0003_001_07_0303noon_0002_0.jpg"])):
        for n in names:
            _jpg(str(tmp_path / split / n[:4] / n))
    (tmp_path / "list_train.txt").write_text("0000/0000_000_01_0303morning_0015_0.jpg 0\n"
                                             "0001/0001_001_05_0303morning_0016_0.jpg 1\n")
    (tmp_path / "list_query.txt").write_text("0003/0003_000_02_0303noon_0001_0.jpg 3\n")
    (tmp_path / "list_gallery.txt").write_text("0003/0003_001_07_0303noon_0002_0.jpg 3\n")
    data = load_reid_data(str(tmp_path))
    assert [(i.pid, i.camid) for i in data.train] == [(0, 0), (1, 4)]
    assert [(i.pid, i.camid) for i in data.query + data.gallery] == [(3, 1), (3, 6)]


def _folders(root, cameras=True):
    for split, pids in (("train", ["alice", "bob"]), ("query", ["carol"]), ("gallery", ["carol", "dave"])):
        for pid in pids:
            for cam in ("0", "1"):
                _jpg(os.path.join(root, split, pid, f"{cam}_x.jpg" if cameras else f"x{cam}.jpg"))


def test_folders_with_camera_prefixes(tmp_path):
    _folders(str(tmp_path))
    data = load_reid_data(str(tmp_path), layout="folders")
    assert data.num_train_ids == 2 and len(data.gallery) == 4
    assert {i.pid for i in data.query} <= {i.pid for i in data.gallery}
    assert {i.camid for i in data.query} == {0, 1}


def test_no_camera_ids_is_explained_unless_cameras_are_distinct(tmp_path):
    _folders(str(tmp_path), cameras=False)
    with pytest.raises(UserError, match="no camera ids: the standard protocol drops .*--distinct-cameras") as info:
        load_reid_data(str(tmp_path))
    assert "\n" not in str(info.value)
    data = load_reid_data(str(tmp_path), distinct_cameras=True)
    assert {i.camid for i in data.query} == {0} and {i.camid for i in data.gallery} == {1}


@pytest.mark.parametrize("single", [True, False])
def test_csv_layouts(tmp_path, single):
    rows = {"train": [("a.jpg", 1, 0), ("b.jpg", 2, 1)], "query": [("c.jpg", 3, 0)], "gallery": [("d.jpg", 3, 1)]}
    for items in rows.values():
        for path, _, _ in items:
            _jpg(str(tmp_path / path))
    if single:
        lines = ["path,pid,camid,split"] + [f"{p},{i},{c},{s}" for s, its in rows.items() for p, i, c in its]
        (tmp_path / "reid.csv").write_text("\n".join(lines) + "\n")
    else:
        for split, items in rows.items():
            (tmp_path / f"{split}.csv").write_text("path,pid,camid\n" + "".join(f"{p},{i},{c}\n" for p, i, c in items))
    data = load_reid_data(str(tmp_path))
    assert data.num_train_ids == 2 and [(i.pid, i.camid) for i in data.query + data.gallery] == [(3, 0), (3, 1)]


def test_unreadable_files_are_skipped_with_one_warning(tmp_path):
    _market(str(tmp_path))
    (tmp_path / "bounding_box_train" / "0002_c3s1_000009_00.jpg").write_bytes(b"")
    (tmp_path / "bounding_box_train" / "0005_c4s1_000010_00.jpg").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="skipped 2 unreadable image file"):
        data = load_reid_data(str(tmp_path))
    assert len(data.train) == 4


def test_a_file_failing_at_load_time_is_skipped(tmp_path):
    _market(str(tmp_path))
    data = load_reid_data(str(tmp_path))
    items = list(data.train)
    open(items[0].path, "wb").close()
    dataset = ReIDImageSet(items, reid_eval_transform((16, 8)))
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        image, pid, _ = dataset[0]
    assert image.shape == (3, 16, 8) and pid == items[1].pid and dataset.failed == {items[0].path}


BAD = {"nothing": (lambda r: os.makedirs(r / "x"), "no re-id layout found"),
       "empty query": (lambda r: (_market(str(r)), os.remove(r / "query" / "0010_c1s1_000100_00.jpg")),
                       "the query split has no images"),
       "no shared id": (lambda r: (_market(str(r)), os.rename(r / "query" / "0010_c1s1_000100_00.jpg",
                                                              r / "query" / "0011_c1s1_000100_00.jpg")),
                        "no query identity appears in the gallery")}


@pytest.mark.parametrize("make,match", BAD.values(), ids=BAD.keys())
def test_bad_layouts_are_one_line_errors(tmp_path, make, match):
    make(tmp_path)
    with pytest.raises(UserError, match=match) as info:
        load_reid_data(str(tmp_path))
    assert "\n" not in str(info.value)


def test_synthetic_set_is_a_deterministic_market_layout(tmp_path):
    a = write_synthetic_reid(str(tmp_path / "a"), num_train_ids=4, num_test_ids=3, num_cameras=2)
    b = write_synthetic_reid(str(tmp_path / "b"), num_train_ids=4, num_test_ids=3, num_cameras=2)
    data = load_reid_data(a)
    assert data.num_train_ids == 4 and len(data.train) == 4 * 2 * 2 and len(data.query) == 3
    assert 0 in {i.pid for i in data.gallery}
    first = sorted(os.listdir(os.path.join(a, "query")))[0]
    assert first == sorted(os.listdir(os.path.join(b, "query")))[0]
    assert (np.asarray(Image.open(os.path.join(a, "query", first))) ==
            np.asarray(Image.open(os.path.join(b, "query", first)))).all()
    stamp = os.path.getmtime(os.path.join(a, ".complete"))
    write_synthetic_reid(a, num_train_ids=4, num_test_ids=3, num_cameras=2)  # reused as it is
    assert os.path.getmtime(os.path.join(a, ".complete")) == stamp
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary folders left


def test_pk_batches():
    pids = [p for p in range(10) for _ in range(1 + p % 3)]  # 1-3 images per id
    sampler = PKBatchSampler(pids, num_ids=3, num_instances=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3
    for batch in batches:
        ids = [pids[i] for i in batch]
        assert len(batch) == 12 and len(set(ids)) == 3 and all(ids.count(p) == 4 for p in set(ids))
    assert list(sampler) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    ranks = [list(PKBatchSampler(pids, 2, 2, seed=0, world_size=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    assert not {pids[i] for b in ranks[0] for i in b} & {pids[i] for b in ranks[1] for i in b}
    with pytest.raises(UserError, match="needs 16 identities per process but the training set has 10"):
        PKBatchSampler(pids, num_ids=16)


def test_transforms_give_unit_range_tensors_of_the_size():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 30, 3), dtype=np.uint8))
    for transform in (reid_train_transform((32, 16), pad=2), reid_eval_transform((32, 16))):
        out = transform(image)
        assert out.shape == (3, 32, 16) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
