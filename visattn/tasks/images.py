"""Image files every task reads: the extensions, RGB loading (one conversion per image mode, said once per dataset),
the cheap up-front check that finds the files a training run would fail on (zero-byte, random bytes, truncated JPEG
or PNG) and reads each file's mode, and the inputs a prediction reads (files, folders, globs, list files; paths,
arrays or PIL images)."""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..engine.progress import Progress
from ..errors import UserError, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
# What PIL raises for a damaged file, at open, verify or decode time.
READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, UnidentifiedImageError)


EXIF_ORIENTATION = 0x0112  # the EXIF tag that tells viewers to turn or mirror the stored pixels
# How an image of each PIL mode becomes the RGB image a model reads (RGB itself is read as it is).
HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
MODE_CONVERSIONS = {
    "L": "grayscale, copied to the 3 channels",
    "1": "1-bit, copied to the 3 channels",
    "P": "palette, its colours",
    "PA": "palette with alpha, its colours, alpha dropped",
    "LA": "grayscale with alpha, copied to the 3 channels, alpha dropped",
    "La": "grayscale with alpha, copied to the 3 channels, alpha dropped",
    "RGBA": "alpha dropped: transparent pixels keep their stored colour",
    "RGBa": "alpha dropped: transparent pixels keep their stored colour",
    "RGBX": "padding channel dropped",
    "CMYK": "CMYK, converted without a colour profile",
    "YCbCr": "YCbCr, converted to RGB",
    "LAB": "Lab, converted to RGB",
    "HSV": "HSV, converted to RGB",
    **{mode: "16/32-bit integer grayscale, scaled by each image's maximum to 8 bits" for mode in HIGH_DEPTH[:-1]},
    "F": "floating-point grayscale, scaled by each image's maximum to 8 bits",
}


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as an 8-bit RGB image, converted as :data:`MODE_CONVERSIONS` says: 16/32-bit and float grayscale are
    scaled by the image's maximum (PIL's own conversion would clip every value above 255), the others by PIL."""
    if img.mode in HIGH_DEPTH:
        values = np.asarray(img, dtype=np.float32).clip(0, None)
        values = values * (255.0 / max(float(values.max()), 1.0))
        return Image.fromarray(values.round().astype(np.uint8), "L").convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_rgb(path: str) -> Image.Image:
    """Open an image file and convert it to RGB (:func:`to_rgb`)."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def mode_notice(modes: dict[str, str], where: str) -> str | None:
    """One line on how the images' modes (``modes``: {path: PIL mode}) are converted to RGB, or None when all are
    RGB: ``images under DIR: 12 L (grayscale, copied to the 3 channels), 3 RGBA (alpha dropped ...); 40 RGB``."""
    counts = Counter(modes.values())
    others = {mode: n for mode, n in counts.items() if mode != "RGB"}
    if not others:
        return None
    shown = "; ".join(f"{n} {mode} ({MODE_CONVERSIONS.get(mode, 'converted by PIL')})"
                      for mode, n in sorted(others.items(), key=lambda item: (-item[1], item[0])))
    return f"images under {where} read as RGB: {shown}" + (f"; {counts['RGB']} RGB" if counts.get("RGB") else "")


def _jpeg_complete(path: str) -> bool:
    """Whether a JPEG file ends with its end-of-image marker (allowing a little trailing padding)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64))
        return b"\xff\xd9" in f.read()


def read_problem(path: str) -> str | None:
    """Why ``path`` cannot be used as an image, or None. Cheap: the header and PIL's verify() (which checks a PNG's
    chunks); a JPEG is decoded in full only when its end marker is missing (a truncated file)."""
    return _check(path)[0]


def _turned(img: Image.Image) -> bool:
    """Whether the image's EXIF orientation tells viewers to turn or mirror it (a damaged EXIF block: no). Read from
    the header only: a PNG's EXIF after its pixel data is not looked for (PIL would decode the whole image)."""
    if img.format == "PNG" and "exif" not in img.info:
        return False
    try:
        return img.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1)
    except READ_ERRORS:
        return False


