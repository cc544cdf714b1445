"""Where does cheap attention pay off in a re-id ResNet? The placement study (``visattn-reid-placements``).

A placement is an attention kind of :data:`~visattn.tasks.reid.model.REID_ATTENTION` at a set of ResNet stages and
blocks (``psa_s@2,3:last``), or the plain backbone (``plain``). The study trains every placement with one re-id
recipe, each in its own run folder (a finished run there is reused, an unfinished one resumed), then measures the
networks' inference costs at the recipe's input size, timed in turn (:func:`measure_costs`: parameters, MACs, CPU
latency per batch size, CUDA latency when a GPU is present) and writes ``placements.csv``, ``placements.md``,
``placements.json`` and ``pareto.png`` (mAP against CPU latency, the Pareto front marked).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ...benchmark import count_macs, inference_ms
from ...engine.checkpoint import (
    atomic_write,
    atomic_write_csv,
    atomic_write_json,
    check_output_folder,
    read_training_checkpoint,
)
from ...errors import UserError, first_line
from ...ops import forced_backend
from .model import REID_ATTENTION, ReIDModel
from .task import ReIDConfig, train

PLAIN = "plain"
STAGES = (1, 2, 3, 4)
SPEC_HELP = "plain or KIND@STAGES[:BLOCKS], e.g. psa_s@2,3:last (BLOCKS: all, last or indices such as 0,2)"
FILES = ("placements.csv", "placements.md", "placements.json", "pareto.png")
# Options that change no result: a run that differs only in these is the same run.
RUN_ONLY = ("output", "resume", "overwrite", "workers", "device", "log_interval")
METRICS = (("mAP", "mAP"), ("rank1", "rank-1"), ("mINP", "mINP"))


@dataclass(frozen=True)
class Placement:
    """One network of the study: ``kind`` (a REID_ATTENTION name; None: the plain backbone) after ``blocks``
    (all, last or indices such as "0,2") of each ResNet stage in ``stages``."""

    kind: str | None = None
    stages: tuple[int, ...] = ()
    blocks: str = "last"

    @property
    def name(self) -> str:
        """``plain`` or ``KIND@STAGES:BLOCKS``, the spelling --placements reads."""
        if self.kind is None:
            return PLAIN
        return f"{self.kind}@{','.join(map(str, self.stages))}:{self.blocks}"

    @property
    def folder(self) -> str:
        """The run folder's name: the name with only letters, digits, _ and - (``psa_s_at2-3_last``)."""
        if self.kind is None:
            return PLAIN
        blocks = self.blocks if self.blocks in ("all", "last") else "b" + self.blocks.replace(",", "-")
        return f"{self.kind}_at{'-'.join(map(str, self.stages))}_{blocks}"

    def model_settings(self) -> dict:
        """The ReIDConfig / ReIDModel fields of this placement."""
        if self.kind is None:
            return {"attn": None, "attn_at": (), "attn_blocks": "all"}
        return {"attn": self.kind, "attn_at": self.stages, "attn_blocks": self.blocks}


def _blocks(text: str, label: str) -> str:
    if text in ("all", "last"):
        return text
    try:
        indices = sorted({int(v) for v in text.split(",")})
    except ValueError:
        indices = []
    if not indices or indices[0] < 0:
        raise UserError(f"{label}: blocks {text!r} are not all, last or block indices such as 0,2")
    return ",".join(map(str, indices))


def placement(kind: str | None, stages: Sequence[int] = (), blocks: str = "last", spec: str | None = None) -> Placement:
    """A checked placement: ``kind`` registered (None: plain), ``stages`` within 1-4 (sorted, once each), ``blocks``
    all, last or non-negative indices. ``spec``: how the user wrote it, for the error."""
    if kind is None:
        return Placement()
    label = f"--placements {spec}" if spec else f"placement {kind}@{','.join(map(str, stages))}:{blocks}"
    if kind not in REID_ATTENTION:
        raise UserError(f"{label}: unknown attention kind {kind!r}; registered: {', '.join(REID_ATTENTION)}")
    if not stages or any(s not in STAGES for s in stages):
        raise UserError(f"{label}: stages must be ResNet stages 1-4 (layer1..layer4) such as 2,3")
    return Placement(kind, tuple(sorted(set(stages))), _blocks(str(blocks), label))


