"""Convert an official checkpoint file into a visattn safetensors file.

    python tools/convert.py --model biformer_tiny --checkpoint biformer_tiny_in1k.pth --output biformer_tiny.safetensors

A classifier trained for other classes (a fine-tuned checkpoint) is converted with its own number of classes.

The checkpoint goes through :func:`visattn.load_pretrained` (the loader ``pretrained=True`` and mm's ``init_cfg``
use): the family's filter maps the official layout, every key must match (a mismatch names the keys), and the
file is written atomically.
"""

from __future__ import annotations

from . import ToolParser, json_dict, run


def main(argv=None) -> int:
    p = ToolParser(description=__doc__)
    p.add_argument("--model", required=True, help="visattn model name, e.g. biformer_tiny")
    p.add_argument("--checkpoint", required=True, help="official checkpoint file (.pth)")
    p.add_argument("--output", required=True, help="destination .safetensors file")
    p.add_argument("--model-kwargs", type=json_dict, default={}, help="JSON object of extra model arguments")
    args = p.parse_args(argv)
    from safetensors.torch import save_file

    from ..engine.checkpoint import atomic_write
    from ..engine.models import build_model
    from ..weights import as_is, load_pretrained, match_classifier

    model = build_model(args.model, **args.model_kwargs)
    state = match_classifier(model, args.checkpoint)  # a fine-tuned checkpoint keeps its classes
    load_pretrained(model, state, strict=True, filter_fn=as_is, name=f"checkpoint {args.checkpoint}")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(args.output, lambda tmp: save_file(state, tmp, metadata={"model": args.model}))
    print(f"wrote {len(state)} tensors for {args.model} to {args.output}")
    return 0


def console() -> None:
    """The `visattn-convert` command."""
    run(main)
