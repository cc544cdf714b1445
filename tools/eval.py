#!/usr/bin/env python
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

from _cli import TASKS, check_task_options, is_config, mm_parser, run

# Options that only one task understands (argparse dests); the others are shared.
TASK_OPTIONS = {
    "classification": ("model", "batch_size", "use_ema"),
    "medical-seg": ("split", "output", "inference", "tile", "threshold"),
}


def main_config(argv) -> int:
    p = mm_parser(__doc__)
    p.add_argument("checkpoint")
    args = p.parse_args(argv)
    from visattn.mm.runner import test

    metrics = test(args.config, args.checkpoint, args.work_dir, args.launcher, args.cfg_options)
    print(json.dumps({k: round(float(v), 4) for k, v in metrics.items()}))
    return 0


def print_medical(result: dict) -> None:
    region = "inside the FOV" if result["region"] == "fov" else "whole image"
    names = (("dice", "Dice"), ("iou", "IoU"), ("sensitivity", "Se"), ("specificity", "Sp"), ("accuracy", "Acc"),
             ("auc", "AUC"))

    def row(metrics: dict) -> str:
        return "  ".join(f"{label} {metrics[key]:.4f}" for key, label in names) + f"  HD95 {metrics['hd95']:.2f} px"

    print(f"{result['count']} images ({result['split']}), {region}, threshold {result['threshold']}:")
    print(f"  pooled     {row(result['pooled'])}")
    print(f"  per image  {row(result['per_image'])}")
    if "full_image" in result:
        print(f"  whole image, pooled  {row(result['full_image']['pooled'])}")
    print(f"metrics.json and predictions/ in {result['output']}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if is_config(argv):
        return main_config(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=TASKS, default="classification")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="data to score (default: the data the checkpoint was trained on)")
    p.add_argument("--model", help="classification: model to load the weights into (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, help="classification batch size (default 64)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device")
    p.add_argument("--no-ema", dest="use_ema", action="store_false", default=None,
                   help="score the raw weights, not the EMA")
    seg = p.add_argument_group("medical-seg")
    seg.add_argument("--split", help="split folder to score (default: val, else validation, else test)")
    seg.add_argument("--output", help="folder for metrics.json and predictions/ (default: CHECKPOINT_DIR/eval_SPLIT)")
    seg.add_argument("--inference", choices=("sliding", "padded"), help="default: as in training")
    seg.add_argument("--tile", type=int, help="sliding-window size (default: as in training)")
    seg.add_argument("--threshold", type=float, help="probability threshold (default: 0.5)")
    args = p.parse_args(argv)
    check_task_options(args, TASK_OPTIONS)
    if args.task == "medical-seg":
        from visattn.engine.checkpoint import json_safe
        from visattn.engine.medical import evaluate_checkpoint

        result = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.output, args.inference, args.tile,
                                     args.device, args.workers, threshold=args.threshold)
        print_medical(result)
        print(json.dumps(json_safe({"pooled": result["pooled"], "per_image": result["per_image"]})))
        return 0
    from visattn.engine.classification import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, args.data, args.model, args.batch_size or 64, args.workers,
                                  args.device, args.use_ema is not False)
    print(f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}  "
          f"({int(metrics['count'])} images)")
    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    return 0


if __name__ == "__main__":
    run(main)