def parse_placement(spec: str) -> Placement:
    """A placement as --placements spells it: ``plain`` or ``KIND@STAGES[:BLOCKS]`` (BLOCKS default last)."""
    text = spec.strip()
    if text == PLAIN:
        return Placement()
    kind, at, rest = text.partition("@")
    if not at or not kind or not rest:
        raise UserError(f"--placements {spec}: write {SPEC_HELP}")
    stages_text, _, blocks = rest.partition(":")
    try:
        stages = [int(v) for v in stages_text.split(",")]
    except ValueError:
        raise UserError(f"--placements {spec}: stages {stages_text!r} are not ResNet stages such as 2,3") from None
    return placement(kind, stages, blocks or "last", spec)


def study_placements(specs: Sequence[str] | None = None, kinds: Sequence[str] | None = None,
                     stage_sets: Sequence[Sequence[int]] | None = None,
                     blocks: Sequence[str] | None = None) -> list[Placement]:
    """The study's placements, the plain backbone first, each once: those ``specs`` spell, or else every kind of
    ``kinds`` (default: every registered kind) at every set of ``stage_sets`` (default 2,3) after every choice of
    ``blocks`` (default last). ``specs`` and the others exclude each other."""
    if specs and (kinds or stage_sets or blocks):
        raise UserError("--placements lists the placements itself; drop --attn, --attn-at and --attn-blocks, or "
                        "drop --placements")
    if specs:
        chosen = [parse_placement(s) for s in specs]
    else:
        unknown = [k for k in kinds or () if k not in REID_ATTENTION]
        if unknown:
            raise UserError(f"--attn {unknown[0]}: unknown attention kind; registered: {', '.join(REID_ATTENTION)}")
        chosen = [placement(k, stages, b) for k in (kinds or REID_ATTENTION) for stages in (stage_sets or [(2, 3)])
                  for b in (blocks or ["last"])]
    return list(dict.fromkeys([Placement(), *chosen]))


# --- cost ---------------------------------------------------------------------------------------------------------

def inference_model(backbone: str, settings: dict, model_kwargs: dict | None = None,
                    device: str | torch.device = "cpu") -> ReIDModel:
    """The re-id network as it infers (no identity classifier; untrained weights) on ``device`` (``meta``: no
    memory), with ``settings`` the ReIDModel arguments beyond the backbone (pooling, last_stride, attn, ...)."""
    with warnings.catch_warnings(), torch.device(device):
        warnings.simplefilter("ignore")  # the last-stride notice is the training run's to give
        return ReIDModel(backbone, num_classes=0, model_kwargs=model_kwargs, **settings).eval()


def measure_costs(backbone: str, settings: Sequence[dict], input_size: tuple[int, int], *,
                  model_kwargs: dict | None = None, batches: Sequence[int] = (1,), threads: int | None = 1,
                  cuda: bool = False, amp: bool = True, warmup: int = 2, repeat: int = 10) -> list[dict]:
    """The inference cost of each re-id network (:func:`inference_model` of each ``settings``, the ReIDModel
    arguments beyond the backbone) on (B, 3, H, W) images, ``input_size`` (H, W).

    Per network: ``params`` (without the identity classifier), ``macs`` (one image, FLOPs / 2, counted on the meta
    device through the ops' FLOP formulas) and, per batch size B of ``batches``, ``cpu_b{B}_ms``: the median
    milliseconds of an eager float32 forward (reference path) on ``threads`` CPU threads (None: torch's setting)
    over ``repeat`` rounds after ``warmup``; with ``cuda`` also ``cuda_b{B}_ms`` on the current GPU (fused path,
    bf16 autocast with ``amp``, CUDA events). The networks are timed in turn within each round, so that a machine's
    drift (other work, clocks) falls on all of them alike. Untrained weights: a forward's time does not depend on
    them.
    """
    results = []
    with forced_backend("triton"):
        for one in settings:
            model = inference_model(backbone, one, model_kwargs, "meta")
            results.append({"params": sum(p.numel() for p in model.parameters()),
                            "macs": count_macs(model, torch.empty(1, 3, *input_size, device="meta"))})
    torch.manual_seed(0)
    previous = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        with forced_backend("torch"):
            models = [inference_model(backbone, one, model_kwargs) for one in settings]
            _time_in_turn(models, results, "cpu", batches, input_size, None, warmup, repeat)
    finally:
        torch.set_num_threads(previous)
    if cuda:
        models = [m.cuda() for m in models]
        _time_in_turn(models, results, "cuda", batches, input_size, torch.bfloat16 if amp else None, warmup, repeat)
        del models
        torch.cuda.empty_cache()
    return results