def exif_turned(path: str) -> bool:
    """Whether the image file's EXIF orientation tells viewers to turn or mirror it (read as stored all the same)."""
    with Image.open(path) as img:
        return _turned(img)


def _check(path: str) -> tuple[str | None, str | None, bool]:
    """(why ``path`` cannot be used as an image or None, its PIL mode, whether its EXIF orientation turns it)."""
    mode, turned = None, False
    try:
        with Image.open(path) as img:
            fmt, mode, turned = img.format, img.mode, _turned(img)
            img.verify()
        if fmt == "JPEG" and not _jpeg_complete(path):
            with Image.open(path) as img:
                img.load()
    except READ_ERRORS as err:
        return first_line(err), mode, turned
    return None, mode, turned


def read_problems(paths: list[str], modes: dict[str, str] | None = None,
                  turned: list[str] | None = None) -> dict[str, str]:
    """{path: why it cannot be read} for the unreadable files among ``paths`` (checked on a few threads; a check
    that takes long, a large dataset's, reports its progress); ``modes``: filled with {path: PIL mode} of the
    readable files; ``turned``: with the readable files whose EXIF orientation says to turn them."""
    workers = min(8, os.cpu_count() or 1) if len(paths) > 256 else 1
    problems = {}
    with ThreadPoolExecutor(workers) as pool:
        checks = Progress(zip(paths, pool.map(_check, paths), strict=True), f"checking {len(paths)} image files",
                          total=len(paths), interval=len(paths) + 1, final=False)
        for path, (problem, mode, rotated) in checks:
            if problem:
                problems[path] = problem
                continue
            if modes is not None:
                modes[path] = mode
            if rotated and turned is not None:
                turned.append(path)
            checks.update(1)
    return problems


# ------------------------------------------------------------------------------------------- prediction inputs

LIST_HINT = "give image files, folders, globs such as 'photos/*.jpg', or a text file listing one image path a line"


@dataclass
class ImageInputs:
    """The images a prediction reads: ``paths`` in order (each once), ``skipped``: {path: why it cannot be
    read} for the files found that are not readable images, and ``modes_line``: how images that are not 8-bit RGB
    are read (:func:`mode_notice`), or None; ``turned_line``: how images with an EXIF orientation are read, or None;
    ``outputs_line``: how many files found under the output folder were left out, or None."""

    paths: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    modes_line: str | None = None
    turned_line: str | None = None
    outputs_line: str | None = None

    def skipped_line(self) -> str | None:
        """``skipped 2 unreadable files: a.png (why); b.png (why)`` (the first three named), or None."""
        if not self.skipped:
            return None
        named = "; ".join(f"{path} ({why})" for path, why in list(self.skipped.items())[:3])
        more = f"; and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
        plural = "s" if len(self.skipped) != 1 else ""
        return f"skipped {len(self.skipped)} unreadable file{plural}: {named}{more}"


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(path).startswith(".")


