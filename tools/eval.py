#!/usr/bin/env python
"""Evaluate a checkpoint.

Classification:             tools/eval.py --checkpoint runs/x/best.pth   (top-1 and top-5 on the val split)
Detection / segmentation:   tools/eval.py CONFIG CHECKPOINT [--work-dir DIR]   (the config's test metrics)
"""

from __future__ import annotations

import argparse
import json
import sys

from _cli import TASKS, is_config, mm_parser, run


def main_config(argv) -> int:
    p = mm_parser(__doc__)
    p.add_argument("checkpoint")
    args = p.parse_args(argv)
    from visattn.mm.runner import test

    metrics = test(args.config, args.checkpoint, args.work_dir, args.launcher, args.cfg_options)
    print(json.dumps({k: round(float(v), 4) for k, v in metrics.items()}))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if is_config(argv):
        return main_config(argv)
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--task", choices=TASKS, default="classification")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="folder with a val/ split (default: the data the checkpoint was trained on)")
    p.add_argument("--model", help="model to load the weights into (default: the checkpoint's own)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device")
    p.add_argument("--no-ema", dest="use_ema", action="store_false", help="score the raw weights, not the EMA")
    args = p.parse_args(argv)
    from visattn.engine.classification import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, args.data, args.model, args.batch_size, args.workers,
                                  args.device, args.use_ema)
    print(f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}  "
          f"({int(metrics['count'])} images)")
    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    return 0


if __name__ == "__main__":
    run(main)
