"""Exporting a model for inference outside PyTorch, for ``visattn-export``: ONNX (run by onnxruntime) or a
``torch.export`` program (``.pt2``), each checked against the eager model.

Every export traces the model's plain-PyTorch reference path (``$VISATTN_BACKEND=torch`` while tracing, so no
Triton custom op ``visattn::*`` enters the graph) with ``torch.export`` (non-strict, size-oblivious) on a
(2, C, H, W) example, batch, height and width dynamic. A model with a module that sets ``export_fixed_size`` (the
reason, a string) is traced with a fixed height and width; so is one whose traced program refuses a larger odd
size (torch.export turned a size-dependent branch into a guard). ONNX conversion is torch's dynamo exporter
(``torch.onnx.export(dynamo=True)`` from that program); when it fails, the TorchScript exporter is tried with a
fixed height and width, and a note says so. The facts of an export (dynamic axes, notes, exporter, opset) are in
the file's own metadata (ONNX ``metadata_props``, the ``.pt2`` archive's ``extra/visattn.json``) and in
:class:`Exported`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
from torch._prims_common import is_contiguous_or_false

from .engine.checkpoint import atomic_write, atomic_write_json, check_output_folder
from .engine.models import check_model_input
from .errors import UserError, first_line
from .ops import forced_backend

FORMATS = ("onnx", "pt2")
# What the JSON beside an exported file says about the input and output, by the opened model's kind.
PREPROCESSING = {
    "classification": "RGB / 255, then (x - mean) / std per channel",
    "segmentation": "the whole image (resized by scale), RGB / 255, then (x - mean) / std per channel; output: "
                    "per-pixel logits (B, 1, H, W), foreground where sigmoid(logit) >= threshold (resized back to "
                    "the image's size first when scale is not 1). A training checkpoint's run evaluated as its "
                    "inference says: padded = the normalised image zero-padded, centred, to a multiple of "
                    "pad_multiple (and at least pad_to), the logits cropped back; sliding = tile x tile windows "
                    "overlapping by the fraction overlap, their logits averaged",
    "reid": "the whole image resized to input_size, RGB / 255 (the network normalises inside); output: the "
            "(B, embedding_dim) embedding, images of one person nearest by metric",
}
DEFAULT_OPSET = 18  # torch's dynamo exporter writes 18; its version converter cannot take every graph to 17
MIN_OPSET = 17
AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}
EXAMPLE_BATCH = 2  # torch.export treats sizes 0 and 1 as constants: a dynamic batch is traced at 2
GROWN = {2: 17, 3: 9}  # a checked or probed input is this much taller and wider (odd: a divisibility guard shows)
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 1e-2, torch.bfloat16: 5e-2}
INSTALL = "pip install 'visattn[export]'"
META_KEY = "visattn"  # ONNX metadata_props key and the .pt2 extra file (visattn.json) holding the export's facts


@dataclass
class Exported:
    """What an export wrote: ``path``; ``input_size`` (C, H, W) it was traced at; ``dynamic_axes``
    ({"input": {axis: name}, "output": {axis: name or expression}}); ``notes`` (fixed sizes and why, the exporter
    fallback); ``exporter`` ("torch.export", "dynamo" or "torchscript"); ``opset`` (ONNX only)."""

    path: str
    format: str
    input_size: tuple[int, int, int]
    dynamic_axes: dict[str, dict[int, str]]
    notes: list[str] = field(default_factory=list)
    exporter: str = "torch.export"
    opset: int | None = None
    min_batch: int = 1  # 2 where the traced program refuses a batch of 1 (a .pt2 program checks it)

    def metadata(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "path"}


@dataclass
class Check:
    """Largest differences of an exported file from the eager model over ``shapes`` (the inputs run): ``max_abs``,
    and ``max_rel`` = the largest |exported - eager| / max |eager| over those runs."""

    max_abs: float
    max_rel: float
    shapes: list[tuple[int, ...]]

    def line(self, runtime: str) -> str:
        sizes = ", ".join("x".join(map(str, s)) for s in self.shapes)
        return (f"{runtime} vs PyTorch on random input {sizes}: largest absolute difference {self.max_abs:.2e}, "
                f"relative {self.max_rel:.2e}")


def require(*modules: str) -> None:
    """One-line error naming the first of ``modules`` (onnx, onnxscript, onnxruntime) that is not installed."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(f"{name} is not installed; ONNX export needs onnx, onnxscript and onnxruntime: "
                            f"{INSTALL}") from None


