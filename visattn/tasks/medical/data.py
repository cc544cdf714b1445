"""Binary segmentation data for retinal / high-resolution medical images: image, mask and optional FOV mask.

Sources give raw arrays at the original resolution: an RGB ``uint8`` image (H, W, 3), a boolean vessel mask (H, W)
and a boolean field-of-view mask (H, W) or ``None``. Two sources exist:

- :class:`FolderSource`: the DRIVE layout (``<root>/<split>/images/21_training.tif``,
  ``1st_manual/21_manual1.gif``, ``mask/21_training_mask.gif``, paired by the leading number) or the generic
  layout (``<root>/<split>/images/NAME.*``, ``masks/NAME.*``, optional ``fov/NAME.*``, paired by stem; a mask
  stem may add a suffix after ``_``, ``.`` or ``-``, as HRF's ``NAME_mask``, CHASE_DB1's ``NAME_1stHO``, STARE's
  ``NAME.ah``).
- :class:`SyntheticVessels`: fundus-like discs with branching vessels, deterministic by seed (tests and demo).

:class:`SegmentationTrainSet` turns a source into augmented random crops; :class:`SegmentationEvalSet` gives whole
normalised images plus the original-resolution targets that metrics are computed on.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset, get_worker_info

from ...engine.progress import Progress
from ...errors import UserError, first_line
from ..images import HIGH_DEPTH, IMAGE_EXTENSIONS, READ_ERRORS, exif_turned, mode_notice, read_problem, to_rgb

SYNTHETIC = "synthetic-vessels"
SYNTHETIC_DEFAULTS = {"size": 192, "train": 32, "val": 6, "seed": 0}
SEG_EXTENSIONS = (*IMAGE_EXTENSIONS, ".gif")
TRAIN_SPLITS = ("train", "training")
EVAL_SPLITS = ("val", "validation", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SegSample:
    """One image with its mask and optional FOV mask (file paths)."""

    name: str
    image: str
    mask: str
    fov: str | None = None
    size: tuple[int, int] = (0, 0)  # (height, width) of the image


def _open(path: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except READ_ERRORS as err:
        raise UserError(f"cannot read {path}: {first_line(err)}") from None


def _checked(path: str) -> tuple[int, int, str]:
    """(height, width, PIL mode) from the file header, after the up-front check that a training run could decode
    the file."""
    problem = read_problem(path)
    if problem:
        raise UserError(f"cannot read {path}: {problem}")
    with Image.open(path) as img:
        return img.size[1], img.size[0], img.mode


def read_rgb(path: str) -> np.ndarray:
    """An image file as (H, W, 3) uint8, converted as :func:`visattn.tasks.images.to_rgb` does (16-bit and float
    images scaled by their maximum)."""
    return np.asarray(to_rgb(_open(path)))


def read_binary(path: str) -> np.ndarray:
    """A mask file as (H, W) bool: ``value > 0`` for 0/1 masks, else ``value >= max / 2`` (0/255, anti-aliased)."""
    return _binarise(_mask_values(path))


def _mask_values(path: str) -> np.ndarray:
    """A mask's values (H, W): a grayscale mask's own, a colour mask's gray level; a mask of black and one colour
    (vessels drawn red, a VOC-style palette) is 0/255, the colour 255. A mask whose colour channels differ in more
    colours (a colour-coded label map, e.g. arteries red and veins blue) or whose shape is only in its alpha channel
    cannot be read as one vessel mask without losing what it says: a one-line error."""
    img = _open(path)
    if img.mode in ("1", "L", *HIGH_DEPTH):
        return np.asarray(img)
    rgba = np.asarray(img.convert("RGBA"))
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    if (rgb != rgb[..., :1]).any():
        colours = np.unique(rgb.reshape(-1, 3), axis=0)
        if len(colours) == 2 and not colours[0].any():  # black and one colour
            return np.where(rgb.any(axis=-1), 255, 0).astype(np.uint8)
        shown = ", ".join(str(tuple(int(v) for v in c)) for c in colours[:4]) + (", ..." if len(colours) > 4 else "")
        raise UserError(f"mask {path} has colours ({img.mode}: {shown}): a colour-coded label map, which a binary "
                        f"vessel mask would lose; save one 0/255 grayscale mask of the vessels")
    if (alpha != 255).any() and np.unique(rgb[..., 0]).size == 1:
        raise UserError(f"mask {path} ({img.mode}) has one colour and its shape only in the alpha channel; save the "
                        f"vessels as a 0/255 grayscale mask")
    return rgb[..., 0]


def _binarise(values: np.ndarray) -> np.ndarray:
    if values.dtype == bool:
        return values
    top = float(values.max())
    return values > 0 if top <= 1 else values >= top / 2


def _files(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(SEG_EXTENSIONS) and not f.startswith("."))


def _keyed(folder: str, key) -> dict[str, str]:
    """{key(file name): path} for the images in ``folder``; two files with one key are an error."""
    out: dict[str, str] = {}
    for name in _files(folder):
        k = key(name)
        if k in out:
            raise UserError(f"{folder} has two files for {k!r}: {os.path.basename(out[k])} and {name}")
        out[k] = os.path.join(folder, name)
    return out


def _leading_number(name: str) -> str:
    match = re.match(r"\d+", name)
    return match.group(0) if match else os.path.splitext(name)[0]


def _stem(name: str) -> str:
    return os.path.splitext(name)[0]


def _image_stem_of(stems: set[str]):
    """A mask's key: its file name stem when an image has it, else the longest image stem it starts with followed by
    ``_``, ``.`` or ``-`` (the annotation suffixes of public sets: HRF's ``01_dr_mask``, CHASE_DB1's
    ``Image_01L_1stHO``, STARE's ``im0001.ah``), else its own stem."""
    def key(name: str) -> str:
        stem = _stem(name)
        if stem in stems:
            return stem
        return next((stem[:i] for i in range(len(stem) - 1, 0, -1) if stem[i] in "_.-" and stem[:i] in stems), stem)
    return key


def resolve_split(root: str, split: str) -> str:
    """The folder under ``root`` for ``split``: 'train' also finds 'training', 'val' also 'validation' then 'test'."""
    if not os.path.isdir(root):
        raise UserError(f"data folder {root} does not exist; expected {root}/<split>/images and masks")
    candidates = {"train": TRAIN_SPLITS, "val": EVAL_SPLITS}.get(split, (split,))
    for name in candidates:
        if os.path.isdir(os.path.join(root, name)):
            return name
    raise UserError(f"{root} has no {' or '.join(c + '/' for c in candidates)} folder")


def find_samples(root: str, split: str) -> list[SegSample]:
    """Pair images with masks (and FOV masks) under ``root/<split>``, DRIVE or generic layout."""
    folder = os.path.join(root, resolve_split(root, split))
    images_dir = os.path.join(folder, "images")
    if not os.path.isdir(images_dir):
        raise UserError(f"{folder} has no images/ folder")
    if os.path.isdir(os.path.join(folder, "1st_manual")):  # DRIVE
        key, rule, by_key = _leading_number, "leading number", "a name starting with {}"
        mask_dir, fov_dir = os.path.join(folder, "1st_manual"), os.path.join(folder, "mask")
    elif os.path.isdir(os.path.join(folder, "masks")):
        key, rule = _stem, "file name stem (or the stem and a suffix after _ . -)"
        by_key = "the file name stem {} (or {} and a suffix after _ . -, as 01_dr_mask)"
        mask_dir, fov_dir = os.path.join(folder, "masks"), os.path.join(folder, "fov")
    else:
        raise UserError(f"{folder} has no masks/ (or DRIVE 1st_manual/) folder next to images/")
    images = _keyed(images_dir, key)
    if not images:
        raise UserError(f"no images in {images_dir} (extensions: {', '.join(SEG_EXTENSIONS)})")
    mask_key = key if key is _leading_number else _image_stem_of(set(images))
    masks = _keyed(mask_dir, mask_key)
    fovs = _keyed(fov_dir, mask_key) if os.path.isdir(fov_dir) else None
    samples, modes = [], {}
    checks = Progress(images.items(), f"checking {len(images)} images and their masks", interval=len(images) + 1,
                      final=False)
    for k, image in checks:
        checks.update(1)
        if k not in masks:
            raise UserError(f"no mask for {image} in {mask_dir} (masks pair with images by {by_key.format(k, k)})")
        if fovs is not None and k not in fovs:
            raise UserError(f"no FOV mask for {image} in {fov_dir} (FOV masks pair with images by "
                            f"{by_key.format(k, k)})")
        height, width, mode = _checked(image)
        for other in filter(None, (masks[k], fovs[k] if fovs is not None else None)):
            other_height, other_width, _ = _checked(other)
            if (other_height, other_width) != (height, width):
                note = ""
                if (other_height, other_width) == (width, height) and exif_turned(image):
                    note = (f"; {image} carries an EXIF orientation that turns it in viewers, but its stored pixels "
                            f"are read: save it turned (PIL's ImageOps.exif_transpose) without the orientation")
                raise UserError(f"{other} is {other_width}x{other_height} but {image} is {width}x{height}{note}")
        samples.append(SegSample(_stem(os.path.basename(image)), image, masks[k], fovs[k] if fovs is not None else None,
                                 (height, width)))
        modes[image] = mode
    unpaired = [path for others in (masks, fovs or {}) for k, path in others.items() if k not in images]
    if unpaired:
        warnings.warn(f"{len(unpaired)} mask file(s) under {folder} have no image in {images_dir} and are not used "
                      f"(first: {unpaired[0]}); images pair with masks by {rule} (image extensions: "
                      f"{', '.join(SEG_EXTENSIONS)})", stacklevel=2)
    notice = mode_notice(modes, images_dir)
    if notice:
        warnings.warn(notice, stacklevel=2)
    _warn_about_masks(samples)
    return samples


def _warn_about_masks(samples: list[SegSample]) -> None:
    """Counted warnings for masks that are read in a way their author may not mean: more than two values (pixels
    at or above half the maximum become vessel), no vessel at all (Dice 1.0 for an empty prediction, no AUC) or
    vessel everywhere in the FOV (an inverted or blank mask: no specificity, no AUC). An FOV mask without a pixel
    inside is an error: its image would have nothing scored and Dice 1.0."""
    many, empty, full = [], [], []
    for sample in samples:
        fov = None if sample.fov is None else read_binary(sample.fov)
        if fov is not None and not fov.any():
            raise UserError(f"FOV mask {sample.fov} has no pixel inside (all background): nothing of {sample.image} "
                            f"would be scored, and it would count as Dice 1.0; save the field of view as nonzero "
                            f"pixels, or remove the image")
        values = _mask_values(sample.mask)
        if values.dtype.itemsize > 1 and values.dtype != bool and np.unique(values).size > 2:
            shown = ", ".join(str(v) for v in np.unique(values)[:6])
            raise UserError(f"mask {sample.mask} is a {8 * values.dtype.itemsize}-bit image with more than two values "
                            f"({shown}, ...): a label map, which binarising at half its maximum would cut; save the "
                            f"vessels as a 0/255 (or 0/1) mask")
        distinct = (np.flatnonzero(np.bincount(values.ravel(), minlength=256)) if values.dtype == np.uint8
                    else np.unique(values))
        if distinct.size > 2:
            many.append((sample.mask, distinct))
        vessels = _binarise(values)
        if not vessels.any():
            empty.append(sample.mask)
        elif (vessels if fov is None else vessels[fov]).all():
            full.append(sample.mask)
    if many:
        path, values = many[0]
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if values.size > 6 else "")
        warnings.warn(f"{len(many)} of {len(samples)} masks have more than two values (first: {path}: {shown}); "
                      f"pixels at or above half a mask's maximum count as vessel: binarise the masks if that is not "
                      f"what they mean", stacklevel=3)
    if empty:
        warnings.warn(f"{len(empty)} of {len(samples)} masks have no vessel pixels (first: {empty[0]}): such an image "
                      f"scores Dice 1.0 when nothing is predicted and has no AUC (reported as nan)", stacklevel=3)
    if full:
        warnings.warn(f"{len(full)} of {len(samples)} masks are vessel everywhere (inside the FOV where there is one; "
                      f"first: {full[0]}): an inverted or blank mask? Such an image has no specificity or AUC "
                      f"(reported as nan)", stacklevel=3)


