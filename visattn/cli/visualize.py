"""Draw what a model does with an image: one PNG per picture, each with a legend, and summary.json (the numbers
behind them).

    tools/visualize.py biformer_tiny --pretrained photo.jpg --output vis/
    tools/visualize.py runs/bt/best.pth photo.jpg --output vis/ --query 120,80 --layer stages.2

Pictures, each drawn where the model offers it (default: all it offers; --picture picks some):
    routing          the regions the query's region routes to, per layer (bi-level routing attention)
    kept_keys        the keys the query attends in each layer, and each layer's keep ratio (sparse attention)
    query_attention  the query's attention weights over the map, and a local residual's share (linear attention)
    gates            the channel and spatial gates of each gating block (polarized self-attention)
    prompt_usage     which prompts the tokens chose, per layer (token-coordinated prompts)
    gradcam          Grad-CAM of the top class on the model's last map or each --layer (any timm classifier)
The image is resized to the model's input size (the checkpoint's training size, the model's default, or
--img-size); the query is a pixel (row, column) of the original image, its centre by default.
"""

from __future__ import annotations

import argparse

from ..engine.options import device, numbers, positive_int
from . import ToolParser, json_dict, run


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one or more comma-separated names")
    return names


def main(argv=None) -> int:
    from ..visualize.api import PICTURES

    p = ToolParser(description=__doc__)
    p.add_argument("source", metavar="CHECKPOINT_OR_MODEL",
                   help="a training checkpoint (best.pth of any task) or a timm model name")
    p.add_argument("image", metavar="IMAGE", help="an image file")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the PNGs and summary.json")
    p.add_argument("--query", type=numbers(2, int, "Y,X pixel coordinates such as 120,80", low=0), metavar="Y,X",
                   help="the query pixel (row, column) of the image (default: its centre)")
    p.add_argument("--layer", type=_names, action="extend", default=[], metavar="NAME",
                   help="module names (repeat or comma-separate): draw only the layers under them; Grad-CAM on "
                        "their outputs (default: every layer; Grad-CAM on the last map)")
    p.add_argument("--picture", type=_names, action="extend", default=[], metavar="NAME",
                   help=f"pictures to draw, of {', '.join(PICTURES)} (default: all the model offers)")
    p.add_argument("--weights", help="a weights file for a model name (any layout visattn.load_pretrained reads)")
    p.add_argument("--pretrained", action="store_true", help="a model name's published weights")
    p.add_argument("--model-kwargs", type=json_dict, help="JSON object of extra model arguments")
    p.add_argument("--img-size", type=positive_int, help="resize the image to this side (default: the model's size)")
    p.add_argument("--device", type=device, help="cpu, cuda, cuda:1, ... (default: a GPU when there is one)")
    args = p.parse_args(argv)
    from ..visualize import visualize

    result = visualize(args.source, args.image, args.output, query=args.query, layers=args.layer,
                       pictures=args.picture, weights=args.weights, pretrained=args.pretrained,
                       model_kwargs=args.model_kwargs, device=args.device, img_size=args.img_size)
    for path in result.files:
        print(f"wrote {path}")
    return 0


def console() -> None:
    """The `visattn-visualize` command."""
    run(main)
