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

from _cli import TASKS, check_task_options, is_config, json_dict, mm_parser, run

# Options that only one task understands (argparse dests); the others are shared.
TASK_OPTIONS = {
    "classification": ("smoothing", "mixup", "cutmix", "drop_path", "ema_decay", "grad_checkpointing"),
    "medical-seg": ("scale", "crops_per_image", "fov_loss", "inference", "tile", "pad_multiple"),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=TASKS, default="classification")
    p.add_argument("--data", help="classification: folder with train/ and val/ class folders (default: built-in "
                                  "digits); medical-seg: image/mask folder or synthetic-vessels[:options] (default)")
    p.add_argument("--output", default="runs/train", help="run folder: checkpoints, metrics.json, curves.png")
    p.add_argument("--model", help="timm model name (default: the demo BiFormer; medical-seg: herseg)")
    p.add_argument("--model-kwargs", type=json_dict, help="JSON object of extra model arguments")
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--img-size", type=int, help="input size (medical-seg: the training crop)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--opt", help="timm optimizer name, e.g. adamw, sgd, lamb")
    p.add_argument("--warmup-epochs", type=int)
    p.add_argument("--smoothing", type=float, help="label smoothing")
    p.add_argument("--mixup", type=float, help="mixup alpha (0 = off)")
    p.add_argument("--cutmix", type=float, help="cutmix alpha (0 = off)")
    p.add_argument("--drop-path", type=float)
    p.add_argument("--clip-grad", type=float, help="max gradient norm (0 = off)")
    p.add_argument("--ema-decay", type=float, help="keep an EMA of the weights with this decay")
    p.add_argument("--workers", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: this rank's GPU, else CPU)")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="disable bf16 autocast on GPU")
    p.add_argument("--grad-checkpointing", action="store_true", default=None)
    p.add_argument("--resume", help="continue from a last.pth")
    seg = p.add_argument_group("medical-seg")
    seg.add_argument("--scale", type=float, help="resize every image by this factor first (e.g. 0.5 for HRF)")
    seg.add_argument("--crops-per-image", type=int, help="random training crops per image and epoch")
    seg.add_argument("--fov-loss", action="store_true", default=None, help="train on FOV pixels only")
    seg.add_argument("--inference", choices=("sliding", "padded"),
                     help="validation on whole images: padded whole image (default) or sliding window")
    seg.add_argument("--tile", type=int, help="sliding-window size (default: --img-size)")
    seg.add_argument("--pad-multiple", type=int, help="pad whole images to a multiple of this (default 32)")
    return p.parse_args(argv)


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
    args = parse_args(argv)
    check_task_options(args, TASK_OPTIONS)
    if args.task == "medical-seg":
        from visattn.engine.medical import MedicalConfig as Config
        from visattn.engine.medical import train
    else:
        from visattn.engine.classification import ClassificationConfig as Config
        from visattn.engine.classification import train

    base = Config.demo(args.output) if args.data is None and args.model is None else Config(output=args.output)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in ("task", "output")}
    if overrides.get("clip_grad") == 0:
        overrides["clip_grad"] = None
    cfg = Config(**{**vars(base), **overrides})
    best = train(cfg)["best"]
    if args.task == "medical-seg":
        print(f"best val Dice {best['val_dice']:.4f} (pooled; AUC {best['val_auc']:.4f}, HD95 {best['val_hd95']:.2f} "
              f"px) at epoch {best['epoch']}; checkpoints in {cfg.output}")
    else:
        print(f"best val top-1 {best['val_top1']:.2f}% at epoch {best['epoch']}; checkpoints in {cfg.output}")
    return 0


if __name__ == "__main__":
    run(main)
