"""Image files every task reads: the extensions, RGB loading, and the cheap up-front check that finds the files a
training run would fail on (zero-byte, random bytes, truncated JPEG or PNG)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, UnidentifiedImageError

from ..errors import first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
# What PIL raises for a damaged file, at open, verify or decode time.
READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, UnidentifiedImageError)


def load_rgb(path: str) -> Image.Image:
    """Open an image file and convert it to RGB (grayscale, palette and RGBA inputs included)."""
    with Image.open(path) as img:
        return img.convert("RGB")


def _jpeg_complete(path: str) -> bool:
    """Whether a JPEG file ends with its end-of-image marker (allowing a little trailing padding)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64))
        return b"\xff\xd9" in f.read()


def read_problem(path: str) -> str | None:
    """Why ``path`` cannot be used as an image, or None. Cheap: the header and PIL's verify() (which checks a PNG's
    chunks); a JPEG is decoded in full only when its end marker is missing (a truncated file)."""
    try:
        with Image.open(path) as img:
            fmt = img.format
            img.verify()
        if fmt == "JPEG" and not _jpeg_complete(path):
            with Image.open(path) as img:
                img.load()
    except READ_ERRORS as err:
        return first_line(err)
    return None


def read_problems(paths: list[str]) -> dict[str, str]:
    """{path: why it cannot be read} for the unreadable files among ``paths`` (checked on a few threads)."""
    workers = min(8, os.cpu_count() or 1) if len(paths) > 256 else 1
    with ThreadPoolExecutor(workers) as pool:
        found = dict(zip(paths, pool.map(read_problem, paths), strict=True))
    return {path: problem for path, problem in found.items() if problem}
