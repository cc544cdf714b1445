"""One training engine for every task: a :class:`Task` holds a task's own parts, :func:`fit` does the rest.

``fit`` picks the device, joins torchrun's process group, claims the run folder (an earlier run there is refused
unless resumed or overwritten; stale temporary files of a killed run are removed), resumes (same task and model
only; the options in force set the schedule and the optimizer's hyperparameters, the changed ones said in one line;
the optimizer's state carries over), checks that the model takes the input, builds timm's optimizer and per-step
cosine schedule, wraps the model in DDP, trains with the shared pass (bf16 autocast, finite-loss check, clipping,
EMA), evaluates on every rank or on rank 0 as the task says, tracks the best score, writes ``best.pth`` /
``last.pth`` atomically (never non-finite weights) and logs each epoch to TensorBoard, ``metrics.json`` and
``curves.png``: the training loss, the named parts and statistics of the task's steps (the model-training contract,
:mod:`visattn.contract`), the validation scalars. The model trains through its training forward
(:func:`visattn.contract.forward_train`) and its per-epoch hook; the engine knows no family. Progress inside each
epoch goes to the terminal or, piped, to periodic lines.

Every epoch reseeds torch, NumPy and Python's generators from (seed, epoch, rank) and its DataLoader workers start
afresh, so a run repeats, and a run killed at any point and resumed from ``last.pth`` ends as the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import math
import os
import random
import shutil
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..contract import start_epoch
from ..errors import UserError
from ..weights import FROZEN, WeightsUnavailable, load_pretrained
from .checkpoint import atomic_link, atomic_save, check_output_folder, read_training_checkpoint, without_frozen
from .distributed import all_reduce_sum, barrier, broadcast_from_main, cleanup, init_distributed, pick_device
from .loop import NonFiniteLoss, TrainingForward, train_one_epoch
from .run_log import RunLog
from .task import Task, TrainConfig


def train_pass(task: Task, train_model: nn.Module, model: nn.Module, loader: DataLoader, optimizer, scheduler,
               device: torch.device, epoch: int, show_progress: bool, ema=None) -> tuple[float, int, dict[str, float]]:
    """One training pass over ``loader`` with the task's loss step; returns (loss sum, samples, part sums)."""
    return train_one_epoch(train_model, model, loader, optimizer, scheduler,
                           functools.partial(task.compute_loss, device=device), epoch=epoch,
                           epochs=task.cfg.epochs, clip_grad=task.cfg.clip_grad, ema=ema, show_progress=show_progress,
                           log_interval=task.cfg.log_interval)


def _resume_checkpoint(task: Task) -> dict | None:
    """The --resume checkpoint, which must come from the same task and model and leave epochs to train."""
    cfg = task.cfg
    if not cfg.resume:
        return None
    ckpt = read_training_checkpoint(cfg.resume)
    task_name, model = ckpt.get("task"), ckpt.get("model")
    if (task_name, model) != (task.name, cfg.model):
        raise UserError(f"{cfg.resume} was trained as {task_name} / {model!r}, not {task.name} / {cfg.model!r}; "
                        f"pass --task {task_name} --model {model} or start without --resume")
    done = ckpt["epoch"] + 1
    if done >= cfg.epochs:
        raise UserError(f"{cfg.resume} has done {done} epochs and --epochs is {cfg.epochs}: nothing to train; "
                        f"pass --epochs above {done} to train more")
    return type(task).restore_frozen(ckpt, cfg.resume)


def _option_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(_plain(value))


