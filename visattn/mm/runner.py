"""mmdet / mmseg configs handed to mmengine's Runner: what ``tools/train.py CONFIG`` and ``tools/eval.py``
run for detection and segmentation."""

from __future__ import annotations

import contextlib
import copy
import difflib
import importlib
import itertools
import os
import re

import torch

from ..engine.checkpoint import check_output_folder
from ..errors import UserError

TASK_OF_SCOPE = {"mmdet": "detection", "mmseg": "segmentation"}
_NOT_REGISTERED = re.compile(r"(\w+) is not in the (\w+)::(\w+) registry")
_BAD_ARGUMENT = re.compile(r"(unexpected keyword argument|missing \d+ required positional argument)")


def _registered_names(scope: str, registry: str) -> list[str]:
    """Every type name the ``scope`` library's ``registry`` (and mmengine's root registry) can build."""
    try:
        child = getattr(importlib.import_module(f"{scope}.registry"), f"{registry.upper()}S")
    except (ImportError, AttributeError):
        return []
    names = list(child.module_dict)
    if child.parent is not None:
        names += list(child.parent.module_dict)
    return names


def _config_mistake(path: str, err: BaseException) -> str | None:
    """What a user got wrong in config ``path``, from an exception raised while reading or building it; None when
    the exception does not look like a config mistake (a bug, which keeps its traceback)."""
    text = " ".join(str(err).split())
    if isinstance(err, UserError):
        return text
    if isinstance(err, SyntaxError):  # the file named is the config itself or one of its _base_ files
        where = err.filename if err.filename not in (None, "<unknown>", path) else None
        return f"{where + ', ' if where else ''}line {err.lineno}: {err.msg}"
    if isinstance(err, FileNotFoundError):
        missing = err.filename or text
        if str(missing).endswith(".py"):
            return f"cannot find {missing}: check the _base_ list and custom_imports"
        return (f"{missing} does not exist: put the dataset there, or point the config at it, e.g. --cfg-options "
                f"train_dataloader.dataset.data_root=DIR val_dataloader.dataset.data_root=DIR "
                f"test_dataloader.dataset.data_root=DIR")
    match = _NOT_REGISTERED.search(text)
    if isinstance(err, KeyError) and match:
        name, scope, registry = match.groups()
        close = difflib.get_close_matches(name, _registered_names(scope, registry), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; check the spelling and custom_imports"
        return f"type {name!r} is not a registered {scope} {registry}{hint}"
    if isinstance(err, TypeError) and _BAD_ARGUMENT.search(text):
        return f"{text}; check that key in the config"
    return None


@contextlib.contextmanager
def config_errors(path: str):
    """Turn a mistake in config ``path`` (a missing _base_ or dataset, a misspelled type, an unknown key or arch)
    into one :class:`UserError` line naming the config; the original stays chained for ``--debug``."""
    try:
        yield
    except Exception as err:
        mistake = _config_mistake(path, err)
        if mistake is None:
            raise
        raise UserError(f"config {path}: {mistake}") from err


def load_config(path: str, work_dir: str | None = None, cfg_options: dict | None = None, amp: bool = False,
                launcher: str = "none"):
    """Read an mmdet/mmseg config and apply the command line.

    ``amp`` switches the optimizer wrapper to mixed precision; a config asking for it (``AmpOptimWrapper``,
    as the official recipes do) falls back to full precision when no GPU is present.
    """
    from mmengine.config import Config

    import visattn.mm

    visattn.mm.setup()

    if not os.path.isfile(path):
        raise UserError(f"config {path} does not exist")
    with config_errors(path):
        cfg = Config.fromfile(path)
    if cfg.get("default_scope") not in TASK_OF_SCOPE:
        raise UserError(f"{path} is not an mmdet or mmseg config (default_scope={cfg.get('default_scope')!r})")
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.work_dir = work_dir or cfg.get("work_dir") or os.path.join(
        "work_dirs", os.path.splitext(os.path.basename(path))[0])
    check_output_folder(cfg.work_dir, "the run's logs and checkpoints", option="--work-dir")
    cfg.launcher = launcher
    wrapper = cfg.optim_wrapper
    if amp and torch.cuda.is_available():
        wrapper.type = "AmpOptimWrapper"
        wrapper.setdefault("loss_scale", "dynamic")
    elif wrapper.get("type") == "AmpOptimWrapper" and not torch.cuda.is_available():
        wrapper.type = "OptimWrapper"
        wrapper.pop("loss_scale", None)
    return cfg


_runners_built = itertools.count()


def build_runner(cfg):
    """mmengine's Runner for ``cfg``, with names of its own for the logger, message hub and visualizer.

    mmengine keeps those as process-wide instances keyed by name: the experiment name is the config's name and the
    second it was built, and mmdet/mmseg configs call every visualizer ``'visualizer'``. A second runner in one
    process (train, then test, in a notebook) would reuse the first one's and write its logs and visualisations
    into the first run's folder, so every runner after the first gets a numbered name.
    """
    from mmengine.runner import Runner

    number = next(_runners_built)
    if number:
        cfg = copy.deepcopy(cfg)
        stem = os.path.splitext(os.path.basename(cfg.filename or "run"))[0]
        cfg.experiment_name = f"{cfg.get('experiment_name') or stem}-{number}"
        if cfg.get("visualizer") is not None and cfg.visualizer.get("name"):
            cfg.visualizer.name = f"{cfg.visualizer.name}-{number}"
    return Runner.from_cfg(cfg)


def check_checkpoint(checkpoint: str, model: torch.nn.Module, path: str) -> None:
    """A one-line error unless ``checkpoint`` is a readable mmengine checkpoint holding every weight of ``model``
    (built from config ``path``): mmengine loads it leniently, and a checkpoint of another model would be evaluated
    or resumed with the model's initialisation, a warning in the log."""
    from mmengine.model import is_model_wrapper

    from ..weights import read_file

    saved = read_file(checkpoint, mmap=True)
    state = saved.get("state_dict") if isinstance(saved, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {checkpoint} is not an mmengine checkpoint (no state_dict): use one that "
                        f"tools/train.py {path} wrote")
    own = (model.module if is_model_wrapper(model) else model).state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise UserError(f"checkpoint {checkpoint} is not a checkpoint of {path}'s model: {len(missing)} of its "
                        f"{len(own)} weights are missing ({shown})")


def train(path: str, work_dir: str | None = None, resume: str | bool = False, amp: bool = False,
          launcher: str = "none", cfg_options: dict | None = None):
    """Train from a config; ``resume`` is True (latest checkpoint in the work dir) or a checkpoint path."""
    if isinstance(resume, str) and not os.path.isfile(resume):
        raise UserError(f"checkpoint {resume} to resume from does not exist")
    cfg = load_config(path, work_dir, cfg_options, amp, launcher)
    if resume:
        cfg.resume = True
        cfg.load_from = None if resume is True else resume
    elif cfg.get("load_from") and "://" not in cfg.load_from and not os.path.isfile(cfg.load_from):
        # mmengine would fail after building the model and the data, with a stack trace
        raise UserError(f"config {path}: load_from {cfg.load_from} does not exist; give a checkpoint file (or a URL) "
                        "with --cfg-options load_from=FILE, or load_from=None to train from the initialisation")
    with config_errors(path):
        runner = build_runner(cfg)
    if isinstance(resume, str):
        check_checkpoint(resume, runner.model, path)
    with config_errors(path):
        runner.train()
    return runner


def test(path: str, checkpoint: str, work_dir: str | None = None, launcher: str = "none",
         cfg_options: dict | None = None) -> dict:
    """Evaluate ``checkpoint`` with the config's test loop; returns the metrics."""
    if not os.path.isfile(checkpoint):
        raise UserError(f"checkpoint {checkpoint} does not exist")
    cfg = load_config(path, work_dir, cfg_options, launcher=launcher)
    cfg.load_from = checkpoint
    with config_errors(path):
        runner = build_runner(cfg)
    check_checkpoint(checkpoint, runner.model, path)
    with config_errors(path):
        return runner.test()
