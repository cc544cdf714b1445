"""Classification datasets: class-per-folder images, and the built-in scikit-learn digits."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def load_rgb(path: str) -> Image.Image:
    """Open an image file and convert it to RGB (grayscale, palette and RGBA inputs included)."""
    with Image.open(path) as img:
        return img.convert("RGB")


class ImageFolderDataset(Dataset):
    """Images under ``root/<class>/...``, classes sorted by name.

    Files that cannot be opened as images are counted and skipped with one warning naming the first.
    Items are (transformed RGB image, class index).
    """

    def __init__(self, root: str, transform: Callable | None = None, classes: list[str] | None = None):
        if not os.path.isdir(root):
            raise UserError(f"data folder {root} does not exist; expected one sub-folder of images per class")
        self.root, self.transform = root, transform
        self.classes = classes or sorted(e.name for e in os.scandir(root) if e.is_dir())
        if not self.classes:
            raise UserError(f"no class folders in {root}; put each class's images in root/<class>/")
        self.samples: list[tuple[str, int]] = []
        bad: list[tuple[str, str]] = []
        for label, name in enumerate(self.classes):
            folder = os.path.join(root, name)
            if not os.path.isdir(folder):
                raise UserError(f"class folder {folder} is missing; every split needs the same classes")
            for dirpath, _, files in sorted(os.walk(folder)):
                for file in sorted(files):
                    if not file.lower().endswith(IMAGE_EXTENSIONS):
                        continue
                    path = os.path.join(dirpath, file)
                    try:
                        with Image.open(path) as img:
                            img.verify()
                    except (OSError, UnidentifiedImageError, SyntaxError) as err:
                        bad.append((path, str(err)))
                        continue
                    self.samples.append((path, label))
        if bad:
            warnings.warn(
                f"skipped {len(bad)} unreadable image file(s) under {root} (first: {bad[0][0]}: {bad[0][1]})",
                stacklevel=2,
            )
        if not self.samples:
            raise UserError(f"no readable images under {root} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
        self.num_skipped = len(bad)

    def __len__(self) -> int:
        return len(self.samples)

    def labels(self) -> list[int]:
        """The class index of every item, in order."""
        return [label for _, label in self.samples]

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        img = load_rgb(path)
        return (self.transform(img) if self.transform else img), label


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
