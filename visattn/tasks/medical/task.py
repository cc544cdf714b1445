"""Medical / retinal binary segmentation on :func:`~visattn.engine.fit.fit`, scored at the original resolution.

The model is any timm model that ``timm.create_model(name, num_classes=1)`` builds into a network returning
(B, 1, H, W) per-pixel logits for a (B, 3, H, W) input (default: ``herseg``). Training uses augmented random
crops and the loss BCE + soft Dice over every pixel of the crop (or, with ``fov_loss``, inside the FOV only).
Validation (on rank 0) and evaluation run whole images through sliding-window or padded inference, map the
logits back to the original resolution, and score them with :mod:`visattn.tasks.medical.metrics` inside the
FOV (and over the whole image when FOV masks exist); pooled Dice picks ``best.pth``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ...engine.checkpoint import atomic_write, atomic_write_json, json_safe
from ...engine.fit import fit
from ...engine.loop import autocast
from ...engine.models import build_model, check_model_input
from ...engine.options import non_negative_int, numbers, open_fraction, positive_float, positive_int, probability
from ...engine.progress import Progress
from ...engine.task import Step, Task, TrainConfig, evaluated_with_amp, register_task
from ...errors import UserError
from .data import (
    FSGNET_AUGMENTATION,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SYNTHETIC,
    Augmentation,
    SegmentationEvalSet,
    SegmentationTrainSet,
    open_source,
    seed_worker_augmentation,
)
from .metrics import SegmentationMetrics, restore_original

TASK = "medical-seg"
DEMO_MODEL = "herseg"
# The built-in default: HER-Seg at two thirds of the width, one block per stage (two in stage 3), a 64-wide
# decoder, on 192 x 192 synthetic fundus images with 128 x 128 training crops.
DEMO_MODEL_KWARGS = {"embed_dim": 64, "depths": [1, 1, 2, 1], "num_heads": [2, 2, 4, 4], "decoder_dim": 64,
                     "decoder_heads": 4, "decoder_depth": 1, "drop_path_rate": 0.0}
INFERENCE_MODES = ("sliding", "padded")
NORMALIZATIONS = ("model", "imagenet")
# Training recipes for --recipe: the model it trains (and that model's family: its variants), its name, the
# augmentation (used for every field left at None) and the optimisation values that the command-line switch sets
# unless given explicitly. FSG-Net: ZombaSY/FSG-Net-pytorch at its publish commit (AdamW, warm-up + cosine, 10 000
# epochs, which is not set here); test images padded, centred, to a 608 (DRIVE), 704 (STARE), 1024 (CHASE_DB1) or
# 1344 (HRF) canvas: --inference padded --pad-to N.
RECIPES = {"fsgnet": {"model": "fsgnet", "title": "FSG-Net's official training", "augmentation": FSGNET_AUGMENTATION,
                      "normalization": "imagenet",
                      "train": {"lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 20, "batch_size": 4,
                                "img_size": 288}}}
# MedicalConfig field -> Augmentation field
AUGMENT_FIELDS = {"hflip_prob": "hflip", "vflip_prob": "vflip", "rotate_prob": "rotate", "jitter": "jitter",
                  "jitter_prob": "jitter_prob", "cutmix_prob": "cutmix", "resize_prob": "resize",
                  "resize_range": "resize_range", "blur_prob": "blur", "blur_kernel": "blur_kernel",
                  "perspective_prob": "perspective"}
PANELS = (("loss", "loss", ("train_loss", "val_loss")),
          ("validation, pooled in FOV", "score", ("val_dice", "val_iou", "val_auc", "val_sensitivity",
                                                  "val_specificity")),
          ("validation HD95", "pixels", ("val_hd95",)))


@dataclass
class Inference:
    """How whole images go through the model.

    ``sliding``: ``tile`` x ``tile`` windows with ``overlap`` (fraction of the tile), logits averaged where
    windows overlap. ``padded``: the whole image, zero-padded (centred) to a multiple of ``pad_multiple``, and
    with ``pad_to`` to at least a ``pad_to`` x ``pad_to`` canvas (FSG-Net's test protocol: 608 for DRIVE).
    Either way the padding is cropped off and the logits resized to the original resolution.
    """

    mode: str = "sliding"
    tile: int = 64
    overlap: float = 0.5
    pad_multiple: int = 32
    batch_size: int = 8
    pad_to: int = 0

    def __post_init__(self):
        if self.mode not in INFERENCE_MODES:
            raise UserError(f"inference must be one of {', '.join(INFERENCE_MODES)}, got {self.mode!r}")
        if self.tile < 1 or self.pad_multiple < 1 or not 0 <= self.overlap < 1:
            raise UserError(f"need tile >= 1, pad multiple >= 1 and 0 <= overlap < 1, got tile={self.tile}, "
                            f"pad_multiple={self.pad_multiple}, overlap={self.overlap}")
        if self.pad_to < 0:
            raise UserError(f"pad-to must be >= 0 (0 = off), got {self.pad_to}")


@dataclass
class MedicalConfig(TrainConfig):
    """Everything a medical segmentation run needs; ``tools/train.py --task medical-seg`` fills it."""

    data: str | None = None  # folder (DRIVE or generic layout) or synthetic-vessels[:options]; None = synthetic
    model: str = DEMO_MODEL
    img_size: int = 256  # training crop
    batch_size: int = 8
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    scale: float = 1.0  # resize factor applied to every image before cropping / inference
    crops_per_image: int = 4
    fov_loss: bool = False  # restrict the loss to FOV pixels (default: every pixel; outside the FOV is background)
    inference: str = "padded"
    tile: int | None = None  # sliding-window size; None = img_size
    pad_multiple: int = 32
    pad_to: int = 0  # padded inference: pad to at least this square canvas (0 = just the multiple)
    threshold: float = 0.5
    # Training augmentation (see visattn.tasks.medical.data.Augmentation); None = the recipe's value, else the default.
    recipe: str | None = None  # "fsgnet": FSG-Net's official augmentation and ImageNet normalisation
    hflip_prob: float | None = None
    vflip_prob: float | None = None
    rotate_prob: float | None = None
    jitter: tuple[float, float, float, float] | None = None
    jitter_prob: float | None = None
    cutmix_prob: float | None = None
    resize_prob: float | None = None
    resize_range: tuple[float, float] | None = None
    blur_prob: float | None = None
    blur_kernel: tuple[int, int] | None = None
    perspective_prob: float | None = None
    normalization: str | None = None  # "model" (its pretrained_cfg mean/std, else ImageNet) or "imagenet"

    def __post_init__(self):
        if self.recipe is not None and self.recipe not in RECIPES:
            raise UserError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.recipe is not None and not same_family(self.model, RECIPES[self.recipe]["model"]):
            recipe = RECIPES[self.recipe]
            raise UserError(f"--recipe {self.recipe} is {recipe['title']}, for {recipe['model']} and its variants; "
                            f"--model {self.model} is another network: drop --model to train {recipe['model']}, or "
                            f"drop --recipe")
        if self.normalization is not None and self.normalization not in NORMALIZATIONS:
            raise UserError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}")
        self.augmentation()  # validates the values
        self.inference_settings()

    def augmentation(self) -> Augmentation:
        """The training augmentation: the recipe's (or the default) with every field set here replacing it."""
        base = RECIPES[self.recipe]["augmentation"] if self.recipe else Augmentation()
        given = {aug: getattr(self, field) for field, aug in AUGMENT_FIELDS.items() if getattr(self, field) is not None}
        return dataclasses.replace(base, **given)

    def resolved_normalization(self) -> str:
        return self.normalization or (RECIPES[self.recipe]["normalization"] if self.recipe else "model")

    @classmethod
    def demo(cls, output: str) -> MedicalConfig:
        """The built-in default run: a small HER-Seg on the synthetic vessels, a few minutes on 2 CPU cores."""
        return cls(output=output, model_kwargs=dict(DEMO_MODEL_KWARGS), img_size=128, crops_per_image=2, epochs=80,
                   batch_size=8, lr=1e-3, workers=0)

    def inference_settings(self) -> Inference:
        return Inference(self.inference, self.tile or self.img_size, 0.5, self.pad_multiple, self.batch_size,
                         self.pad_to)


def same_family(model: str, other: str) -> bool:
    """Whether two timm model names are variants of one family (registered in one module); True for an unknown name
    (building it reports that)."""
    import timm

    if not (timm.is_model(model) and timm.is_model(other)):
        return True
    return timm.models.model_entrypoint(model).__module__ == timm.models.model_entrypoint(other).__module__


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, fov: torch.Tensor, smooth: float = 1.0):
    """BCE + soft Dice over the pixels where ``fov`` is 1, all tensors (B, 1, H, W).

    BCE = sum(f * bce(z, t)) / sum(f);  Dice_b = (2 sum(f p t) + s) / (sum(f p) + sum(f t) + s) per image,
    p = sigmoid(z), s = ``smooth``;  loss = BCE + mean_b(1 - Dice_b).
    """
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=fov, reduction="sum") / fov.sum().clamp_min(1)
    prob, target = torch.sigmoid(logits) * fov, target * fov
    dice = (2 * (prob * target).sum((1, 2, 3)) + smooth) / (prob.sum((1, 2, 3)) + target.sum((1, 2, 3)) + smooth)
    return bce + (1 - dice).mean()


