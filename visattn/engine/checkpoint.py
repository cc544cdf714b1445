"""Output folders, atomic checkpoint and metric files, reading visattn training checkpoints (weights load through
:func:`visattn.weights.load_pretrained`), and the digests of the frozen weights a checkpoint saves by reference
(:meth:`visattn.engine.task.Task.restore_frozen` restores them)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import torch

from ..errors import UserError
from ..weights import read_file


def check_output_folder(path: str, purpose: str, option: str = "--output") -> None:
    """A one-line :class:`UserError` unless ``path`` (given as ``option``) is a folder or can be made one
    (``purpose``: what it is for, e.g. "the run"): neither it nor an ancestor is a file, and the nearest existing
    ancestor is writable."""
    target = existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == target else f"lies under {existing}, which is a file"
        raise UserError(f"{option} {path} {where}; give a folder for {purpose}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot write in {existing}; give a folder you can write to")


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it into place (with the mode the file
    had, or a new file's)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from err
    os.close(fd)
    try:
        write(tmp)
        mode = _file_mode(path)
        if os.stat(tmp).st_mode & 0o777 != mode:  # mkstemp's 0600 would hide the file from the user's group
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError) and err.errno is not None:  # a full disk, a read-only folder
            raise UserError(f"cannot write {path}: {err.strerror}") from err
        raise


def _file_mode(path: str) -> int:
    """The mode of the file at ``path`` when there is one, else what the umask gives a new file."""
    if os.path.exists(path):
        return os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file beside ``path``, then rename: a crash never leaves half a file."""
    def save(tmp: str) -> None:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:  # torch's zip writer reports a failed write (a full disk) as a RuntimeError
            if "PytorchStreamWriter" not in str(err) and "unexpected pos" not in str(err):
                raise
            free = shutil.disk_usage(os.path.dirname(os.path.abspath(tmp))).free
            raise UserError(f"cannot write {path}: torch.save could not write the file ({free / 2**20:.0f} MiB free "
                            "on its disk); free some space or choose another --output") from err

    atomic_write(path, save)


def atomic_link(source: str, path: str) -> None:
    """``path`` becomes the file at ``source``, atomically: a second hard link to it where the filesystem has them
    (no byte copied; replacing either name later leaves the other as it was), else a copy."""
    def link(tmp: str) -> None:
        os.remove(tmp)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    atomic_write(path, link)


def json_safe(value: Any) -> Any:
    """NaN and infinities -> None, recursively, so the value serialises as strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def atomic_write_json(obj: Any, path: str) -> None:
    """Strict JSON (NaN written as null) to ``path``, atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(json_safe(obj), f, indent=2, allow_nan=False)

    atomic_write(path, write)


def atomic_write_csv(path: str, header: list[str], rows: list[list[Any]]) -> None:
    """A CSV file of ``header`` and ``rows`` at ``path``, atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)

    atomic_write(path, write)


def read_training_checkpoint(path: str, mmap: bool = False) -> dict:
    """A visattn training checkpoint (``tools/train.py``'s ``last.pth`` / ``best.pth``), read by
    :func:`visattn.weights.read_file`, with a clear error for a file that is not one; ``mmap``: mapped, to read its
    fields without loading its tensors."""
    ckpt = read_file(path, mmap=mmap)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{path} is not a visattn training checkpoint (no 'state_dict'); convert it first")
    return ckpt


# --------------------------------------------------------------------------- frozen weights saved by reference



def tensor_sha256(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (on the CPU, contiguous)."""
    data = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{data.dtype} {tuple(data.shape)} ".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes, read in 16 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def without_frozen(state: dict, reference: dict | None) -> dict:
    """``state`` without the tensors ``reference`` (a checkpoint's :data:`visattn.weights.FROZEN` entry) restores
    from their source."""
    if not reference:
        return state
    left_out = set(reference["sha256"])
    return {k: v for k, v in state.items() if k not in left_out}
