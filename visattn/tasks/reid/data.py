"""Person re-identification data: readers for the layouts below, the built-in synthetic set, the image dataset, the PK
batch sampler and the BoT transforms.

Layouts read by :func:`load_reid_data` (``layout="auto"`` picks the first that matches, in this order):

- ``market1501``: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` (also under
  ``Market-1501-v15.09.15/``), files ``{pid}_c{cam}s{seq}_{frame}_{box}.jpg``. pid -1 (junk) is dropped, pid 0
  (distractors) stays in query/gallery and is dropped from training. When the training file names are not
  Market's, auto-detection tells the next two by their names.
- ``dukemtmc``: DukeMTMC-reID, the same three folders (also under ``DukeMTMC-reID/``), files
  ``{pid}_c{cam}_f{frame}.jpg`` (``0001_c2_f0046182.jpg``); 702 training identities, 1,110 in query/gallery (the
  408 distractor identities among them).
- ``cuhk03-labeled``, ``cuhk03-detected``: CUHK03 under the new protocol (Zhong et al., CVPR 2017: 767 training
  identities, 700 test identities, one query per camera of each), the common ``cuhk03-np`` release: the three
  folders under ``cuhk03-np/labeled/`` or ``cuhk03-np/detected/`` (also ``labeled/``, ``detected/`` or the root),
  files ``{pid}_c{cam}_{index}.png`` (``0001_c1_1.png``). A root holding both kinds of boxes needs ``--layout``.
- ``msmt17``: ``list_train.txt`` (+ ``list_val.txt``), ``list_query.txt``, ``list_gallery.txt`` of ``PATH PID`` lines,
  images under ``train/`` or ``mask_train_v2/`` and ``test/`` or ``mask_test_v2/``, camera = the third ``_`` field
  of the file name (``0000_000_01_0303morning_0015_0.jpg``: camera 01). Its test identities are numbered from 0
  again, apart from the training ones.
- ``csv``: ``train.csv``, ``query.csv``, ``gallery.csv`` or one ``reid.csv`` with a ``split`` column; columns
  ``path,pid[,camid]``, paths relative to the root.
- ``folders``: ``train|query|gallery/<pid>/<cam>_*.jpg``; the camera is the file-name prefix before the first ``_``.

Identities and cameras given as names rather than integers are numbered in sorted order from 1,000,000 (the same
number in every split and every run). Training pids are relabelled 0..P-1 in sorted order; query and gallery keep
theirs. Camera ids are 0-based for the Market-style layouts and MSMT17, the given integers otherwise (only equality
matters).
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from ...errors import UserError, first_line
from ..images import IMAGE_EXTENSIONS, READ_ERRORS, load_rgb, mode_notice, read_problems

LAYOUTS = ("auto", "market1501", "dukemtmc", "cuhk03-labeled", "cuhk03-detected", "msmt17", "csv", "folders")
SPLITS = ("train", "query", "gallery")
MARKET_DIRS = ("bounding_box_train", "query", "bounding_box_test")
MARKET_NESTED = "Market-1501-v15.09.15"
MARKET_NAME = re.compile(r"(-?\d+)_c(\d+)")
DUKE_NAME = re.compile(r"(\d+)_c(\d+)_f\d+")
CUHK03_NAME = re.compile(r"(\d+)_c(\d+)_\d+\.")
CUHK03_BOXES = ("labeled", "detected")
# layouts whose query/gallery pids are numbered apart from the training pids (MSMT17's test ids restart at 0), so an
# equal number in both is no shared identity
SEPARATE_TEST_IDS = ("msmt17",)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
NAMED_ID_BASE = 1_000_000
EXPECTED = ("Market-1501, DukeMTMC-reID or CUHK03-NP (bounding_box_train/, query/, bounding_box_test/), MSMT17 "
            "(list_train.txt, list_query.txt, list_gallery.txt), CSV (train.csv, query.csv, gallery.csv or reid.csv "
            "with a split column) or folders (train|query|gallery/<pid>/<cam>_*.jpg)")
NO_CAMERAS = ("{where} has no camera ids: the standard protocol drops gallery images of the query's own pid AND "
              "camera, so without camera ids every true match would be removed; add camera ids (a <cam>_ file-name "
              "prefix or a camid column) or pass {option} if all query and gallery images come from "
              "different cameras")


class ReIDItem(NamedTuple):
    """One image: its path, identity and camera (-1 while a layout gives none)."""

    path: str
    pid: int
    camid: int


@dataclass
class ReIDData:
    """A re-id dataset: ``train`` with pids relabelled 0..num_train_ids-1, ``query`` and ``gallery`` with their own
    pids; ``num_cameras`` counts the distinct camera ids of all three splits."""

    name: str
    train: list[ReIDItem]
    query: list[ReIDItem]
    gallery: list[ReIDItem]
    num_train_ids: int
    num_cameras: int


# ----------------------------------------------------------------------------------------------------- layouts


def _images(folder: str) -> list[str]:
    """Image files under ``folder`` (recursively), sorted."""
    return sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files
                  if f.lower().endswith(IMAGE_EXTENSIONS))


@dataclass(frozen=True)
class BoxLayout:
    """A Market-1501-style layout: the three ``MARKET_DIRS`` folders of ``PID_cCAM...`` files, under the root or one
    of ``nested`` (tried in order)."""

    title: str
    nested: tuple[str, ...]
    name: re.Pattern  # file names: group 1 the pid, group 2 the 1-based camera
    example: str


BOX_LAYOUTS = {
    "market1501": BoxLayout("Market-1501", (MARKET_NESTED,), MARKET_NAME, "PID_cCAMsSEQ_FRAME_BOX.jpg, e.g. "
                                                                         "0002_c1s1_000451_03.jpg"),
    "dukemtmc": BoxLayout("DukeMTMC-reID", ("DukeMTMC-reID",), DUKE_NAME, "PID_cCAM_fFRAME.jpg, e.g. "
                                                                         "0001_c2_f0046182.jpg"),
    **{f"cuhk03-{boxes}": BoxLayout(f"CUHK03-NP ({boxes} boxes)", (f"cuhk03-np/{boxes}", boxes), CUHK03_NAME,
                                    "PID_cCAM_INDEX.png, e.g. 0001_c1_1.png") for boxes in CUHK03_BOXES},
}


def _marker(needed: tuple[str, ...]) -> str:
    """The Market-style folder that shows a layout holding ``needed``: the training one, else the gallery's
    ``bounding_box_test`` (``query/`` alone is also the folder layout's)."""
    return MARKET_DIRS[0] if "train" in needed else MARKET_DIRS[2]


def _nested_base(root: str, layout: BoxLayout, needed: tuple[str, ...] = SPLITS) -> str | None:
    """The first of ``layout``'s nested folders under ``root`` that holds the folder of ``needed``'s first split,
    or None."""
    return next((os.path.join(root, n) for n in layout.nested
                 if os.path.isdir(os.path.join(root, n, _marker(needed)))), None)


def _read_boxes(root: str, needed: tuple[str, ...], layout: str) -> dict[str, list[ReIDItem]]:
    """A Market-style layout: pid -1 (junk) dropped everywhere, pid 0 (distractors) dropped from training."""
    spec = BOX_LAYOUTS[layout]
    base = _nested_base(root, spec, needed) or root
    splits: dict[str, list[ReIDItem]] = {s: [] for s in SPLITS}
    for split, folder in zip(SPLITS, MARKET_DIRS, strict=True):
        if split not in needed:
            continue
        path = os.path.join(base, folder)
        if not os.path.isdir(path):
            dirs = ", ".join(MARKET_DIRS[SPLITS.index(s)] + "/" for s in needed)
            raise UserError(f"{path} is missing; a {spec.title} root needs {dirs}")
        items = []
        for file in _images(path):
            match = spec.name.match(os.path.basename(file))
            if match is None or int(match.group(2)) < 1:
                raise UserError(f"{file}: not a {spec.title} file name ({spec.example}; cameras from 1)")
            pid, cam = int(match.group(1)), int(match.group(2)) - 1
            if pid == -1 or (pid == 0 and split == "train"):  # junk everywhere; distractors are no training id
                continue
            items.append(ReIDItem(file, pid, cam))
        splits[split] = items
    return splits


def _read_msmt(root: str, needed: tuple[str, ...]) -> dict[str, list[ReIDItem]]:
    def folder(*names: str) -> str:
        for name in names:
            if os.path.isdir(os.path.join(root, name)):
                return os.path.join(root, name)
        raise UserError(f"{root}: MSMT17 needs an image folder {' or '.join(n + '/' for n in names)}")

    test_dir = folder("test", "mask_test_v2")

    def read(name: str, images: str, optional: bool = False) -> list[ReIDItem]:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            if optional:
                return []
            raise UserError(f"{path} is missing; MSMT17 needs list_train.txt, list_query.txt and list_gallery.txt")
        items = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rel, pid = line.split()
                    cam = int(os.path.basename(rel).split("_")[2]) - 1
                    items.append(ReIDItem(os.path.join(images, rel), int(pid), cam))
                except (ValueError, IndexError):
                    raise UserError(f"{path} line {number}: expected 'PATH PID' with an MSMT17 file name "
                                    f"(PID_INDEX_CAM_..., e.g. 0000_000_01_0303morning_0015_0.jpg), "
                                    f"got {line.strip()!r}") from None
        return items

    train = []
    if "train" in needed:  # list_val.txt: more images of the training ids (MSMT17's 32,621 training images)
        train_dir = folder("train", "mask_train_v2")
        train = read("list_train.txt", train_dir) + read("list_val.txt", train_dir, optional=True)
    return {"train": train, "query": read("list_query.txt", test_dir), "gallery": read("list_gallery.txt", test_dir)}


def _numbering(names: set[str]) -> dict[str, int]:
    """Integers for identity or camera names: integer names keep their value, the others count up in sorted order
    from 1,000,000 (or above the largest integer name); '' (no name) maps to -1."""
    numbers = {n: int(n) for n in names if re.fullmatch(r"-?\d+", n)}
    start = max(NAMED_ID_BASE, max(numbers.values(), default=0) + 1)
    others = sorted(n for n in names if n and n not in numbers)
    return {**numbers, **{n: start + i for i, n in enumerate(others)}, "": -1}


def _read_folders(root: str, needed: tuple[str, ...]) -> dict[str, list[ReIDItem]]:
    raw: dict[str, list[tuple[str, str, str]]] = {s: [] for s in SPLITS}
    for split in needed:
        base = os.path.join(root, split)
        if not os.path.isdir(base):
            raise UserError(f"{base} is missing; the folder layout needs {', '.join(s + '/' for s in needed)}, each "
                            f"with one <pid>/ folder of <cam>_*.jpg images per identity")
        rows = []
        for pid in sorted(e.name for e in os.scandir(base) if e.is_dir()):
            for path in _images(os.path.join(base, pid)):
                cam, sep, _ = os.path.basename(path).partition("_")
                rows.append((path, pid, cam.strip() if sep else ""))
        raw[split] = rows
    return _numbered(raw)


def _numbered(raw: dict[str, list[tuple[str, str, str]]]) -> dict[str, list[ReIDItem]]:
    """(path, pid name, camera name or '') rows to items, names numbered consistently across the splits."""
    rows = [r for split in raw.values() for r in split]
    pids, cams = _numbering({r[1] for r in rows}), _numbering({r[2] for r in rows})
    return {split: [ReIDItem(p, pids[pid], cams[cam]) for p, pid, cam in items] for split, items in raw.items()}


def _read_csv(root: str, needed: tuple[str, ...]) -> dict[str, list[ReIDItem]]:
    single = os.path.join(root, "reid.csv")
    files = [(single, None)] if os.path.isfile(single) else [(os.path.join(root, f"{s}.csv"), s) for s in needed]
    raw: dict[str, list[tuple[str, str, str]]] = {s: [] for s in SPLITS}
    for path, split in files:
        if not os.path.isfile(path):
            raise UserError(f"{path} is missing; the CSV layout needs {', '.join(s + '.csv' for s in needed)} (or "
                            f"one reid.csv with a split column), columns path,pid[,camid]")
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            reader.fieldnames = [n.strip().lower() for n in reader.fieldnames or ()]
            need = {"path", "pid"} | ({"split"} if split is None else set())
            if not need <= set(reader.fieldnames):
                raise UserError(f"{path}: needs the columns {','.join(sorted(need))} (camid optional), "
                                f"got {','.join(reader.fieldnames) or 'none'}")
            for number, row in enumerate(reader, 2):
                where = (row.get("split") or "").strip().lower() if split is None else split
                file, pid = (row.get("path") or "").strip(), (row.get("pid") or "").strip()
                if where not in raw or not file or not pid:
                    raise UserError(f"{path} line {number}: needs a path, a pid"
                                    f"{' and a split of train, query or gallery' if split is None else ''}")
                raw[where].append((os.path.join(root, file), pid, (row.get("camid") or "").strip()))
    return _numbered(raw)


# root, the splits wanted -> items per split (the others empty)
READERS: dict[str, Callable[[str, tuple[str, ...]], dict[str, list[ReIDItem]]]] = {
    **{name: functools.partial(_read_boxes, layout=name) for name in BOX_LAYOUTS},
    "msmt17": _read_msmt, "csv": _read_csv, "folders": _read_folders}


def _box_layout(root: str, needed: tuple[str, ...]) -> str | None:
    """The Market-style layout at ``root``, or None: CUHK03-NP's box folders (both present: the user chooses), a
    known nested folder, else the file names of ``needed``'s first split (DukeMTMC-reID's ``_f`` frames) or the
    folder's name."""
    cuhk = [b for b in CUHK03_BOXES if _nested_base(root, BOX_LAYOUTS[f"cuhk03-{b}"], needed)]
    if len(cuhk) == 2:
        raise UserError(f"{root} holds CUHK03-NP's labeled/ and detected/ boxes; choose one with --layout "
                        f"cuhk03-labeled or --layout cuhk03-detected")
    if cuhk:
        return f"cuhk03-{cuhk[0]}"
    for name in ("market1501", "dukemtmc"):
        if _nested_base(root, BOX_LAYOUTS[name], needed):
            return name
    marker = os.path.join(root, _marker(needed))
    if not os.path.isdir(marker):
        return None
    first = next(iter(_images(marker)), "")
    if DUKE_NAME.match(os.path.basename(first)):
        return "dukemtmc"
    folder = os.path.basename(os.path.normpath(os.path.abspath(root)))
    if CUHK03_NAME.match(os.path.basename(first)) and folder in CUHK03_BOXES:
        return f"cuhk03-{folder}"
    return "market1501"


def detect_layout(root: str, needed: tuple[str, ...] = SPLITS) -> str:
    """The layout name of the re-id data at ``root`` holding the splits ``needed``; a UserError when none matches
    (or, for CUHK03-NP with both kinds of boxes, when the user has to choose)."""
    boxes = _box_layout(root, needed)
    if boxes:
        return boxes
    if os.path.isfile(os.path.join(root, f"list_{needed[0]}.txt")):
        return "msmt17"
    if any(os.path.isfile(os.path.join(root, f)) for f in ("reid.csv", f"{needed[0]}.csv")):
        return "csv"
    if all(os.path.isdir(os.path.join(root, s)) for s in needed):
        return "folders"
    raise UserError(f"{root}: no re-id layout found; expected {EXPECTED}")


# ------------------------------------------------------------------------------------------------ readability


def _drop_unreadable(root: str, splits: dict[str, list[ReIDItem]]) -> dict[str, list[ReIDItem]]:
    """The splits without their unreadable files; those are counted in one warning naming the first. Images that are
    not 8-bit RGB are converted as :func:`~visattn.tasks.images.to_rgb` says, in one warning."""
    modes: dict[str, str] = {}
    problems = read_problems([i.path for s in SPLITS for i in splits[s]], modes)
    notice = mode_notice(modes, root)
    if notice:
        warnings.warn(notice, stacklevel=3)
    bad = {s: [i for i in splits[s] if i.path in problems] for s in SPLITS}
    count = sum(len(b) for b in bad.values())
    if count:
        first = next(i.path for s in SPLITS for i in bad[s])
        per_split = ", ".join(f"{s} {len(b)}" for s, b in bad.items() if b)
        warnings.warn(f"skipped {count} unreadable image file(s) under {root} ({per_split}; first: {first}: "
                      f"{problems[first]})", stacklevel=3)
    return {s: [i for i in splits[s] if i.path not in problems] for s in SPLITS}


# --------------------------------------------------------------------------------------------------- loading


def load_reid_data(root: str, layout: str = "auto", distinct_cameras: bool = False,
                   test_only: bool = False, cameras_option: str = "--distinct-cameras") -> ReIDData:
    """Read the re-id dataset at ``root`` (layouts: see the module docstring; ``auto`` detects it).

    ``distinct_cameras``: the data has no (or untrusted) camera ids but every query and gallery image comes from a
    different camera; every query item gets camid 0, every gallery item camid 1, training items camid 0.
    ``test_only``: only query and gallery are wanted (evaluation, of the training data or another): the training
    folder or list may be absent (a copy of the test images alone), and the train split comes back empty.
    ``cameras_option``: the option the missing-camera error names (the one that sets ``distinct_cameras``).
    Errors (one-line UserError): an unknown layout, missing folders or list files, an empty split, query/gallery
    without camera ids, fewer than 2 training ids, no query id in the gallery, one identity in query and gallery
    together, no cross-camera match at all.
    """
    if layout not in LAYOUTS:
        raise UserError(f"unknown re-id layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if not os.path.isdir(root):
        raise UserError(f"{root}: no such folder; expected {EXPECTED}")
    needed = SPLITS[1:] if test_only else SPLITS
    layout = detect_layout(root, needed) if layout == "auto" else layout
    splits = READERS[layout](root, needed)
    if test_only:
        splits["train"] = []
    for split in needed:
        if not splits[split]:
            hint = f"; put each identity's images in {split}/<pid>/" if layout == "folders" else ""
            raise UserError(f"{root}: the {split} split has no images ({layout} layout{hint})")
    if distinct_cameras:
        splits = {s: [i._replace(camid=int(s == "gallery")) for i in splits[s]] for s in SPLITS}
    missing = [s for s in ("query", "gallery") if any(i.camid < 0 for i in splits[s])]
    if missing:
        counts = ", ".join(f"{sum(i.camid < 0 for i in splits[s])} of {len(splits[s])} {s} images" for s in missing)
        raise UserError(NO_CAMERAS.format(where=f"{root} ({counts})", option=cameras_option))
    splits["train"] = [i._replace(camid=max(i.camid, 0)) for i in splits["train"]]
    splits = _drop_unreadable(root, splits)
    for split in needed:
        if not splits[split]:
            raise UserError(f"{root}: the {split} split has no readable images")
    ids = sorted({i.pid for i in splits["train"]})
    if len(ids) < 2 and not test_only:
        raise UserError(f"{root}: the train split has {len(ids)} identity; re-id training needs at least 2")
    cameras_of: dict[int, set[int]] = {}
    for item in splits["gallery"]:
        cameras_of.setdefault(item.pid, set()).add(item.camid)
    if not any(q.pid in cameras_of for q in splits["query"]):
        raise UserError(f"{root}: no query identity appears in the gallery, so nothing can be retrieved")
    test_ids = {i.pid for s in ("query", "gallery") for i in splits[s]}
    if len(test_ids) == 1:
        raise UserError(f"{root}: query and gallery hold one identity (pid {test_ids.pop()}), so every image matches "
                        f"and there is nothing to rank it against; add gallery images of other identities")
    unmatched = [q for q in splits["query"] if not cameras_of.get(q.pid, set()) - {q.camid}]
    if len(unmatched) == len(splits["query"]):
        raise UserError(f"{root}: no query has a gallery image of its identity from another camera, so the standard "
                        f"same-camera removal leaves nothing to retrieve; check the camera ids")
    if unmatched:
        warnings.warn(f"{root}: {len(unmatched)} of {len(splits['query'])} queries have no gallery image of their "
                      f"identity from another camera (first: {unmatched[0].path}); mAP, CMC and mINP skip them",
                      stacklevel=2)
    shared = {i.pid for i in splits["train"]} & {i.pid for s in ("query", "gallery") for i in splits[s] if i.pid > 0}
    if shared and layout not in SEPARATE_TEST_IDS:
        warnings.warn(f"{root}: {len(shared)} identities are in the train split and in query or gallery (first: pid "
                      f"{min(shared)}); re-id evaluation assumes unseen identities, so its scores would be too high",
                      stacklevel=2)
    relabel = {pid: n for n, pid in enumerate(ids)}
    train = [i._replace(pid=relabel[i.pid]) for i in splits["train"]]
    cameras = len({i.camid for s in SPLITS for i in splits[s]})
    name = os.path.basename(os.path.normpath(os.path.abspath(root)))
    return ReIDData(name=f"{name} ({layout})" if layout.startswith("cuhk03") else name, train=train,
                    query=splits["query"], gallery=splits["gallery"], num_train_ids=len(ids), num_cameras=cameras)


# ---------------------------------------------------------------------------------------------------- dataset


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)


class ReIDImageSet(Dataset):
    """``(image, pid, camid)`` for ``items``: image = ``transform(RGB PIL image)`` (default: a float (3, H, W)
    tensor in [0, 1]), pid and camid ints.

    ``relabel``: number the pids of ``items`` 0..P-1 in sorted order (``pid_map`` holds raw -> label); items from
    :func:`load_reid_data`'s train split are already relabelled. A file that fails to decode is warned about once,
    recorded in ``failed`` (per process: each DataLoader worker has its own) and replaced by another image, of the
    same pid and camera if there is one, else of the same pid, else the next index.
    """

    def __init__(self, items: list[ReIDItem], transform: Callable | None = None, relabel: bool = False):
        self.items = [ReIDItem(*i) for i in items]
        self.pid_map: dict[int, int] | None = None
        if relabel:
            self.pid_map = {pid: n for n, pid in enumerate(sorted({i.pid for i in self.items}))}
            self.items = [i._replace(pid=self.pid_map[i.pid]) for i in self.items]
        self.transform = transform or _to_tensor
        self.failed: set[str] = set()

    def __len__(self) -> int:
        return len(self.items)

    def _candidates(self, index: int) -> Iterator[int]:
        item = self.items[index]
        yield index
        n = len(self.items)
        after = [(index + step) % n for step in range(1, n)]
        yield from (j for j in after if self.items[j].pid == item.pid and self.items[j].camid == item.camid)
        yield from (j for j in after if self.items[j].pid == item.pid and self.items[j].camid != item.camid)
        yield from (j for j in after if self.items[j].pid != item.pid)

    def __getitem__(self, index: int):
        for j in self._candidates(index):
            item = self.items[j]
            if item.path in self.failed:
                continue
            try:
                image = load_rgb(item.path)
            except READ_ERRORS as err:
                self.failed.add(item.path)
                warnings.warn(f"skipping unreadable image {item.path}: {first_line(err)}", stacklevel=2)
                continue
            return self.transform(image), item.pid, item.camid
        raise UserError(f"none of the {len(self.items)} images of the set can be read (first: {self.items[0].path})")


# ---------------------------------------------------------------------------------------------------- sampler


class PKBatchSampler(Sampler[list[int]]):
    """Batch sampler of P = ``num_ids`` distinct identities x K = ``num_instances`` images each, for
    ``DataLoader(batch_sampler=...)``.

    An epoch is fast-reid's (and about BoT's): images // (P K) batches, so that an epoch-based recipe trains as many
    iterations as theirs. Each identity's images are shuffled and cut into groups of K (an identity with fewer than K
    images gives one group drawn with replacement; a remainder short of K is left out), and each batch takes the
    next group of P identities drawn uniformly among those with groups left, as BoT's ``RandomIdentitySampler``;
    when fewer than P identities have groups left, theirs are dealt afresh. The epoch's batches are shared
    round-robin among ``world_size`` ranks, each getting the same number, at least one. ``set_epoch(e)`` reshuffles
    from ``seed + e``; batch b of an epoch is the same whatever the world size.
    """

    def __init__(self, pids: list[int], num_ids: int = 16, num_instances: int = 4, seed: int = 0,
                 world_size: int = 1, rank: int = 0):
        if num_ids < 1 or num_instances < 1:
            raise UserError(f"a PK batch needs at least 1 identity x 1 image, got {num_ids} x {num_instances}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} of world size {world_size}")
        self.by_id: dict[int, list[int]] = {}
        for index, pid in enumerate(pids):
            self.by_id.setdefault(int(pid), []).append(index)
        if len(self.by_id) < num_ids * world_size:
            processes = f" for {world_size} processes" if world_size > 1 else ""
            raise UserError(f"a PK batch needs {num_ids} identities per process but the training set has "
                            f"{len(self.by_id)}{processes}; use a smaller --batch-size (P = --batch-size // "
                            f"--instances = {num_ids} identities per batch)")
        self.ids = sorted(self.by_id)
        self.num_images = len(pids)
        self.num_ids, self.num_instances, self.seed = num_ids, num_instances, seed
        self.world_size, self.rank, self.epoch = world_size, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, self.num_images // (self.num_ids * self.num_instances) // self.world_size)

    def _groups(self, pid: int, rng: np.random.Generator) -> list[list[int]]:
        """``pid``'s images shuffled and cut into groups of K (one group drawn with replacement when it has fewer)."""
        pool, k = self.by_id[pid], self.num_instances
        if len(pool) < k:
            return [[int(i) for i in rng.choice(pool, k, replace=True)]]
        order = [int(i) for i in rng.permutation(pool)]
        return [order[g * k:(g + 1) * k] for g in range(len(order) // k)]

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        groups = {pid: self._groups(pid, rng) for pid in self.ids}
        for b in range(len(self) * self.world_size):
            available = [pid for pid in self.ids if groups[pid]]
            if len(available) < self.num_ids:
                for pid in self.ids:
                    groups[pid] = groups[pid] or self._groups(pid, rng)
                available = self.ids
            batch = [i for j in rng.choice(len(available), self.num_ids, replace=False)
                     for i in groups[available[j]].pop()]
            if b % self.world_size == self.rank:
                yield batch


# ------------------------------------------------------------------------------------------------- transforms


def _size(size) -> tuple[int, int]:
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (H, W), got {size}")
    return int(size[0]), int(size[1])


def reid_train_transform(size=(256, 128), pad: int = 10, flip: float = 0.5, erasing: float = 0.5):
    """BoT training transform of an RGB PIL image to a float (3, H, W) tensor in [0, 1] (no mean/std: the model
    normalises): resize (antialiased), horizontal flip, zero-pad ``pad`` + random crop back to ``size``, random
    erasing (area 2-40%, aspect 0.3-3.3, as BoT) filled with the ImageNet mean colour, i.e. 0 after the model's
    normalisation, which is what BoT's erasing after ``Normalize`` aims at."""
    from torchvision.transforms import v2

    size = _size(size)
    steps = [v2.Resize(size, antialias=True)]
    if flip > 0:
        steps.append(v2.RandomHorizontalFlip(flip))
    if pad > 0:
        steps += [v2.Pad(pad, fill=0), v2.RandomCrop(size)]
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if erasing > 0:
        steps.append(v2.RandomErasing(p=erasing, scale=(0.02, 0.4), ratio=(0.3, 3.33), value=list(IMAGENET_MEAN)))
    return v2.Compose([*steps, v2.ToPureTensor()])


def reid_eval_transform(size=(256, 128)):
    """Resize (antialiased) to ``size`` = (H, W) and a float (3, H, W) tensor in [0, 1]."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(_size(size), antialias=True), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                       v2.ToPureTensor()])


# -------------------------------------------------------------------------------------------- synthetic people

SYNTHETIC_VERSION = 2
_TEXTURES = ("plain", "hstripes", "vstripes", "checks", "logo")
_LOWERS = ("trousers", "shorts", "skirt")
_SKINS = np.array([[241, 204, 170], [224, 172, 130], [190, 135, 95], [141, 85, 55], [95, 60, 40]], float)
_HAIRS = np.array([[20, 15, 10], [70, 40, 20], [150, 110, 60], [220, 190, 120], [150, 150, 150]], float)


def _colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) clothing colours in 0..255: mostly saturated hues, a fifth greys (black to white)."""
    h, s, v = rng.uniform(0, 6, n), rng.uniform(0.45, 1.0, n), rng.uniform(0.35, 0.95, n)
    i = np.floor(h).astype(int) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack([np.stack(c, 1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    rgb = table[i, np.arange(n)]
    grey = rng.random(n) < 0.2
    rgb[grey] = rng.uniform(0.08, 0.92, (grey.sum(), 1))
    return rgb * 255


def _looks(rng: np.random.Generator, n: int) -> list[dict]:
    """Fixed appearances of ``n`` identities."""
    upper, second, lower, shoes, bag = (_colours(rng, n) for _ in range(5))
    return [{"upper": upper[i], "second": second[i], "lower": lower[i], "shoes": shoes[i] * 0.5,
             "texture": _TEXTURES[rng.integers(len(_TEXTURES))], "stripes": int(rng.integers(3, 6)),
             "bottom": _LOWERS[rng.integers(len(_LOWERS))], "width": float(rng.uniform(0.4, 0.56)),
             "height": float(rng.uniform(0.8, 0.93)), "skin": _SKINS[rng.integers(len(_SKINS))],
             "hair": _HAIRS[rng.integers(len(_HAIRS))], "long_hair": bool(rng.random() < 0.35),
             "bag": ("none", "backpack", "handbag")[rng.integers(3)], "bag_colour": bag[i]} for i in range(n)]


def _cameras(rng: np.random.Generator, n: int) -> list[dict]:
    """Per camera: background, viewpoint (mirror, shift), scale, illumination gain and colour cast."""
    grey = lambda lo, hi: rng.uniform(lo, hi) + rng.uniform(-12, 12, 3)  # noqa: E731  (street scenes: greyish)
    return [{"sky": grey(90, 190), "floor": grey(60, 140),
             "horizon": float(rng.uniform(0.5, 0.8)), "mirror": bool(c % 2),
             "shift": float(rng.uniform(-0.08, 0.08)), "scale": float(rng.uniform(0.78, 1.0)),
             "gain": float(rng.uniform(0.75, 1.2)), "cast": rng.uniform(-12, 12, 3)} for c in range(n)]


def _person(rng: np.random.Generator, look: dict, cam: dict, size: tuple[int, int], offset: float = 0.0) -> np.ndarray:
    """One (H, W, 3) uint8 image of ``look`` seen by ``cam``; ``offset`` moves the person sideways (in widths)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.where((yy < cam["horizon"] * h)[..., None], cam["sky"], cam["floor"]).astype(np.float32)
    img += rng.normal(0, 10, (h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]  # blotchy background
    scale = cam["scale"] * rng.uniform(0.94, 1.05)
    bh, bw = h * look["height"] * scale, w * look["width"] * scale
    top = (h - bh) / 2 + rng.uniform(-0.03, 0.03) * h
    centre = w * (0.5 + cam["shift"] + offset + rng.uniform(-0.04, 0.04))
    u, v = (xx - centre) / bw, (yy - top) / bh  # body coordinates: torso |u| <= 0.5, head at v 0, feet at v 1
    au, stride = np.abs(u), rng.uniform(0, 0.12)

    def paint(mask, colour):
        img[mask] = colour

    legs = (v >= 0.52) & (v < 0.95) & (au <= 0.42) & ~((au < 0.04 + stride) & (v > 0.6))
    paint(legs, look["skin"])
    if look["bottom"] == "trousers":
        paint(legs, look["lower"])
    elif look["bottom"] == "shorts":
        paint(legs & (v < 0.7), look["lower"])
    else:
        paint((v >= 0.52) & (v < 0.78) & (au <= 0.42 + 0.5 * (v - 0.52)), look["lower"])
    paint((v >= 0.95) & (v <= 1.0) & (au <= 0.45) & ~((au < 0.04 + stride) & (v > 0.6)), look["shoes"])
    arms = (v >= 0.16) & (v < 0.5) & (au > 0.5) & (au <= 0.64 + 0.1 * (v - 0.16))
    paint(arms & (v >= 0.44), look["skin"])
    paint(arms & (v < 0.44), look["upper"])
    torso = (v >= 0.15) & (v < 0.53) & (au <= 0.5)
    paint(torso, look["upper"])
    tv, tu = (v - 0.15) / 0.38, u + 0.5
    texture, n = look["texture"], look["stripes"]
    if texture == "hstripes":
        paint(torso & (np.floor(tv * 2 * n) % 2 == 1), look["second"])
    elif texture == "vstripes":
        paint(torso & (np.floor(tu * n) % 2 == 1), look["second"])
    elif texture == "checks":
        paint(torso & ((np.floor(tv * n) + np.floor(tu * 3)) % 2 == 1), look["second"])
    elif texture == "logo":
        paint(torso & (au < 0.2) & (np.abs(tv - 0.35) < 0.15), look["second"])
    if look["long_hair"]:
        paint((v >= 0.02) & (v < 0.26) & (au > 0.17) & (au <= 0.32), look["hair"])
    head = (u / 0.25) ** 2 + ((v - 0.075) / 0.075) ** 2 <= 1
    paint(head, look["skin"])
    paint(head & (v < 0.045), look["hair"])
    if look["bag"] == "backpack":  # on the right side of the body; mirrored cameras see it on the left
        paint((v >= 0.17) & (v < 0.47) & (u > 0.42) & (u <= 0.72), look["bag_colour"])
    elif look["bag"] == "handbag":
        paint((v >= 0.42) & (v < 0.58) & (u > 0.6) & (u <= 0.9), look["bag_colour"])
    for _ in range(int(rng.random() < 0.5) + int(rng.random() < 0.15)):  # occluders: a post, a passer-by, a bike
        oh, ow = int(rng.integers(h // 6, h // 2)), int(rng.integers(w // 8, w // 2))
        oy = int(rng.integers(0, h - oh)) if rng.random() < 0.5 else h - oh
        ox = int(rng.integers(0, w - ow))
        img[oy:oy + oh, ox:ox + ow] = rng.uniform(20, 235, 3)
    img = img * cam["gain"] * rng.uniform(0.92, 1.08) + cam["cast"] + rng.normal(0, 5, img.shape)
    if cam["mirror"]:
        img = img[:, ::-1]
    return np.clip(img, 0, 255).astype(np.uint8)


def _synthetic_marker(root: str) -> dict | None:
    try:
        with open(os.path.join(root, ".synthetic-reid.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_synthetic_reid(root: str, num_train_ids: int = 32, num_test_ids: int = 16, num_cameras: int = 4,
                         images_per_camera: int = 2, size: tuple[int, int] = (128, 64), seed: int = 0) -> str:
    """Write the built-in synthetic re-id set in the Market-1501 layout at ``root`` (unless a complete one with the
    same settings is there) and return ``root``.

    Identities 1..num_train_ids train, the next num_test_ids test; each has ``images_per_camera`` images per
    camera. A test identity's first image in each even-numbered camera (0, 2, ...) is a query, the rest gallery;
    the gallery also holds 2 x num_cameras pid-0 distractors (other people) and num_cameras pid -1 junk crops.
    Identities differ in clothing colours, upper-body texture (plain, stripes, checks, logo), trousers/shorts/skirt,
    build, skin and hair, bag; cameras in background, viewpoint (mirror, shift), scale, gain and colour cast; each
    image adds position and scale jitter, occluders and noise. Deterministic by ``seed``. Written into a temporary
    folder beside ``root`` and renamed into place, so an interrupted run leaves no partial set.
    """
    if num_train_ids < 2 or num_test_ids < 1 or num_cameras < 2 or images_per_camera < 1:
        raise UserError(f"a synthetic re-id set needs >= 2 training ids, >= 1 test id, >= 2 cameras and >= 1 image "
                        f"per id and camera, got {num_train_ids}, {num_test_ids}, {num_cameras}, "
                        f"{images_per_camera}")
    size = _size(size)
    params = {"version": SYNTHETIC_VERSION, "num_train_ids": num_train_ids, "num_test_ids": num_test_ids,
              "num_cameras": num_cameras, "images_per_camera": images_per_camera, "size": list(size),
              "seed": seed}
    if _synthetic_marker(root) == params:
        return root
    if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)) and _synthetic_marker(root) is None:
        raise UserError(f"{root} exists and is not a synthetic re-id set; choose an empty or new folder")
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    print(f"writing the synthetic re-id set ({num_train_ids + num_test_ids} identities, {num_cameras} cameras) to "
          f"{root}, once", flush=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(root))}.tmp-")
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        _write_people(tmp, params)
        with open(os.path.join(tmp, ".synthetic-reid.json"), "w", encoding="utf-8") as f:
            json.dump(params, f)
        old = None
        if _synthetic_marker(root) == params:  # another process wrote the same set meanwhile
            return root
        if os.path.isdir(root) and os.listdir(root):  # a synthetic set with other settings: swap it out
            old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(root))}.old-")
            os.replace(root, old)
        try:
            os.replace(tmp, root)
        except OSError:
            if _synthetic_marker(root) != params:  # not another process finishing the same set first
                raise
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _write_people(folder: str, params: dict) -> None:
    """The images of :func:`write_synthetic_reid` under ``folder``."""
    rng = np.random.default_rng(params["seed"])
    ids = params["num_train_ids"] + params["num_test_ids"]
    cams, shots = params["num_cameras"], params["images_per_camera"]
    size = tuple(params["size"])
    distractors = 2 * cams
    looks, cameras = _looks(rng, ids + distractors), _cameras(rng, cams)
    dirs = {s: os.path.join(folder, d) for s, d in zip(SPLITS, MARKET_DIRS, strict=True)}
    for d in dirs.values():
        os.makedirs(d)
    frame = 0

    def save(split: str, pid: int, cam: int, image: np.ndarray) -> None:
        nonlocal frame
        frame += 1
        name = f"{pid:04d}" if pid >= 0 else "-1"
        Image.fromarray(image).save(os.path.join(dirs[split], f"{name}_c{cam + 1}s1_{frame:06d}_00.jpg"), quality=90)

    for pid in range(1, ids + 1):
        test = pid > params["num_train_ids"]
        for cam in range(cams):
            for shot in range(shots):
                split = "train" if not test else "query" if shot == 0 and cam % 2 == 0 else "gallery"
                save(split, pid, cam, _person(rng, looks[pid - 1], cameras[cam], size))
    for n in range(distractors):
        save("gallery", 0, n % cams, _person(rng, looks[ids + n], cameras[n % cams], size))
    for n in range(cams):  # junk: a badly placed box with a sliver of somebody
        look = looks[int(rng.integers(ids))]
        save("gallery", -1, n, _person(rng, look, cameras[n], size, offset=float(rng.choice([-0.6, 0.6]))))