def check_model_output(model: nn.Module, size: int, name: str) -> None:
    """Run a blank (1, 3, size, size) image: the model must take it and return (1, 1, size, size) logits."""
    check_model_input(model, size, name, (1, 1, size, size),
                      "medical segmentation needs (B, 1, H, W) per-pixel logits at the input resolution")


def inference_size(settings: Inference) -> int:
    """A square input size that inference will use: the tile, or the tile padded to ``pad_multiple``."""
    if settings.mode == "sliding":
        return settings.tile
    return math.ceil(max(settings.tile, settings.pad_to) / settings.pad_multiple) * settings.pad_multiple


def pad_to_multiple(image: torch.Tensor, multiple: int, minimum: int = 1):
    """Zero-pad (B, C, h, w), centred, to the next multiple of ``multiple`` that is at least ``minimum``.

    Returns (padded, box) with box = (top, left, h, w), the region of the original content.
    """
    h, w = image.shape[-2:]
    height = max(math.ceil(h / multiple) * multiple, math.ceil(minimum / multiple) * multiple)
    width = max(math.ceil(w / multiple) * multiple, math.ceil(minimum / multiple) * multiple)
    top, left = (height - h) // 2, (width - w) // 2
    padded = F.pad(image, (left, width - w - left, top, height - h - top))
    return padded, (top, left, h, w)


