"""What the after-training tools (predict, export, visualize) start from: a trained checkpoint of any task, or a zoo
model by name, opened in evaluation mode on a device."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
import torch.nn as nn

from ..engine.checkpoint import read_training_checkpoint
from ..engine.distributed import pick_device
from ..engine.models import build_model
from ..engine.task import DEFAULT_TASK, get_task
from ..errors import UserError
from ..weights import WeightsUnavailable, load_pretrained

SEGMENTATION = "segmentation"
TASK_KINDS = {"medical-seg": SEGMENTATION, "reid": "reid"}  # what a task's model outputs, when not class logits
# re-id evaluation's resize (tasks.reid.data.reid_eval_transform) in timm's terms: the whole image squashed, bilinear
REID_RESIZE = {"interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "squash"}


@dataclass
class OpenedModel:
    """A model ready for inference.

    ``kind``: ``"classification"``, ``"segmentation"`` or ``"reid"`` (what its output means); ``task``: the task
    that wrote the checkpoint (None for a zoo model); ``checkpoint``: that checkpoint's fields without its weights
    (classes, image size, normalisation, ...; empty for a zoo model); ``data_config``: timm's data config of the
    model (input size, mean, std, interpolation, crop)."""

    model: nn.Module
    name: str
    kind: str
    device: torch.device
    task: str | None = None
    checkpoint: dict[str, Any] = field(default_factory=dict)
    data_config: dict[str, Any] = field(default_factory=dict)

    def input_size(self, img_size: int | None = None) -> tuple[int, int]:
        """(H, W) the model takes its images at: ``img_size`` square, else the checkpoint's training size
        (``input_size`` or ``img_size``), else its data config's."""
        if img_size:
            return img_size, img_size
        if "input_size" in self.checkpoint:
            return tuple(int(n) for n in self.checkpoint["input_size"])
        if "img_size" in self.checkpoint:
            return int(self.checkpoint["img_size"]), int(self.checkpoint["img_size"])
        return tuple(int(n) for n in self.data_config["input_size"][1:])

    def preprocessing(self) -> dict[str, Any]:
        """How an image becomes the model's input: RGB / 255, then ``(x - mean) / std`` per channel, resized with
        ``interpolation`` (``crop_pct`` and ``crop_mode`` as timm's eval transform). The checkpoint's values (its own
        fields or its ``data_cfg``), else the data config's; a re-id network normalises its [0, 1] input itself
        (mean 0, std 1) and takes the whole image resized to its input size, as its evaluation does
        (``REID_RESIZE``). A segmentation network takes the whole image, not a crop: ``scale`` (the image resized by
        it, bilinear, and the logits back to the image's size; 1 for a zoo model) and ``threshold`` (foreground where
        sigmoid(logit) >= it; 0.5 for a zoo model) replace the resize and crop."""
        if self.kind == "reid":
            return {"mean": [0.0] * 3, "std": [1.0] * 3, **REID_RESIZE}
        trained = self.checkpoint if "mean" in self.checkpoint else self.checkpoint.get("data_cfg") or {}
        config = {**self.data_config, **trained}
        normalisation = {"mean": [float(v) for v in config["mean"]], "std": [float(v) for v in config["std"]]}
        if self.kind == SEGMENTATION:
            return {**normalisation, "scale": float(self.checkpoint.get("scale", 1.0)),
                    "threshold": float(self.checkpoint.get("threshold", 0.5))}
        return {**normalisation, "interpolation": config.get("interpolation"), "crop_pct": config.get("crop_pct"),
                "crop_mode": config.get("crop_mode")}


_WEIGHTS = ("state_dict", "state_dict_ema", "optimizer", "scaler", "scheduler")


def _zoo_kind(model_name: str) -> str:
    module = timm.models.model_entrypoint(model_name).__module__
    return getattr(sys.modules[module], "MODEL_KIND", "classification")


def open_model(source: str, *, weights: str | None = None, pretrained: bool = False,
               model_kwargs: dict | None = None, device: str | None = None, use_ema: bool = True) -> OpenedModel:
    """Open ``source``: a training checkpoint file (``best.pth`` of any task: the model it names, its weights, its
    EMA when it has one and ``use_ema``) or a timm model name (``pretrained``: its published weights; ``weights``:
    a file of weights in any layout :func:`visattn.weights.load_pretrained` reads). Evaluation mode, on ``device``
    (default: a GPU when there is one)."""
    if os.path.isfile(source):
        if weights or pretrained or model_kwargs:
            raise UserError(f"{source} is a training checkpoint: it names its model and holds its weights; "
                            "--weights, --pretrained and --model-kwargs go with a model name")
        fields = read_training_checkpoint(source, mmap=True)
        task = fields.get("task", DEFAULT_TASK)
        model, ckpt, dev = get_task(task).model_from_checkpoint(source, device, use_ema=use_ema)
        info = {k: v for k, v in ckpt.items() if k not in _WEIGHTS}
        kind = TASK_KINDS.get(task, "classification")
        return OpenedModel(model.eval(), ckpt["model"], kind, dev, task, info, _data_config(model))
    if os.path.sep in source or source.endswith((".pth", ".pt", ".safetensors", ".bin")):
        raise UserError(f"{source}: no such file (give a checkpoint file or a model name)")
    try:
        model = build_model(source, pretrained=pretrained, **(model_kwargs or {}))
    except WeightsUnavailable as err:
        raise err.instead("--weights FILE (Python: weights=FILE)") from None
    if weights:
        if not os.path.isfile(weights):
            raise UserError(f"--weights {weights}: no such file")
        load_pretrained(model, weights)
    dev = pick_device(device)
    return OpenedModel(model.to(dev).eval(), source, _zoo_kind(source), dev, data_config=_data_config(model))


def _data_config(model: nn.Module) -> dict[str, Any]:
    return timm.data.resolve_data_config(model=model)
