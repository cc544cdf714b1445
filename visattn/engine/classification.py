"""Image classification: training and evaluation loops built on timm's factories.

timm provides the transforms, mixup/cutmix, losses, optimizer, cosine schedule and EMA; this module wires
them to datasets, atomic checkpoints (``last.pth``, ``best.pth``), ``--resume``, AMP on GPU, gradient
clipping, DDP under torchrun, TensorBoard, ``metrics.json`` and ``curves.png``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..errors import UserError
from .checkpoint import atomic_save, load_checkpoint_file, load_state_strict
from .distributed import all_reduce_sum, barrier, cleanup, init_distributed, pick_device
from .loop import autocast
from .loop import train_one_epoch as shared_train_one_epoch
from .run_log import RunLog

DIGITS = "digits"
# The built-in default: a small BiFormer (one block per stage but two in stage 3, half the channels,
# 4x4 regions) on scikit-learn's digits upsampled to 64x64.
DEMO_MODEL = "biformer_tiny"
DEMO_MODEL_KWARGS = {"depths": [1, 1, 2, 1], "dims": [32, 64, 128, 256], "n_win": 4}


@dataclass
class ClassificationConfig:
    """Everything a classification run needs; ``tools/train.py`` fills it from the command line."""

    output: str
    data: str | None = None  # folder with train/ and val/ class folders; None = built-in digits
    model: str = DEMO_MODEL
    model_kwargs: dict = field(default_factory=dict)
    pretrained: bool = False
    img_size: int = 224
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    opt: str = "adamw"
    warmup_epochs: int = 5
    min_lr: float = 1e-6
    smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    drop_path: float = 0.0
    clip_grad: float | None = 5.0
    ema_decay: float | None = None
    workers: int = 4
    seed: int = 0
    device: str | None = None
    amp: bool = True
    resume: str | None = None
    grad_checkpointing: bool = False

    @classmethod
    def demo(cls, output: str) -> ClassificationConfig:
        """The built-in default run: a few minutes on 2 CPU cores, above 90% validation top-1."""
        return cls(output=output, model=DEMO_MODEL, model_kwargs=dict(DEMO_MODEL_KWARGS), img_size=64, epochs=12,
                   batch_size=32, lr=2e-3, warmup_epochs=1, smoothing=0.1, workers=0)


def create_model(name: str, **kwargs) -> nn.Module:
    """timm.create_model with one-line errors for an unknown name (with close matches) or bad arguments."""
    import visattn  # noqa: F401  (registers the visattn models)

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models() or visattn.list_models()"
        raise UserError(f"unknown model {name!r}{hint}")
    try:
        return timm.create_model(name, **kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"cannot build {name} with {kwargs}: {err}") from None


def check_input_size(model: nn.Module, img_size: int, name: str) -> None:
    """Run one blank image through the model so that an input it cannot take fails before training."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, img_size, img_size, device=next(model.parameters()).device))
    except (ValueError, RuntimeError) as err:
        raise UserError(f"image size {img_size} does not work with {name}: {str(err).splitlines()[0]}") from None
    finally:
        model.train(was_training)


def build_dataset(data: str | None, split: str, img_size: int, data_cfg: dict, classes: list[str] | None = None):
    """The ``split`` ('train' or 'val') dataset with timm transforms; ``data=None`` gives the built-in digits."""
    from timm.data import create_transform

    from ..data.classification import DigitsDataset, ImageFolderDataset

    training = split == "train"
    common = dict(input_size=(3, img_size, img_size), mean=data_cfg["mean"], std=data_cfg["std"],
                  interpolation=data_cfg.get("interpolation", "bicubic"), is_training=training)
    if data is None:
        # Digits: no flips, mild scale jitter, no colour augmentation; evaluated uncropped.
        aug = dict(hflip=0.0, scale=(0.75, 1.0), ratio=(0.9, 1.1), color_jitter=None) if training else {}
        return DigitsDataset(split, create_transform(crop_pct=1.0, **aug, **common))
    if not os.path.isdir(data):
        raise UserError(f"data folder {data} does not exist; expected {data}/train and {data}/val class folders")
    root = os.path.join(data, split)
    if not os.path.isdir(root):
        raise UserError(f"{data} has no {split}/ folder; expected {data}/train and {data}/val class folders")
    crop = {} if training else {"crop_pct": data_cfg.get("crop_pct", 0.875)}
    return ImageFolderDataset(root, create_transform(**crop, **common), classes=classes)