# --- tracing ----------------------------------------------------------------------------------------------------

@dataclass
class Capture:
    """A traced model: the program, its (B, C, H, W) example, the dynamic input axes and the notes."""

    program: torch.export.ExportedProgram
    example: torch.Tensor
    axes: tuple[int, ...]
    notes: list[str]
    min_batch: int = 1


def example_input(input_size: tuple[int, int, int], batch: int = EXAMPLE_BATCH, seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A random (batch, C, H, W) image batch (seeded)."""
    return torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(seed)).to(dtype)


def other_shape(shape: tuple[int, ...], axes: tuple[int, ...], batch: int = 1) -> tuple[int, ...]:
    """``shape`` (B, C, H, W) along its dynamic ``axes``: ``batch`` images, :data:`GROWN` taller and wider."""
    return tuple((batch if a == 0 else n + GROWN.get(a, 0)) if a in axes else n for a, n in enumerate(shape))


def _dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def capture(model: nn.Module, input_size: tuple[int, int, int], dynamic: bool = True) -> Capture:
    """``torch.export`` of ``model`` (put in evaluation mode) on a (2, C, H, W) input through its reference path.

    With ``dynamic``: batch, height and width dynamic; height and width fixed where a module of the model sets
    ``export_fixed_size`` or the traced program refuses another size (then re-traced, a note says why); as a last
    resort all fixed. Raises :class:`UserError` naming the op when the model cannot be traced, or when the graph
    calls a Triton custom op (code that calls a fused op itself instead of through its dispatcher).
    """
    model.eval()
    c, h, w = input_size
    x = example_input(input_size, dtype=_dtype(model))
    notes: list[str] = []
    attempts: list[tuple[int, ...]] = [()]
    if dynamic:
        reason = next((m.export_fixed_size for m in model.modules() if getattr(m, "export_fixed_size", None)), None)
        attempts = [(0,), ()] if reason else [(0, 2, 3), (0,), ()]
        if reason:
            notes.append(f"height and width are fixed at {h}x{w}: {reason}")
    error: BaseException | None = None
    for axes in attempts:
        shapes = ({a: torch.export.Dim.DYNAMIC for a in axes},)
        try:
            with (forced_backend("torch"), torch.no_grad(), warnings.catch_warnings(), _size_oblivious(),
                  _ContiguousMaps()):
                warnings.simplefilter("ignore")
                program = torch.export.export(model, (x,), dynamic_shapes=shapes, strict=False)
                if set(axes) & {2, 3}:
                    _run_program(program, other_shape(tuple(x.shape), axes, batch=EXAMPLE_BATCH), x.dtype)
        except Exception as err:  # noqa: BLE001 - any failure: try fewer dynamic axes, report the last one
            error = err
            if axes:
                lost = [AXIS_NAMES[a] for a in axes if a not in attempts[attempts.index(axes) + 1]]
                sizes = {"height": h, "width": w, "batch": EXAMPLE_BATCH}
                notes.append(f"{' and '.join(lost)} fixed at {'x'.join(str(sizes[n]) for n in lost)}: the traced "
                             f"graph does not take another size ({_short(err)})")
            continue
        _refuse_custom_ops(program)
        min_batch = 1
        if 0 in axes:
            try:
                with forced_backend("torch"), torch.no_grad():
                    _run_program(program, other_shape(tuple(x.shape), axes, batch=1), x.dtype)
            except Exception as err:  # noqa: BLE001 - a guard on the batch: the program takes 2 or more
                min_batch = 2
                notes.append(f"the traced program refuses a batch of 1 ({_short(err)}): a .pt2 program takes "
                             "batches of 2 or more; an ONNX graph holds no such check (--check runs batch 1)")
        return Capture(program, x, axes, notes, min_batch)
    raise UserError(f"cannot trace {type(model).__name__} with torch.export: {describe_failure(error)}") from error


def _run_program(program: torch.export.ExportedProgram, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """Run the traced program once on a random ``shape`` input: its guards refuse a size it does not hold for."""
    program.module()(example_input(shape[1:], batch=shape[0], dtype=dtype, seed=1))


def _size_oblivious():
    """torch.export's size-oblivious reasoning for the input's sizes: a view of a padded map (a crop) is then not
    assumed contiguous, or not, at the traced size (a guard that would fix height and width)."""
    return torch.fx.experimental._config.patch(backed_size_oblivious=True)


_LAYOUT_FOLLOWING = frozenset({  # functions whose output's memory format follows their input's
    nn.functional.conv1d, nn.functional.conv2d, nn.functional.conv3d, nn.functional.conv_transpose1d,
    nn.functional.conv_transpose2d, nn.functional.conv_transpose3d, nn.functional.adaptive_avg_pool2d,
    nn.functional.adaptive_max_pool2d, nn.functional.avg_pool2d, nn.functional.max_pool2d, nn.functional.interpolate})


class _ContiguousMaps(torch.overrides.TorchFunctionMode):
    """Convolutions, pooling and resizing traced on contiguous inputs. Fed a channels-last view (an NHWC block's map
    permuted to NCHW), torch's fake kernels pick the output's memory format from the strides, which tell channels-last
    from contiguous only when the batch is over 1: the program would then guard ``batch > 1``. An input not provably
    contiguous is copied, not asked (``contiguous()`` would guard: a 1x1 map's strides are contiguous only at size
    1, so the program would refuse every other size)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _LAYOUT_FOLLOWING and args and not is_contiguous_or_false(args[0]):
            args = (args[0].clone(memory_format=torch.contiguous_format), *args[1:])
        return func(*args, **(kwargs or {}))


def _refuse_custom_ops(program: torch.export.ExportedProgram) -> None:
    ops = sorted({n.target.name() for n in program.graph.nodes
                  if n.op == "call_function" and getattr(n.target, "namespace", None) == "visattn"})
    if ops:
        raise UserError(f"the traced graph calls the Triton kernel op {ops[0]}: the model calls a fused op "
                        "itself; call the op's public function, whose reference the export traces")


def _short(err: BaseException, limit: int = 160) -> str:
    text = first_line(err, with_type=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_OP_PATTERNS = (
    r"No ONNX function found for <OpOverload\(op='([\w.]+)', overload='(\w+)'\)>",  # dynamo: no translation
    r"translating node %\S+ : \[[^\]]*\] = call_function\[target=torch\.ops\.([\w.]+)\]",  # dynamo: failed one
    r"operator '(\w+::\w+)'",  # TorchScript exporter: "Exporting the operator 'aten::erfinv' to ONNX ..."
    r"(?:op|operator) (\w+::\w+)",  # torch.export: no fake kernel / unsupported operator
)


def unsupported_op(err: BaseException) -> str | None:
    """The op an exporter error names (``aten.erfinv.default``, ``aten::erfinv``), searched through the error and
    its causes; None when none is named."""
    texts, seen = [], err
    while seen is not None and len(texts) < 20:
        texts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    for pattern in _OP_PATTERNS:
        for text in texts:
            match = re.search(pattern, text)
            if match:
                return ".".join(match.groups())
    return None


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def describe_failure(err: BaseException | None) -> str:
    """One line for an exporter failure: the op it could not express, and the root cause."""
    if err is None:
        return "unknown error"
    op = unsupported_op(err)
    root = _short(_root_cause(err))
    return f"the op {op} cannot be exported ({root})" if op else root


# --- ONNX ---------------------------------------------------------------------------------------------------------

def _sort_stable(self, dim: int = -1, descending: bool = False, stable: bool | None = None):
    """aten.sort.stable as ONNX TopK over the whole axis: TopK breaks ties by the lower index first, as a stable
    sort does (BiFormer's region routing sorts this way)."""
    from onnxscript import opset18 as op

    k = op.Shape(self, start=dim, end=dim + 1 if dim != -1 else None)
    return op.TopK(self, k, axis=dim, largest=int(descending), sorted=1)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[list[logging.LogRecord]]:
    """Keep the log records of torch's ONNX exporter and onnxscript (version conversion warnings with
    tracebacks) instead of printing them; Python warnings are dropped."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    saved = [(lg.handlers, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [Keep()], False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield records
    finally:
        for lg, (handlers, propagate) in zip(loggers, saved, strict=True):
            lg.handlers, lg.propagate = handlers, propagate


def _conversion_failure(records: list[logging.LogRecord]) -> str:
    """What the ONNX version converter said it could not convert, from the exporter's log records."""
    for record in records:
        text = f"{record.getMessage()} {record.exc_info[1] if record.exc_info else ''}"
        match = re.search(r"No Adapter To Version \$?(\d+) for (\w+)", text)
        if match:
            return f"the ONNX version converter has no adapter for {match.group(2)}"
    return "the ONNX version converter failed"


def _translations() -> dict:
    return {torch.ops.aten.sort.stable: _sort_stable}


def _rename_dims(model, names: dict[str, str]) -> None:
    """Rename the symbolic dims of every value of an onnx_ir model (``s77`` -> ``batch``, ``32*s77`` ->
    ``32*batch``)."""
    import onnx_ir as ir

    if not names:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    values = list(model.graph.inputs) + list(model.graph.outputs)
    values += [v for node in ir.traversal.RecursiveGraphIterator(model.graph) for v in node.outputs]
    for value in values:
        if value.shape is None:
            continue
        dims = [pattern.sub(lambda m: names[m.group(1)], d.value) if isinstance(d, ir.SymbolicDim) and d.value
                else d for d in value.shape]
        value.shape = ir.Shape(dims)


def _symbol_names(cap: Capture) -> dict[str, str]:
    node = next(n for n in cap.program.graph.nodes if n.op == "placeholder"
                and n.name in cap.program.graph_signature.user_inputs)
    shape = node.meta["val"].shape
    return {str(shape[a]): AXIS_NAMES[a] for a in cap.axes}


def _output_axes(cap: Capture) -> dict[int, str]:
    names = _symbol_names(cap)
    out = next(n for n in cap.program.graph.nodes if n.op == "output").args[0][0]
    shape = out.meta["val"].shape
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b") if names else None
    return {a: pattern.sub(lambda m: names[m.group(1)], str(d)) for a, d in enumerate(shape)
            if isinstance(d, torch.SymInt) and pattern}


def check_opset(opset: int) -> None:
    """A :class:`UserError` unless ``opset`` is one visattn exports and the installed onnx knows."""
    require("onnx", "onnxscript")
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UserError(f"opset {opset}: visattn exports opsets {MIN_OPSET} to {newest} (the newest the installed "
                        f"onnx {onnx.__version__} knows)")


def export_onnx(model: nn.Module, path: str, input_size: tuple[int, int, int], opset: int = DEFAULT_OPSET,
                dynamic: bool = True, optimize: bool = True) -> Exported:
    """Write ``model`` as an ONNX file at ``path`` (atomically), traced at ``input_size`` (C, H, W).

    Input ``input`` (B, C, H, W), output ``output``; batch, height and width dynamic where the model allows (see
    :func:`capture`), all fixed without ``dynamic``. torch's dynamo exporter converts the traced program and, with
    ``optimize``, onnxscript's optimizer folds it (slow on large graphs; onnxruntime optimizes a graph it loads
    anyway); when the exporter cannot, the TorchScript exporter is tried (height and width fixed) and a note says
    so. An op neither can express is a :class:`UserError` naming it.
    """
    check_opset(opset)
    cap = capture(model, input_size, dynamic)
    done = Exported(path, "onnx", tuple(input_size), {}, list(cap.notes), "dynamo", opset)
    try:
        with forced_backend("torch"), _quiet_exporter() as records:
            program = torch.onnx.export(cap.program, (cap.example,), dynamo=True, opset_version=opset,
                                        input_names=["input"], output_names=["output"], verbose=False,
                                        custom_translation_table=_translations(), optimize=optimize)
    except Exception as err:  # noqa: BLE001 - the dynamo exporter failed: try the TorchScript exporter
        return _export_torchscript(model, cap, done, err)
    written = program.model.opset_imports.get("", opset)
    if written != opset:
        raise UserError(f"cannot write ONNX opset {opset}: {_conversion_failure(records)} (the exporter writes "
                        f"opset {written}); use --opset {written}" + (" or newer" if opset < written else ""))
    _rename_dims(program.model, _symbol_names(cap))
    done.dynamic_axes = {"input": {a: AXIS_NAMES[a] for a in cap.axes}, "output": _output_axes(cap)}
    program.model.metadata_props[META_KEY] = json.dumps(done.metadata())
    atomic_write(path, lambda tmp: program.save(tmp, external_data=False))
    return done


def _export_torchscript(model: nn.Module, cap: Capture, done: Exported, dynamo_error: BaseException) -> Exported:
    """The TorchScript exporter's ONNX file, batch dynamic when onnxruntime shows that a graph traced at one batch
    runs another (else all fixed); a :class:`UserError` naming the op when it fails too."""
    import onnx

    _, _, h, w = cap.example.shape
    why = describe_failure(dynamo_error)
    done.exporter = "torchscript"
    done.notes.append(f"the dynamo exporter failed ({why}); exported with the TorchScript exporter, height and "
                      f"width fixed at {h}x{w}")

    def write(tmp: str, axes: dict) -> None:
        with forced_backend("torch"), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (cap.example,), tmp, dynamo=False, opset_version=done.opset,
                              input_names=["input"], output_names=["output"], dynamic_axes=axes)
        proto = onnx.load(tmp)
        onnx.helper.set_model_props(proto, {META_KEY: json.dumps(done.metadata())})
        onnx.save(proto, tmp)

    require("onnxruntime")  # shows whether the graph traced at one batch runs another
    try:
        batch = {"input": {0: "batch"}, "output": {0: "batch"}}
        done.dynamic_axes = batch
        atomic_write(done.path, lambda tmp: write(tmp, batch))
        try:
            check_onnx(model, done.path, done.input_size, (0,))
        except Exception as err:  # noqa: BLE001 - the traced batch is baked in: export it fixed
            done.dynamic_axes = {"input": {}, "output": {}}
            done.notes.append(f"batch fixed at {EXAMPLE_BATCH}: the TorchScript graph does not take another "
                              f"batch ({_short(err)})")
            atomic_write(done.path, lambda tmp: write(tmp, {}))
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - both exporters failed: name the op the dynamo exporter could not take
        raise UserError(f"cannot export {type(model).__name__} to ONNX opset {done.opset}: {why}") from err
    return done


def read_metadata(path: str) -> dict:
    """The export facts stored in an ONNX or ``.pt2`` file written here (``{}`` for another file)."""
    if path.endswith(".pt2"):  # the archive's extra file, read without loading (deserializing) the program
        from torch.export.pt2_archive import PT2ArchiveReader
        from torch.export.pt2_archive.constants import EXTRA_DIR

        with PT2ArchiveReader(path) as archive:
            name = f"{EXTRA_DIR}{META_KEY}.json"
            return json.loads((archive.read_string(name) if name in archive.get_file_names() else "") or "{}")
    import onnx

    proto = onnx.load(path, load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    return json.loads(props.get(META_KEY, "{}"))


def _compare(model: nn.Module, run, shapes: list[tuple[int, ...]], dtype: torch.dtype) -> Check:
    max_abs = max_rel = 0.0
    for i, shape in enumerate(shapes):
        x = example_input(shape[1:], batch=shape[0], seed=10 + i, dtype=dtype)
        with forced_backend("torch"), torch.no_grad():
            want = model(x).float()
        got = torch.as_tensor(run(x)).float()
        if got.shape != want.shape:
            raise UserError(f"the exported model returns {tuple(got.shape)} for a {tuple(shape)} input, PyTorch "
                            f"{tuple(want.shape)}")
        diff = (got - want).abs().max().item() if want.numel() else 0.0
        scale = want.abs().max().item() if want.numel() else 0.0
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else diff)
    return Check(max_abs, max_rel, shapes)


def check_shapes(input_size: tuple[int, int, int], axes, min_batch: int = 1) -> list[tuple[int, ...]]:
    """The inputs a check runs: (2, C, H, W) at the export size and, with dynamic ``axes`` (indices), one image
    (3 where ``min_batch`` is 2) of a larger odd size along them."""
    first = (EXAMPLE_BATCH, *input_size)
    axes = tuple(int(a) for a in axes)
    return [first, other_shape(first, axes, batch=1 if min_batch == 1 else 3)] if axes else [first]


def check_onnx(model: nn.Module, path: str, input_size: tuple[int, int, int], axes=None) -> Check:
    """Run the ONNX file in onnxruntime (CPU) on random inputs (:func:`check_shapes`; ``axes`` default: the
    dynamic input axes in the file's metadata) and compare with ``model``'s reference path."""
    require("onnxruntime")
    import onnxruntime as ort

    if axes is None:
        axes = [int(a) for a in read_metadata(path).get("dynamic_axes", {}).get("input", {})]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    model.eval()
    return _compare(model, lambda x: session.run(None, {name: x.numpy()})[0], check_shapes(input_size, axes),
                    _dtype(model))


# --- torch.export programs ------------------------------------------------------------------------------------------

def export_pt2(model: nn.Module, path: str, input_size: tuple[int, int, int], dynamic: bool = True) -> Exported:
    """Write ``model``'s ``torch.export`` program at ``path`` with ``torch.export.save`` (atomically), dynamic axes
    as in :func:`capture`; load it with ``torch.export.load(path).module()``."""
    cap = capture(model, input_size, dynamic)
    axes = {"input": {a: AXIS_NAMES[a] for a in cap.axes}, "output": _output_axes(cap)}
    done = Exported(path, "pt2", tuple(input_size), axes, list(cap.notes), min_batch=cap.min_batch)
    extra = {f"{META_KEY}.json": json.dumps(done.metadata())}
    atomic_write(path, lambda tmp: torch.export.save(cap.program, tmp, extra_files=extra))
    return done


def check_pt2(model: nn.Module, path: str, input_size: tuple[int, int, int], axes=None) -> Check:
    """Load the ``.pt2`` program and compare it with ``model`` on random inputs (:func:`check_shapes`; ``axes``
    default: the dynamic input axes in the file's metadata, whose batch floor it keeps)."""
    facts = read_metadata(path)
    if axes is None:
        axes = [int(a) for a in facts.get("dynamic_axes", {}).get("input", {})]
    program = torch.export.load(path).module()
    model.eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return program(x)

    return _compare(model, run, check_shapes(input_size, axes, facts.get("min_batch", 1)), _dtype(model))


def tolerance(model: nn.Module) -> float:
    """The largest relative difference a check accepts for the model's dtype (1e-4 for float32)."""
    return TOLERANCE.get(_dtype(model), 1e-4)


# --- a checkpoint or zoo model, to a folder -------------------------------------------------------------------------

@dataclass
class Report:
    """What :func:`export_opened` wrote: the export, its check (None without one), the JSON beside it and the
    largest relative difference the check accepts."""

    exported: Exported
    check: Check | None
    json_path: str
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.check is None or self.check.max_rel <= self.tolerance


def _versions(fmt: str) -> dict:
    from . import __version__

    found = {"visattn": __version__, "torch": torch.__version__}
    for name in ("onnx", "onnxscript", "onnxruntime") if fmt == "onnx" else ():
        with contextlib.suppress(ImportError):
            found[name] = importlib.import_module(name).__version__
    return found


def export_opened(opened, output: str, fmt: str = "onnx", *, source: str | None = None, check: bool = False,
                  img_size: int | None = None, opset: int | None = None, dynamic: bool = True,
                  optimize: bool = True) -> Report:
    """Export an :class:`~visattn.tasks.opened.OpenedModel` to ``output``/<model>.<fmt> with <model>.json beside
    it (model, input size, preprocessing, classes when the checkpoint has them, opset, dynamic axes, notes, the
    check's differences); with ``check``, compare the file with the model on random input first."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    check_output_folder(output, "the exported files")
    if fmt == "onnx":
        require("onnx", "onnxscript", *(("onnxruntime",) if check else ()))
    size = (opened.data_config["input_size"][0], *opened.input_size(img_size))
    check_model_input(opened.model, size[1:], opened.name)
    path = os.path.join(output, f"{opened.name}.{fmt}")
    model = opened.model
    if fmt == "onnx":
        done = export_onnx(model, path, size, opset or DEFAULT_OPSET, dynamic, optimize)
        result = check_onnx(model, path, size, done.dynamic_axes["input"]) if check else None
    else:
        done = export_pt2(model, path, size, dynamic)
        result = check_pt2(model, path, size, done.dynamic_axes["input"]) if check else None
    limit = tolerance(model)
    fields = opened.checkpoint
    info = {"model": opened.name, "task": opened.task, "kind": opened.kind, "source": source or opened.name,
            "format": fmt, "file": os.path.basename(path), "exporter": done.exporter, "opset": done.opset,
            "input_name": "input", "output_name": "output", "input_size": list(size), "layout": "NCHW",
            "dtype": str(_dtype(model)).removeprefix("torch."),
            "preprocessing": PREPROCESSING.get(opened.kind, PREPROCESSING["classification"]),
            **opened.preprocessing(),
            **({"inference": {k: v for k, v in fields["inference"].items() if k != "batch_size"}}
               if opened.kind == "segmentation" and "inference" in fields else {}),
            **({"embedding_dim": model.feature_dim, "metric": fields.get("metric")} if opened.kind == "reid" else {
                "num_classes": fields.get("num_classes", getattr(model, "num_classes", None)),
                "classes": fields.get("classes")}),
            "dynamic_axes": {k: {str(a): n for a, n in v.items()} for k, v in done.dynamic_axes.items()},
            "min_batch": done.min_batch, "notes": done.notes,
            "check": None if result is None else {
                "max_abs_diff": result.max_abs, "max_rel_diff": result.max_rel, "tolerance": limit,
                "passed": result.max_rel <= limit, "inputs": [list(s) for s in result.shapes]},
            "versions": _versions(fmt)}
    json_path = os.path.join(output, f"{opened.name}.json")
    atomic_write_json(info, json_path)
    return Report(done, result, json_path, limit)
