"""Train a model.

Classification (timm models):  tools/train.py [--data DIR] [--model NAME] ...
    --demo (or no --data): the demo, a small BiFormer on scikit-learn's handwritten digits for 4 epochs.
Medical segmentation:          tools/train.py --task medical-seg [--data DIR] [--model NAME] ...
    DIR holds train/ (or training/) and val/ (or test/) splits in the DRIVE layout or images/ + masks/ [+ fov/].
    --demo (or no --data): HER-Seg on the built-in synthetic vessels (--data synthetic-vessels[:size=..,train=..]).
Person re-id:                  tools/train.py --task reid [--data DIR] [--model NAME] ...
    --demo (or no --data): the built-in synthetic identities.
The demo recipe is the task's --demo, whatever --model says; with --data the task's full recipe trains. Any option
given overrides either.
Detection / segmentation:      tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
    CONFIG is an mmdet or mmseg config (configs/det, configs/seg), run by mmengine's Runner.
Multi-GPU: ``torchrun --nproc_per_node N tools/train.py ...`` (add ``--launcher pytorch`` with a CONFIG).
"""

from __future__ import annotations

import argparse
import sys

from ..engine.options import (
    device,
    non_negative_float,
    non_negative_int,
    optimizer,
    positive_float,
    positive_int,
)
from . import is_config, json_dict, mm_parser, parse_task_args, run


def add_shared_arguments(p: argparse.ArgumentParser, task) -> None:
    """The options every task's training reads (``task``: the chosen Task class, for its help texts)."""
    p.add_argument("--data", help=task.shared_help.get("data"))
    p.add_argument("--output", help="run folder: checkpoints, metrics.json, curves.png (default: runs/train, or "
                   "runs/trainN when that holds a run; with --resume: the checkpoint's folder)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace the run an existing --output folder holds")
    p.add_argument("--demo", action="store_true", default=None,
                   help="the task's demo recipe on its built-in data (the default without --data)")
    p.add_argument("--model", help=f"timm model name (default: {task.config.model})")
    p.add_argument("--model-kwargs", type=json_dict, help="JSON object of extra model arguments")
    p.add_argument("--pretrained", action="store_true", default=None)
    p.add_argument("--init", help="start from these weights: a checkpoint file (e.g. an earlier run's best.pth) or "
                   "weights of the model in any layout visattn.load_pretrained reads (its published weights as a "
                   "local file)")
    p.add_argument("--img-size", type=positive_int, help=task.shared_help.get("img_size", "input size"))
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--eval-every", type=positive_int, metavar="N",
                   help="evaluate (and consider for best.pth) every N epochs and after the last (default 1)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--weight-decay", type=non_negative_float)
    p.add_argument("--opt", type=optimizer, help="timm optimizer name, e.g. adamw, sgd, lamb")
    p.add_argument("--warmup-epochs", type=non_negative_int)
    p.add_argument("--min-lr", type=non_negative_float, help="learning rate at the end of the cosine schedule")
    p.add_argument("--clip-grad", type=non_negative_float, help="max gradient norm (0 = off)")
    p.add_argument("--workers", type=non_negative_int)
    p.add_argument("--seed", type=non_negative_int)
    p.add_argument("--device", type=device, help="cpu, cuda, cuda:1, ... (default: this rank's GPU, else CPU)")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="disable bf16 autocast on GPU")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic GPU algorithms (slower); CPU runs with one --seed repeat anyway")
    p.add_argument("--resume", help="continue a run from its last.pth (its options, unless given again)")
    p.add_argument("--save-frozen", action="store_true", default=None,
                   help="keep frozen weights (a frozen backbone) in the checkpoints; by default they are saved by "
                        "reference to their source (the published weights, --init FILE and its SHA-256)")
    p.add_argument("--log-interval", type=positive_int, metavar="N",
                   help="off a terminal, a progress line every N steps and at least every 30 s (default 50)")


def main_config(argv) -> int:
    p = mm_parser(__doc__)
    p.add_argument("--resume", nargs="?", const=True, default=False,
                   help="resume from the latest checkpoint in the work dir, or from CKPT")
    p.add_argument("--amp", action="store_true", help="mixed precision (GPU)")
    args = p.parse_args(argv)
    from ..mm.runner import train

    runner = train(args.config, args.work_dir, args.resume, args.amp, args.launcher, args.cfg_options)
    print(f"work dir: {runner.work_dir}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if is_config(argv):
        return main_config(argv)
    args, task_class = parse_task_args(argv, __doc__, add_shared_arguments, "train")
    from ..engine.fit import assemble_config, fit

    given = {k: v for k, v in vars(args).items() if k not in ("task", "debug", "demo")}
    task = task_class(assemble_config(task_class, given, bool(args.demo)))
    print(task.summary(fit(task)["best"]))
    return 0


def console() -> None:
    """The `visattn-train` command."""
    run(main)