def _time_in_turn(models: Sequence[nn.Module], results: list[dict], device: str, batches: Sequence[int],
                  input_size: tuple[int, int], amp_dtype: torch.dtype | None, warmup: int, repeat: int) -> None:
    """``results[i][f"{device}_b{B}_ms"]``: the median over ``repeat`` rounds of one forward of ``models[i]``, the
    models taking turns within each round."""
    for batch in batches:
        x = torch.rand(batch, 3, *input_size, device=device)
        for model in models:
            inference_ms(model, model, x, warmup, 1, amp_dtype=amp_dtype)
        times = [[inference_ms(model, model, x, 0, 1, amp_dtype=amp_dtype) for model in models]
                 for _ in range(repeat)]
        for result, column in zip(results, zip(*times, strict=True), strict=True):
            result[f"{device}_b{batch}_ms"] = statistics.median(column)


def latency_columns(batches: Sequence[int], cuda: bool) -> list[str]:
    """The latency columns of the study's table: CPU per batch size, then CUDA per batch size."""
    return [f"{where}_b{b}_ms" for where in ("cpu", *(("cuda",) if cuda else ())) for b in batches]


# --- the Pareto front ---------------------------------------------------------------------------------------------

def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (cost, score) points no other point dominates (cost <= and score >=, one of them strictly): lower cost,
    higher score are better. Identical points are all on the front; a point with a non-finite value never is."""
    on_front = [False] * len(points)
    finite = [i for i, (c, s) in enumerate(points) if math.isfinite(c) and math.isfinite(s)]
    best, best_cost = -math.inf, None
    for i in sorted(finite, key=lambda i: (points[i][0], -points[i][1])):
        cost, score = points[i]
        if score > best or (score == best and cost == best_cost):
            on_front[i] = True
            best, best_cost = score, cost
    return on_front


# --- one placement's run ------------------------------------------------------------------------------------------

def _comparable(config: dict) -> dict:
    """A run's config without the options that change no result, tuples as lists (as a checkpoint may hold them)."""
    def plain(value):
        return [plain(v) for v in value] if isinstance(value, list | tuple) else value

    return {k: plain(v) for k, v in config.items() if k not in RUN_ONLY}


def run_state(cfg: ReIDConfig) -> tuple[str, dict | None]:
    """What ``cfg.output`` holds for the run ``cfg`` describes: ("new", None), ("unfinished", last.pth) or
    ("finished", last.pth). A run there of another recipe is a one-line error."""
    last = os.path.join(cfg.output, "last.pth")
    if not os.path.isfile(last):
        return "new", None
    ckpt = read_training_checkpoint(last, mmap=True)
    saved, wanted = _comparable(ckpt.get("config") or {}), _comparable(dataclasses.asdict(cfg))
    differ = [k for k in wanted if saved.get(k) != wanted[k]]
    if ckpt.get("task") != "reid" or differ:
        shown = ", ".join(f"{k} {saved.get(k)!r} (this study: {wanted[k]!r})" for k in differ[:3])
        raise UserError(f"{cfg.output} holds a run of another recipe ({shown or 'not a re-id run'}); pass --overwrite "
                        f"to train it again, or another --output")
    return ("finished" if ckpt["epoch"] + 1 >= cfg.epochs else "unfinished"), ckpt


def run_metrics(ckpt: dict) -> dict:
    """The retrieval scores of a run's last evaluation (no choice of epoch on the test set), with its best mAP."""
    evaluated = [h for h in ckpt["history"] if "val_mAP" in h]
    if not evaluated:
        raise UserError(f"the run at epoch {ckpt['epoch'] + 1} has no evaluation yet")
    last = evaluated[-1]
    return {**{key: last[f"val_{key}"] for key, _ in METRICS}, "epochs": last["epoch"],
            "best_mAP": ckpt["best"].get("val_mAP"), "best_epoch": ckpt["best"].get("epoch")}


# --- the study ----------------------------------------------------------------------------------------------------