def _window_starts(length: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def predict_logits(model: nn.Module, image: torch.Tensor, settings: Inference, amp: bool = True) -> torch.Tensor:
    """(1, 3, h, w) normalised image -> (1, 1, h, w) float32 logits (padding already removed)."""
    device = image.device
    if settings.mode == "padded":
        padded, box = pad_to_multiple(image, settings.pad_multiple, minimum=max(1, settings.pad_to))
        with autocast(device, amp):
            logits = model(padded).float()
        return restore_original(logits, box, box[2:])
    tile = settings.tile
    padded, box = pad_to_multiple(image, 1, minimum=tile)
    height, width = padded.shape[-2:]
    stride = max(1, round(tile * (1 - settings.overlap)))
    windows = [(y, x) for y in _window_starts(height, tile, stride) for x in _window_starts(width, tile, stride)]
    total = torch.zeros(1, 1, height, width, device=device)
    count = torch.zeros(1, 1, height, width, device=device)
    for i in range(0, len(windows), settings.batch_size):
        chunk = windows[i:i + settings.batch_size]
        batch = torch.cat([padded[..., y:y + tile, x:x + tile] for y, x in chunk])
        with autocast(device, amp):
            out = model(batch).float()
        for (y, x), logits in zip(chunk, out, strict=True):
            total[0, :, y:y + tile, x:x + tile] += logits
            count[0, :, y:y + tile, x:x + tile] += 1
    return restore_original(total / count, box, box[2:])


def _overlay(rgb: np.ndarray, pred: np.ndarray, mask: np.ndarray | None, alpha: float = 0.6) -> np.ndarray:
    """The image with true positives green, false positives red and missed vessels (false negatives) blue; without
    a ground-truth ``mask``, the predicted vessels green."""
    mask = pred if mask is None else mask
    colours = np.zeros_like(rgb)
    colours[pred & mask] = (0, 255, 0)
    colours[pred & ~mask] = (255, 0, 0)
    colours[~pred & mask] = (0, 80, 255)
    marked = (pred | mask)[..., None]
    return np.where(marked, (1 - alpha) * rgb + alpha * colours, rgb).round().astype(np.uint8)


def _save_png(array: np.ndarray, path: str) -> None:
    from PIL import Image

    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def save_prediction(folder: str, name: str, rgb: np.ndarray, prob: np.ndarray, pred: np.ndarray,
                    mask: np.ndarray | None = None) -> None:
    """``NAME_prob.png`` (probability x 255), ``NAME_pred.png`` (0/255) and ``NAME_overlay.png`` (against the
    ground-truth ``mask`` when given), all (H, W) as ``rgb`` (H, W, 3)."""
    _save_png((prob * 255).round().astype(np.uint8), os.path.join(folder, f"{name}_prob.png"))
    _save_png(pred.astype(np.uint8) * 255, os.path.join(folder, f"{name}_pred.png"))
    _save_png(_overlay(rgb, pred, mask), os.path.join(folder, f"{name}_overlay.png"))


@torch.no_grad()
def evaluate(model: nn.Module, dataset: SegmentationEvalSet, device: torch.device, settings: Inference,
             threshold: float = 0.5, amp: bool = True, workers: int = 0, predictions: str | None = None,
             fov_loss: bool = False) -> dict[str, Any]:
    """Score whole images at their original resolution; write PNGs to ``predictions`` when given.

    Returns ``{"region": "fov" | "image", "loss", "pooled", "per_image", "images", "count", "threshold"}``, plus
    ``"full_image": {"pooled", "per_image"}`` when the dataset has FOV masks. ``loss`` is the mean per-image
    BCE + Dice at the original resolution, over the whole image or (``fov_loss``) inside the FOV.
    """
    model.eval()
    has_fov = dataset.source.has_fov
    inside = SegmentationMetrics(threshold)
    whole = SegmentationMetrics(threshold) if has_fov else None  # FOV datasets also get whole-image numbers
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_item)
    loss_sum = 0.0
    bar = Progress(loader, "eval", total=len(dataset), interval=10)
    for item in bar:
        mask, fov = item["mask"], item["fov"]
        logits = predict_logits(model, item["image"][None].to(device), settings, amp)
        logits = restore_original(logits, (0, 0, *logits.shape[-2:]), mask.shape)  # undo the dataset's scale
        target = torch.from_numpy(mask).float()[None, None].to(device)
        region = torch.from_numpy(fov).float()[None, None].to(device) if fov_loss and fov is not None else \
            torch.ones_like(target)
        loss_sum += bce_dice_loss(logits, target, region).item()
        prob = torch.sigmoid(logits)[0, 0].cpu().numpy()
        inside.update(prob, mask, fov, name=item["name"])
        if whole is not None:
            whole.update(prob, mask, name=item["name"])
        if predictions is not None:
            save_prediction(predictions, item["name"], item["rgb"], prob, prob >= threshold, mask)
        bar.update(1)
    result = {"region": "fov" if has_fov else "image", **inside.compute(), "loss": loss_sum / len(dataset)}
    if whole is not None:
        full = whole.compute()
        result["full_image"] = {"pooled": full["pooled"], "per_image": full["per_image"],
                                "empty_predictions": full["empty_predictions"]}
    return result


