"""Re-id data: the four layouts and their errors, unreadable files, the synthetic set, the PK sampler, transforms."""

import os
import shutil
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from visattn.errors import UserError
from visattn.tasks.reid.data import (
    PKBatchSampler,
    ReIDImageSet,
    ReIDItem,
    detect_layout,
    load_reid_data,
    reid_eval_transform,
    reid_train_transform,
    write_synthetic_reid,
)


def _jpg(path, value=128):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    Image.fromarray(np.full((16, 8, 3), value, np.uint8)).save(path)


MARKET = {"bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000452_01.jpg", "0007_c1s1_000001_00.jpg",
                                 "0005_c3s1_000002_00.jpg", "0000_c1s1_000003_00.jpg", "-1_c2s1_000004_00.jpg"],
          "query": ["0010_c1s1_000100_00.jpg", "0012_c2s1_000105_00.jpg"],
          "bounding_box_test": ["0010_c2s1_000101_00.jpg", "0010_c1s1_000106_00.jpg", "0000_c3s1_000102_00.jpg",
                                "-1_c1s1_000103_00.jpg"]}


def _market(root):
    for folder, names in MARKET.items():
        for name in names:
            _jpg(os.path.join(root, folder, name))


def _one_line_error(match, fn, *args, **kwargs):
    with pytest.raises(UserError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("nested", [False, True])
def test_market_drops_junk_keeps_distractors_and_relabels(tmp_path, nested):
    _market(tmp_path / "Market-1501-v15.09.15" if nested else tmp_path)
    assert detect_layout(str(tmp_path)) == "market1501"
    data = load_reid_data(str(tmp_path))
    # raw train pids 2, 5, 7 -> 0, 1, 2; the junk (-1) and the distractor (0) are no training identity
    assert sorted((i.pid, i.camid) for i in data.train) == [(0, 0), (0, 1), (1, 2), (2, 0)]
    assert data.num_train_ids == 3 and data.num_cameras == 3
    assert [(i.pid, i.camid) for i in data.query] == [(10, 0), (12, 1)]  # 12 has no gallery image: allowed
    assert sorted((i.pid, i.camid) for i in data.gallery) == [(0, 2), (10, 0), (10, 1)]  # -1 dropped, 0 kept
    assert all(os.path.isfile(i.path) for i in data.train + data.query + data.gallery)


DUKE = {"bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c5_f0051341.jpg", "0003_c1_f0044158.jpg",
                               "0003_c8_f0172102.jpg", "0007_c2_f0046790.jpg"],
        "query": ["0005_c2_f0046985.jpg", "0011_c6_f0163453.jpg"],
        "bounding_box_test": ["0005_c1_f0047000.jpg", "0011_c6_f0163480.jpg", "0011_c3_f0163500.jpg",
                              "0019_c4_f0120000.jpg"]}


@pytest.mark.parametrize("nested", [False, True])
def test_dukemtmc_names_and_counts(tmp_path, nested):
    for folder, names in DUKE.items():
        for name in names:
            _jpg(tmp_path / ("DukeMTMC-reID" if nested else "") / folder / name)
    assert detect_layout(str(tmp_path)) == "dukemtmc"
    data = load_reid_data(str(tmp_path))
    # raw train pids 1, 3, 7 -> 0, 1, 2; cameras c1..c8 -> 0..7
    assert sorted((i.pid, i.camid) for i in data.train) == [(0, 1), (0, 4), (1, 0), (1, 7), (2, 1)]
    assert [(i.pid, i.camid) for i in data.query] == [(5, 1), (11, 5)]
    assert sorted((i.pid, i.camid) for i in data.gallery) == [(5, 0), (11, 2), (11, 5), (19, 3)]
    assert data.num_train_ids == 3 and data.num_cameras == 7
    _jpg(tmp_path / ("DukeMTMC-reID" if nested else "") / "query" / "0005_c2s1_000001_00.jpg")
    _one_line_error(r"0005_c2s1_000001_00.jpg: not a DukeMTMC-reID file name \(PID_cCAM_fFRAME.jpg",
                    load_reid_data, str(tmp_path), layout="dukemtmc")


