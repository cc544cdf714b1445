"""Measuring the zoo, once for tools/benchmark.py and benchmarks/gpu_suite.py: parameters and MACs counted on the
meta device, CPU latency, CUDA inference and training throughput and training peak memory (reference or fused path,
eager or compiled, bf16 autocast), the result table's CSV, Markdown and speed-against-MACs plot, and README.md's
model tables rendered from the counts and ``visattn/published.csv``."""

from __future__ import annotations

import csv
import difflib
import fnmatch
import functools
import io
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from . import list_models
from .engine.checkpoint import atomic_write
from .engine.loop import TrainingForward
from .errors import UserError, first_line
from .ops import forced_backend

PATHS = {"reference": "torch", "fused": "triton"}  # path -> $VISATTN_BACKEND
MODES = ("eager", "compiled")
# (inference, training) batch on CUDA; segmentation networks run at their native 608-1024 px
BATCHES = {"classification": (128, 64), "segmentation": (4, 4)}
METRICS = ("infer_img_s", "train_img_s", "train_peak_gb")
COUNT_COLUMNS = ("model", "kind", "input_size", "params", "trainable_params", "macs")
PUBLISHED_COLUMNS = ("model", "top1", "notes")
PUBLISHED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published.csv")  # package data (pyproject.toml)
README_HEADERS = {
    "classification": "| model | input | params (M) | MACs (G) | top-1 (%) | paper / notes |\n"
                      "|---|---|---:|---:|---:|---|",
    "segmentation": "| model | input | params (M) | MACs (G) | paper / notes |\n|---|---|---:|---:|---|",
}


# --- which models -------------------------------------------------------------------------------------------------

@functools.cache
def _segmentation_models() -> frozenset[str]:
    return frozenset(list_models(kind="segmentation", include_test=True))


def model_kind(name: str) -> str:
    """``"segmentation"`` for a network whose forward returns per-pixel logits, else ``"classification"``."""
    return "segmentation" if name in _segmentation_models() else "classification"


def zoo_models(published: dict[str, dict]) -> list[str]:
    """The zoo: the models of the published table in its order (visattn's and the timm models it covers, MambaOut),
    then any model visattn registers that the table still lacks."""
    unknown = [name for name in published if not timm.is_model(name)]
    if unknown:
        raise UserError(f"visattn/published.csv names {', '.join(unknown)}, which timm does not register")
    return [*published, *(name for name in list_models() if name not in published)]


