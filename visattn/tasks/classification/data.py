"""Classification datasets: class-per-folder images, and the built-in scikit-learn digits."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ...errors import UserError, first_line
from ..images import IMAGE_EXTENSIONS, READ_ERRORS, load_rgb, mode_notice, read_problems


class ImageFolderDataset(Dataset):
    """Images under ``root/<class>/...``, classes sorted by name.

    Files that cannot be read (zero-byte, not an image, a truncated JPEG or PNG) are found up front, counted and
    skipped with one warning naming the first; a file that still fails to decode later is skipped with a warning
    naming it (another image of its class takes its place). Images that are not 8-bit RGB are converted as
    :func:`~visattn.tasks.images.to_rgb` says, in one warning per folder. ``classes`` (another split's, the
    model's): this folder's class folders must be among them; a class whose folder is absent or holds no readable
    image is left out of the scores with a warning (an evaluation split may cover part of the classes). Without
    ``classes``, a class folder without a readable image is an error. Items are (transformed RGB image, class index).
    """

    def __init__(self, root: str, transform: Callable | None = None, classes: list[str] | None = None):
        if not os.path.isdir(root):
            raise UserError(f"data folder {root} does not exist; expected one sub-folder of images per class")
        self.root, self.transform = root, transform
        folders = sorted(e.name for e in os.scandir(root) if e.is_dir())
        self.classes = classes or folders
        if not self.classes:
            raise UserError(f"no class folders in {root}; put each class's images in root/<class>/")
        extra = [c for c in folders if c not in self.classes]
        if extra:
            raise UserError(f"{root} has {_listed(extra)}, which the training split lacks: the model knows only the "
                            f"{len(self.classes)} classes of its training split")
        found: list[tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            for dirpath, _, files in sorted(os.walk(os.path.join(root, name))):
                found += [(os.path.join(dirpath, f), label) for f in sorted(files)
                          if f.lower().endswith(IMAGE_EXTENSIONS)]
        modes: dict[str, str] = {}
        problems = read_problems([path for path, _ in found], modes)
        if problems:
            first = next(path for path, _ in found if path in problems)
            warnings.warn(f"skipped {len(problems)} unreadable image file(s) under {root} (first: {first}: "
                          f"{problems[first]})", stacklevel=2)
        notice = mode_notice(modes, root)
        if notice:
            warnings.warn(notice, stacklevel=2)
        self.samples = [(path, label) for path, label in found if path not in problems]
        if not self.samples:
            raise UserError(f"no readable images under {root} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
        empty = [name for label, name in enumerate(self.classes) if not any(lb == label for _, lb in self.samples)]
        if empty and classes is None:
            raise UserError(f"{root}: the class folder(s) {_listed(empty)} hold no readable image, so the model could "
                            f"not learn them; add images or remove the folder(s)")
        if empty:
            warnings.warn(f"{root} has no readable image of {len(empty)} of the {len(self.classes)} classes "
                          f"({_listed(empty)}): they are not scored", stacklevel=2)
        self.num_skipped = len(problems)
        self.failed: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def labels(self) -> list[int]:
        """The class index of every item, in order."""
        return [label for _, label in self.samples]

    def _candidates(self, index: int):
        """``index``, then the other items of its class in order after it."""
        label, n = self.samples[index][1], len(self.samples)
        yield index
        yield from (j for j in ((index + step) % n for step in range(1, n)) if self.samples[j][1] == label)

    def __getitem__(self, index: int):
        for j in self._candidates(index):
            if j in self.failed:
                continue
            path, label = self.samples[j]
            try:
                img = load_rgb(path)
            except READ_ERRORS as err:
                self.failed.add(j)
                warnings.warn(f"skipping unreadable image {path}: {first_line(err)}", stacklevel=2)
                continue
            return (self.transform(img) if self.transform else img), label
        raise UserError(f"no image of class {self.classes[self.samples[index][1]]!r} under {self.root} can be read")


def _listed(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


class DigitsDataset(Dataset):
    """scikit-learn's handwritten digits (1,797 8x8 images, 10 classes), as RGB PIL images.

    A fixed stratified split: ``split='train'`` has 80% of each class, ``'val'`` the rest.
    """

    classes = [str(i) for i in range(10)]

    def __init__(self, split: str, transform: Callable | None = None, seed: int = 0):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        digits = load_digits()
        images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
        train_idx, val_idx = train_test_split(
            np.arange(len(images)), test_size=0.2, stratify=digits.target, random_state=seed
        )
        idx = train_idx if split == "train" else val_idx
        self.images, self.targets = images[idx], digits.target[idx].astype(int)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def labels(self) -> list[int]:
        """The class index of every item, in order."""
        return [int(t) for t in self.targets]

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index], mode="L").convert("RGB")
        return (self.transform(img) if self.transform else img), int(self.targets[index])

    def write_samples(self, folder: str) -> list[str]:
        """The first image of each class as ``folder/digit_<class>.png`` (8x8 RGB, what the model reads before its
        transform), atomically; returns the paths."""
        from ...engine.checkpoint import atomic_write

        paths = []
        for label, name in enumerate(self.classes):
            index = int(np.flatnonzero(self.targets == label)[0])
            image = Image.fromarray(self.images[index], mode="L").convert("RGB")
            paths.append(os.path.join(folder, f"digit_{name}.png"))
            atomic_write(paths[-1], lambda tmp, image=image: image.save(tmp, format="PNG"))
        return paths