def _loader(dataset, batch_size: int, workers: int, train: bool, world_size: int, device: torch.device):
    sampler = DistributedSampler(dataset, shuffle=train) if world_size > 1 else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                      num_workers=workers, pin_memory=device.type == "cuda",
                      drop_last=train and len(dataset) > batch_size, persistent_workers=workers > 0)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = True,
             progress: bool = False) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over ``loader`` (summed across processes)."""
    model.eval()
    totals = [0.0, 0.0, 0.0, 0.0]  # loss sum, top-1 hits, top-5 hits, count
    for images, targets in tqdm(loader, desc="eval", leave=False, disable=not (progress and sys.stderr.isatty())):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(targets[:, None])
        totals[0] += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        totals[1] += hits[:, 0].sum().item()
        totals[2] += hits.any(dim=1).sum().item()
        totals[3] += targets.numel()
    loss, top1, top5, count = all_reduce_sum(totals, device)
    return {"loss": loss / count, "top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count, "count": count}


def train_one_epoch(train_model: nn.Module, model: nn.Module, loader: DataLoader, optimizer, scheduler, criterion,
                    mixup, ema, device: torch.device, cfg: ClassificationConfig, epoch: int,
                    show_progress: bool) -> tuple[float, int]:
    """One pass over ``loader`` with ``criterion`` (after mixup/cutmix); returns (loss sum, images)."""

    def compute_loss(net: nn.Module, batch) -> tuple[torch.Tensor, int]:
        images, targets = (t.to(device, non_blocking=True) for t in batch)
        if mixup is not None:
            images, targets = mixup(images, targets)
        with autocast(device, cfg.amp):
            return criterion(net(images), targets), images.shape[0]

    return shared_train_one_epoch(train_model, model, loader, optimizer, scheduler, compute_loss, epoch=epoch,
                                  epochs=cfg.epochs, clip_grad=cfg.clip_grad, ema=ema, show_progress=show_progress)


def train(cfg: ClassificationConfig) -> dict[str, Any]:
    """Train a classifier; returns the final metrics dict (also written to ``metrics.json``)."""
    from timm.data import Mixup, resolve_data_config
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    device = pick_device(cfg.device)
    rank, world_size = init_distributed(device)
    is_main = rank == 0
    torch.manual_seed(cfg.seed + rank)
    try:
        resume = load_checkpoint_file(cfg.resume) if cfg.resume else None
        if resume is not None and resume.get("model") != cfg.model:
            raise UserError(f"{cfg.resume} was trained as {resume.get('model')!r}, not {cfg.model!r}; "
                            f"pass --model {resume.get('model')} or start without --resume")
        probe = create_model(cfg.model, **cfg.model_kwargs)
        data_cfg = resolve_data_config({}, model=probe)
        train_set = build_dataset(cfg.data, "train", cfg.img_size, data_cfg)
        val_set = build_dataset(cfg.data, "val", cfg.img_size, data_cfg, classes=list(train_set.classes))
        num_classes = len(train_set.classes)
        model = create_model(cfg.model, pretrained=cfg.pretrained, num_classes=num_classes,
                             drop_path_rate=cfg.drop_path, **cfg.model_kwargs)
        del probe
        model.to(device)
        check_input_size(model, cfg.img_size, cfg.model)
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)

        optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay)
        train_loader = _loader(train_set, cfg.batch_size, cfg.workers, True, world_size, device)
        val_loader = _loader(val_set, cfg.batch_size, cfg.workers, False, world_size, device)
        scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=cfg.epochs,
                                           warmup_epochs=cfg.warmup_epochs, min_lr=cfg.min_lr,
                                           warmup_lr=cfg.lr * 0.01, step_on_epochs=False,
                                           updates_per_epoch=len(train_loader))
        ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay else None
        mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                          num_classes=num_classes)
            criterion = SoftTargetCrossEntropy()
        elif cfg.smoothing > 0:
            criterion = LabelSmoothingCrossEntropy(cfg.smoothing)
        else:
            criterion = nn.CrossEntropyLoss()

        start_epoch, best, history = 0, {"epoch": -1, "val_top1": -1.0}, []
        if resume is not None:
            load_state_strict(model, resume["state_dict"], f"checkpoint {cfg.resume}")
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            if ema is not None and "state_dict_ema" in resume:
                ema.module.load_state_dict(resume["state_dict_ema"])
            start_epoch, best, history = resume["epoch"] + 1, resume["best"], resume["history"]

        train_model = model
        if world_size > 1:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        log = None
        if is_main:
            os.makedirs(cfg.output, exist_ok=True)
            meta = {"task": "classification", "model": cfg.model, "model_kwargs": cfg.model_kwargs,
                    "dataset": cfg.data or DIGITS, "config": dataclasses.asdict(cfg)}
            log = RunLog(cfg.output, history, meta)

        for epoch in range(start_epoch, cfg.epochs):
            if isinstance(train_loader.sampler, DistributedSampler):
                train_loader.sampler.set_epoch(epoch)
            started = time.time()
            loss_sum, seen = train_one_epoch(train_model, model, train_loader, optimizer, scheduler, criterion, mixup,
                                             ema, device, cfg, epoch, show_progress=is_main)
            train_loss_sum, train_seen = all_reduce_sum([loss_sum, seen], device)
            metrics = evaluate(ema.module if ema is not None else model, val_loader, device, cfg.amp)
            if is_main:
                scalars = {"train_loss": train_loss_sum / train_seen, "val_loss": metrics["loss"],
                           "val_top1": metrics["top1"], "val_top5": metrics["top5"],
                           "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": time.time() - started}
                improved = metrics["top1"] > best["val_top1"]
                if improved:
                    best = {"epoch": epoch + 1, "val_top1": metrics["top1"], "val_top5": metrics["top5"]}
                ckpt = {"task": "classification", "model": cfg.model, "model_kwargs": cfg.model_kwargs,
                        "num_classes": num_classes, "classes": list(train_set.classes), "img_size": cfg.img_size,
                        "data_cfg": data_cfg, "dataset": cfg.data or DIGITS, "epoch": epoch,
                        "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "best": best, "history": log.history + [
                            {"epoch": epoch + 1, **scalars}]}
                if ema is not None:
                    ckpt["state_dict_ema"] = ema.module.state_dict()
                atomic_save(ckpt, os.path.join(cfg.output, "last.pth"))
                if improved:
                    atomic_save(ckpt, os.path.join(cfg.output, "best.pth"))
                log.log(epoch + 1, scalars, best)
                print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {scalars['train_loss']:.4f}, "
                      f"val loss {metrics['loss']:.4f}, top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}% "
                      f"({scalars['epoch_seconds']:.1f} s)", flush=True)
            barrier()
        if log is not None:
            log.close()
        return {"best": best, "history": log.history if log else history}
    finally:
        cleanup()


def evaluate_checkpoint(checkpoint: str, data: str | None = None, model_name: str | None = None,
                        batch_size: int = 64, workers: int = 4, device: str | None = None,
                        use_ema: bool = True) -> dict[str, float]:
    """Rebuild the model a checkpoint was trained as and score it on the validation split."""
    ckpt = load_checkpoint_file(checkpoint)
    if ckpt.get("task", "classification") != "classification":
        raise UserError(f"{checkpoint} is a {ckpt['task']} checkpoint, not classification; pass --task {ckpt['task']}")
    name = model_name or ckpt.get("model")
    if not name:
        raise UserError(f"{checkpoint} does not name its model; pass --model")
    dev = pick_device(device)
    kwargs = ckpt.get("model_kwargs", {}) if name == ckpt.get("model") else {}
    model = create_model(name, num_classes=ckpt["num_classes"], **kwargs)
    state = ckpt["state_dict_ema"] if use_ema and "state_dict_ema" in ckpt else ckpt["state_dict"]
    load_state_strict(model, state, f"checkpoint {checkpoint} (trained as {ckpt.get('model')})")
    model.to(dev)
    dataset = data if data is not None else (None if ckpt.get("dataset") == DIGITS else ckpt.get("dataset"))
    val_set = build_dataset(dataset, "val", ckpt["img_size"], ckpt["data_cfg"], classes=list(ckpt["classes"]))
    loader = _loader(val_set, batch_size, workers, False, 1, dev)
    return evaluate(model, loader, dev, progress=True)