class FolderSource:
    """Images, masks and optional FOV masks from a folder (see :func:`find_samples`)."""

    def __init__(self, root: str, split: str):
        self.samples = find_samples(root, split)
        self.names = [s.name for s in self.samples]
        self.sizes = [s.size for s in self.samples]  # (height, width) per image
        self.has_fov = self.samples[0].fov is not None

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        s = self.samples[index]
        return read_rgb(s.image), read_binary(s.mask), read_binary(s.fov) if s.fov else None


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a (cells x cells) random grid upsampled bicubically to (height, width)."""
    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, "F").resize((width, height), Image.BICUBIC)).clip(-1, 1)


class SyntheticVessels:
    """Fundus-like images: a textured disc (the FOV) with an optic disc and branching vessel trees.

    Vessels are smooth random curves from the optic disc whose width shrinks along the curve and at each
    branch; they are drawn 4x supersampled, so the image has soft edges and the mask is coverage >= 0.5.
    Image ``i`` depends only on ``(seed, i)``.
    """

    SUPERSAMPLE = 4

    def __init__(self, count: int, size: int | tuple[int, int] = 192, seed: int = 0):
        self.count, self.seed = count, seed
        self.height, self.width = (size, size) if isinstance(size, int) else size
        if count < 1 or min(self.height, self.width) < 16:
            raise UserError(f"synthetic vessels need count >= 1 and size >= 16, got count={count}, size={size}")
        self.names = [f"synthetic_{seed}_{i:04d}" for i in range(count)]
        self.sizes = [(self.height, self.width)] * count
        self.has_fov = True

    def __len__(self) -> int:
        return self.count

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng((self.seed, index))
        h, w = self.height, self.width
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        cy, cx = h / 2 + rng.uniform(-0.02, 0.02) * h, w / 2 + rng.uniform(-0.02, 0.02) * w
        radius = 0.47 * min(h, w)
        dist = np.hypot(yy - cy, xx - cx) / radius
        fov = dist <= 1.0

        side = rng.choice([-1.0, 1.0])
        disc = (cy + rng.uniform(-0.08, 0.08) * radius, cx + side * rng.uniform(0.35, 0.5) * radius)
        coverage = self._draw_vessels(rng, disc, (cy, cx), radius)

        illumination = 1.0 - 0.45 * dist.clip(0, 1) ** 2 + 0.12 * _smooth_noise(rng, h, w, 5)
        texture = 1.0 + 0.06 * _smooth_noise(rng, h, w, max(4, min(h, w) // 6))
        base = np.array([0.80, 0.36, 0.16]) * rng.uniform(0.85, 1.15, 3)
        image = base[None, None] * (illumination * texture)[..., None]
        disc_dist = np.hypot(yy - disc[0], xx - disc[1]) / (0.16 * radius)
        image += np.exp(-disc_dist**2)[..., None] * np.array([0.45, 0.40, 0.20])
        absorption = np.array([0.45, 0.65, 0.55]) * rng.uniform(0.7, 0.95)  # vessels darkest in green
        image = image * (1 - coverage[..., None] * absorption)
        image += rng.normal(0, 0.015, image.shape)
        image = np.where(fov[..., None], image, 0.02 + rng.normal(0, 0.005, image.shape))
        rgb = (image.clip(0, 1) * 255).round().astype(np.uint8)
        return rgb, (coverage >= 0.5) & fov, fov

    def _draw_vessels(self, rng: np.random.Generator, disc: tuple[float, float], centre: tuple[float, float],
                      radius: float) -> np.ndarray:
        """Vessel coverage in [0, 1], shape (H, W): trees grown from ``disc`` until they leave the FOV."""
        ss, h, w = self.SUPERSAMPLE, self.height, self.width
        canvas = Image.new("L", (w * ss, h * ss), 0)
        draw = ImageDraw.Draw(canvas)
        step = max(radius / 25, 1.0)
        min_width = max(0.7, radius / 150)
        towards_centre = math.atan2(centre[0] - disc[0], centre[1] - disc[1])
        stack = [(disc[0], disc[1], towards_centre + a, rng.uniform(0.045, 0.06) * radius)
                 for a in np.linspace(-2.4, 2.4, rng.integers(4, 7)) + rng.uniform(-0.3, 0.3)]
        segments = 0
        while stack and segments < 4000:
            y, x, heading, width = stack.pop()
            turn = 0.0
            while width >= min_width and math.hypot(y - centre[0], x - centre[1]) < radius * 1.02:
                turn = 0.7 * turn + rng.normal(0, 0.09)
                heading += turn
                ny, nx = y + step * math.sin(heading), x + step * math.cos(heading)
                pixels = max(1, round(width * ss))
                draw.line([(x * ss, y * ss), (nx * ss, ny * ss)], fill=255, width=pixels)
                r = width * ss / 2
                draw.ellipse([nx * ss - r, ny * ss - r, nx * ss + r, ny * ss + r], fill=255)
                segments += 1
                if rng.random() < 0.12:
                    child = rng.choice([-1.0, 1.0]) * rng.uniform(0.45, 1.0)
                    stack.append((ny, nx, heading + child, width * rng.uniform(0.55, 0.8)))
                    heading -= 0.3 * child
                    width *= 0.9
                y, x, width = ny, nx, width * 0.975
        small = canvas.resize((w, h), Image.BOX)
        return np.asarray(small, dtype=np.float32) / 255.0


def parse_synthetic(spec: str) -> dict[str, int]:
    """``synthetic-vessels[:size=96,train=16,val=4,seed=0]`` -> its settings (defaults filled in)."""
    settings = dict(SYNTHETIC_DEFAULTS)
    _, _, options = spec.partition(":")
    for item in filter(None, options.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in settings or not value.strip().lstrip("-").isdigit():
            raise UserError(f"bad {SYNTHETIC} option {item!r}; expected e.g. {SYNTHETIC}:size=96,train=16,val=4,seed=0")
        settings[key] = int(value)
    return settings


def is_synthetic(data: str | None) -> bool:
    return data is None or data == SYNTHETIC or data.startswith(SYNTHETIC + ":")


def open_source(data: str | None, split: str):
    """The source for ``split`` of ``data``: a folder, or ``synthetic-vessels[:options]`` (also ``None``)."""
    if not is_synthetic(data):
        return FolderSource(data, split)
    settings = parse_synthetic(data or SYNTHETIC)
    if split not in TRAIN_SPLITS + EVAL_SPLITS:
        raise UserError(f"--split {split}: {SYNTHETIC} has a training split ({', '.join(TRAIN_SPLITS)}) and an "
                        f"evaluation split ({', '.join(EVAL_SPLITS)})")
    training = split in TRAIN_SPLITS
    return SyntheticVessels(settings["train" if training else "val"], settings["size"],
                            seed=settings["seed"] * 2 + (0 if training else 1))


def write_folder(source, root: str, split: str) -> None:
    """Save a source in the generic layout: ``root/<split>/{images,masks,fov}/NAME.png``."""
    for sub in ("images", "masks", "fov"):
        os.makedirs(os.path.join(root, split, sub), exist_ok=True)
    for i, name in enumerate(source.names):
        rgb, mask, fov = source.load(i)
        Image.fromarray(rgb).save(os.path.join(root, split, "images", f"{name}.png"))
        Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(root, split, "masks", f"{name}.png"))
        if fov is not None:
            Image.fromarray(fov.astype(np.uint8) * 255).save(os.path.join(root, split, "fov", f"{name}.png"))


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(round(height * scale), round(width * scale)), at least 1 each."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def rescale_rgb(rgb: np.ndarray, scale: float) -> np.ndarray:
    """Resize an (H, W, 3) image by ``scale`` (bilinear); unchanged for scale 1."""
    if scale == 1.0:
        return rgb
    h, w = scaled_size(*rgb.shape[:2], scale)
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))


def rescale(rgb: np.ndarray, mask: np.ndarray, fov: np.ndarray | None, scale: float):
    """Resize image (bilinear) and masks (nearest) by ``scale``; unchanged for scale 1."""
    if scale == 1.0:
        return rgb, mask, fov
    h, w = scaled_size(*mask.shape, scale)
    mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))
    fov = None if fov is None else np.asarray(Image.fromarray(fov).resize((w, h), Image.NEAREST))
    return rescale_rgb(rgb, scale), mask, fov


def _check_prob(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{name} probability must be in [0, 1], got {value}")
    return float(value)


@dataclass(frozen=True)
class Augmentation:
    """The training augmentation: a probability per step (0 = off) and its parameters.

    The defaults are visattn's own pipeline; :data:`FSGNET_AUGMENTATION` is FSG-Net's official recipe. Steps in
    order: ``cutmix`` (dataset level, before everything else: a box of another training image pasted into image,
    mask and FOV), ``resize`` (random rescale by a factor in ``resize_range``), ``hflip``, ``vflip``, ``rotate``
    (affine: rotation +-180 degrees, scale 0.75-1.25), colour ``jitter`` (brightness, contrast, saturation, hue)
    with ``jitter_prob``, the random crop, Gaussian ``blur`` (odd kernel in ``blur_kernel``), ``perspective``,
    then normalisation. Geometric steps move the masks with the image (nearest neighbour, zero fill).
    """

    hflip: float = 0.5
    vflip: float = 0.5
    rotate: float = 0.8
    jitter: tuple[float, float, float, float] = (0.25, 0.25, 0.2, 0.03)
    jitter_prob: float = 0.8
    cutmix: float = 0.0
    resize: float = 0.0
    resize_range: tuple[float, float] = (0.5, 2.0)
    blur: float = 0.0
    blur_kernel: tuple[int, int] = (3, 11)
    perspective: float = 0.0

    def __post_init__(self):
        for name in ("hflip", "vflip", "rotate", "jitter_prob", "cutmix", "resize", "blur", "perspective"):
            _check_prob(name.replace("_prob", ""), getattr(self, name))
        jitter, low_high = tuple(self.jitter), tuple(self.resize_range)
        if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
            raise UserError(f"colour jitter needs 4 values BRIGHTNESS,CONTRAST,SATURATION,HUE >= 0 with hue <= 0.5, "
                            f"got {','.join(map(str, jitter))}")
        if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
            raise UserError(f"resize range needs 0 < LOW <= HIGH, got {','.join(map(str, low_high))}")
        kernel = tuple(self.blur_kernel)
        if len(kernel) != 2 or not 3 <= kernel[0] <= kernel[1] or any(int(k) != k or k % 2 == 0 for k in kernel):
            raise UserError(f"blur kernel range needs odd sizes 3 <= LOW <= HIGH, got {','.join(map(str, kernel))}")
        object.__setattr__(self, "jitter", tuple(float(v) for v in jitter))
        object.__setattr__(self, "resize_range", tuple(float(v) for v in low_high))
        object.__setattr__(self, "blur_kernel", tuple(int(k) for k in kernel))


# FSG-Net's official training augmentation (ZombaSY/FSG-Net-pytorch, models/dataloader.py): cutmix 0.8, random
# resize 0.5-2x 0.8, hflip 0.5, colour jitter 0.2/0.2/0.2/0.1 at 0.8, Gaussian blur kernel 3-11 0.5, perspective
# 0.3; no vertical flip or rotation. (The official resize draws height and width factors independently; here
# the aspect ratio is kept.)
FSGNET_AUGMENTATION = Augmentation(hflip=0.5, vflip=0.0, rotate=0.0, jitter=(0.2, 0.2, 0.2, 0.1), jitter_prob=0.8,
                                   cutmix=0.8, resize=0.8, resize_range=(0.5, 2.0), blur=0.5, blur_kernel=(3, 11),
                                   perspective=0.3)


def train_transform(crop: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, seed: int | None = None,
                    augmentation: Augmentation | None = None):
    """albumentations pipeline of :class:`Augmentation` (all but cutmix), random ``crop`` x ``crop``, normalise.

    Called with ``image=``, ``mask=`` and ``fov=``; both masks follow every geometric step (nearest neighbour,
    zero fill outside the image). Steps with probability 0 are left out, so the default pipeline (and its
    random stream) is the same as before the options existed.
    """
    import albumentations as A
    import cv2

    aug = augmentation or Augmentation()
    border = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": 0}
    low, high = aug.resize_range
    brightness, contrast, saturation, hue = aug.jitter
    steps = [
        (aug.resize, lambda p: A.RandomScale(scale_limit=(low - 1, high - 1), interpolation=cv2.INTER_LINEAR,
                                             mask_interpolation=cv2.INTER_NEAREST_EXACT, p=p)),
        (aug.hflip, lambda p: A.HorizontalFlip(p=p)),
        (aug.vflip, lambda p: A.VerticalFlip(p=p)),
        (aug.rotate, lambda p: A.Affine(scale=(0.75, 1.25), rotate=(-180, 180), **border, p=p)),
        (aug.jitter_prob, lambda p: A.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation,
                                                  hue=hue, p=p)),
        (1.0, lambda p: A.RandomCrop(crop, crop, pad_if_needed=True, **border)),
        # sigma as torchvision's GaussianBlur default (0.1-2.0), which the official recipe uses
        (aug.blur, lambda p: A.GaussianBlur(blur_limit=aug.blur_kernel, sigma_limit=(0.1, 2.0), p=p)),
        # corner shifts |N(0, s)|, s in 0.1-0.2 of the side: about torchvision's distortion_scale 0.5 (uniform 0-25%)
        (aug.perspective, lambda p: A.Perspective(scale=(0.1, 0.2), keep_size=True, **border, p=p)),
    ]
    return A.Compose([make(p) for p, make in steps if p > 0] + [A.Normalize(mean=mean, std=std)],
                     additional_targets={"fov": "mask"}, seed=seed)


def cutmix_box(rng: np.random.Generator) -> tuple[float, float, float, float]:
    """A random box (top, left, box height, box width) as fractions of the image, as the official cutmix draws it:
    corner in [0, 0.75), size in [0.25, 0.75) (cut at the image edge)."""
    y, x, h, w = rng.random(4) * (0.75, 0.75, 0.5, 0.5) + (0, 0, 0.25, 0.25)
    return float(y), float(x), float(min(h, 1 - y)), float(min(w, 1 - x))


def cutmix(sample, other, box) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """Paste the box (fractions, see :func:`cutmix_box`) of ``other`` over the same relative box of ``sample``.

    ``sample`` and ``other`` are (rgb (H, W, 3) uint8, mask (H, W), fov (H, W)); the region is cut from image, mask
    and FOV of ``other`` alike and resized to the target box when the images differ in size (image bilinear,
    masks nearest). Returns the new (rgb, mask, fov) and the pixel box (top, left, height, width).
    """
    import cv2

    (rgb, mask, fov), (rgb2, mask2, fov2) = sample, other
    fy, fx, fh, fw = box
    h1, w1 = mask.shape
    h2, w2 = mask2.shape
    top, left = int(fy * h1), int(fx * w1)
    bh, bw = max(1, min(int(fh * h1), h1 - top)), max(1, min(int(fw * w1), w1 - left))
    t2, l2 = int(fy * h2), int(fx * w2)
    bh2, bw2 = max(1, min(int(fh * h2), h2 - t2)), max(1, min(int(fw * w2), w2 - l2))
    out = []
    for target, source, interp in ((rgb, rgb2, cv2.INTER_LINEAR), (mask, mask2, cv2.INTER_NEAREST_EXACT),
                                   (fov, fov2, cv2.INTER_NEAREST_EXACT)):
        patch = source[t2:t2 + bh2, l2:l2 + bw2]
        if patch.shape[:2] != (bh, bw):
            dtype = patch.dtype
            patch = cv2.resize(patch.astype(np.uint8), (bw, bh), interpolation=interp).astype(dtype)
        target = target.copy()
        target[top:top + bh, left:left + bw] = patch
        out.append(target)
    return out[0], out[1], out[2], (top, left, bh, bw)


def normalize(rgb: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32, ``(x / 255 - mean) / std``."""
    x = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1).div_(255.0)  # astype copies: read-only inputs work
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def seed_worker_augmentation(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker (and each epoch) its own augmentation stream."""
    info = get_worker_info()
    reseed = getattr(info.dataset, "set_random_seed", None)
    transform = getattr(info.dataset, "transform", None)
    if reseed is not None:
        reseed(info.seed % 2**32)
    elif transform is not None:
        transform.set_random_seed(info.seed % 2**32)


def _warn_about_small_images(source, crop: int, scale: float) -> None:
    """One warning when training images (after ``scale``) are smaller than the ``crop``: their crops are zero-padded
    (sources that give their ``sizes``: the folders and the synthetic vessels)."""
    sizes = [scaled_size(h, w, scale) for h, w in getattr(source, "sizes", ())]
    small = [(h, w) for h, w in sizes if h < crop or w < crop]
    if not small:
        return
    h, w = min(small, key=lambda size: size[0] * size[1])
    scaled = f" after --scale {scale:g}" if scale != 1 else ""
    warnings.warn(f"{len(small)} of {len(sizes)} training images are smaller than the {crop}x{crop} crop (smallest "
                  f"{w}x{h}{scaled}): their crops are zero-padded to {crop}x{crop}, and the padding is background in "
                  f"the loss (left out with --fov-loss); a smaller --img-size or a larger --scale avoids it",
                  stacklevel=3)


class SegmentationTrainSet(Dataset):
    """Augmented training crops: items are (image (3, S, S) float, mask (1, S, S) float, fov (1, S, S) float).

    Each source image appears ``repeats`` times per epoch (a different random crop each time). Without FOV
    masks the fov is all ones (inside the crop; zero where the crop is padded). ``augmentation`` (default
    :class:`Augmentation`) picks the steps; its cutmix happens here, with another image of the source drawn at
    random (the image itself when the source has one image).
    """

    def __init__(self, source, crop: int, scale: float = 1.0, repeats: int = 1, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, seed: int | None = None, augmentation: Augmentation | None = None):
        self.source, self.scale, self.repeats = source, scale, max(1, repeats)
        _warn_about_small_images(source, crop, scale)
        self.augmentation = augmentation or Augmentation()
        self.transform = train_transform(crop, mean, std, seed, self.augmentation)
        self.rng = np.random.default_rng(None if seed is None else (seed, 1))

    def set_random_seed(self, seed: int) -> None:
        """Reseed the augmentation (the transform and cutmix), e.g. per DataLoader worker."""
        self.transform.set_random_seed(seed)
        self.rng = np.random.default_rng((seed, 1))

    def __len__(self) -> int:
        return len(self.source) * self.repeats

    def _sample(self, index: int):
        rgb, mask, fov = rescale(*self.source.load(index), self.scale)
        return rgb, mask.astype(np.uint8), (np.ones_like(mask) if fov is None else fov).astype(np.uint8)

    def __getitem__(self, index: int):
        index %= len(self.source)
        rgb, mask, fov = self._sample(index)
        if self.augmentation.cutmix > 0 and self.rng.random() < self.augmentation.cutmix:
            n = len(self.source)
            other = index if n == 1 else (index + 1 + int(self.rng.integers(n - 1))) % n
            box = cutmix_box(self.rng)
            rgb, mask, fov, _ = cutmix((rgb, mask, fov), self._sample(other), box)
        out = self.transform(image=rgb, mask=mask, fov=fov)
        image = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
        return image, torch.from_numpy(out["mask"]).float()[None], torch.from_numpy(out["fov"]).float()[None]


class SegmentationEvalSet(Dataset):
    """Whole images for inference plus original-resolution targets for the metrics.

    Items are dicts: ``image`` (3, h, w) float, normalised, resized by ``scale``; ``rgb`` (H, W, 3) uint8,
    ``mask`` (H, W) bool and ``fov`` (H, W) bool or None at the original resolution; ``name``.
    """

    def __init__(self, source, scale: float = 1.0, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.source, self.scale, self.mean, self.std = source, scale, mean, std

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        rgb, mask, fov = self.source.load(index)
        image = normalize(rescale_rgb(rgb, self.scale), self.mean, self.std)
        return {"image": image, "rgb": rgb, "mask": mask, "fov": fov, "name": self.source.names[index]}
