"""Small synthetic datasets in the COCO and ADE20K layouts that mmdet's and mmseg's configs read."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image


def make_coco(root: str, images: int = 2, val_images: int = 1, size: tuple[int, int] = (96, 128)) -> None:
    """``root/{train2017,val2017}/*.jpg`` and ``root/annotations/instances_{train,val}2017.json`` (``images`` and
    ``val_images`` of them): rectangles of two of the 80 COCO classes (person, bicycle) with boxes and polygon
    masks."""
    from mmdet.datasets import CocoDataset

    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CocoDataset.METAINFO["classes"])]
    rng = np.random.default_rng(0)
    h, w = size
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for split, count in (("train2017", images), ("val2017", val_images)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        coco = {"images": [], "annotations": [], "categories": categories}
        for i in range(count):
            pixels = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
            for j in range(2):
                x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
                bw, bh = int(rng.integers(16, w // 2)), int(rng.integers(16, h // 2))
                pixels[y0:y0 + bh, x0:x0 + bw] = (200, 40 + 150 * j, 90)
                coco["annotations"].append({
                    "id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": j + 1,
                    "bbox": [x0, y0, bw, bh], "area": bw * bh, "iscrowd": 0,
                    "segmentation": [[x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh]],
                })
            name = f"{i:06d}.jpg"
            Image.fromarray(pixels).save(os.path.join(root, split, name))
            coco["images"].append({"id": i + 1, "file_name": name, "height": h, "width": w})
        with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(coco, f)


def make_ade(root: str, images: int = 2, val_images: int = 1, size: tuple[int, int] = (64, 96)) -> None:
    """``root/images/{training,validation}/*.jpg`` with label maps ``root/annotations/...*.png`` (0 = ignore):
    ``images`` and ``val_images`` of them."""
    rng = np.random.default_rng(0)
    h, w = size
    for split, count in (("training", images), ("validation", val_images)):
        os.makedirs(os.path.join(root, "images", split), exist_ok=True)
        os.makedirs(os.path.join(root, "annotations", split), exist_ok=True)
        for i in range(count):
            labels = np.ones((h, w), np.uint8)
            labels[: h // 2, : w // 2] = 2
            labels[h // 2:, w // 2:] = 3
            pixels = (labels[..., None] * 60 + rng.integers(0, 20, (h, w, 3))).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, "images", split, f"ADE_{i:04d}.jpg"))
            Image.fromarray(labels).save(os.path.join(root, "annotations", split, f"ADE_{i:04d}.png"))
