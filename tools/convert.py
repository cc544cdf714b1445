#!/usr/bin/env python
"""Convert an official checkpoint file into a visattn safetensors file.

    python tools/convert.py --model biformer_tiny --checkpoint biformer_tiny_in1k.pth --output biformer_tiny.safetensors

The official layout is mapped by the model's own ``checkpoint_filter_fn`` (the function ``pretrained=True``
uses), loaded strictly (a mismatch names the keys), and written atomically.
"""

from __future__ import annotations

import argparse
import importlib

from _cli import run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="visattn model name, e.g. biformer_tiny")
    p.add_argument("--checkpoint", required=True, help="official checkpoint file (.pth)")
    p.add_argument("--output", required=True, help="destination .safetensors file")
    args = p.parse_args(argv)
    from safetensors.torch import save_file

    from visattn.engine.checkpoint import atomic_write, load_state_strict, read_weights
    from visattn.engine.classification import create_model

    model = create_model(args.model)
    filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
    state = read_weights(args.checkpoint)
    load_state_strict(model, filter_fn(state, model) if filter_fn else state, f"{args.checkpoint}")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(args.output, lambda tmp: save_file(state, tmp, metadata={"model": args.model}))
    print(f"wrote {len(state)} tensors for {args.model} to {args.output}")
    return 0


if __name__ == "__main__":
    run(main)