def _cuhk03(root, boxes, shift=0):
    """A CUHK03-NP box folder: train ids 1, 2; test ids 3, 4 (+shift), cameras 1 and 2, .png files."""
    for folder, pids in (("bounding_box_train", (1, 2)), ("query", (3, 4)), ("bounding_box_test", (3, 4))):
        for pid in pids:
            for cam in (1, 2):
                for index in ((1,) if folder == "query" else (1, 2)):
                    path = root / "cuhk03-np" / boxes / folder / f"{pid + shift:04d}_c{cam}_{index + 5 * cam}.png"
                    os.makedirs(path.parent, exist_ok=True)
                    Image.fromarray(np.full((16, 8, 3), 9, np.uint8)).save(path)


def test_cuhk03_np_labeled_and_detected(tmp_path):
    _cuhk03(tmp_path, "labeled")
    _cuhk03(tmp_path, "detected", shift=100)
    _one_line_error("holds CUHK03-NP's labeled/ and detected/ boxes; choose one with --layout cuhk03-labeled or "
                    "--layout cuhk03-detected", load_reid_data, str(tmp_path))
    for boxes, shift in (("labeled", 0), ("detected", 100)):
        data = load_reid_data(str(tmp_path), layout=f"cuhk03-{boxes}")
        assert data.name == f"{tmp_path.name} (cuhk03-{boxes})"
        assert data.num_train_ids == 2 and len(data.train) == 8 and data.num_cameras == 2
        assert sorted((i.pid, i.camid) for i in data.query) == [(p + shift, c) for p in (3, 4) for c in (0, 1)]
        assert len(data.gallery) == 8 and {i.pid for i in data.gallery} == {3 + shift, 4 + shift}
        assert all(i.path.endswith(".png") and f"{os.sep}{boxes}{os.sep}" in i.path for i in data.train)
        assert detect_layout(str(tmp_path / "cuhk03-np" / boxes)) == f"cuhk03-{boxes}"  # the box folder itself
    shutil.rmtree(tmp_path / "cuhk03-np" / "detected")
    assert detect_layout(str(tmp_path)) == "cuhk03-labeled"


def test_test_only_reads_query_and_gallery(tmp_path):
    _market(tmp_path)
    (tmp_path / "bounding_box_train" / "0002_c3s1_000009_00.jpg").write_bytes(b"")  # not opened
    for path in (tmp_path / "bounding_box_train").glob("000[57]*"):  # one training id: no error either
        os.remove(path)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        data = load_reid_data(str(tmp_path), test_only=True)
    assert [str(w.message) for w in record if "train" in str(w.message) or "unreadable" in str(w.message)] == []
    assert data.train == [] and data.num_train_ids == 0
    assert [(i.pid, i.camid) for i in data.query] == [(10, 0), (12, 1)] and len(data.gallery) == 3


def _msmt_test_part(root):
    gallery = ["0003_001_07_0303noon_0002_0.jpg 3", "0004_000_02_0303noon_0003_0.jpg 4"]
    for name, lines in (("list_query.txt", ["0003_000_02_0303noon_0001_0.jpg 3"]), ("list_gallery.txt", gallery)):
        for line in lines:
            _jpg(root / "test" / line[:4] / line.split()[0])
        (root / name).write_text("".join(f"{line[:4]}/{line}\n" for line in lines))


def _csv_test_part(root):
    rows = {"query": [("img/c.jpg", 3, 0)], "gallery": [("img/d.jpg", 3, 1), ("img/e.jpg", 4, 0)]}
    for items in rows.values():
        for path, _, _ in items:
            _jpg(root / path)
    _write_csv(root, rows, single=False)


def _market_test_part(root):
    _market(root)
    shutil.rmtree(root / "bounding_box_train")


def _folders_test_part(root):
    _folders(root)
    shutil.rmtree(root / "train")


@pytest.mark.parametrize("make,layout,pids", [(_market_test_part, "market1501", [10, 12, 0, 10, 10]),
                                              (_msmt_test_part, "msmt17", [3, 3, 4]),
                                              (_csv_test_part, "csv", [3, 3, 4]),
                                              (_folders_test_part, "folders", [10**6] * 4 + [10**6 + 1] * 2)],
                         ids=["market1501", "msmt17", "csv", "folders"])