def _empty_note(count: int) -> str:
    """``2 empty predictions left out`` (of HD95: the images it cannot score); '' for none."""
    return f"{count} empty prediction{'s' if count != 1 else ''} left out" if count else ""


def _item(item):
    """collate_fn for one whole image per step: keep the numpy arrays and ``None`` as they are."""
    return item


def report(result: dict[str, Any]) -> str:
    """The lines ``tools/eval.py --task medical-seg`` prints: pooled and per-image metrics, then the JSON line."""
    region = "inside the FOV" if result["region"] == "fov" else "whole image"
    names = (("dice", "Dice"), ("iou", "IoU"), ("sensitivity", "Se"), ("specificity", "Sp"), ("accuracy", "Acc"),
             ("auc", "AUC"))

    def row(metrics: dict, empty: int) -> str:
        note = _empty_note(empty)
        return "  ".join(f"{label} {metrics[key]:.4f}" for key, label in names) + f"  HD95 {metrics['hd95']:.2f} px" \
            + (f" ({note})" if note else "")

    lines = [f"{result['count']} images ({result['split']}), {region}, threshold {result['threshold']}:",
             f"  pooled     {row(result['pooled'], result['empty_predictions'])}",
             f"  per image  {row(result['per_image'], result['empty_predictions'])}"]
    if "full_image" in result:
        full = result["full_image"]
        lines.append(f"  whole image, pooled  {row(full['pooled'], full['empty_predictions'])}")
    lines.append(f"metrics.json and predictions/ in {result['output']}")
    lines.append(json.dumps(json_safe({"pooled": result["pooled"], "per_image": result["per_image"],
                                       "empty_predictions": result["empty_predictions"]})))
    return "\n".join(lines)