def run_study(base: ReIDConfig, placements: Sequence[Placement], output: str, *, batches: Sequence[int] = (1, 32),
              threads: int | None = 1, warmup: int = 2, repeat: int = 10, overwrite: bool = False,
              cuda: bool | None = None, say: Callable[[str], None] = print) -> list[dict]:
    """Train every placement with the recipe ``base`` (its own attention fields ignored), each in
    ``output/<placement folder>``, then time the networks in turn (:func:`measure_costs`) and write the study's files
    to ``output``.

    A finished run of the same recipe in a placement's folder is reused and an unfinished one resumed (``overwrite``:
    every placement trains again). ``cuda`` (default: whether a GPU is present) adds CUDA latency. Returns one row
    per placement: placement, kind, stages, blocks, folder, reused, epochs, mAP, rank1, mINP, best_mAP, best_epoch,
    params, macs, the latency columns (ms), their ``*_overhead_pct`` over the plain backbone, pareto.
    """
    placements = list(dict.fromkeys([Placement(), *placements]))
    batches = sorted(set(batches))
    cuda = torch.cuda.is_available() if cuda is None else cuda
    check_output_folder(output, "the study")
    runs = []
    for p in placements:  # every placement builds, and no folder holds another recipe's run, before anything trains
        try:
            inference_model(base.model, {**_settings(base), **p.model_settings()}, base.model_kwargs, "meta")
        except UserError as err:
            raise UserError(f"placement {p.name}: {first_line(err)}") from None
        cfg = dataclasses.replace(base, output=os.path.join(output, p.folder), resume=None, overwrite=overwrite,
                                  **p.model_settings())
        runs.append((p, cfg, *(("new", None) if overwrite else run_state(cfg))))
    columns = latency_columns(batches, cuda)
    scores = []
    for number, (p, cfg, state, ckpt) in enumerate(runs, 1):
        head = f"[{number}/{len(placements)}] {p.name}"
        if state == "finished":
            say(f"{head}: reusing the finished run in {cfg.output}")
        else:
            resume = state == "unfinished"
            say(f"{head}: {'resuming' if resume else 'training'} in {cfg.output} ({cfg.epochs} epochs)")
            if resume:
                cfg = dataclasses.replace(cfg, resume=os.path.join(cfg.output, "last.pth"))
            train(cfg)
            ckpt = read_training_checkpoint(os.path.join(cfg.output, "last.pth"), mmap=True)
        scores.append(run_metrics(ckpt))
    say(f"timing the {len(placements)} networks in turn ({', '.join(column_label(c) for c in columns)}; "
        f"{repeat} rounds)")
    costs = measure_costs(base.model, [{**_settings(base), **p.model_settings()} for p in placements],
                          tuple(base.input_size), model_kwargs=base.model_kwargs, batches=batches, threads=threads,
                          cuda=cuda, amp=base.amp, warmup=warmup, repeat=repeat)
    rows = [{"placement": p.name, "kind": p.kind or "none", "stages": ",".join(map(str, p.stages)),
             "blocks": p.blocks if p.kind else "", "folder": p.folder, "reused": state == "finished", **score,
             **cost} for (p, _, state, _), score, cost in zip(runs, scores, costs, strict=True)]
    _finish(rows, columns)
    write_study(rows, columns, output, base, threads)
    for number, row in enumerate(rows, 1):
        latency = ", ".join(f"{column_label(c)} {row[c]:.1f} ms ({_signed(row[f'{c[:-3]}_overhead_pct'])})"
                            for c in columns)
        say(f"[{number}/{len(rows)}] {row['placement']}: mAP {row['mAP']:.4f}, rank-1 {row['rank1']:.4f}, "
            f"mINP {row['mINP']:.4f}; {latency}; {row['params'] / 1e6:.2f} M params, {row['macs'] / 1e9:.3f} GMACs")
    return rows


def _settings(cfg: ReIDConfig) -> dict:
    return {k: v for k, v in cfg.model_settings().items() if k not in ("attn", "attn_at", "attn_blocks")}


def _finish(rows: list[dict], columns: Sequence[str]) -> None:
    """Overheads over the plain row (the first) and Pareto membership (mAP against the first latency column)."""
    plain = rows[0]
    for row in rows:
        for c in columns:
            row[f"{c[:-3]}_overhead_pct"] = (row[c] / plain[c] - 1) * 100
    for row, on in zip(rows, pareto_front([(r[columns[0]], r["mAP"]) for r in rows]), strict=True):
        row["pareto"] = on


def _signed(pct: float) -> str:
    return f"{pct:+.1f}%"


# --- the study's files --------------------------------------------------------------------------------------------

def column_label(column: str) -> str:
    """``cpu_b32_ms`` -> ``CPU b32``."""
    where, batch, _ = column.split("_")
    return f"{where.upper()} {batch}"


def table_columns(columns: Sequence[str]) -> list[str]:
    """The CSV's columns."""
    return ["placement", "kind", "stages", "blocks", "mAP", "rank1", "mINP", *columns,
            *(f"{c[:-3]}_overhead_pct" for c in columns), "params_m", "gmacs", "pareto", "epochs", "best_mAP",
            "best_epoch", "folder", "reused"]


