"""Convert a checkpoint into a visattn safetensors file.

    python tools/convert.py --model biformer_tiny --checkpoint biformer_tiny_in1k.pth --output biformer_tiny.safetensors
    python tools/convert.py --checkpoint runs/demo/best.pth --output demo.safetensors

An official checkpoint goes through :func:`visattn.load_pretrained` (the loader ``pretrained=True`` and mm's
``init_cfg`` use): the family's filter maps the official layout, every key must match (a mismatch names the keys);
a classifier trained for other classes (a fine-tuned checkpoint) is converted with its own number of classes.
A visattn training checkpoint (``best.pth``, ``last.pth``) names its model and stores its model options and classes:
it is rebuilt as the task that wrote it evaluates it (its EMA weights unless ``--no-ema``, frozen weights saved by
reference restored from their source), and the options go into the file's metadata. The file is written
atomically.
"""

from __future__ import annotations

import json
import os

from ..errors import UserError
from . import ToolParser, json_dict, run


def _training_fields(path: str) -> dict | None:
    """The fields of a visattn training checkpoint at ``path`` (mapped, not loaded), or None for other files."""
    from ..weights import read_file

    if path.endswith(".safetensors"):
        return None
    fields = read_file(path, mmap=True)
    is_training = isinstance(fields, dict) and isinstance(fields.get("state_dict"), dict) and \
        isinstance(fields.get("model"), str)
    return fields if is_training else None


def main(argv=None) -> int:
    p = ToolParser(description=__doc__)
    p.add_argument("--model", help="visattn model name, e.g. biformer_tiny (default for a training checkpoint: the "
                                   "model it names)")
    p.add_argument("--checkpoint", required=True, help="official checkpoint file (.pth) or visattn training checkpoint")
    p.add_argument("--output", required=True, help="destination .safetensors file")
    p.add_argument("--model-kwargs", type=json_dict, default=None,
                   help="JSON object of extra model arguments (a training checkpoint stores its own)")
    p.add_argument("--no-ema", dest="use_ema", action="store_false",
                   help="a training checkpoint's raw weights, not its EMA")
    args = p.parse_args(argv)
    if not args.output.endswith(".safetensors"):
        raise UserError(f"--output {args.output}: the file is written in the safetensors format; name it "
                        f"{os.path.splitext(args.output)[0]}.safetensors")
    from safetensors.torch import save_file

    from ..engine.checkpoint import atomic_write
    from ..engine.models import build_model
    from ..weights import as_is, load_pretrained, match_classifier

    fields = _training_fields(args.checkpoint)
    if fields is not None:
        from .. import tasks as _registers_the_tasks  # noqa: F401
        from ..engine.task import DEFAULT_TASK, get_task

        if args.model_kwargs is not None:
            raise UserError(f"{args.checkpoint} is a training checkpoint: it stores the model options it was trained "
                            f"with ({json.dumps(fields.get('model_kwargs') or {})}); drop --model-kwargs")
        task = get_task(fields.get("task", DEFAULT_TASK))
        model, ckpt, _ = task.model_from_checkpoint(args.checkpoint, "cpu", args.use_ema, args.model)
        name = args.model or ckpt["model"]
        kwargs = (ckpt.get("model_kwargs") or {}) if name == ckpt["model"] else {}
        metadata = {"model": name, "task": task.name, "model_kwargs": json.dumps(kwargs)}
        if "num_classes" in ckpt:
            metadata["num_classes"] = str(ckpt["num_classes"])
        if ckpt.get("classes") is not None:
            metadata["classes"] = json.dumps(list(ckpt["classes"]))
        what = f"{name} ({task.name} checkpoint; model options {metadata['model_kwargs']}" + \
            (f", {ckpt['num_classes']} classes" if "num_classes" in ckpt else "") + ")"
    else:
        if not args.model:
            raise UserError(f"{args.checkpoint} is not a visattn training checkpoint, so it does not name its model; "
                            "pass --model NAME")
        kwargs = dict(args.model_kwargs or {})
        model = build_model(args.model, **kwargs)
        built_classes = getattr(model, "num_classes", None)
        state = match_classifier(model, args.checkpoint)  # a fine-tuned checkpoint keeps its classes
        classes = getattr(model, "num_classes", None)
        if "num_classes" in kwargs and classes != kwargs["num_classes"]:
            raise UserError(f"--model-kwargs asks for num_classes={kwargs['num_classes']}, but {args.checkpoint}'s "
                            f"classifier has {classes} classes and the converted file keeps it: leave num_classes "
                            f"out (a model of {kwargs['num_classes']} classes loading the file drops its classifier)")
        if classes != built_classes:
            kwargs["num_classes"] = classes
        load_pretrained(model, state, strict=True, filter_fn=as_is, name=f"checkpoint {args.checkpoint}")
        metadata, what = {"model": args.model}, args.model
        if kwargs:
            metadata["model_kwargs"] = json.dumps(kwargs)
            what += f" (model options {metadata['model_kwargs']})"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(args.output, lambda tmp: save_file(state, tmp, metadata=metadata))
    print(f"wrote {len(state)} tensors for {what} to {args.output}")
    return 0


def console() -> None:
    """The `visattn-convert` command."""
    run(main)
