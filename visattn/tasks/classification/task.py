"""Image classification on :func:`~visattn.engine.fit.fit`: timm's transforms, mixup/cutmix, losses and EMA.

The task's parts: image-folder or built-in digits datasets (optionally a validation split carved from the
training images, for model selection that never sees the test split), the classifier (``num_classes`` from the
class folders), the loss step: cross-entropy ``ce`` (label smoothing, or soft targets after mixup/cutmix) plus the
model's own auxiliary losses (the model-training contract's ``aux_losses``, e.g. TCPA's ``matching``), the
token-labelling loss ``token_label`` of a model whose training forward gives per-token class logits (the extra
``token_logits``, LV-ViT's: each token scored against its image's label, as the official loss without label maps)
and, with a teacher, distillation ``kd`` and the training phases of models that declare them (:mod:`.distill`:
``reconstruction``, ``token_mse``); top-1 / top-5 evaluation summed over every process, ``val_top1`` as the score.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from ...contract import forward_train
from ...engine.distributed import all_reduce_sum
from ...engine.fit import fit
from ...engine.loop import autocast
from ...engine.models import build_model, sized_model_kwargs
from ...engine.options import fraction, non_negative_float, open_fraction, positive_int
from ...engine.progress import Progress
from ...engine.task import Step, Task, TrainConfig, evaluated_with_amp, make_loader, register_task
from ...errors import UserError

DIGITS = "digits"
# The built-in default: a small BiFormer (one block per stage but two in stage 3, half the channels,
# 4x4 regions) on scikit-learn's digits upsampled to 32x32.
DEMO_MODEL = "biformer_tiny"
DEMO_MODEL_KWARGS = {"depths": [1, 1, 2, 1], "dims": [32, 64, 128, 256], "n_win": 4}
PANELS = (("loss", "loss", ("train_loss", "val_loss")),
          ("validation accuracy", "accuracy (%)", ("val_top1", "val_top5")))


@dataclass
class ClassificationConfig(TrainConfig):
    """Everything a classification run needs; ``tools/train.py`` fills it from the command line."""

    data: str | None = None  # folder with train/ and val/ class folders; None = built-in digits
    model: str = DEMO_MODEL
    smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    drop_path: float = 0.0
    ema_decay: float | None = None
    grad_checkpointing: bool = False
    val_split: float | None = None  # carve this fraction of train/ (per class) as the validation split
    teacher: str | None = None  # timm model name or checkpoint file of a frozen teacher
    teacher_model: str | None = None  # the model of a --teacher file of bare weights
    phase: str | None = None  # a training phase the model declares (Sparsifiner: "reconstruct" or "distill")
    distill_weight: float = 0.5  # KL(teacher || student) weight
    token_weight: float = 0.5  # patch-token MSE weight (distill phase)
    recon_weight: float = 0.01  # attention-reconstruction weight (reconstruct phase)
    # per-token CE of a model's token_logits against the image label (LV-ViT's token labelling without label maps)
    token_label_weight: float = 1.0

    def __post_init__(self):
        from .distill import PHASES

        if self.val_split is not None and not 0 < self.val_split < 1:
            raise UserError(f"--val-split {self.val_split}: the carved fraction must be between 0 and 1")
        if self.phase is not None and self.phase not in PHASES:
            raise UserError(f"--phase {self.phase}: use one of {', '.join(PHASES)}")
        if self.phase == "distill" and not self.teacher:
            raise UserError("--phase distill needs --teacher (a timm model name or a checkpoint file)")
        if self.teacher_model and not self.teacher:
            raise UserError("--teacher-model names the model of a --teacher file; pass --teacher FILE too")

    @classmethod
    def demo(cls, output: str) -> ClassificationConfig:
        """The built-in default run: about 20 s on 2 CPU cores, above 90% validation top-1."""
        return cls(output=output, model=DEMO_MODEL, model_kwargs=dict(DEMO_MODEL_KWARGS), img_size=32, epochs=4,
                   batch_size=32, lr=2e-3, warmup_epochs=1, smoothing=0.1, workers=0)


def carve_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, validation indices): ``fraction`` of each class's items (at least one, never all) drawn
    with ``seed``, so a run and its resume carve the same split."""
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    train, val = [], []
    for items in by_class.values():
        order = torch.randperm(len(items), generator=generator).tolist()
        count = min(max(1, round(fraction * len(items))), len(items) - 1)
        val += [items[i] for i in order[:count]]
        train += [items[i] for i in order[count:]]
    return sorted(train), sorted(val)