def _folder_images(folder: str) -> list[str]:
    """The image files under ``folder`` and its subfolders (hidden ones left out), sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if _is_image_name(f)]
    return found


def _list_file(path: str) -> list[str] | None:
    """The paths a text file lists (one a line; blank lines and ``#`` comments left out), or None when ``path`` is
    not a text file. A relative path is taken from the current folder when it exists there, else from the list
    file's folder."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except UnicodeDecodeError:
        return None
    base = os.path.dirname(path)
    listed = []
    for line in lines:
        if line and not line.startswith("#"):
            listed.append(line if os.path.isabs(line) or os.path.exists(line) else os.path.join(base, line))
    return listed


def collect_images(inputs: Sequence[str], output: str | None = None) -> ImageInputs:
    """Every image that ``inputs`` name: image files, folders (searched recursively for
    :data:`IMAGE_EXTENSIONS`), globs (``**`` included) and list files (a text file of image paths), in the order
    given, each once. Unreadable files (and listed files that do not exist) are skipped with the reason, and files
    under the ``output`` folder (a previous run's outputs in an input folder) are left out; an input that names
    nothing, or no readable image in all, is a :class:`UserError`."""
    found: list[str] = []
    missing: dict[str, str] = {}
    for item in inputs:
        if os.path.isdir(item):
            found += _folder_images(item)
        elif os.path.isfile(item):
            listed = None if _is_image_name(item) else _list_file(item)
            if listed is None:
                found.append(item)
                continue
            for path in listed:
                if os.path.isfile(path):
                    found.append(path)
                else:
                    missing[path] = f"no such file, listed in {item}"
        elif _is_glob(item):
            for match in sorted(glob.glob(item, recursive=True)):
                found += _folder_images(match) if os.path.isdir(match) else [match] if _is_image_name(match) else []
        else:
            raise UserError(f"{item}: no such file or folder; {LIST_HINT}")
    seen: set[str] = set()
    unique = [p for p in found if not (os.path.normpath(p) in seen or seen.add(os.path.normpath(p)))]
    outputs_line = None
    if output is not None:
        under = [_under(p, output) for p in unique]
        inside = [p for p, out in zip(unique, under, strict=True) if out]
        unique = [p for p, out in zip(unique, under, strict=True) if not out]
        if inside:
            outputs_line = (f"left out {len(inside)} image file{'s' if len(inside) != 1 else ''} under the output "
                            f"folder {output} (first: {inside[0]}): the outputs of a run are not its inputs")
    if not unique and not missing:
        raise UserError(f"no images found in {', '.join(inputs)} (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                        f"{LIST_HINT}")
    modes: dict[str, str] = {}
    turned: list[str] = []
    skipped = {**missing, **read_problems(unique, modes, turned)}
    paths = [p for p in unique if p not in skipped]
    if not paths:
        path, why = next(iter(skipped.items()))
        raise UserError(f"none of the {len(skipped)} images found can be read (first: {path}: {why})")
    turned_line = None if not turned else (
        f"{len(turned)} image{'s carry' if len(turned) != 1 else ' carries'} an EXIF orientation (first: "
        f"{turned[0]}): read as stored, not turned as photo viewers show them, so what is written about them follows "
        f"the stored pixels")
    return ImageInputs(paths, skipped, mode_notice(modes, ", ".join(inputs)), turned_line, outputs_line)


def _under(path: str, folder: str) -> bool:
    """Whether ``path`` lies inside ``folder``."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def output_names(paths: Sequence[str]) -> list[str]:
    """A distinct file-name stem per path, for the files written about it: the file's stem, or where two paths share
    one, their paths below the folder they share, with ``_`` for the separators (and the extension kept when that
    is still not enough)."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    shared = {s for s in stems if stems.count(s) > 1}
    if not shared:
        return stems
    absolute = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    names = []
    for path, stem in zip(absolute, stems, strict=True):
        relative = os.path.relpath(path, root)
        names.append(os.path.splitext(relative)[0].replace(os.sep, "_") if stem in shared else stem)
    if len(set(names)) < len(names):
        names = [os.path.relpath(p, root).replace(os.sep, "_").replace(".", "_") for p in absolute]
    return names


def as_rgb(image) -> Image.Image:
    """An RGB PIL image from a file path, a PIL image (any mode) or an (H, W, 3) or (H, W) uint8 array."""
    if isinstance(image, str | os.PathLike):
        try:
            return load_rgb(os.fspath(image))
        except FileNotFoundError:
            raise UserError(f"{image}: no such file") from None
        except READ_ERRORS as err:
            raise UserError(f"cannot read {image}: {first_line(err)}") from None
    if isinstance(image, Image.Image):
        return to_rgb(image)
    array = np.asarray(image)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3))):
        raise UserError(f"an image array must be (H, W, 3) or (H, W) uint8, got {array.dtype} {array.shape}")
    return Image.fromarray(array.reshape(array.shape[:2]) if array.ndim == 3 and array.shape[2] == 1 else array
                           ).convert("RGB")