def test_a_copy_of_the_test_images_alone_is_read_for_evaluation(tmp_path, make, layout, pids):
    """Query and gallery without the training part (tools/eval.py on a copy of the test images): detected and read
    with test_only, an error naming the training part otherwise."""
    make(tmp_path)
    data = load_reid_data(str(tmp_path), test_only=True)
    assert data.train == [] and [i.pid for i in data.query + data.gallery] == pids
    assert load_reid_data(str(tmp_path), layout=layout, test_only=True).query == data.query
    with pytest.raises(UserError):
        load_reid_data(str(tmp_path))


@pytest.mark.parametrize("masked", [False, True])
def test_msmt_list_files_merge_val_into_train(tmp_path, masked):
    train_dir, test_dir = ("mask_train_v2", "mask_test_v2") if masked else ("train", "test")
    lists = {"list_train.txt": (train_dir, ["0000_000_01_0303morning_0015_0.jpg 0",
                                            "0001_001_05_0303morning_0016_0.jpg 1"]),
             "list_val.txt": (train_dir, ["0002_000_03_0303morning_0017_0.jpg 2"]),
             "list_query.txt": (test_dir, ["0003_000_02_0303noon_0001_0.jpg 3"]),
             "list_gallery.txt": (test_dir, ["0003_001_07_0303noon_0002_0.jpg 3", "0004_000_02_0303noon_0003_0.jpg 4"])}
    for name, (folder, lines) in lists.items():
        for line in lines:
            file = line.split()[0]
            _jpg(tmp_path / folder / file[:4] / file)
        (tmp_path / name).write_text("".join(f"{line[:4]}/{line}\n" for line in lines) + "\n")
    assert detect_layout(str(tmp_path)) == "msmt17"
    data = load_reid_data(str(tmp_path))
    assert [(i.pid, i.camid) for i in data.train] == [(0, 0), (1, 4), (2, 2)]  # camera = 3rd field, 0-based
    assert [(i.pid, i.camid) for i in data.query + data.gallery] == [(3, 1), (3, 6), (4, 1)]
    os.remove(tmp_path / "list_gallery.txt")
    _one_line_error("list_gallery.txt is missing", load_reid_data, str(tmp_path))


def test_msmt_test_ids_restarting_at_zero_are_not_training_ids(tmp_path):
    """MSMT17 numbers its test identities from 0 again: test pid 1 is another person than training pid 1."""
    lists = {"list_train.txt": ("train", ["0000_000_01_0303morning_0015_0.jpg 0",
                                          "0001_001_05_0303morning_0016_0.jpg 1"]),
             "list_query.txt": ("test", ["0001_000_02_0303noon_0001_0.jpg 1"]),
             "list_gallery.txt": ("test", ["0001_001_07_0303noon_0002_0.jpg 1", "0000_000_02_0303noon_0003_0.jpg 0"])}
    for name, (folder, lines) in lists.items():
        for line in lines:
            _jpg(tmp_path / folder / line[:4] / line.split()[0])
        (tmp_path / name).write_text("".join(f"{line[:4]}/{line}\n" for line in lines))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_reid_data(str(tmp_path))
    assert [i.pid for i in data.query + data.gallery] == [1, 1, 0]


def _folders(root, cameras=True, gallery_cameras=None):
    spec = (("train", ["alice", "bob"]), ("query", ["carol"]), ("gallery", ["carol", "dave"]))
    for split, pids in spec:
        cams = cameras if split != "gallery" or gallery_cameras is None else gallery_cameras
        for pid in pids:
            for cam in ("0", "1"):
                _jpg(os.path.join(root, split, pid, f"{cam}_x.jpg" if cams else f"x{cam}.jpg"))


def test_folders_with_camera_prefixes_and_named_ids(tmp_path):
    _folders(str(tmp_path))
    (tmp_path / "gallery" / "carol" / "frontdoor_y.jpg").write_bytes((tmp_path / "gallery" / "carol" /
                                                                      "0_x.jpg").read_bytes())
    assert detect_layout(str(tmp_path)) == "folders"
    data = load_reid_data(str(tmp_path))
    assert data.num_train_ids == 2 and sorted(i.pid for i in data.train) == [0, 0, 1, 1]
    carol = {i.pid for i in data.query}
    assert len(carol) == 1 and len([i for i in data.gallery if i.pid in carol]) == 3  # same name, same pid
    assert {i.camid for i in data.query} == {0, 1} and len({i.camid for i in data.gallery}) == 3
    assert data == load_reid_data(str(tmp_path))  # stable numbering


