"""What a task is to the engine: its config, its :class:`Task` parts, the registry ``--task NAME`` reads, and the
step result its loss returns.

A task package (``visattn/tasks/<name>/``) subclasses :class:`TrainConfig` and :class:`Task` and registers the task
with :func:`register_task`; importing :mod:`visattn.tasks` registers them all.
"""

from __future__ import annotations

import os
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..errors import UserError
from ..weights import FROZEN, WeightsUnavailable, load_pretrained, read_file, read_state_dict
from .checkpoint import file_sha256, read_training_checkpoint, tensor_sha256, without_frozen
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


def evaluated_with_amp(ckpt: dict) -> bool:
    """Whether the run that wrote ``ckpt`` evaluated under autocast (bf16 on a GPU; its ``--amp`` / ``--no-amp``):
    tools/eval.py scores a checkpoint as its run did."""
    return bool((ckpt.get("config") or {}).get("amp", True))


def absolute_folder(path: str | None) -> str | None:
    """``path`` as an absolute path when it is an existing folder, else as given (None, a built-in data name, or a
    missing path for the task to report)."""
    return os.path.abspath(path) if path is not None and os.path.isdir(path) else path


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
    save_frozen: bool = False  # keep frozen weights in the checkpoints instead of a reference to their source
    log_interval: int = 50  # off a terminal: a progress line every this many steps (and at least every 30 s)

    def model_description(self) -> str:
        """The model as the run builds it: its name, with its model arguments when there are any, named as the demo's
        reduced configuration when they are the demo's (``biformer_tiny (the demo's reduced configuration: depths
        1-1-2-1, dims 32-64-128-256, n_win 4)``)."""
        if not self.model_kwargs:
            return self.model
        settings = ", ".join(f"{key} {_shown(value)}" for key, value in self.model_kwargs.items())
        demo = type(self).demo("") if hasattr(type(self), "demo") else None
        ours = demo is not None and (demo.model, demo.model_kwargs) == (self.model, self.model_kwargs)
        what = "the demo's reduced configuration" if ours else "model arguments"
        return f"{self.model} ({what}: {settings})"


