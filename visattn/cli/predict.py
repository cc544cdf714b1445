"""Predict with a trained checkpoint (best.pth of any task) or a zoo model by name.

Classification:   visattn-predict runs/bt/best.pth photos/ --output preds [--topk 5]
                  visattn-predict biformer_tiny --pretrained cat.jpg dog.jpg --output preds
    predictions.csv (file, rank, index, class, probability) and predictions.json: the top-k classes of each image.
Segmentation:     visattn-predict runs/vessels/best.pth 'fundus/*.png' --output seg [--threshold T]
    NAME_prob.png, NAME_pred.png, NAME_overlay.png at each image's size, and areas.csv (foreground pixels, fraction).
    --inference auto (default): a checkpoint's images as its run evaluated them (padded or sliding); a zoo
    model's whole image padded when it fits in its input size, else sliding windows; padded or sliding forces one.
Re-id:            visattn-predict runs/reid/best.pth queries/ --gallery gallery/ --output ranks [--topk 10]
    rankings.csv (query, rank, gallery, distance) and rank_NAME.png per query (the query, then its top ranks).
INPUT: image files, folders (searched recursively), globs ('photos/**/*.jpg', quoted) or a text file listing one
image path a line. Unreadable files are skipped and counted. The task follows from the model: a checkpoint's task,
or the zoo model's kind (class logits or a segmentation network).
"""

from __future__ import annotations

import argparse
import sys

from ..engine.options import device, non_negative_int, open_fraction, positive_int
from ..errors import UserError
from . import ToolParser, json_dict, run

# Options of one kind of model: dest -> the kinds that read it.
KIND_OPTIONS = {"topk": ("classification", "reid"), "threshold": ("segmentation",), "inference": ("segmentation",),
                "tile": ("segmentation",), "gallery": ("reid",), "metric": ("reid",), "flip": ("reid",),
                "rerank": ("reid",)}
DEFAULT_TOPK = {"classification": 5, "reid": 10}


def build_parser() -> argparse.ArgumentParser:
    p = ToolParser(description=__doc__)
    p.add_argument("source", metavar="CHECKPOINT_OR_MODEL", help="a training checkpoint, or a timm model name")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders, globs or list files")
    p.add_argument("--output", required=True, help="folder for the files written")
    p.add_argument("--weights", help="with a model name: a file of its weights (any layout visattn loads)")
    p.add_argument("--pretrained", action="store_true", help="with a model name: its published weights")
    p.add_argument("--model-kwargs", type=json_dict, help="with a model name: JSON object of model arguments")
    p.add_argument("--no-ema", dest="use_ema", action="store_false", help="a checkpoint's raw weights, not its EMA")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="images (segmentation: windows) per forward pass (default 32)")
    p.add_argument("--workers", type=non_negative_int, default=0, help="image-reading processes (default 0)")
    p.add_argument("--device", type=device, help="cpu, cuda, cuda:1, ... (default: a GPU when there is one)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on GPU")
    p.add_argument("--topk", type=positive_int, help="classes (default 5) or re-id ranks (default 10) per image")
    seg = p.add_argument_group("segmentation")
    seg.add_argument("--threshold", type=open_fraction, help="foreground probability (default: the checkpoint's)")
    seg.add_argument("--inference", choices=("auto", "padded", "sliding"), help="default auto")
    seg.add_argument("--tile", type=positive_int, help="sliding-window size (default: the checkpoint's)")
    reid = p.add_argument_group("re-id")
    reid.add_argument("--gallery", help="the gallery the INPUT queries are ranked in: folder, glob or list file")
    reid.add_argument("--metric", choices=("euclidean", "cosine"), help="default: the checkpoint's")
    reid.add_argument("--flip", action=argparse.BooleanOptionalAction,
                      help="average with the mirror image's features (default: as the checkpoint evaluated)")
    reid.add_argument("--rerank", action=argparse.BooleanOptionalAction,
                      help="k-reciprocal re-ranking (default: as the checkpoint evaluated)")
    return p


def check_options(args: argparse.Namespace, kind: str) -> None:
    """Options for another kind of model, and a re-id run without a gallery, are one-line errors."""
    for dest, kinds in KIND_OPTIONS.items():
        if getattr(args, dest) is not None and kind not in kinds:
            raise UserError(f"--{dest} is for {' and '.join(kinds)} models; {args.source} is a {kind} model")
    if kind == "reid" and args.gallery is None:
        raise UserError(f"{args.source} is a re-id model: give --gallery DIR, the images the queries are ranked in")


def _classify(opened, inputs, args) -> str:
    from ..tasks.classification.predict import Classifier, write_predictions

    classifier = Classifier(opened, topk=args.topk or DEFAULT_TOPK["classification"], batch_size=args.batch_size,
                            amp=args.amp)
    write_predictions(classifier, inputs.paths, args.output, args.workers, inputs.skipped)
    return (f"top-{classifier.topk} classes of {len(inputs.paths)} images: predictions.csv and predictions.json in "
            f"{args.output}")


def _segment(opened, inputs, args) -> str:
    from ..tasks.images import output_names
    from ..tasks.medical.predict import Segmenter, write_segmentations

    segmenter = Segmenter(opened, threshold=args.threshold, inference=args.inference or "auto", tile=args.tile,
                          batch_size=args.batch_size, amp=args.amp)
    rows = write_segmentations(segmenter, inputs.paths, output_names(inputs.paths), args.output, args.workers)
    mean = sum(r["foreground_fraction"] for r in rows) / len(rows)
    return (f"segmented {len(rows)} images (threshold {segmenter.threshold}, mean foreground {mean:.2%}): "
            f"NAME_prob.png, NAME_pred.png, NAME_overlay.png and areas.csv in {args.output}")


def _rank(opened, inputs, args) -> str:
    from ..tasks.images import collect_images, output_names
    from ..tasks.reid.predict import FeatureExtractor, write_rankings

    gallery = collect_images([args.gallery], args.output)
    for line in (gallery.outputs_line, gallery.skipped_line(), gallery.modes_line, gallery.turned_line):
        if line:
            print(f"gallery: {line}")
    extractor = FeatureExtractor(opened, flip=args.flip, batch_size=args.batch_size, amp=args.amp)
    result = write_rankings(extractor, inputs.paths, output_names(inputs.paths), gallery.paths, args.output,
                            args.topk or DEFAULT_TOPK["reid"], args.metric, args.rerank, args.workers)
    return (f"ranked {len(gallery.paths)} gallery images for {len(inputs.paths)} queries ({result['metric']}"
            f"{', re-ranked' if result['rerank'] else ''}): rankings.csv and rank_NAME.png in {args.output}")


PREDICTORS = {"classification": _classify, "segmentation": _segment, "reid": _rank}


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from ..engine.checkpoint import check_output_folder
    from ..tasks.images import collect_images
    from ..tasks.opened import open_model

    check_output_folder(args.output, "the predictions")
    inputs = collect_images(args.inputs, args.output)
    opened = open_model(args.source, weights=args.weights, pretrained=args.pretrained,
                        model_kwargs=args.model_kwargs, device=args.device, use_ema=args.use_ema)
    check_options(args, opened.kind)
    for line in (inputs.outputs_line, inputs.skipped_line(), inputs.modes_line, inputs.turned_line):
        if line:
            print(line)
    print(PREDICTORS[opened.kind](opened, inputs, args))
    return 0


def console() -> None:
    """The `visattn-predict` command."""
    run(main)
