"""torchrun support: process-group set-up and small collective helpers (no-ops in a single process)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..errors import UserError


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by torchrun. Returns (rank, world_size)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world_size


def device_problem(name: str) -> str | None:
    """Why ``name`` is not a device this machine can run on, or None."""
    try:
        device = torch.device(name)
    except RuntimeError:
        return "not a device; use cpu, cuda or cuda:N"
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            return "this machine has no CUDA device; use cpu"
        if device.index is not None and device.index >= count:
            return f"this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
    elif device.type in ("mps", "xpu"):
        backend = torch.backends.mps if device.type == "mps" else getattr(torch, "xpu", None)
        if backend is None or not backend.is_available():
            return f"this PyTorch build or machine has no {device.type} device; use cpu"
    elif device.type != "cpu":
        return "visattn runs on cpu or cuda devices"
    return None


def pick_device(requested: str | None) -> torch.device:
    """The device for this process: ``requested``, else this rank's GPU, else the CPU.

    A GPU, given or picked, becomes the current CUDA device; a bare ``cuda`` means this rank's GPU. A device that
    does not exist here is a one-line error.
    """
    if requested:
        problem = device_problem(requested)
        if problem:
            raise UserError(f"device {requested!r}: {problem}")
        device = torch.device(requested)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        return torch.device("cpu")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few scalars over all processes."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_from_main(obj):
    """Rank 0's ``obj`` on every process (``obj`` itself in a single process); picklable objects only."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
