"""The training pass every task shares: forward under bf16 autocast, finite-loss check, backward, gradient clipping,
optimizer and per-step schedule, EMA, progress inside the epoch, and the per-sample means of the step's named parts."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..contract import forward_train
from .progress import Progress
from .task import Step


class NonFiniteLoss(RuntimeError):
    """A training step's loss is NaN or infinite (the message names the epoch and step)."""


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when ``enabled``; a no-op context elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


class TrainingForward(nn.Module):
    """``model``'s training forward (:func:`visattn.contract.forward_train`) as a module's ``forward``, so that DDP
    wraps it like any forward; its state dict is the model's under ``model.``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return forward_train(self.model, x)


def train_one_epoch(train_model: nn.Module, model: nn.Module, loader: DataLoader, optimizer, scheduler,
                    compute_loss: Callable[[nn.Module, tuple], Step], *, epoch: int, epochs: int,
                    clip_grad: float | None, ema=None, show_progress: bool = True,
                    log_interval: int = 50) -> tuple[float, int, dict[str, float]]:
    """One pass over ``loader``. ``compute_loss(train_model, batch)`` moves the batch to the device, runs the
    training forward (``train_model`` is :class:`TrainingForward` of ``model``, maybe inside DDP) and returns a
    :class:`~visattn.engine.task.Step`.

    Returns (sum of the per-sample losses, samples, sum of each named part times its step's samples).
    """
    train_model.train()
    loss_sum, seen = 0.0, 0
    part_sums: dict[str, torch.Tensor] = {}
    progress = Progress(loader, f"train epoch {epoch + 1}/{epochs}", enabled=show_progress, interval=log_interval)
    for step, batch in enumerate(progress):
        result = compute_loss(train_model, batch)
        loss = result.loss.item()
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"the loss is {loss} at epoch {epoch + 1}, step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        if clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        scheduler.step_update(epoch * len(loader) + step + 1)
        if ema is not None:
            ema.update(model)
        loss_sum += loss * result.samples
        seen += result.samples
        for name, value in result.parts.items():
            value = value.detach().float() * result.samples
            part_sums[name] = part_sums[name] + value if name in part_sums else value
        progress.update(result.samples, loss=loss, lr=optimizer.param_groups[0]["lr"])
    return loss_sum, seen, {name: value.item() for name, value in part_sums.items()}