def test_no_camera_ids_is_explained_unless_cameras_are_distinct(tmp_path):
    _folders(str(tmp_path), cameras=False)
    message = _one_line_error("no camera ids", load_reid_data, str(tmp_path))
    for words in ("pid AND camera", "every true match would be removed", "<cam>_ file-name prefix", "camid column",
                  "--distinct-cameras"):
        assert words in message
    data = load_reid_data(str(tmp_path), distinct_cameras=True)
    assert {i.camid for i in data.query} == {0} and {i.camid for i in data.gallery} == {1}
    assert {i.camid for i in data.train} == {0} and data.num_cameras == 2


def test_cameras_missing_in_part_of_the_data_and_a_single_camera_are_errors(tmp_path):
    _folders(str(tmp_path / "a"), gallery_cameras=False)  # query has cameras, gallery not
    _one_line_error(r"\(4 of 4 gallery images\) has no camera ids", load_reid_data, str(tmp_path / "a"))
    _folders(str(tmp_path / "b"))
    for path in (tmp_path / "b").glob("*/*/1_x.jpg"):  # all from camera 0: the protocol removes every match
        os.remove(path)
    _one_line_error("no query has a gallery image of its identity from another camera", load_reid_data,
                    str(tmp_path / "b"))


def _write_csv(root, rows, single):
    if single:
        lines = ["path,pid,camid,split"] + [f"{p},{i},{c},{s}" for s, its in rows.items() for p, i, c in its]
        (root / "reid.csv").write_text("\n".join(lines) + "\n")
    else:
        for split, items in rows.items():
            (root / f"{split}.csv").write_text("path,pid,camid\n" + "".join(f"{p},{i},{c}\n" for p, i, c in items))


@pytest.mark.parametrize("single", [True, False])
def test_csv_layouts(tmp_path, single):
    rows = {"train": [("img/a.jpg", "x", 0), ("img/b.jpg", "y", 1)], "query": [("img/c.jpg", 3, "cam2")],
            "gallery": [("img/d.jpg", 3, "cam1"), ("img/e.jpg", 4, "")]}
    for items in rows.values():
        for path, _, _ in items:
            _jpg(tmp_path / path)
    _write_csv(tmp_path, rows, single)
    assert detect_layout(str(tmp_path)) == "csv"
    _one_line_error(r"\(1 of 2 gallery images\) has no camera ids", load_reid_data, str(tmp_path))
    data = load_reid_data(str(tmp_path), layout="csv", distinct_cameras=True)
    assert data.num_train_ids == 2 and [i.pid for i in data.query + data.gallery] == [3, 3, 4]
    assert data.query[0].path == str(tmp_path / "img" / "c.jpg")
    rows["gallery"][1] = ("img/e.jpg", 4, "cam2")
    _write_csv(tmp_path, rows, single)
    data = load_reid_data(str(tmp_path))
    assert data.query[0].camid == data.gallery[1].camid != data.gallery[0].camid and data.num_cameras == 4


def test_csv_without_camid_column_and_bad_rows(tmp_path):
    for name in "abcde":
        _jpg(tmp_path / f"{name}.jpg")
    (tmp_path / "train.csv").write_text("path,pid\na.jpg,1\nb.jpg,2\n")
    (tmp_path / "query.csv").write_text("path,pid\nc.jpg,3\n")
    (tmp_path / "gallery.csv").write_text("path,pid\nd.jpg,3\ne.jpg,4\n")
    _one_line_error("no camera ids", load_reid_data, str(tmp_path))
    assert len(load_reid_data(str(tmp_path), distinct_cameras=True).gallery) == 2
    (tmp_path / "gallery.csv").write_text("file,person\nd.jpg,3\n")
    _one_line_error("needs the columns path,pid", load_reid_data, str(tmp_path))
    (tmp_path / "gallery.csv").write_text("path,pid\nd.jpg,\n")
    _one_line_error("gallery.csv line 2: needs a path, a pid", load_reid_data, str(tmp_path))


