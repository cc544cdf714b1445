"""Evaluate a checkpoint.

Classification:             tools/eval.py --checkpoint runs/x/best.pth   (top-1 and top-5 on the val split)
Medical segmentation:       tools/eval.py --task medical-seg --checkpoint runs/x/best.pth [--split test]
    Dice, IoU, Se, Sp, Acc, AUC, HD95 inside the FOV (pooled and per image) at the original resolution;
    writes metrics.json and per-image probability / mask / overlay PNGs to --output.
Detection / segmentation:   tools/eval.py CONFIG CHECKPOINT [--work-dir DIR]   (the config's test metrics)
"""

from __future__ import annotations

import argparse
import json
import sys

from ..engine.checkpoint import check_output_folder
from ..engine.options import device, non_negative_int
from . import is_config, mm_parser, parse_task_args, run


def add_shared_arguments(p: argparse.ArgumentParser, task) -> None:
    """The options every task's evaluation reads."""
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="data to score (default: the data the checkpoint was trained on)")
    p.add_argument("--workers", type=non_negative_int, default=2)
    p.add_argument("--device", type=device)


def main_config(argv) -> int:
    p = mm_parser(__doc__)
    p.add_argument("checkpoint")
    args = p.parse_args(argv)
    from ..mm.runner import test

    metrics = test(args.config, args.checkpoint, args.work_dir, args.launcher, args.cfg_options)
    print(json.dumps({k: round(float(v), 4) for k, v in metrics.items()}))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if is_config(argv):
        return main_config(argv)
    args, task_class = parse_task_args(argv, __doc__, add_shared_arguments, "eval")
    if getattr(args, "output", None):  # the tasks whose evaluation writes files
        check_output_folder(args.output, "the evaluation")
    print(task_class.run_eval(args))
    return 0


def console() -> None:
    """The `visattn-eval` command."""
    run(main)
