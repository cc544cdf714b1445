"""What a task is to the engine: its config, its :class:`Task` parts, the registry ``--task NAME`` reads, and the
step result its loss returns.

A task package (``visattn/tasks/<name>/``) subclasses :class:`TrainConfig` and :class:`Task` and registers the task
with :func:`register_task`; importing :mod:`visattn.tasks` registers them all.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..errors import UserError
from ..weights import load_pretrained
from .checkpoint import read_training_checkpoint
from .distributed import pick_device
from .models import build_model, check_model_input

TASKS: dict[str, type[Task]] = {}  # --task NAME -> its Task class, filled by @register_task
DEFAULT_TASK = "classification"  # also the task of checkpoints that do not name one


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make ``cls`` the task ``--task cls.name`` runs."""
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is registered twice ({TASKS[cls.name].__qualname__}, {cls.__qualname__})")
    TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> type[Task]:
    """The Task class registered as ``name`` (``import visattn.tasks`` registers the built-in ones)."""
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; use one of {', '.join(TASKS)}")
    return TASKS[name]


@dataclass
class Step:
    """What a task's loss step returns: the loss to optimise, the samples it covers, and its named parts (loss terms
    as they enter the loss, and statistics), each a scalar averaged per sample over the epoch and logged by name."""

    loss: torch.Tensor
    samples: int
    parts: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def from_parts(cls, parts: dict[str, torch.Tensor], samples: int,
                   stats: dict[str, torch.Tensor] | None = None) -> Step:
        """The loss as the sum of its named ``parts`` (each as it enters the loss, weighted); the parts are logged
        when there are several, the statistics always."""
        loss = sum(parts.values())
        return cls(loss, samples, {**(parts if len(parts) > 1 else {}), **(stats or {})})


@dataclass
class TrainConfig:
    """What every task's training reads; a task's config subclasses it with its own defaults and fields."""

    output: str
    data: str | None = None  # None = the task's built-in data
    model: str = ""
    model_kwargs: dict = field(default_factory=dict)
    pretrained: bool = False
    init: str | None = None  # weights to start from: a checkpoint (e.g. an earlier run's best.pth) or state dict
    img_size: int = 224
    epochs: int = 100
    eval_every: int = 1  # evaluate every this many epochs, and after the last
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    opt: str = "adamw"
    warmup_epochs: int = 5
    min_lr: float = 1e-6
    clip_grad: float | None = 5.0
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))  # DataLoader processes
    seed: int = 0
    device: str | None = None
    amp: bool = True
    deterministic: bool = False  # deterministic GPU algorithms (CPU runs repeat anyway)
    resume: str | None = None
    overwrite: bool = False  # replace the run ``output`` holds
    log_interval: int = 50  # off a terminal: a progress line every this many steps (and at least every 30 s)