BAD = {
    "unknown layout": (lambda r: _market(r), {"layout": "duke"}, "unknown re-id layout 'duke'; use one of auto, "),
    "nothing found": (lambda r: os.makedirs(r / "x"), {},
                      "no re-id layout found; expected Market-1501, DukeMTMC-reID or CUHK03-NP .* folders"),
    "missing split": (lambda r: (_market(r), os.rename(r / "query", r / "q")), {}, "query is missing"),
    "missing folder": (lambda r: os.makedirs(r / "train"), {"layout": "folders"}, "query is missing"),
    "empty query": (lambda r: (_market(r), [os.remove(p) for p in (r / "query").iterdir()]), {},
                    "the query split has no images"),
    "one train id": (lambda r: (_market(r), [os.remove(p) for p in (r / "bounding_box_train").glob("000[57]*")]), {},
                     "the train split has 1 identity; re-id training needs at least 2"),
    "no shared id": (lambda r: (_market(r), [os.remove(p) for p in (r / "bounding_box_test").glob("0010*")]), {},
                     "no query identity appears in the gallery"),
    "bad market name": (lambda r: (_market(r), _jpg(r / "query" / "img1.jpg")), {}, "not a Market-1501 file name"),
    "one test id": (lambda r: (_market(r), [os.remove(p) for p in (*(r / "query").glob("0012*"),
                                                                   *(r / "bounding_box_test").glob("0000*"))]), {},
                    r"query and gallery hold one identity \(pid 10\), so every image matches"),
    "dash in a market pid": (lambda r: (_market(r), _jpg(r / "query" / "0010-2_c1s1_000100_00.jpg")), {},
                             r"0010-2_c1s1_000100_00.jpg: not a Market-1501 file name"),
}


@pytest.mark.parametrize("make,kwargs,match", BAD.values(), ids=BAD.keys())
def test_bad_data_gives_one_line_errors(tmp_path, make, kwargs, match):
    make(tmp_path)
    _one_line_error(match, load_reid_data, str(tmp_path), **kwargs)