def select_models(patterns: Sequence[str], zoo: Sequence[str]) -> list[str]:
    """The zoo's models matching any of the fnmatch ``patterns`` (in pattern order); a plain name may also be any
    timm model (a dense baseline such as ``deit_small_patch16_224``). A pattern that matches nothing is an error."""
    chosen: list[str] = []
    for pattern in patterns:
        matches = fnmatch.filter(zoo, pattern)
        if not matches and not any(c in pattern for c in "*?[") and timm.is_model(pattern):
            matches = [pattern]
        if not matches:
            close = difflib.get_close_matches(pattern, zoo, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; the zoo: {', '.join(zoo)}"
            raise UserError(f"--models {pattern!r} matches no model{hint}")
        chosen += [name for name in matches if name not in chosen]
    return chosen


# --- counting and timing ------------------------------------------------------------------------------------------

def count_macs(model: nn.Module, x: torch.Tensor) -> float:
    """MACs (FLOPs / 2) of ``model(x)`` without gradients, as torch's FLOP counter sees them: convolutions, matrix
    products and the custom ops by their FLOP formulas (run under ``forced_backend("triton")`` for the fused
    path); normalisation, pooling, activations and elementwise products are not counted. Works on the meta
    device."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 2


def count_model(name: str) -> dict:
    """Parameters (all and trainable) and MACs (FLOPs / 2) of one image at the model's pretrained input size,
    counted on the meta device through the fused ops' FLOP formulas, so attention, scans and window attention
    count. Returns ``input_size`` (H, W), ``params``, ``trainable_params`` and ``macs``."""
    with forced_backend("triton"):
        with torch.device("meta"):
            model = timm.create_model(name).eval()
            x = torch.empty(1, *model.pretrained_cfg["input_size"])
        macs = count_macs(model, x)
    return {"input_size": tuple(x.shape[2:]), "params": sum(p.numel() for p in model.parameters()),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad), "macs": macs}


def time_ms(fn: Callable[[], object], device: str | torch.device = "cuda", warmup: int = 3, repeat: int = 10) -> float:
    """Median milliseconds of ``fn()`` over ``repeat`` runs after ``warmup`` untimed ones: CUDA events on a CUDA
    device, the wall clock elsewhere."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_gb(fn: Callable[[], object], device: str | torch.device = "cuda") -> float:
    """GB of device memory that ``fn()`` holds at its peak beyond what was allocated before it; NaN off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        fn()
        return math.nan
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 1e9


def fused_only(name: str) -> bool:
    """Whether a GPU benchmark times only ``name``'s fused path: its class sets ``benchmark_fused_only`` when its
    reference path is too slow to time (a sequential scan)."""
    with torch.device("meta"):
        return bool(getattr(timm.create_model(name), "benchmark_fused_only", False))


def cpu_latency_ms(name: str, warmup: int = 2, repeat: int = 5) -> float:
    """Median milliseconds of one eager float32 forward of a batch-1 image at the model's pretrained input size, on
    the CPU through the reference path."""
    with forced_backend("torch"):
        torch.manual_seed(0)
        model = timm.create_model(name).eval()
        x = torch.randn(1, *model.pretrained_cfg["input_size"])
        with torch.no_grad():
            return time_ms(lambda: model(x), "cpu", warmup, repeat)


def inference_ms(model: nn.Module, run: Callable, x: torch.Tensor, warmup: int = 3, repeat: int = 10,
                 amp_dtype: torch.dtype | None = torch.bfloat16) -> float:
    """Milliseconds of one no-grad ``run(x)`` (``run``: ``model`` or its compiled form) in eval mode, under autocast
    to ``amp_dtype`` (None: none)."""
    model.eval()

    def infer() -> None:
        with torch.no_grad(), torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            run(x)

    return time_ms(infer, x.device, warmup, repeat)


def training_step(model: nn.Module, loss_fn: Callable, compile: bool = False,
                  amp_dtype: torch.dtype | None = torch.bfloat16) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """``step(x, y)``: one AdamW step through the model's training forward (:class:`TrainingForward`, compiled with
    ``compile``) under autocast to ``amp_dtype``: ``loss_fn(output, y)`` in float32, averaged with the
    deep-supervision outputs', plus the model's own auxiliary losses; frozen parameters stay out of the optimizer."""
    model.train()
    run = TrainingForward(model)
    run = torch.compile(run) if compile else run
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = run(x)
        outputs = out.predictions()
        loss = sum(loss_fn(o.float(), y) for o in outputs) / len(outputs) + sum(out.aux_losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def throughput(model: nn.Module, infer_x: torch.Tensor, train_x: torch.Tensor, train_y: torch.Tensor,
               loss_fn: Callable, compile: bool = False, warmup: int = 3, repeat: int = 10) -> dict:
    """Inference and training img/s of ``model`` (compiled with ``compile``; bf16 autocast, an AdamW step per
    training batch, see :func:`training_step`) and the peak memory of one training step (GB; NaN off CUDA)."""
    infer_ms = inference_ms(model, torch.compile(model) if compile else model, infer_x, warmup, repeat)
    step = training_step(model, loss_fn, compile)
    step(train_x, train_y)  # the optimizer's state exists before the peak is taken
    peak = peak_gb(lambda: step(train_x, train_y), train_x.device)
    train_ms = time_ms(lambda: step(train_x, train_y), train_x.device, warmup, repeat)
    return {"infer_img_s": len(infer_x) / infer_ms * 1e3, "train_img_s": len(train_x) / train_ms * 1e3,
            "train_peak_gb": peak}


def _batch(kind: str, batch: int, size: tuple[int, int], num_classes: int, device) -> tuple[torch.Tensor, ...]:
    x = torch.randn(batch, 3, *size, device=device)
    if kind == "segmentation":
        return x, (torch.rand(batch, num_classes, *size, device=device) > 0.5).float()
    return x, torch.randint(0, num_classes, (batch,), device=device)


def bench_model(name: str, backend: str, device: str | torch.device = "cuda", *, size: int | None = None,
                infer_batch: int | None = None, train_batch: int | None = None, compile: bool = False,
                warmup: int = 3, repeat: int = 10) -> dict:
    """A model's inference and training img/s and training peak memory with ``$VISATTN_BACKEND=backend``, eager or
    under torch.compile, at ``size`` (default: its pretrained input size) and the kind's :data:`BATCHES`.
    Classifiers train with cross-entropy, segmentation networks with BCE against a random mask; a segmentation
    network's result also has its training memory per image, from the peaks at batch 1 and at ``train_batch``."""
    kind = model_kind(name)
    infer_batch = infer_batch or BATCHES[kind][0]
    train_batch = train_batch or BATCHES[kind][1]
    with forced_backend(backend):
        torch.manual_seed(0)
        model = timm.create_model(name).to(device)
        hw = (size, size) if size else tuple(model.pretrained_cfg["input_size"][1:])
        loss_fn = F.binary_cross_entropy_with_logits if kind == "segmentation" else F.cross_entropy
        try:
            x, y = _batch(kind, train_batch, hw, model.num_classes, device)
            result = throughput(model, torch.randn(infer_batch, 3, *hw, device=device), x, y, loss_fn, compile,
                                warmup, repeat)
            if kind == "segmentation" and train_batch > 1:
                step = training_step(model, loss_fn, compile)
                one = _batch(kind, 1, hw, model.num_classes, device)
                step(*one)
                result["peak_gb_batch1"] = peak_gb(lambda: step(*one), device)
                result["peak_gb_per_image"] = (result["train_peak_gb"] - result["peak_gb_batch1"]) / (train_batch - 1)
        finally:
            if compile:
                torch._dynamo.reset()
    return result