def _shown(value) -> str:
    """A model argument as the description shows it: lists as 1-1-2-1."""
    if isinstance(value, list | tuple):
        return "-".join(_shown(v) for v in value)
    return str(value)


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
    tiebreak: ClassVar[str | None] = None  # the val_* scalar that decides between equal scores (the same direction)
    panels: ClassVar[tuple[tuple[str, str, tuple[str, ...]], ...]]  # curves.png: (title, y label, scalar keys)
    distributed_eval: ClassVar[bool] = True  # every rank evaluates (and the task sums over ranks), else rank 0 only
    worker_init_fn = None  # for the training DataLoader's workers (a staticmethod)
    shared_help: ClassVar[dict[str, str]] = {}  # --help of shared options (by dest) this task reads its own way
    eval_keys: ClassVar[tuple[str, ...]] = ()  # what its evaluation reads from a checkpoint beyond the common keys

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    @property
    def dataset(self) -> str:
        """The data the run's checkpoints and metrics.json name: ``cfg.data`` (an existing folder as an absolute
        path, which tools/eval.py finds from any working folder), else the task's built-in data."""
        return absolute_folder(self.cfg.data) or self.default_data

    def metrics_fields(self) -> dict[str, Any]:
        """Fields of the run's metrics.json beyond the common ones, read after :meth:`build` (re-id: the dataset
        its epochs are evaluated on); none by default."""
        return {}

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
        """A training checkpoint of this task, its frozen weights restored (:meth:`restore_frozen`); another task's
        checkpoint is a one-line error naming its --task."""
        ckpt = read_training_checkpoint(path)
        task = ckpt.get("task", DEFAULT_TASK)
        if task != cls.name:
            raise UserError(f"{path} is a {task} checkpoint, not {cls.name}; pass --task {task}")
        missing = [k for k in ("model", "dataset", *cls.eval_keys) if k not in ckpt]
        if missing:
            raise UserError(f"{path} lacks {', '.join(missing)}: it is not a checkpoint tools/train.py --task "
                            f"{cls.name} wrote")
        return cls.restore_frozen(ckpt, path)

    @classmethod
    def rebuild_model(cls, ckpt: dict, model_name: str | None = None, pretrained: bool = False) -> nn.Module:
        """The model a checkpoint of this task was trained as (``model_name``: another model to load its weights
        into), on the CPU, untrained (``pretrained``: with its published weights): by default the timm model it
        names, with its model arguments and its ``num_classes``."""
        name = model_name or ckpt["model"]
        kwargs = ckpt.get("model_kwargs", {}) if name == ckpt["model"] else {}
        return build_model(name, **({"num_classes": ckpt["num_classes"]} if "num_classes" in ckpt else {}),
                           pretrained=pretrained, **kwargs)

    @classmethod
    def load_init(cls, model: nn.Module, source: str) -> None:
        """Start ``model`` from the weights in ``source`` (``--init``): a training checkpoint (its frozen weights
        restored) or weights in any layout :func:`~visattn.weights.load_pretrained` reads."""
        load_pretrained(model, read_weights(source), name=f"--init {source}")

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

    # Frozen weights are saved by reference when they are at least this fraction of the model's parameters (a frozen
    # backbone); fewer (a fixed bias, a phase's frozen predictors) stay in the checkpoint.
    frozen_fraction: ClassVar[float] = 0.25

    def frozen_reference(self, model: nn.Module, fields: dict) -> dict | None:
        """What a checkpoint keeps instead of ``model``'s frozen parameters (``requires_grad`` False) when they are
        at least :attr:`frozen_fraction` of its parameters and ``cfg.save_frozen`` is off: their source (the model's
        published weights, ``--init`` FILE with its SHA-256) and a SHA-256 per tensor; only the tensors that
        rebuilding the model from that source gives again, bit for bit, under another seed (not those of a random
        initialisation). ``fields``: the checkpoint's fields that rebuild the model. None: save them all."""
        cfg = self.cfg
        frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
        total = sum(p.numel() for p in model.parameters())
        if cfg.save_frozen or sum(p.numel() for p in frozen.values()) < self.frozen_fraction * total:
            return None
        reference = {"model": cfg.model, "pretrained": bool(cfg.pretrained),
                     "tag": (getattr(model, "pretrained_cfg", None) or {}).get("tag") if cfg.pretrained else None,
                     "init": os.path.abspath(cfg.init) if cfg.init else None,
                     "init_sha256": file_sha256(cfg.init) if cfg.init else None}
        rebuilt = self.model_from_source({**fields, FROZEN: reference}, seed=cfg.seed + 1).state_dict()
        same = {n: p for n, p in frozen.items() if n in rebuilt and torch.equal(rebuilt[n], p.detach().cpu())}
        if sum(p.numel() for p in same.values()) < self.frozen_fraction * total:
            return None
        return {**reference, "sha256": {n: tensor_sha256(p) for n, p in same.items()}}

    @classmethod
    def model_from_source(cls, fields: dict, seed: int = 0) -> nn.Module:
        """The model a run started from, rebuilt from the source its checkpoint's :data:`~visattn.weights.FROZEN`
        reference names (the published weights, then the ``--init`` file, which must be unchanged), initialised
        with ``seed``; on the CPU."""
        reference = fields[FROZEN]
        init = reference.get("init")
        if init:
            if not os.path.isfile(init):
                raise UserError(f"the frozen weights come from --init {init}, which does not exist; put that file "
                                "back (or train with --save-frozen to keep frozen weights in the checkpoints)")
            digest = file_sha256(init)
            if digest != reference["init_sha256"]:
                raise UserError(f"the frozen weights come from --init {init}, which has changed since the run "
                                f"(SHA-256 {digest[:16]}..., the run's {reference['init_sha256'][:16]}...); put the "
                                "run's file back")
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the loading warnings the run itself gave
            torch.manual_seed(seed)
            try:
                model = cls.rebuild_model(fields, pretrained=reference["pretrained"])
            except WeightsUnavailable as err:
                raise UserError(f"the frozen weights are the published weights of {err.model}, which cannot be "
                                f"fetched from {err.source} ({err.reason}); put the file at {err.cache}") from None
            if init:
                cls.load_init(model, init)
        return model

    @classmethod
    def restore_frozen(cls, ckpt: dict, path: str) -> dict:
        """``ckpt`` (read from ``path``) with the frozen weights it saves by reference put back into its state dicts
        from their source (:meth:`model_from_source`); each must match its recorded SHA-256. A checkpoint without a
        reference is returned as it is."""
        reference = ckpt.get(FROZEN)
        if not reference:
            return ckpt
        try:
            rebuilt = cls.model_from_source(ckpt).state_dict()
        except UserError as err:
            raise UserError(f"{path}: {err}") from None
        for name, digest in reference["sha256"].items():
            if name not in rebuilt or tensor_sha256(rebuilt[name]) != digest:
                source = f"--init {reference['init']}" if reference.get("init") else \
                    f"the published weights of {reference['model']}"
                raise UserError(f"{path}: the frozen weights rebuilt from {source} differ from the run's ({name}); "
                                "the source has changed since training: use the run's source")
        restored = {name: rebuilt[name] for name in reference["sha256"]}
        for key in ("state_dict", "state_dict_ema"):
            if key in ckpt:
                ckpt[key] = {**without_frozen(ckpt[key], reference), **restored}
        return ckpt

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


def complete_checkpoint(ckpt: dict, path: str) -> dict:
    """A training checkpoint of any task (read from ``path``) with the frozen weights it saves by reference restored
    (:meth:`Task.restore_frozen` of the task that wrote it)."""
    if not ckpt.get(FROZEN):
        return ckpt
    return get_task(ckpt.get("task", DEFAULT_TASK)).restore_frozen(ckpt, path)


def read_weights(source: str) -> dict:
    """The weights in the file ``source``: a visattn training checkpoint's ``state_dict`` (its frozen weights
    restored from their source), or the state dict of any file :func:`~visattn.weights.read_state_dict` reads."""
    if os.path.isfile(source) and not source.endswith(".safetensors"):
        fields = read_file(source, mmap=True)
        if isinstance(fields, dict) and fields.get(FROZEN):
            return complete_checkpoint(read_training_checkpoint(source), source)["state_dict"]
    return read_state_dict(source)


def make_loader(dataset: Dataset, batch_size: int, workers: int, train: bool, world_size: int,
                device: torch.device, worker_init_fn=None) -> DataLoader:
    """A DataLoader sharded over the processes under torchrun; a training one shuffles and drops a last
    incomplete batch."""
    sampler = DistributedSampler(dataset, shuffle=train) if world_size > 1 else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                      num_workers=workers, pin_memory=device.type == "cuda",
                      drop_last=train and len(dataset) > batch_size, worker_init_fn=worker_init_fn)