@register_task
class MedicalTask(Task):
    """Binary segmentation of whole images (retinal vessels): crops for training, whole images for validation."""

    name = TASK
    config = MedicalConfig
    default_data = SYNTHETIC
    score = "val_dice"
    tiebreak = "val_auc"
    panels = PANELS
    eval_keys = ("inference", "scale", "mean", "std", "threshold", "fov_loss")
    distributed_eval = False
    worker_init_fn = staticmethod(seed_worker_augmentation)
    shared_help = {"data": "image/mask folder with train/ (or training/) and val/ (or test/) splits, DRIVE layout or "
                           "images/ + masks/ [+ fov/], or synthetic-vessels[:size=..,train=..] (default)",
                   "img_size": "training crop size"}

    def __init__(self, cfg: MedicalConfig):
        super().__init__(cfg)
        self.settings = cfg.inference_settings()

    @staticmethod
    def add_train_arguments(parser) -> None:
        parser.add_argument("--scale", type=positive_float,
                            help="resize every image by this factor first (e.g. 0.5 for HRF)")
        parser.add_argument("--crops-per-image", type=positive_int, help="random training crops per image and epoch")
        parser.add_argument("--fov-loss", action="store_true", help="train on FOV pixels only")
        parser.add_argument("--inference", choices=INFERENCE_MODES,
                            help="validation on whole images: padded whole image (default) or sliding window")
        parser.add_argument("--tile", type=positive_int, help="sliding-window size (default: --img-size)")
        parser.add_argument("--pad-multiple", type=positive_int,
                            help="pad whole images to a multiple of this (default 32)")
        parser.add_argument("--pad-to", type=non_negative_int,
                            help="padded inference: zero-pad (centred) to at least an N x N "
                                                       "canvas, as FSG-Net tests: 608 DRIVE, 704 STARE, 1024 "
                                                       "CHASE_DB1, 1344 HRF (default 0: just the multiple)")
        parser.add_argument("--recipe", choices=tuple(RECIPES), action=_RecipeAction,
                            help="fsgnet: FSG-Net's official training recipe, for --model fsgnet (the default with "
                                 "it) or another FSG-Net variant: cutmix 0.8, random resize 0.5-2x 0.8, "
                                 "hflip 0.5, no vflip or rotation, colour jitter 0.2,0.2,0.2,0.1 at 0.8, Gaussian "
                                 "blur kernel 3-11 0.5, perspective 0.3, ImageNet mean/std; and, unless given, "
                                 "--lr 1e-3 --weight-decay 0.05 --warmup-epochs 20 --batch-size 4 --img-size 288 "
                                 "(AdamW, the default --opt; the official run is 10000 epochs). The options below "
                                 "override single steps")
        parser.add_argument("--cutmix-prob", type=probability,
                            help="paste a random box of another training image into image, mask and FOV "
                                 "(default 0; fsgnet 0.8)")
        parser.add_argument("--resize-prob", type=probability,
                            help="random resize by a factor in --resize-range (default 0; fsgnet 0.8)")
        parser.add_argument("--resize-range", type=numbers(2, float, "LOW,HIGH such as 0.5,2"),
                            help="LOW,HIGH resize factors (default and fsgnet 0.5,2)")
        parser.add_argument("--blur-prob", type=probability, help="Gaussian blur (default 0; fsgnet 0.5)")
        parser.add_argument("--blur-kernel", type=numbers(2, int, "odd LOW,HIGH such as 3,11"),
                            help="LOW,HIGH odd Gaussian kernel sizes (default and fsgnet 3,11)")
        parser.add_argument("--perspective-prob", type=probability,
                            help="random perspective after the crop (default 0; fsgnet 0.3)")
        parser.add_argument("--jitter", type=numbers(4, float, "BRIGHTNESS,CONTRAST,SATURATION,HUE", low=0),
                            help="colour jitter B,C,S,H (default 0.25,0.25,0.2,0.03; fsgnet 0.2,0.2,0.2,0.1)")
        parser.add_argument("--jitter-prob", type=probability, help="colour jitter probability (default and "
                                                                     "fsgnet 0.8)")
        parser.add_argument("--hflip-prob", type=probability, help="horizontal flip (default and fsgnet 0.5)")
        parser.add_argument("--vflip-prob", type=probability, help="vertical flip (default 0.5; fsgnet 0)")
        parser.add_argument("--rotate-prob", type=probability,
                            help="rotation +-180 with scale 0.75-1.25 (default 0.8; fsgnet 0)")
        parser.add_argument("--normalization", choices=NORMALIZATIONS,
                            help="mean/std: the model's pretrained_cfg, else ImageNet (model, the default) or "
                                 "always ImageNet (imagenet; fsgnet)")

    @staticmethod
    def add_eval_arguments(parser) -> None:
        parser.add_argument("--split", help="split folder to score (default: val, else validation, else test)")
        parser.add_argument("--output", help="folder for metrics.json and predictions/ "
                                             "(default: CHECKPOINT_DIR/eval_SPLIT)")
        parser.add_argument("--inference", choices=INFERENCE_MODES, help="default: as in training")
        parser.add_argument("--tile", type=positive_int, help="sliding-window size (default: as in training)")
        parser.add_argument("--threshold", type=open_fraction, help="probability threshold (default: 0.5)")
        parser.add_argument("--pad-to", type=non_negative_int,
                            help="padded inference: zero-pad (centred) to at least an N x N "
                                                       "canvas (default: as in training)")

    @classmethod
    def run_eval(cls, args) -> str:
        return report(evaluate_checkpoint(args.checkpoint, args.data, args.split, args.output, args.inference,
                                          args.tile, args.device, args.workers, threshold=args.threshold,
                                          pad_to=args.pad_to))

    def build(self, device: torch.device, rank: int, world_size: int) -> tuple[nn.Module, Dataset]:
        cfg = self.cfg
        model = build_model(cfg.model, pretrained=cfg.pretrained, num_classes=1, **cfg.model_kwargs)
        pretrained_cfg = {} if cfg.resolved_normalization() == "imagenet" else \
            getattr(model, "pretrained_cfg", None) or {}
        self.mean = tuple(pretrained_cfg.get("mean", IMAGENET_MEAN))
        self.std = tuple(pretrained_cfg.get("std", IMAGENET_STD))
        train_source, val_source = open_source(cfg.data, "train"), open_source(cfg.data, "val")
        if train_source.has_fov != val_source.has_fov:
            with_fov, without = ("train", "val") if train_source.has_fov else ("val", "train")
            warnings.warn(f"the {with_fov} split has FOV masks and the {without} split none: "
                          + ("validation scores whole images" if train_source.has_fov else
                             "training treats everything as inside the FOV"), stacklevel=2)
        train_set = SegmentationTrainSet(train_source, cfg.img_size, cfg.scale, cfg.crops_per_image, self.mean,
                                         self.std, seed=cfg.seed + rank, augmentation=cfg.augmentation())
        self.val_set = SegmentationEvalSet(val_source, cfg.scale, self.mean, self.std)
        if cfg.recipe is not None and rank == 0:
            print(f"{TASK} recipe {cfg.recipe}: {RECIPES[cfg.recipe]['title']} on {cfg.model} ({cfg.img_size}x"
                  f"{cfg.img_size} crops, batch {cfg.batch_size}, lr {cfg.lr:g}, weight decay {cfg.weight_decay:g}, "
                  f"{cfg.warmup_epochs} warm-up epochs)", flush=True)
        return model, train_set

    def check_input(self, model: nn.Module) -> None:
        for size in sorted({self.cfg.img_size, inference_size(self.settings)}):
            check_model_output(model, size, self.cfg.model)

    def compute_loss(self, net: nn.Module, batch, device: torch.device) -> Step:
        """BCE + Dice over the crop (inside the FOV with ``fov_loss``), averaged over the output and a
        deep-supervision network's ``aux_outputs`` (FSG-Net's two coarser decoder levels): parts ``bce_dice_main``
        and ``bce_dice_<name>``, each as it enters that mean; plus the model's own auxiliary losses."""
        images, masks, fovs = (t.to(device, non_blocking=True) for t in batch)
        with autocast(device, self.cfg.amp):
            out = net(images)
        region = fovs if self.cfg.fov_loss else torch.ones_like(masks)
        outputs = {"main": out.output, **out.aux_outputs}
        parts = {f"bce_dice_{name}": bce_dice_loss(logits, masks, region) / len(outputs)
                 for name, logits in outputs.items()}
        return Step.from_parts({**parts, **out.aux_losses}, images.shape[0], out.stats)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, Any]:
        cfg = self.cfg
        return evaluate(model, self.val_set, device, self.settings, cfg.threshold, cfg.amp, cfg.workers,
                        fov_loss=cfg.fov_loss)

    def val_scalars(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {"val_loss": metrics["loss"], **{f"val_{k}": v for k, v in metrics["pooled"].items()},
                "val_empty_predictions": metrics["empty_predictions"]}

    def checkpoint_extra(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"num_classes": 1, "img_size": cfg.img_size, "scale": cfg.scale, "mean": self.mean, "std": self.std,
                "inference": dataclasses.asdict(self.settings), "threshold": cfg.threshold, "fov_loss": cfg.fov_loss,
                "augmentation": dataclasses.asdict(cfg.augmentation())}

    def epoch_line(self, metrics: dict[str, Any], scalars: dict[str, float]) -> str:
        pooled = metrics["pooled"]
        empty = _empty_note(metrics["empty_predictions"])
        return (f"val loss {metrics['loss']:.4f}, Dice {pooled['dice']:.4f}, AUC {pooled['auc']:.4f}, HD95 "
                f"{pooled['hd95']:.2f} px ({metrics['region']}, pooled{'; ' + empty if empty else ''}; "
                f"{scalars['epoch_seconds']:.1f} s)")

    def summary(self, best: dict[str, Any]) -> str:
        empty = _empty_note(int(best.get("val_empty_predictions", 0)))
        return (f"best val Dice {best['val_dice']:.4f} (pooled; AUC {best['val_auc']:.4f}, HD95 "
                f"{best['val_hd95']:.2f} px{', ' + empty if empty else ''}) at epoch {best['epoch']}; checkpoints in "
                f"{self.cfg.output}")


class _RecipeAction(argparse.Action):
    """``--recipe NAME``: record it, and set the recipe's model, lr, weight decay, warm-up, batch size and crop size
    where they are not given (in either order on the command line: a later option overrides these)."""

    def __call__(self, parser, namespace, value, option_string=None):
        setattr(namespace, self.dest, value)
        for key, setting in {"model": RECIPES[value]["model"], **RECIPES[value]["train"]}.items():
            if getattr(namespace, key, None) is None:
                setattr(namespace, key, setting)


def train(cfg: MedicalConfig) -> dict[str, Any]:
    """Train a segmentation model; returns ``{"best", "history"}`` (also written to ``metrics.json``)."""
    return fit(MedicalTask(cfg))


def evaluate_checkpoint(checkpoint: str, data: str | None = None, split: str | None = None,
                        output: str | None = None, inference: str | None = None, tile: int | None = None,
                        device: str | None = None, workers: int = 0,
                        threshold: float | None = None, pad_to: int | None = None) -> dict[str, Any]:
    """Rebuild a medical-seg checkpoint's model, score ``split`` of ``data`` (default: the training data's
    validation split), write ``metrics.json`` and the prediction PNGs under ``output``
    (default: ``<checkpoint folder>/eval_<split>``); ``pad_to`` replaces the stored canvas size.
    Returns the metrics with ``"output"`` added."""
    model, ckpt, dev = MedicalTask.model_from_checkpoint(checkpoint, device)
    data = data if data is not None else ckpt["dataset"]
    split = split or "val"
    stored = ckpt["inference"]
    settings = Inference(inference or stored["mode"], tile or stored["tile"], stored["overlap"],
                         stored["pad_multiple"], stored["batch_size"],
                         stored.get("pad_to", 0) if pad_to is None else pad_to)
    check_model_output(model, inference_size(settings), ckpt["model"])
    dataset = SegmentationEvalSet(open_source(data, split), ckpt["scale"], ckpt["mean"], ckpt["std"])
    output = output or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), f"eval_{split}")
    result = evaluate(model, dataset, dev, settings, ckpt["threshold"] if threshold is None else threshold,
                      evaluated_with_amp(ckpt), workers=workers, predictions=os.path.join(output, "predictions"),
                      fov_loss=ckpt["fov_loss"])
    result = {"checkpoint": os.path.abspath(checkpoint), "model": ckpt["model"], "dataset": data, "split": split,
              "inference": dataclasses.asdict(settings), **result}
    atomic_write_json(result, os.path.join(output, "metrics.json"))
    return {**result, "output": output}