def cuda_runs(paths: Sequence[str], compile: bool) -> list[tuple[str, str]]:
    """The (path, mode) pairs a CUDA run times: every path eagerly, and compiled too with ``compile``."""
    return [(path, mode) for path in paths for mode in (MODES if compile else MODES[:1])]


def result_columns(latency: bool, runs: Sequence[tuple[str, str]]) -> list[str]:
    """The result table's columns: the counts, the CPU latency, each CUDA run's metrics, the error."""
    return [*COUNT_COLUMNS, *(["cpu_latency_ms"] if latency else []),
            *(f"{path}_{mode}_{metric}" for path, mode in runs for metric in METRICS), "error"]


def benchmark_row(name: str, *, latency: bool = True, runs: Sequence[tuple[str, str]] = (), device: str = "cuda",
                  infer_batch: int | None = None, train_batch: int | None = None, warmup: int = 2,
                  repeat: int = 5) -> dict:
    """One model's row of the result table. A failed count ends the row; a failed timing leaves its cells empty;
    ``error`` lists the failures, one line each."""
    row: dict = {"model": name, "kind": model_kind(name)}
    errors = []
    try:
        counts = count_model(name)
    except Exception as err:  # one model's failure is its row's, the run goes on
        return {**row, "error": f"count: {first_line(err, with_type=True)}"}
    row.update(counts)
    stages: list[tuple[str, Callable[[], dict]]] = []
    if latency:
        stages.append(("cpu", lambda: {"cpu_latency_ms": cpu_latency_ms(name, warmup, repeat)}))
    for path, mode in runs:
        if path == "reference" and fused_only(name):
            continue

        def bench(path=path, mode=mode) -> dict:
            result = bench_model(name, PATHS[path], device, infer_batch=infer_batch, train_batch=train_batch,
                                 compile=mode == "compiled", warmup=warmup, repeat=repeat)
            return {f"{path}_{mode}_{metric}": result[metric] for metric in METRICS}

        stages.append((f"{path} {mode}", bench))
    for stage, measure in stages:
        try:
            row.update(measure())
        except Exception as err:
            errors.append(f"{stage}: {first_line(err, with_type=True)}")
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    if errors:
        row["error"] = "; ".join(errors)
    return row


# --- the result table ---------------------------------------------------------------------------------------------

def params_text(params: int, trainable: int) -> str:
    """Millions of parameters, with the trainable count where it differs (``103.26 (17.46 trainable)``)."""
    text = f"{params / 1e6:.2f}"
    return text if trainable == params else f"{text} ({trainable / 1e6:.2f} trainable)"


def size_text(size: Sequence[int], sep: str = "×") -> str:
    return sep.join(str(s) for s in size)