def test_unreadable_files_are_skipped_with_one_counted_warning(tmp_path):
    _market(tmp_path)
    train = tmp_path / "bounding_box_train"
    (train / "0002_c3s1_000009_00.jpg").write_bytes(b"")
    (train / "0005_c4s1_000010_00.jpg").write_bytes(os.urandom(300))
    noise = np.random.default_rng(0).integers(0, 256, (64, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg")
    whole = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "bounding_box_test" / "0010_c3s1_000011_00.jpg").write_bytes(whole[:len(whole) // 2])  # truncated
    with pytest.warns(UserWarning, match="skipped 3 unreadable image file") as record:
        data = load_reid_data(str(tmp_path))
    unreadable = [str(w.message) for w in record if str(w.message).startswith("skipped")]
    assert len(unreadable) == 1 and "train 2, gallery 1; first: " in unreadable[0]
    assert "0002_c3s1_000009_00.jpg" in unreadable[0]
    assert len(data.train) == 4 and len(data.gallery) == 3


def test_a_file_failing_at_load_time_is_replaced_and_counted(tmp_path):
    for name, value in (("a", 10), ("b", 20), ("c", 30)):
        _jpg(tmp_path / f"{name}.jpg", value)
    items = [ReIDItem(str(tmp_path / "a.jpg"), 5, 0), ReIDItem(str(tmp_path / "b.jpg"), 6, 0),
             ReIDItem(str(tmp_path / "c.jpg"), 5, 1)]
    dataset = ReIDImageSet(items, reid_eval_transform((16, 8)))
    (tmp_path / "a.jpg").write_bytes(b"broken")
    with pytest.warns(UserWarning, match="skipping unreadable image .*a.jpg"):
        image, pid, camid = dataset[0]
    assert image.shape == (3, 16, 8) and (pid, camid) == (5, 1)  # replaced by an image of the same identity
    assert abs(float(image.mean()) - 30 / 255) < 0.02 and dataset.failed == {items[0].path}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per file
        assert dataset[0][1:] == (5, 1) and dataset[1][1:] == (6, 0)
    relabelled = ReIDImageSet(items, relabel=True)
    assert [i.pid for i in relabelled.items] == [0, 1, 0] and relabelled.pid_map == {5: 0, 6: 1}
    image, pid, _ = relabelled[1]
    assert pid == 1 and image.dtype == torch.float32 and image.shape == (3, 16, 8)
    for path in ("b.jpg", "c.jpg"):
        (tmp_path / path).write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(UserError, match="none of the 3 images of the set can be read"):
        dataset[1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic") / "default")
    start = time.perf_counter()
    write_synthetic_reid(root)
    return root, time.perf_counter() - start


def test_synthetic_default_set_is_quick_readable_and_complete(synthetic):
    root, seconds = synthetic
    assert seconds < 6  # ~0.4 s on one core
    data = load_reid_data(root)
    assert data.num_train_ids == 32 and len(data.train) == 32 * 4 * 2 and data.num_cameras == 4
    assert len(data.query) == 16 * 2 and {i.camid for i in data.query} == {0, 2}
    test_ids = {i.pid for i in data.query}
    assert len(test_ids) == 16 and not test_ids & set(range(1, 33))  # test ids are not training ids
    assert sum(i.pid in test_ids for i in data.gallery) == 16 * 4 * 2 - 32
    assert sum(i.pid == 0 for i in data.gallery) == 8
    assert len(os.listdir(os.path.join(root, "bounding_box_test"))) == len(data.gallery) + 4  # + 4 junk files
    with Image.open(data.query[0].path) as img:
        assert img.size == (64, 128) and img.mode == "RGB"


def _map(feats_q, feats_g, query, gallery):
    """mAP with the same-camera removal."""
    dist = torch.cdist(torch.as_tensor(feats_q), torch.as_tensor(feats_g)).numpy()
    aps = []
    for k, q in enumerate(query):
        order = np.argsort(dist[k], kind="stable")
        keep = [j for j in order if not (gallery[j].pid == q.pid and gallery[j].camid == q.camid)]
        match = np.array([gallery[j].pid == q.pid for j in keep])
        if match.any():
            aps.append((np.cumsum(match) / np.arange(1, len(match) + 1))[match].mean())
    return float(np.mean(aps))


def test_synthetic_identities_outweigh_the_nuisance(synthetic):
    """Mirror-averaged, brightness-normalised colours of the image centre retrieve far better than chance."""
    data = load_reid_data(synthetic[0])

    def colours(items):
        out = []
        for item in items:
            with Image.open(item.path) as img:
                a = np.asarray(img.convert("RGB").resize((16, 32), Image.BILINEAR), np.float64)
            a = (a + a[:, ::-1])[:, 4:12] / 2
            out.append((a / a.reshape(-1, 3).mean(0)).ravel())
        return np.stack(out)

    rng = np.random.default_rng(0)
    chance = np.mean([_map(rng.normal(size=(len(data.query), 4)), rng.normal(size=(len(data.gallery), 4)),
                           data.query, data.gallery) for _ in range(5)])
    assert _map(colours(data.query), colours(data.gallery), data.query, data.gallery) > 3 * chance


def test_synthetic_set_is_deterministic_atomic_and_reused(tmp_path):
    small = {"num_train_ids": 4, "num_test_ids": 3, "num_cameras": 2, "images_per_camera": 1,
             "size": (32, 16)}
    a = write_synthetic_reid(str(tmp_path / "a"), **small)
    b = write_synthetic_reid(str(tmp_path / "b"), **small)
    write_synthetic_reid(str(tmp_path / "c"), **small, seed=1)
    data = load_reid_data(a)
    assert data.num_train_ids == 4 and len(data.train) == 4 * 2 and len(data.query) == 3 and len(data.gallery) == 7
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        names = sorted(os.listdir(os.path.join(a, folder)))
        assert names == sorted(os.listdir(os.path.join(b, folder)))
        for name in names:
            assert (tmp_path / "a" / folder / name).read_bytes() == (tmp_path / "b" / folder / name).read_bytes()
    query = sorted(os.listdir(os.path.join(a, "query")))[0]
    assert (tmp_path / "a" / "query" / query).read_bytes() != (tmp_path / "c" / "query" / query).read_bytes()
    stamp = os.path.getmtime(os.path.join(a, ".synthetic-reid.json"))
    assert write_synthetic_reid(a, **small) == a  # complete: reused as it is
    assert os.path.getmtime(os.path.join(a, ".synthetic-reid.json")) == stamp
    write_synthetic_reid(a, **{**small, "num_test_ids": 2})  # other settings: replaced
    assert len(load_reid_data(a).query) == 2
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary folders left
    _market(tmp_path / "real")
    _one_line_error("exists and is not a synthetic re-id set", write_synthetic_reid, str(tmp_path / "real"))
    assert len(os.listdir(tmp_path / "real" / "query")) == 2  # untouched


def _ids(batch, pids):
    return [pids[i] for i in batch]


def test_pk_batches_hold_p_distinct_ids_of_k_images():
    pids = [p for p in range(10) for _ in range(1 + p % 3)]  # 1-3 images per id: some sampled with replacement
    sampler = PKBatchSampler(pids, num_ids=3, num_instances=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 1  # 19 images, fewer than one batch of 12: still one batch
    for batch in batches:
        ids = _ids(batch, pids)
        assert len(batch) == 12 and len(set(ids)) == 3 and all(ids.count(p) == 4 for p in set(ids))
    many = [p for p in range(4) for _ in range(6)]
    for batch in PKBatchSampler(many, num_ids=2, num_instances=4):
        assert len(set(batch)) == 8  # enough images: no repeats


def test_a_pk_epoch_has_as_many_batches_as_fast_reids_and_walks_every_identitys_images():
    """images // (P K) batches (fast-reid's iterations per epoch; Market-1501: 12,936 // 64 = 202, where one visit
    per identity would be 751 // 16 = 46); each identity's images come in groups of K without repeats until its
    images run out."""
    pids = [p for p in range(8) for _ in range(8 if p < 4 else 4)]  # 48 images: 4 ids of 8 images, 4 of 4
    sampler = PKBatchSampler(pids, num_ids=2, num_instances=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 48 // 8
    for batch in batches:
        ids = _ids(batch, pids)
        assert len(set(ids)) == 2 and all(ids.count(p) == 4 for p in set(ids))
    for pid in range(8):  # an identity's images repeat only once all of them have come
        walk = [i for batch in batches for i in batch if pids[i] == pid]
        first = walk[:pids.count(pid)]
        assert len(set(first)) == len(first) and set(walk) <= set(first)
    market = PKBatchSampler([p for p in range(751) for _ in range(12936 // 751 + (p < 12936 % 751))])
    assert len(market) == 202


def test_pk_set_epoch_reshuffles_deterministically():
    pids = [p for p in range(12) for _ in range(3)]
    sampler = PKBatchSampler(pids, num_ids=4, num_instances=2, seed=3)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and second == list(sampler)
    again = PKBatchSampler(pids, num_ids=4, num_instances=2, seed=3)
    again.set_epoch(1)
    assert list(again) == second
    assert list(PKBatchSampler(pids, num_ids=4, num_instances=2, seed=4)) != first


def test_pk_ranks_get_equal_shares_of_the_same_batches():
    pids = [p for p in range(11) for _ in range(2)]
    whole = list(PKBatchSampler(pids, num_ids=2, num_instances=2, seed=0))
    ranks = [list(PKBatchSampler(pids, 2, 2, seed=0, world_size=2, rank=r)) for r in (0, 1)]
    assert len(whole) == 22 // 4 == 5 and len(ranks[0]) == len(ranks[1]) == 2
    assert ranks[0] == whole[0:4:2] and ranks[1] == whole[1:4:2]  # the same batches, dealt round-robin


def test_pk_too_few_ids_is_a_one_line_error():
    pids = [p for p in range(10) for _ in range(2)]
    _one_line_error("needs 16 identities per process but the training set has 10;", PKBatchSampler, pids)
    _one_line_error(r"smaller --batch-size \(P = --batch-size // --instances = 16", PKBatchSampler, pids)
    _one_line_error("has 10 for 4 processes", PKBatchSampler, pids, num_ids=3, world_size=4, rank=1)


def test_transforms_give_unit_range_float_tensors_of_the_size():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 30, 3), dtype=np.uint8))
    torch.manual_seed(0)
    for transform in (reid_train_transform((32, 16), pad=2), reid_train_transform((32, 16), pad=0, flip=0, erasing=0),
                      reid_train_transform([32, 16], erasing=1.0), reid_eval_transform((32, 16))):
        out = transform(image)
        assert type(out) is torch.Tensor and out.shape == (3, 32, 16) and out.dtype == torch.float32
        assert 0 <= out.min() and out.max() <= 1
    plain = reid_eval_transform((50, 30))(image)
    assert torch.allclose(plain, torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255)
    erased = reid_train_transform((50, 30), pad=0, flip=0, erasing=1.0)(image)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None]
    assert (erased.flatten(1) - mean).abs().max(0).values.lt(1e-6).sum() > 0.02 * 50 * 30  # ImageNet-mean fill
