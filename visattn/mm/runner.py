"""mmdet / mmseg configs handed to mmengine's Runner: what ``tools/train.py CONFIG`` and ``tools/eval.py``
run for detection and segmentation."""

from __future__ import annotations

import os

import torch

from ..errors import UserError

TASK_OF_SCOPE = {"mmdet": "detection", "mmseg": "segmentation"}


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
    cfg = Config.fromfile(path)
    if cfg.get("default_scope") not in TASK_OF_SCOPE:
        raise UserError(f"{path} is not an mmdet or mmseg config (default_scope={cfg.get('default_scope')!r})")
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.work_dir = work_dir or cfg.get("work_dir") or os.path.join(
        "work_dirs", os.path.splitext(os.path.basename(path))[0])
    cfg.launcher = launcher
    wrapper = cfg.optim_wrapper
    if amp and torch.cuda.is_available():
        wrapper.type = "AmpOptimWrapper"
        wrapper.setdefault("loss_scale", "dynamic")
    elif wrapper.get("type") == "AmpOptimWrapper" and not torch.cuda.is_available():
        wrapper.type = "OptimWrapper"
        wrapper.pop("loss_scale", None)
    return cfg


def build_runner(cfg):
    from mmengine.runner import Runner

    return Runner.from_cfg(cfg)


def train(path: str, work_dir: str | None = None, resume: str | bool = False, amp: bool = False,
          launcher: str = "none", cfg_options: dict | None = None):
    """Train from a config; ``resume`` is True (latest checkpoint in the work dir) or a checkpoint path."""
    cfg = load_config(path, work_dir, cfg_options, amp, launcher)
    if resume:
        cfg.resume = True
        cfg.load_from = None if resume is True else resume
    runner = build_runner(cfg)
    runner.train()
    return runner


def test(path: str, checkpoint: str, work_dir: str | None = None, launcher: str = "none",
         cfg_options: dict | None = None) -> dict:
    """Evaluate ``checkpoint`` with the config's test loop; returns the metrics."""
    if not os.path.isfile(checkpoint):
        raise UserError(f"checkpoint {checkpoint} does not exist")
    cfg = load_config(path, work_dir, cfg_options, launcher=launcher)
    cfg.load_from = checkpoint
    return build_runner(cfg).test()
