"""Export a trained checkpoint or a zoo model to ONNX (onnxruntime) or a torch.export program (.pt2).

    python tools/export.py runs/bt/best.pth --output exported                  # exported/<model>.onnx + .json
    python tools/export.py biformer_tiny --pretrained --output exported --check
    python tools/export.py herseg --weights herseg.safetensors --output exported --format pt2 --img-size 512

The model is traced through its plain-PyTorch reference path (never the Triton kernels) with a dynamic batch,
height and width; where a model's graph holds only at the traced size, height and width are fixed and a note says
so (printed, and in the files). --check runs the file (onnxruntime, or the loaded program) on random input at the
traced size and, along the dynamic axes, at another, prints the largest absolute and relative difference from
PyTorch and exits 1 when the relative one exceeds 1e-4 (float32). Beside the file, <model>.json holds the model,
input size, mean/std, the checkpoint's class names, opset, dynamic axes and the check's differences. ONNX export
needs the export extra: pip install 'visattn[export]'.
"""

from __future__ import annotations

import sys

from ..engine.options import positive_int
from ..errors import UserError
from . import ToolParser, json_dict, run


def parse_args(argv):
    from ..export import DEFAULT_OPSET, FORMATS, MIN_OPSET, check_opset

    p = ToolParser(description=__doc__)
    p.add_argument("source", metavar="CHECKPOINT_OR_MODEL",
                   help="a training checkpoint (best.pth of any task) or a model name, e.g. biformer_tiny")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for <model>.<format> and <model>.json")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="onnx (default) or pt2 (torch.export.save)")
    p.add_argument("--check", action="store_true",
                   help="compare the exported file with PyTorch on random input; exit 1 beyond 1e-4 relative")
    p.add_argument("--img-size", type=positive_int, metavar="N",
                   help="trace at N x N (default: the checkpoint's training size, else the model's input size)")
    p.add_argument("--opset", type=positive_int, metavar="N",
                   help=f"ONNX opset, {MIN_OPSET} to the newest onnx knows (default: {DEFAULT_OPSET})")
    p.add_argument("--static", action="store_true", help="fixed batch, height and width (default: dynamic)")
    p.add_argument("--no-optimize", action="store_true",
                   help="skip onnxscript's graph optimizer (slow on large graphs; onnxruntime optimizes on loading)")
    p.add_argument("--weights", metavar="FILE", help="weights for a model name (any layout visattn loads)")
    p.add_argument("--pretrained", action="store_true", help="a model name with its published weights")
    p.add_argument("--model-kwargs", type=json_dict, metavar="JSON", help="extra arguments for a model name")
    args = p.parse_args(argv)
    for flag, given in (("--opset", args.opset is not None), ("--no-optimize", args.no_optimize)):
        if given and args.format != "onnx":
            raise UserError(f"{flag} applies to --format onnx, not {args.format}")
    if args.opset is not None:
        check_opset(args.opset)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from ..export import export_opened, require
    from ..tasks.opened import open_model

    if args.format == "onnx":  # before the model is built
        require("onnx", "onnxscript", *(("onnxruntime",) if args.check else ()))
    opened = open_model(args.source, weights=args.weights, pretrained=args.pretrained,
                        model_kwargs=args.model_kwargs, device="cpu")
    report = export_opened(opened, args.output, args.format, source=args.source, check=args.check,
                           img_size=args.img_size, opset=args.opset, dynamic=not args.static,
                           optimize=not args.no_optimize)
    done = report.exported
    axes = ", ".join(done.dynamic_axes["input"].values()) or "none"
    opset = f"opset {done.opset}, " if done.opset else ""
    print(f"wrote {done.path} ({opset}dynamic axes: {axes}) and {report.json_path}")
    for note in done.notes:
        print(f"note: {note}")
    if report.check is None:
        return 0
    runtime = "onnxruntime" if args.format == "onnx" else "the loaded program"
    if not report.passed:
        print(f"error: check failed: {report.check.line(runtime)}, above {report.tolerance:.0e}", file=sys.stderr)
        return 1
    print(f"check: {report.check.line(runtime)}")
    return 0


def console() -> None:
    """The `visattn-export` command."""
    run(main)