def _csv_value(column: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if column == "input_size":
        return size_text(value, "x")
    if column == "macs":
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.3f}" if column.endswith(("_ms", "_gb")) else f"{value:.1f}"
    return str(value)


def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """The result table as CSV: exact parameter and MAC counts, input size as HxW, empty cells where unmeasured."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(c, row.get(c)) for c in columns])
    return out.getvalue()


def column_label(column: str) -> str:
    """A result column's Markdown heading."""
    fixed = {"model": "model", "kind": "kind", "input_size": "input", "params": "params (M)", "macs": "MACs (G)",
             "cpu_latency_ms": "CPU ms (batch 1)", "error": "error"}
    if column in fixed:
        return fixed[column]
    path, mode, metric = column.split("_", 2)
    what = {"infer_img_s": "infer img/s", "train_img_s": "train img/s", "train_peak_gb": "train peak GB"}[metric]
    return f"{path}{', compiled' if mode == 'compiled' else ''} {what}"


def markdown_cell(column: str, row: dict) -> str:
    value = row.get(column)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "" if column == "error" else "–"
    if column == "model":
        return f"`{value}`"
    if column == "input_size":
        return size_text(value)
    if column == "params":
        return params_text(value, row.get("trainable_params", value))
    if column == "macs":
        return f"{value / 1e9:.2f}"
    if column == "error":
        return str(value).replace("|", "/")
    if isinstance(value, float):
        digits = 2 if column.endswith("_gb") else 1 if column.endswith("_ms") else 0
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """The result table in Markdown (the trainable count shares the parameters' cell)."""
    shown = [c for c in columns if c != "trainable_params"]
    align = {c: "---" if c in ("model", "kind", "input_size", "error") else "---:" for c in shown}
    lines = ["| " + " | ".join(column_label(c) for c in shown) + " |", "|" + "|".join(align[c] for c in shown) + "|"]
    lines += ["| " + " | ".join(markdown_cell(c, row) for c in shown) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically, keeping the mode of a file that is already there."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def speed_series(rows: Sequence[dict], columns: Sequence[str]) -> dict[str, list[tuple[str, float, float]]]:
    """The plot's points, (model, GMACs, img/s) per series: each CUDA run's inference, or else the CPU's batch-1."""
    wanted = [c for c in columns if c.endswith("_infer_img_s")]
    series = {}
    for column in wanted or (["cpu_latency_ms"] if "cpu_latency_ms" in columns else []):
        label = column_label(column).replace(" infer img/s", "") if wanted else "CPU, batch 1"
        points = []
        for row in rows:
            value, macs = row.get(column), row.get("macs")
            if value is None or macs is None or not math.isfinite(value) or value <= 0 or macs <= 0:
                continue
            points.append((row["model"], macs / 1e9, value if wanted else 1e3 / value))
        if points:
            series[label] = points
    return series


def _minor_tick(value: float, _) -> str:
    """Label a log axis' minor ticks at 2 and 5 times a power of ten only."""
    return f"{value:g}" if value > 0 and round(value / 10 ** math.floor(math.log10(value))) in (2, 5) else ""


def plot_speed_vs_macs(rows: Sequence[dict], columns: Sequence[str], path: str, title: str) -> bool:
    """Write the speed-against-MACs plot (log axes where the values span a decade, every point labelled with its
    model) to ``path``; False when no row has a speed to plot."""
    series = speed_series(rows, columns)
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(10, 7))
    for label, points in series.items():
        _, macs, speed = zip(*points, strict=True)
        ax.scatter(macs, speed, label=label, s=25)
        for name, x, y in points:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set(xlabel="MACs per image (G)", ylabel="images / s", title=title)
    values = [(x, y) for points in series.values() for _, x, y in points]
    for axis, scale, coordinate in ((ax.xaxis, ax.set_xscale, 0), (ax.yaxis, ax.set_yscale, 1)):
        low, high = min(v[coordinate] for v in values), max(v[coordinate] for v in values)
        if high >= 10 * low:  # log axes where the values span a decade or more
            scale("log")
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(FuncFormatter(_minor_tick))
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return True


# --- README.md's model tables -------------------------------------------------------------------------------------