def _cell(row: dict, column: str):
    if column == "params_m":
        return round(row["params"] / 1e6, 4)
    if column == "gmacs":
        return round(row["macs"] / 1e9, 4)
    value = row[column]
    return round(value, 4) if isinstance(value, float) else value


def markdown(rows: Sequence[dict], columns: Sequence[str], base: ReIDConfig, threads: int | None) -> str:
    """placements.md: what was run, then the table (the Pareto front's members marked)."""
    h, w = base.input_size
    lines = [
        f"# Re-id attention placements — {datetime.date.today().isoformat()}", "",
        f"{base.model} on {base.data or 'the built-in synthetic set'}, {base.epochs} epochs at {h}x{w} "
        f"(batch {base.batch_size}, lr {base.lr:g}, seed {base.seed}); the scores are the last epoch's. Latency: eval "
        f"forward at {h}x{w} without the identity classifier, untrained weights, median ms per batch "
        f"({platform.processor() or platform.machine()}, {threads or torch.get_num_threads()} CPU thread(s), "
        f"float32{'; CUDA ' + torch.cuda.get_device_name() if any(c.startswith('cuda') for c in columns) else ''}), "
        f"and its overhead over the plain backbone. Pareto: on the front of mAP against {column_label(columns[0])} "
        f"latency. torch {torch.__version__}.", "",
        "| placement | kind | stages | blocks | mAP | rank-1 | mINP | "
        + " | ".join(f"{column_label(c)} ms | {column_label(c)} overhead" for c in columns)
        + " | params (M) | GMACs | Pareto |",
        "|---|---|---|---|" + "---:|" * (3 + 2 * len(columns) + 2) + "---|",
    ]
    for row in rows:
        latency = " | ".join(f"{row[c]:.1f} | {_signed(row[f'{c[:-3]}_overhead_pct'])}" for c in columns)
        lines.append(f"| `{row['placement']}` | {row['kind']} | {row['stages'] or '–'} | {row['blocks'] or '–'} | "
                     f"{row['mAP']:.4f} | {row['rank1']:.4f} | {row['mINP']:.4f} | {latency} | "
                     f"{row['params'] / 1e6:.2f} | {row['macs'] / 1e9:.3f} | {'★' if row['pareto'] else ''} |")
    return "\n".join(lines) + "\n"


def plot_pareto(rows: Sequence[dict], column: str, path: str) -> None:
    """pareto.png: mAP against ``column``'s latency, every placement labelled, the front drawn and its members
    starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    front = sorted((r[column], r["mAP"]) for r in rows if r["pareto"])
    if front:  # the staircase of the best mAP within each latency, out to the slowest placement
        front.append((max(r[column] for r in rows), front[-1][1]))
        ax.step(*zip(*front, strict=True), where="post", color="tab:red", alpha=0.5, label="Pareto front")
    for row in rows:
        star = row["pareto"]
        ax.scatter(row[column], row["mAP"], marker="*" if star else "o", s=140 if star else 40,
                   color="tab:red" if star else "tab:blue", zorder=3)
        ax.annotate(row["placement"], (row[column], row["mAP"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    ax.set(xlabel=f"{column_label(column)} latency (ms per batch)", ylabel="mAP",
           title="Re-id attention placements: mAP against latency")
    ax.margins(x=0.15, y=0.1)  # room for the labels
    ax.grid(alpha=0.3)
    if front:
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def write_study(rows: Sequence[dict], columns: Sequence[str], output: str, base: ReIDConfig,
                threads: int | None) -> None:
    """Write placements.csv, .md, .json and pareto.png to ``output``, each atomically."""
    header = table_columns(columns)
    atomic_write_csv(os.path.join(output, "placements.csv"), header, [[_cell(r, c) for c in header] for r in rows])

    def write_md(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(markdown(rows, columns, base, threads))

    atomic_write(os.path.join(output, "placements.md"), write_md)
    recipe = {k: v for k, v in dataclasses.asdict(base).items() if k not in (*RUN_ONLY, "attn", "attn_at",
                                                                             "attn_blocks")}
    atomic_write_json({"recipe": recipe, "latency_columns": list(columns), "pareto_latency": columns[0],
                       "cpu_threads": threads or torch.get_num_threads(), "torch": torch.__version__,
                       "placements": list(rows)}, os.path.join(output, "placements.json"))
    plot_pareto(rows, columns[0], os.path.join(output, "pareto.png"))
