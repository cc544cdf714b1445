"""Data the tool tests train on, made once per session: small image folders, synthetic vessels and re-id sets."""

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """Two easy classes (bright vs dark), stored as grayscale, RGBA and RGB files, plus one corrupt file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    modes = ["L", "RGBA", "RGB"]
    for split, count in (("train", 12), ("val", 6)):
        for label, level in (("bright", 220), ("dark", 30)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(level + rng.normal(0, 10, (40, 40, 4)), 0, 255).astype(np.uint8)
                mode = modes[i % 3]
                img = Image.fromarray(pixels[..., 0] if mode == "L" else pixels[..., : len(mode)], mode)
                img.save(folder / f"{i}.png")
    (root / "train" / "dark" / "corrupt.png").write_bytes(b"\x89PNG but not really")
    return root


@pytest.fixture(scope="session")
def vessel_folder(tmp_path_factory):
    """Generic layout with FOV masks: train/ and test/ (no val/: evaluation falls back to test/)."""
    from visattn.tasks.medical.data import SyntheticVessels, write_folder

    root = tmp_path_factory.mktemp("vessels")
    write_folder(SyntheticVessels(3, 64, seed=0), str(root), "train")
    write_folder(SyntheticVessels(2, (60, 72), seed=1), str(root), "test")
    return root


@pytest.fixture(scope="session")
def reid_folder(tmp_path_factory):
    from visattn.tasks.reid.data import write_synthetic_reid

    return write_synthetic_reid(str(tmp_path_factory.mktemp("reid") / "market"), num_train_ids=8, num_test_ids=4,
                                num_cameras=2, size=(64, 32))