def read_published(path: str) -> dict[str, dict]:
    """``visattn/published.csv``: per model, in table order, the published top-1 (may be empty) and the notes."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = tuple(reader.fieldnames or ())
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    if header != PUBLISHED_COLUMNS:
        raise UserError(f"{path}: expected the columns {','.join(PUBLISHED_COLUMNS)}, found {','.join(header)}")
    published: dict[str, dict] = {}
    for row in rows:
        if row["model"] in published:
            raise UserError(f"{path}: {row['model']} has two rows")
        published[row["model"]] = {"top1": row["top1"].strip(), "notes": row["notes"].strip()}
    return published


def readme_models(published: dict[str, dict]) -> list[str]:
    """The README's rows: the published table's models; every model visattn registers must be one of them."""
    missing = [name for name in list_models() if name not in published]
    if missing:
        raise UserError(f"visattn/published.csv has no row for {', '.join(missing)}: add one (model,top1,notes)")
    zoo_models(published)  # every name is a timm model
    return list(published)


def paper_link(name: str) -> str:
    """A Markdown link to the model's paper from its pretrained_cfg (``paper_ids`` arXiv id, ``paper_name`` as the
    link's title); empty when the cfg names no arXiv paper."""
    cfg = timm.models.get_pretrained_cfg(name)
    ids = getattr(cfg, "paper_ids", None) if cfg is not None else None
    ids = [ids] if isinstance(ids, str) else list(ids or ())
    arxiv = next((i for i in ids if i.startswith("arXiv:")), None)
    if arxiv is None:
        return ""
    url = f"https://arxiv.org/abs/{arxiv.removeprefix('arXiv:')}"
    title = (getattr(cfg, "paper_name", None) or "").replace('"', "'")
    return f'[{arxiv}]({url} "{title}")' if title else f"[{arxiv}]({url})"


def readme_row(name: str, counts: dict, published: dict) -> str:
    """A README table row: model, input size, params (M, with the trainable count where it differs), MACs (G),
    published top-1 for a classifier, the published notes followed by a link to the paper."""
    cells = [f"`{name}`", size_text(counts["input_size"]), params_text(counts["params"], counts["trainable_params"]),
             f"{counts['macs'] / 1e9:.2f}"]
    if model_kind(name) == "classification":
        cells.append(published["top1"] or "–")
    notes, link = published["notes"], paper_link(name) if published["notes"] else ""
    cells.append(f"{notes} — {link}" if link else notes)
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


def readme_tables(counts: dict[str, dict], published: dict[str, dict]) -> dict[str, str]:
    """README.md's two tables (classification, segmentation), each a header and a row per model in ``counts``."""
    tables = {}
    for kind, header in README_HEADERS.items():
        rows = [readme_row(name, c, published[name]) for name, c in counts.items() if model_kind(name) == kind]
        tables[kind] = "\n".join([header, *rows])
    return tables


def markers(kind: str) -> tuple[str, str]:
    return f"<!-- zoo-table:{kind}:start -->", f"<!-- zoo-table:{kind}:end -->"


def _marked_span(text: str, kind: str, path: str) -> tuple[int, int]:
    start, end = markers(kind)
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise UserError(f"{path} needs one {start} line and, after it, one {end} line around the {kind} table")
    return text.index(start) + len(start), text.index(end)


def readme_table(text: str, kind: str, path: str = "README.md") -> str:
    """The ``kind`` table of a README's text: what stands between its two marker comments, stripped."""
    begin, end = _marked_span(text, kind, path)
    return text[begin:end].strip()


def replace_tables(text: str, tables: dict[str, str], path: str = "README.md") -> str:
    """``text`` with what stands between each table's markers replaced by the table; nothing else changes."""
    for kind, table in tables.items():
        begin, end = _marked_span(text, kind, path)
        text = f"{text[:begin]}\n{table}\n{text[end:]}"
    return text


def read_readme(path: str) -> str:
    """The README's text; an unreadable file, or one without both tables' markers, is a one-line error."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    for kind in README_HEADERS:
        _marked_span(text, kind, path)
    return text


def update_readme(path: str, tables: dict[str, str]) -> bool:
    """Rewrite the tables between the markers of the README at ``path``, read from disk now (another hand may have
    edited the rest), atomically; False when it already held them."""
    text = read_readme(path)
    updated = replace_tables(text, tables, path)
    if updated == text:
        return False
    write_text(path, updated)
    return True