def build_dataset(data: str | None, split: str, img_size: int, data_cfg: dict, classes: list[str] | None = None,
                  eval_transform: bool = False):
    """The ``split`` ('train' or 'val') dataset with timm transforms (training augmentation for 'train' unless
    ``eval_transform``); ``data=None`` gives the built-in digits."""
    from .data import DigitsDataset, ImageFolderDataset

    training = split == "train" and not eval_transform
    if data is None:
        return DigitsDataset(split, image_transform(img_size, data_cfg, training, digits=True))
    if not os.path.isdir(data):
        raise UserError(f"data folder {data} does not exist; expected {data}/train and {data}/val class folders")
    root = os.path.join(data, split)
    if not os.path.isdir(root):
        raise UserError(f"{data} has no {split}/ folder; expected {data}/train and {data}/val class folders")
    return ImageFolderDataset(root, image_transform(img_size, data_cfg, training), classes=classes)


def image_transform(img_size: int, data_cfg: dict, training: bool = False, digits: bool = False):
    """timm's transform of a run's images: ``data_cfg``'s mean, std and interpolation at ``img_size``; training
    augmentation, or for evaluation the centre crop of ``data_cfg``'s crop_pct. The built-in ``digits``: no flips,
    mild scale jitter, no colour augmentation; evaluated uncropped."""
    from timm.data import create_transform

    common = dict(input_size=(3, img_size, img_size), mean=data_cfg["mean"], std=data_cfg["std"],
                  interpolation=data_cfg.get("interpolation", "bicubic"), is_training=training)
    if digits:
        aug = dict(hflip=0.0, scale=(0.75, 1.0), ratio=(0.9, 1.1), color_jitter=None) if training else {}
        return create_transform(crop_pct=1.0, **aug, **common)
    crop = {} if training else {"crop_pct": data_cfg.get("crop_pct", 0.875)}
    return create_transform(**crop, **common)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = True) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over ``loader`` (summed across processes)."""
    model.eval()
    totals = [0.0, 0.0, 0.0, 0.0]  # loss sum, top-1 hits, top-5 hits, count
    bar = Progress(loader, "eval")
    for images, targets in bar:
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
        bar.update(targets.numel())
    loss, top1, top5, count = all_reduce_sum(totals, device)
    return {"loss": loss / count, "top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count, "count": count}


@register_task
class ClassificationTask(Task):
    """Image classification: ``--data`` folder with train/ and val/ class folders, or the built-in digits."""

    name = "classification"
    config = ClassificationConfig
    default_data = DIGITS
    score = "val_top1"
    tiebreak = "val_top5"
    panels = PANELS
    eval_keys = ("num_classes", "img_size", "data_cfg", "classes")
    shared_help = {"data": "folder with train/ and val/ class folders (default: the built-in digits)",
                   "img_size": "input size"}

    @property
    def ema_decay(self) -> float | None:
        return self.cfg.ema_decay

    @staticmethod
    def add_train_arguments(parser) -> None:
        parser.add_argument("--val-split", type=open_fraction,
                            help="pick best.pth on this fraction of train/ (per class), "
                            "leaving val/ to tools/eval.py as the test split")
        parser.add_argument("--teacher", help="distil from a frozen teacher: a timm model name (its pretrained "
                            "weights) or a checkpoint file")
        parser.add_argument("--teacher-model", help="the model of a --teacher file that holds bare weights")
        parser.add_argument("--phase", help="Sparsifiner training phase: reconstruct (predictors only, attention "
                            "reconstruction) or distill (backbone, CE + KL + token MSE; needs --teacher)")
        parser.add_argument("--distill-weight", type=non_negative_float,
                            help="weight of KL(teacher || student) (default 0.5)")
        parser.add_argument("--token-weight", type=non_negative_float,
                            help="weight of the patch-token MSE (default 0.5)")
        parser.add_argument("--recon-weight", type=non_negative_float,
                            help="weight of the attention reconstruction (default 0.01)")
        parser.add_argument("--token-label-weight", type=non_negative_float,
                            help="weight of the per-token CE against the image label for models with a token "
                            "classifier (LV-ViT's aux head; default 1.0, 0 = off; not in the Sparsifiner phases)")
        parser.add_argument("--smoothing", type=fraction, help="label smoothing")
        parser.add_argument("--mixup", type=non_negative_float, help="mixup alpha (0 = off)")
        parser.add_argument("--cutmix", type=non_negative_float, help="cutmix alpha (0 = off)")
        parser.add_argument("--drop-path", type=fraction)
        parser.add_argument("--ema-decay", type=open_fraction, help="keep an EMA of the weights with this decay")
        parser.add_argument("--grad-checkpointing", action="store_true")

    @staticmethod
    def add_eval_arguments(parser) -> None:
        parser.add_argument("--model", help="model to load the weights into (default: the checkpoint's)")
        parser.add_argument("--batch-size", type=positive_int, help="default 64")
        parser.add_argument("--no-ema", dest="use_ema", action="store_false", help="score the raw weights, not the EMA")

    @classmethod
    def run_eval(cls, args) -> str:
        metrics = evaluate_checkpoint(args.checkpoint, args.data, args.model, args.batch_size or 64, args.workers,
                                      args.device, args.use_ema is not False)
        return (f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}  "
                f"({int(metrics['count'])} images)\n" + json.dumps({k: round(v, 4) for k, v in metrics.items()}))

    def build(self, device: torch.device, rank: int, world_size: int) -> tuple[nn.Module, Dataset]:
        from timm.data import Mixup, resolve_data_config
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        cfg = self.cfg
        cfg.model_kwargs, sized = sized_model_kwargs(cfg.model, cfg.model_kwargs, cfg.img_size)
        if sized and rank == 0:
            print(sized, flush=True)
        probe = build_model(cfg.model, **cfg.model_kwargs)
        self.data_cfg = resolve_data_config({}, model=probe)
        train_set = build_dataset(cfg.data, "train", cfg.img_size, self.data_cfg)
        self.classes = list(train_set.classes)
        if cfg.val_split:
            carved = build_dataset(cfg.data, "train", cfg.img_size, self.data_cfg, classes=self.classes,
                                   eval_transform=True)
            train_idx, val_idx = carve_split(train_set.labels(), cfg.val_split, cfg.seed)
            train_set, val_set = Subset(train_set, train_idx), Subset(carved, val_idx)
        else:
            if cfg.data is not None and not os.path.isdir(os.path.join(cfg.data, "val")):
                raise UserError(f"{cfg.data} has no val/ folder to pick best.pth on: add {cfg.data}/val class "
                                "folders, or pass --val-split 0.1 to hold out a tenth of train/ (per class)")
            val_set = build_dataset(cfg.data, "val", cfg.img_size, self.data_cfg, classes=self.classes)
        if cfg.data is None and rank == 0:
            self.write_digit_samples()
        self.val_loader = make_loader(val_set, cfg.batch_size, cfg.workers, False, world_size, device)
        model = build_model(cfg.model, pretrained=cfg.pretrained, num_classes=len(self.classes),
                            drop_path_rate=cfg.drop_path, **cfg.model_kwargs)
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if cfg.phase is not None:
            phases = getattr(model, "training_phases", ())
            if cfg.phase not in phases:
                has = f"its phases are {', '.join(phases)}" if phases else "it declares no training phases"
                raise UserError(f"--phase {cfg.phase}: {cfg.model} has no such training phase; {has}")
            model.set_training_phase(cfg.phase)
        self.teacher = None
        if cfg.teacher:
            from .distill import load_teacher

            self.teacher = load_teacher(cfg.teacher, cfg.teacher_model, len(self.classes)).to(device)
        self.mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                               num_classes=len(self.classes))
            self.criterion = SoftTargetCrossEntropy()
        elif cfg.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(cfg.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        return model, train_set

    def write_digit_samples(self) -> None:
        """One validation digit per class in ``<output>/samples/``, images to try the run's checkpoint on."""
        from .data import DigitsDataset

        folder = os.path.join(self.cfg.output, "samples")
        paths = DigitsDataset("val").write_samples(folder)
        print(f"wrote {len(paths)} validation digits (one per class, 8x8 PNG) to {folder}/ to try the checkpoint on "
              f"(visattn-predict, visattn-visualize)", flush=True)

    def check_input(self, model: nn.Module) -> None:
        super().check_input(model)
        if self.teacher is None or self.cfg.phase != "distill":
            return
        from .distill import teacher_outputs

        blank = torch.zeros(1, 3, self.cfg.img_size, self.cfg.img_size, device=next(model.parameters()).device)
        model.eval()
        with torch.no_grad():
            tokens = forward_train(model, blank).extras.get("tokens")
        model.train()
        if tokens is None:
            raise UserError(f"--phase distill matches patch tokens, and {self.cfg.model}'s training forward gives none")
        teacher_tokens = teacher_outputs(self.teacher, blank)[1]
        if tokens.shape != teacher_tokens.shape:
            raise UserError(f"teacher {self.cfg.teacher} gives patch tokens {tuple(teacher_tokens.shape)}, "
                            f"{self.cfg.model} {tuple(tokens.shape)}; the token loss needs the same tokens")

    def compute_loss(self, net: nn.Module, batch, device: torch.device) -> Step:
        from .distill import logit_distillation, reconstruction_loss, teacher_attention, teacher_outputs

        cfg = self.cfg
        images, targets = (t.to(device, non_blocking=True) for t in batch)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        with autocast(device, cfg.amp):
            out = net(images)
            parts = {}
            if cfg.phase == "reconstruct":
                target = (teacher_attention(self.teacher, images) if self.teacher is not None
                          else [a.detach() for a in out.extras["attention"]])
                parts["reconstruction"] = cfg.recon_weight * reconstruction_loss(out.extras["approx"], target)
            else:
                parts["ce"] = self.criterion(out.output, targets)
                token_logits = out.extras.get("token_logits")
                if token_logits is not None and cfg.phase is None and cfg.token_label_weight:
                    n = token_logits.shape[1]  # every token scored against its image's label
                    parts["token_label"] = cfg.token_label_weight * self.criterion(
                        token_logits.flatten(0, 1), targets.repeat_interleave(n, dim=0))
                if self.teacher is not None:
                    teacher_logits, teacher_tokens = teacher_outputs(self.teacher, images)
                    parts["kd"] = cfg.distill_weight * logit_distillation(out.output, teacher_logits)
                    if cfg.phase == "distill":
                        parts["token_mse"] = cfg.token_weight * nn.functional.mse_loss(out.extras["tokens"].float(),
                                                                                       teacher_tokens.float())
            parts.update(out.aux_losses)
        return Step.from_parts(parts, images.shape[0], out.stats)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, Any]:
        return evaluate(model, self.val_loader, device, self.cfg.amp)

    def val_scalars(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {"val_loss": metrics["loss"], "val_top1": metrics["top1"], "val_top5": metrics["top5"]}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"num_classes": len(self.classes), "classes": self.classes, "img_size": self.cfg.img_size,
                "data_cfg": self.data_cfg}

    def epoch_line(self, metrics: dict[str, Any], scalars: dict[str, float]) -> str:
        return (f"val loss {metrics['loss']:.4f}, top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}% "
                f"({scalars['epoch_seconds']:.1f} s)")

    def summary(self, best: dict[str, Any]) -> str:
        return f"best val top-1 {best['val_top1']:.2f}% at epoch {best['epoch']}; checkpoints in {self.cfg.output}"


def train(cfg: ClassificationConfig) -> dict[str, Any]:
    """Train a classifier; returns ``{"best", "history"}`` (also written to ``metrics.json``)."""
    return fit(ClassificationTask(cfg))


def evaluate_checkpoint(checkpoint: str, data: str | None = None, model_name: str | None = None,
                        batch_size: int = 64, workers: int = 4, device: str | None = None,
                        use_ema: bool = True) -> dict[str, float]:
    """Rebuild the model a checkpoint was trained as and score it on the validation split."""
    model, ckpt, dev = ClassificationTask.model_from_checkpoint(checkpoint, device, use_ema, model_name)
    dataset = data if data is not None else (None if ckpt.get("dataset") == DIGITS else ckpt.get("dataset"))
    val_set = build_dataset(dataset, "val", ckpt["img_size"], ckpt["data_cfg"], classes=list(ckpt["classes"]))
    loader = make_loader(val_set, batch_size, workers, False, 1, dev)
    return evaluate(model, loader, dev, evaluated_with_amp(ckpt))
