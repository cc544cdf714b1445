"""Shared command-line plumbing for the tools: repo on sys.path, one-line errors, JSON arguments."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from visattn.errors import UserError  # noqa: E402

TASKS = ("classification", "medical-seg")


def is_config(argv: list[str]) -> bool:
    """True when the command line starts with an mmdet/mmseg config file (detection or segmentation)."""
    return bool(argv) and not argv[0].startswith("-") and argv[0].endswith(".py")


def mm_parser(doc: str):
    """The arguments every config-driven (mmengine) command shares."""
    import argparse

    from mmengine.config import DictAction

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="mmdet or mmseg config, e.g. configs/det/retinanet_biformer-s_fpn_1x_coco.py")
    p.add_argument("--work-dir", help="logs and checkpoints (default: work_dirs/<config name>)")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                   help="'pytorch' under torchrun")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default=None, metavar="KEY=VALUE",
                   help="override config entries, e.g. train_dataloader.batch_size=4")
    return p


def json_dict(text: str) -> dict:
    """argparse type for ``--model-kwargs '{"n_win": 8}'``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object such as '{\"n_win\": 8}'")
    return value


def check_task_options(args, task_options: dict[str, tuple[str, ...]]) -> None:
    """A task-specific option (argparse dest) given with another ``--task`` is an error, not silently ignored."""
    for task, options in task_options.items():
        given = [o for o in options if getattr(args, o) is not None]
        if task != args.task and given:
            raise UserError(f"--{given[0].replace('_', '-')} is a {task} option, not one of --task {args.task}")


def run(main: Callable[[], int | None]) -> None:
    """Run a tool's main; a :class:`UserError` becomes ``error: <message>`` on stderr and exit code 2."""
    try:
        sys.exit(main() or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
