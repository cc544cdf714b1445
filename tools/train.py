#!/usr/bin/env python
"""Train a model.

Classification (timm models):  tools/train.py [--data DIR] [--model NAME] ...
    With no --data, trains the built-in default: a small BiFormer on scikit-learn's handwritten digits.
Medical segmentation:          tools/train.py --task medical-seg [--data DIR] [--model NAME] ...
    DIR holds train/ (or training/) and val/ (or test/) splits in the DRIVE layout or images/ + masks/ [+ fov/].
    With no --data, trains HER-Seg on the built-in synthetic vessels (--data synthetic-vessels[:size=..,train=..]).
Detection / segmentation:      tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
    CONFIG is an mmdet or mmseg config (configs/det, configs/seg), run by mmengine's Runner.
Multi-GPU: ``torchrun --nproc_per_node N tools/train.py ...`` (add ``--launcher pytorch`` with a CONFIG).
"""

from __future__ import annotations

import argparse
import sys

from _cli import is_config, json_dict, mm_parser, parse_task_args, run


def add_shared_arguments(p: argparse.ArgumentParser, task) -> None:
    """The options every task's training reads (``task``: the chosen Task class, for its help texts)."""
    p.add_argument("--data", help=task.shared_help.get("data"))
    p.add_argument("--output", default="runs/train", help="run folder: checkpoints, metrics.json, curves.png")
    p.add_argument("--model", help=f"timm model name (default: the demo {task.config.model})")
    p.add_argument("--model-kwargs", type=json_dict, help="JSON object of extra model arguments")
    p.add_argument("--pretrained", action="store_true", default=None)
    p.add_argument("--init", help="start from these weights: a checkpoint file (e.g. an earlier run's best.pth)")
    p.add_argument("--img-size", type=int, help=task.shared_help.get("img_size", "input size"))
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--opt", help="timm optimizer name, e.g. adamw, sgd, lamb")
    p.add_argument("--warmup-epochs", type=int)
    p.add_argument("--min-lr", type=float, help="learning rate at the end of the cosine schedule")
    p.add_argument("--clip-grad", type=float, help="max gradient norm (0 = off)")
    p.add_argument("--workers", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: this rank's GPU, else CPU)")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="disable bf16 autocast on GPU")
    p.add_argument("--resume", help="continue from a last.pth")


def main_config(argv) -> int:
    p = mm_parser(__doc__)
    p.add_argument("--resume", nargs="?", const=True, default=False,
                   help="resume from the latest checkpoint in the work dir, or from CKPT")
    p.add_argument("--amp", action="store_true", help="mixed precision (GPU)")
    args = p.parse_args(argv)
    from visattn.mm.runner import train

    runner = train(args.config, args.work_dir, args.resume, args.amp, args.launcher, args.cfg_options)
    print(f"work dir: {runner.work_dir}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if is_config(argv):
        return main_config(argv)
    args, task_class = parse_task_args(argv, __doc__, add_shared_arguments, "train")
    from visattn.engine.fit import fit

    config = task_class.config
    base = config.demo(args.output) if args.data is None and args.model is None else config(output=args.output)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in ("task", "output")}
    if overrides.get("clip_grad") == 0:
        overrides["clip_grad"] = None
    task = task_class(config(**{**vars(base), **overrides}))
    print(task.summary(fit(task)["best"]))
    return 0


if __name__ == "__main__":
    run(main)