class Task(ABC):
    """A task's own parts; one instance serves one run of :func:`fit` and keeps what evaluation needs.

    Per run fit calls ``build`` and ``check_input``; per batch ``compute_loss``; per epoch ``evaluate``,
    ``val_scalars``, ``checkpoint_extra`` and ``epoch_line``. The tools call ``add_train_arguments``,
    ``add_eval_arguments``, ``summary`` and ``run_eval``.
    """

    name: ClassVar[str]  # --task NAME, and the "task" of its checkpoints and metrics.json
    config: ClassVar[type[TrainConfig]]
    default_data: ClassVar[str]  # the dataset name recorded when cfg.data is None
    score: ClassVar[str]  # the val_* scalar that picks best.pth
    higher_is_better: ClassVar[bool] = True
    panels: ClassVar[tuple[tuple[str, str, tuple[str, ...]], ...]]  # curves.png: (title, y label, scalar keys)
    distributed_eval: ClassVar[bool] = True  # every rank evaluates (and the task sums over ranks), else rank 0 only
    worker_init_fn = None  # for the training DataLoader's workers (a staticmethod)
    shared_help: ClassVar[dict[str, str]] = {}  # --help of shared options (by dest) this task reads its own way
    eval_keys: ClassVar[tuple[str, ...]] = ()  # what its evaluation reads from a checkpoint beyond the common keys

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    @property
    def dataset(self) -> str:
        return self.cfg.data or self.default_data

    @property
    def ema_decay(self) -> float | None:
        """Keep an EMA of the weights with this decay (evaluated and saved as ``state_dict_ema``); None = off."""
        return None

    @staticmethod
    def add_train_arguments(parser) -> None:
        """This task's own ``tools/train.py`` options (dests named as the config's fields; no defaults); none
        by default."""
        return None

    @staticmethod
    def add_eval_arguments(parser) -> None:
        """This task's own ``tools/eval.py`` options (no defaults); none by default."""
        return None

    @classmethod
    @abstractmethod
    def run_eval(cls, args) -> str:
        """Score ``args.checkpoint`` as ``tools/eval.py`` asks; returns the text to print."""

    @classmethod
    def load_checkpoint(cls, path: str) -> dict:
        """A training checkpoint of this task; another task's checkpoint is a one-line error naming its --task."""
        ckpt = read_training_checkpoint(path)
        task = ckpt.get("task", DEFAULT_TASK)
        if task != cls.name:
            raise UserError(f"{path} is a {task} checkpoint, not {cls.name}; pass --task {task}")
        missing = [k for k in ("model", "dataset", *cls.eval_keys) if k not in ckpt]
        if missing:
            raise UserError(f"{path} lacks {', '.join(missing)}: it is not a checkpoint tools/train.py --task "
                            f"{cls.name} wrote")
        return ckpt

    @classmethod
    def rebuild_model(cls, ckpt: dict, model_name: str | None = None) -> nn.Module:
        """The model a checkpoint of this task was trained as (``model_name``: another model to load its weights
        into), on the CPU, untrained: by default the timm model it names, with its model arguments and its
        ``num_classes``."""
        name = model_name or ckpt["model"]
        kwargs = ckpt.get("model_kwargs", {}) if name == ckpt["model"] else {}
        return build_model(name, **({"num_classes": ckpt["num_classes"]} if "num_classes" in ckpt else {}), **kwargs)

    @classmethod
    def model_from_checkpoint(cls, path: str, device: str | None = None, use_ema: bool = True,
                              model_name: str | None = None) -> tuple[nn.Module, dict, torch.device]:
        """(model with the checkpoint's weights (its EMA when it has one and ``use_ema``) on the device, the
        checkpoint, the device): what every task's evaluation of a checkpoint starts from."""
        ckpt = cls.load_checkpoint(path)
        dev = pick_device(device)
        model = cls.rebuild_model(ckpt, model_name)
        state = ckpt["state_dict_ema"] if use_ema and "state_dict_ema" in ckpt else ckpt["state_dict"]
        load_pretrained(model, state, strict=True, name=f"checkpoint {path} (trained as {ckpt.get('model')})")
        return model.to(dev), ckpt, dev

    @abstractmethod
    def build(self, device: torch.device, rank: int, world_size: int) -> tuple[nn.Module, Dataset]:
        """The model (on the CPU, through :func:`~visattn.engine.models.build_model`) and the training set;
        keeps the validation data for :meth:`evaluate` and whatever :meth:`compute_loss` needs."""

    def check_input(self, model: nn.Module) -> None:
        """Fail before training on an input size the model cannot take."""
        check_model_input(model, self.cfg.img_size, self.cfg.model)

    @abstractmethod
    def compute_loss(self, net: nn.Module, batch, device: torch.device) -> Step:
        """Move ``batch`` to ``device``, run ``net`` under autocast and score it. ``net(images)`` is the model's
        training forward (:func:`visattn.contract.forward_train`, maybe inside DDP): it returns a
        :class:`~visattn.contract.TrainOutput`, whose auxiliary losses the task adds to its own and whose losses and
        statistics it reports in :attr:`Step.parts`."""

    @abstractmethod
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, Any]:
        """Validation metrics of ``model``."""

    @abstractmethod
    def val_scalars(self, metrics: dict[str, Any]) -> dict[str, float]:
        """The per-epoch ``val_*`` scalars; all but ``val_loss`` are kept in ``best``."""

    def train_loader(self, dataset: Dataset, device: torch.device, rank: int, world_size: int) -> DataLoader:
        """The training DataLoader: shuffled batches of ``cfg.batch_size``, sharded under torchrun."""
        cfg = self.cfg
        return make_loader(dataset, cfg.batch_size, cfg.workers, True, world_size, device, self.worker_init_fn)

    def schedule(self) -> dict[str, Any]:
        """Arguments of timm's ``create_scheduler_v2`` (stepped per update): per-step cosine down to ``min_lr`` after
        a warm-up from lr / 100 by default."""
        return {"sched": "cosine", "min_lr": self.cfg.min_lr}

    def checkpoint_extra(self) -> dict[str, Any]:
        """What a checkpoint holds beyond the common fields, to rebuild the model and its data for evaluation."""
        return {}

    @abstractmethod
    def epoch_line(self, metrics: dict[str, Any], scalars: dict[str, float]) -> str:
        """The end of the per-epoch line, after ``epoch E/N: train loss L, ``."""

    @abstractmethod
    def summary(self, best: dict[str, Any]) -> str:
        """The line ``tools/train.py`` prints at the end."""


def make_loader(dataset: Dataset, batch_size: int, workers: int, train: bool, world_size: int,
                device: torch.device, worker_init_fn=None) -> DataLoader:
    """A DataLoader sharded over the processes under torchrun; a training one shuffles and drops a last
    incomplete batch."""
    sampler = DistributedSampler(dataset, shuffle=train) if world_size > 1 else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                      num_workers=workers, pin_memory=device.type == "cuda",
                      drop_last=train and len(dataset) > batch_size, worker_init_fn=worker_init_fn)