def _plain(value: Any) -> Any:
    """An option's value with its tuples as lists (a value given on the command line and one saved compare alike)."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def resume_line(cfg: TrainConfig, ckpt: dict) -> str:
    """What a resumed run continues and, option by option, what it changes of the run it continues."""
    saved = ckpt.get("config") or {}
    changed = [f"{name} {_option_value(saved[name])} -> {_option_value(value)}"
               for name, value in dataclasses.asdict(cfg).items()
               if name in saved and name not in ("resume", "overwrite") and _plain(saved[name]) != _plain(value)]
    line = f"resuming {cfg.resume} after epoch {ckpt['epoch'] + 1} of {cfg.epochs}"
    return line + (f"; options changed from the run: {', '.join(changed)}" if changed else "")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, saved_opt: str | None,
                         opt: str) -> str | None:
    """Load a resumed run's optimizer state (its moments and step counts) into ``optimizer``, whose hyperparameters
    (lr, weight decay, ...) stay those of this run's options; None, or why the state cannot carry over (another
    optimizer, other parameter groups), in which case ``optimizer`` starts afresh."""
    if saved_opt is not None and saved_opt != opt:
        return f"--opt changed from {saved_opt} to {opt}"
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    if sizes != [len(group["params"]) for group in state["param_groups"]]:
        return "its parameter groups differ (--weight-decay turned on or off)"
    options = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, options, strict=True):
        group.update(own)
    return None


def resumed_config(path: str, config: type[TrainConfig]) -> dict[str, Any]:
    """The options of the run ``path`` (a last.pth) was written by, as ``config``'s fields (empty for a checkpoint
    that does not hold them), to continue that run; ``resume`` and ``overwrite`` are not carried over."""
    saved = read_training_checkpoint(path, mmap=True).get("config") or {}
    fields = {f.name for f in dataclasses.fields(config)} - {"resume", "overwrite"}
    return {k: v for k, v in saved.items() if k in fields}


DEFAULT_OUTPUT = "runs/train"


def assemble_config(task_class: type[Task], given: dict[str, Any], demo: bool = False) -> TrainConfig:
    """The config of a run from the options given (the config's field names; None: not given): the task's demo
    recipe with ``demo`` or when neither data nor a run to resume is given (said in one line, so that a model given
    on the command line never switches recipes unannounced), else the task's full recipe; a resumed run's own
    options under those given again; ``output`` the resumed run's folder, else the first free runs/trainN."""
    config = task_class.config
    given = {k: v for k, v in given.items() if v is not None}
    resume = given.get("resume")
    demo = demo or ("data" not in given and not resume)
    base = vars(config.demo("") if demo else config(output=""))
    if demo and given.get("model", base["model"]) != base["model"] and "model_kwargs" not in given:
        base["model_kwargs"] = {}  # the demo's reduced configuration is its own model's; another model is built as is
    if demo and int(os.environ.get("RANK", "0")) == 0:  # said once under torchrun
        recipe = config(**{**base, **given, "output": ""})
        print(f"{task_class.name} demo recipe: {recipe.model} on {recipe.data or task_class.default_data}, "
              f"{recipe.epochs} epochs" + ("" if "data" in given else "; pass --data DIR to train on your own data"),
              flush=True)
    if resume:
        base.update(resumed_config(resume, config))
        given.setdefault("output", os.path.dirname(os.path.abspath(resume)))
    else:
        given.setdefault("output", free_run_folder(DEFAULT_OUTPUT))
    if given.get("clip_grad") == 0:
        given["clip_grad"] = None
    return config(**{**base, **given})


RUN_FILES = ("last.pth", "best.pth", "metrics.json", "curves.png", "tensorboard")


def free_run_folder(folder: str) -> str:
    """``folder`` when it holds no run, else the first of ``folder``2, ``folder``3, ... that holds none."""
    candidate, number = folder, 1
    while any(os.path.exists(os.path.join(candidate, f)) for f in RUN_FILES):
        number += 1
        candidate = f"{folder}{number}"
    return candidate


def claim_output(cfg: TrainConfig, is_main: bool) -> None:
    """Make ``cfg.output`` this run's folder: a folder holding another run is an error unless this run resumes
    from it or ``cfg.overwrite`` (then the old run's files go); temporary files a killed run left are removed."""
    folder = cfg.output
    check_output_folder(folder, "the run")
    held = [f for f in RUN_FILES if os.path.exists(os.path.join(folder, f))]
    resuming_here = bool(cfg.resume) and os.path.isdir(folder) and os.path.samefile(
        os.path.dirname(os.path.abspath(cfg.resume)), folder)
    if held and not resuming_here and not cfg.overwrite:
        last = os.path.join(folder, "last.pth")
        resume = f"continue it with --resume {last}, " if os.path.isfile(last) else ""
        raise UserError(f"{folder} already holds a run ({', '.join(held)}); {resume}pick another --output, or pass "
                        "--overwrite to replace it")
    if not is_main:
        return
    if held and not resuming_here:
        for name in held:
            path = os.path.join(folder, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    for stale in glob.glob(os.path.join(glob.escape(folder), ".*.tmp")):
        os.remove(stale)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed torch, NumPy and Python's generators (timm's crops and flips draw from Python's) for one epoch of one
    process: the epoch's randomness, DataLoader workers' seeds included, depends on nothing else."""
    value = (seed * 1_000_003 + epoch * 1_009 + rank) % 2**32
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value)


def _non_finite(state: dict) -> str | None:
    """The first floating tensor of ``state`` with a NaN or infinity, or None."""
    return next((k for k, v in state.items() if torch.is_floating_point(v) and not torch.isfinite(v).all()), None)


def _last_good(cfg: TrainConfig) -> str:
    path = os.path.join(cfg.output, "last.pth")
    return f"the last good checkpoint is {path}" if os.path.exists(path) else "no checkpoint was written"


def _deterministic() -> None:
    """Deterministic algorithms (cuBLAS needs its workspace setting before the first call)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """{"total", "trainable"}: the model's parameters and those the optimizer updates."""
    return {"total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def trainable_summary(model: nn.Module) -> str:
    """"trainable N of M parameters (P%)": what the optimizer updates (frozen backbones, training phases)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"trainable {trainable:,} of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"


def frozen_line(reference: dict, model: nn.Module) -> str:
    """The line that says which frozen weights the checkpoints keep by reference, and to what."""
    names = set(reference["sha256"])
    size = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n in names)
    source = f"--init {reference['init']} (SHA-256 {reference['init_sha256'][:16]}...)" if reference["init"] else ""
    if reference["pretrained"]:
        published = f"the published weights of {reference['model']}" + \
            (f" ({reference['tag']})" if reference.get("tag") else "")
        source = f"{published} and {source}" if source else published
    return (f"checkpoints keep {len(names)} frozen tensors ({size / 2**20:.1f} MiB) by reference to {source}, "
            "restored from it when loaded; --save-frozen keeps them in the checkpoints")


def still_frozen(reference: dict | None, model: nn.Module) -> dict | None:
    """``reference`` without the tensors that are no longer frozen (saved in full from then on)."""
    if not reference:
        return reference
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    kept = {n: d for n, d in reference["sha256"].items() if n in frozen}
    return {**reference, "sha256": kept} if kept else None


def improves(scalars: dict[str, float], best: dict[str, Any], score: str, tiebreak: str | None,
             higher_is_better: bool) -> bool:
    """Whether an epoch's validation ``scalars`` beat ``best``: a better ``score``, or an equal one and a better
    ``tiebreak`` (the same direction; a Dice of 0 over the first epochs then still keeps the weights whose AUC
    rose). A key ``best`` lacks is beaten by any value; NaN beats nothing."""
    sign = 1.0 if higher_is_better else -1.0
    keys = (score, tiebreak) if tiebreak else (score,)
    now = tuple(sign * scalars[key] for key in keys)
    then = tuple(sign * best[key] if key in best else -math.inf for key in keys)
    return now > then


def fit(task: Task) -> dict[str, Any]:
    """Train ``task``; returns ``{"best", "history"}`` on every process (also written to ``metrics.json``)."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    cfg = task.cfg
    device = pick_device(cfg.device)
    rank, world_size = init_distributed(device)
    is_main = rank == 0
    if cfg.deterministic:
        _deterministic()
    seed_epoch(cfg.seed, -1, rank)  # the model's initialisation
    log = None
    try:
        claim_output(cfg, is_main)
        resume = _resume_checkpoint(task)
        try:
            model, train_set = task.build(device, rank, world_size)
        except WeightsUnavailable as err:
            raise err.unless_named(f"--init FILE without --pretrained (the weights of {cfg.model} in any layout "
                                   "visattn.load_pretrained reads)") from None
        if cfg.init and resume is None:
            task.load_init(model, cfg.init)
        model.to(device)
        task.check_input(model)
        description = cfg.model_description()
        if is_main:
            print(f"{description}: {trainable_summary(model)}", flush=True)
        optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay)
        train_loader = task.train_loader(train_set, device, rank, world_size)
        schedule = {"num_epochs": cfg.epochs, "warmup_epochs": cfg.warmup_epochs, "warmup_lr": cfg.lr * 0.01,
                    **task.schedule()}
        scheduler, _ = create_scheduler_v2(optimizer, step_on_epochs=False, updates_per_epoch=len(train_loader),
                                           **schedule)
        ema = ModelEmaV3(model, decay=task.ema_decay) if task.ema_decay else None
        # -1 is below every score tracked so far (accuracy, Dice), as in checkpoints written before.
        first_epoch, history = 0, []
        best = {"epoch": -1, task.score: -1.0 if task.higher_is_better else math.inf}
        if resume is not None:
            load_pretrained(model, resume["state_dict"], strict=True, name=f"checkpoint {cfg.resume}")
            fresh = load_optimizer_state(optimizer, resume["optimizer"], (resume.get("config") or {}).get("opt"),
                                         cfg.opt)
            if ema is not None and "state_dict_ema" in resume:
                ema.module.load_state_dict(resume["state_dict_ema"])
            first_epoch, best, history = resume["epoch"] + 1, resume["best"], resume["history"]
            # the schedule of this run's options (epochs, lr, warm-up, ...) at the update the resumed run reached
            scheduler.step_update(first_epoch * len(train_loader))
            if is_main:
                print(resume_line(cfg, resume) + (f"; the optimizer state starts afresh: {fresh}" if fresh else ""),
                      flush=True)
        common = {"task": task.name, "model": cfg.model, "model_kwargs": cfg.model_kwargs}
        reference = task.frozen_reference(model, {**common, **task.checkpoint_extra()}) if is_main else None
        if reference:
            print(frozen_line(reference, model), flush=True)

        train_model = TrainingForward(model)
        if world_size > 1:
            # parameters only an auxiliary loss trains (the contract's aux_loss_keys) may get no gradient in a step
            train_model = nn.parallel.DistributedDataParallel(
                train_model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=bool(getattr(model, "aux_loss_keys", None)))
        config = dataclasses.asdict(cfg)
        if is_main:
            os.makedirs(cfg.output, exist_ok=True)  # claim_output checked that it can be made
            log = RunLog(cfg.output, history, {**common, "model_description": description,
                                               "parameters": parameter_counts(model), "dataset": task.dataset,
                                               **task.metrics_fields(), "config": config}, task.panels, first_epoch)

        for epoch in range(first_epoch, cfg.epochs):
            seed_epoch(cfg.seed, epoch, rank)
            for sampler in (train_loader.sampler, train_loader.batch_sampler):  # reshuffle shards / PK batches
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(epoch)
            start_epoch(model, epoch)
            started = time.time()
            try:
                loss_sum, seen, part_sums = train_pass(task, train_model, model, train_loader, optimizer, scheduler,
                                                       device, epoch, is_main, ema)
            except NonFiniteLoss as err:
                raise UserError(f"{err}; {_last_good(cfg)}; lower --lr or clip gradients (--clip-grad)") from None
            names = sorted(part_sums)  # every rank's step names the same parts
            train_loss_sum, train_seen, *part_totals = all_reduce_sum([loss_sum, seen, *(part_sums[n] for n in names)],
                                                                      device)
            eval_model = ema.module if ema is not None else model
            evaluating = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
            metrics = task.evaluate(eval_model, device) if evaluating and (task.distributed_eval or is_main) else None
            bad = _non_finite(model.state_dict()) or (_non_finite(ema.module.state_dict()) if ema else None)
            if bad:  # every rank holds the same weights, so every rank stops here
                raise UserError(f"the weights became non-finite in epoch {epoch + 1} ({bad}); nothing was saved "
                                f"over them, {_last_good(cfg)}; lower --lr or clip gradients")
            if is_main:
                scalars = {"train_loss": train_loss_sum / train_seen,
                           **{name: total / train_seen for name, total in zip(names, part_totals, strict=True)},
                           **(task.val_scalars(metrics) if evaluating else {}),
                           "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": time.time() - started}
                improved = evaluating and improves(scalars, best, task.score, task.tiebreak, task.higher_is_better)
                if improved:
                    best = {"epoch": epoch + 1,
                            **{k: v for k, v in scalars.items() if k.startswith("val_") and k != "val_loss"}}
                reference = still_frozen(reference, model)
                ckpt = {**common, **task.checkpoint_extra(), "dataset": task.dataset, "config": config,
                        "epoch": epoch, "state_dict": without_frozen(model.state_dict(), reference),
                        "optimizer": optimizer.state_dict(), "best": best,
                        "history": log.history + [{"epoch": epoch + 1, **scalars}], FROZEN: reference}
                if ema is not None:
                    ckpt["state_dict_ema"] = without_frozen(ema.module.state_dict(), reference)
                best_file, last_file = (os.path.join(cfg.output, name) for name in ("best.pth", "last.pth"))
                if improved:  # best first: last.pth is the commit point a resume starts from
                    atomic_save(ckpt, best_file)
                    atomic_link(best_file, last_file)
                else:
                    atomic_save(ckpt, last_file)
                log.log(epoch + 1, scalars, best)
                result = task.epoch_line(metrics, scalars) if evaluating else f"not evaluated (every {cfg.eval_every})"
                print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {scalars['train_loss']:.4f}, {result}", flush=True)
            barrier()
        return broadcast_from_main({"best": best, "history": log.history if log else history})
    except KeyboardInterrupt:
        if is_main and os.path.exists(os.path.join(cfg.output, "last.pth")):
            print(f"training stopped; {_last_good(cfg)}: continue with --resume "
                  f"{os.path.join(cfg.output, 'last.pth')}", file=sys.stderr, flush=True)
        raise
    finally:
        if log is not None:  # curves.png and TensorBoard complete however the run ends
            log.close()
        cleanup()
