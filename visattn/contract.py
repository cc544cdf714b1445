"""The model-training contract: what a model may give the training engine beyond timm's ``forward``.

Every model's ``forward(x)`` stays timm's: logits (B, classes), or per-pixel logits (B, classes, H, W) for a
segmentation network, in training and in evaluation alike. A model whose training needs more defines, all
optional:

- ``forward_train(x) -> TrainOutput``: the training forward, returning the ``forward`` output together with named
  deep-supervision outputs, named auxiliary losses, named statistics and named tensors for other losses
  (distillation). The engine calls it through :func:`forward_train`; a model without it trains on ``forward``.
- ``set_epoch(epoch)``: the one per-epoch hook, called before each training epoch (0-based), for training that
  changes with the epoch (TCPA's random prompt matching in its first epochs).
- ``training_phases`` and ``set_training_phase(phase)``: named phases that choose which parameters train (the
  Sparsifiner recipe's ``reconstruct`` and ``distill``); ``None`` trains everything.
- ``aux_loss_keys``: a regular expression over parameter names matching those only an auxiliary loss trains (no
  gradient reaches them from ``output``), so DDP expects unused parameters in a step.

A model never keeps training state set as a side effect of ``forward``. The names a model gives its losses and
statistics are logged as they are (``metrics.json``'s history, TensorBoard, ``curves.png``), so they must not be one
of :data:`RESERVED_NAMES` nor start with ``val_``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

__all__ = ["RESERVED_NAMES", "TrainOutput", "forward_train", "start_epoch"]

RESERVED_NAMES = frozenset({"epoch", "train_loss", "lr", "epoch_seconds", "best"})


@dataclass
class TrainOutput:
    """What ``forward_train`` returns.

    Attributes:
        output: what ``forward`` returns: (B, classes) logits or (B, classes, H, W) per-pixel logits.
        aux_outputs: more predictions of the same target, by name (deep supervision); the task scores each with its
            own loss, as it scores ``output``, and averages them all.
        aux_losses: loss terms the model computes itself, by name, already weighted: the task adds them to its loss.
        stats: scalar statistics to log, by name (not optimised).
        extras: tensors other losses read, by name (distillation reads ``tokens``, the final normed patch tokens
            (B, N, C); attention reconstruction ``approx`` and ``attention``, per-block attention maps).
    """

    output: torch.Tensor
    aux_outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def predictions(self) -> list[torch.Tensor]:
        """``output`` and then the ``aux_outputs``: everything a task's loss scores."""
        return [self.output, *self.aux_outputs.values()]

    def __post_init__(self):
        for name in (*self.aux_losses, *self.stats):
            if name in RESERVED_NAMES or name.startswith("val_"):
                raise ValueError(f"{name!r} is reserved for the engine's own scalars; name the loss or statistic "
                                 f"otherwise")


def forward_train(model: nn.Module, x: torch.Tensor) -> TrainOutput:
    """``model.forward_train(x)`` where the model defines it, else ``TrainOutput(model(x))``."""
    method = getattr(model, "forward_train", None)
    return method(x) if method is not None else TrainOutput(model(x))


def start_epoch(model: nn.Module, epoch: int) -> None:
    """Call the model's per-epoch hook ``set_epoch(epoch)`` where it defines one."""
    hook = getattr(model, "set_epoch", None)
    if hook is not None:
        hook(epoch)
