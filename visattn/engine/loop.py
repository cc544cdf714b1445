"""The training pass every task loop shares: forward under bf16 autocast, finite-loss check, backward, gradient
clipping, optimizer and per-step schedule, EMA, progress bar."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm


class NonFiniteLoss(RuntimeError):
    """A training step's loss is NaN or infinite (the message names the epoch and step)."""


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when ``enabled``; a no-op context elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def train_one_epoch(train_model: nn.Module, model: nn.Module, loader: DataLoader, optimizer, scheduler,
                    compute_loss: Callable[[nn.Module, tuple], tuple[torch.Tensor, int]], *, epoch: int, epochs: int,
                    clip_grad: float | None, ema=None, show_progress: bool = True) -> tuple[float, int]:
    """One pass over ``loader``. ``compute_loss(train_model, batch)`` moves the batch to the device, runs the
    forward (``train_model`` may be the DDP wrapper of ``model``) and returns (loss, samples in the batch).

    Returns (sum of the per-sample losses, samples).
    """
    train_model.train()
    loss_sum, seen = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
               disable=not (show_progress and sys.stderr.isatty()))
    for step, batch in enumerate(bar):
        loss, samples = compute_loss(train_model, batch)
        if not math.isfinite(loss.item()):
            raise NonFiniteLoss(f"the loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        scheduler.step_update(epoch * len(loader) + step + 1)
        if ema is not None:
            ema.update(model)
        loss_sum += loss.item() * samples
        seen += samples
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    return loss_sum, seen
