"""Benchmark the zoo: parameters, MACs, CPU latency and, on a GPU, inference and training speed and memory.

    python tools/benchmark.py                                      # every model: counts, CPU latency at batch 1
    python tools/benchmark.py --models 'biformer_*' herseg --no-latency
    python tools/benchmark.py --device cuda --compile              # + img/s and training memory per path
    python tools/benchmark.py --update-readme                      # rewrite README.md's model tables

Parameters and MACs (FLOPs / 2) are counted on the meta device through the fused ops' FLOP formulas at each
model's pretrained input size. CPU latency: eager, reference path, float32, batch 1, the median of --repeat runs
after --warmup. With --device cuda, per --paths (reference: VISATTN_BACKEND=torch, fused: VISATTN_BACKEND=triton),
eagerly and with --compile also under torch.compile, bf16 autocast: inference img/s, training img/s (AdamW step;
cross-entropy for classifiers, BCE for segmentation networks at their native size) and training peak memory.
Writes benchmark.csv, benchmark.md and speed_vs_macs.png to --output, rewritten after every model; a model that
fails is a row with its error, and the exit code is then 1.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys

from ..engine.checkpoint import check_output_folder
from ..engine.options import non_negative_int, positive_int
from ..errors import UserError, first_line
from . import ToolParser, run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(ROOT, "README.md")
CUDA_ONLY = ("--paths", "--compile", "--batch-size", "--train-batch-size")


def parse_args(argv):
    p = ToolParser(description=__doc__)
    p.add_argument("--models", nargs="+", metavar="PATTERN",
                   help="fnmatch patterns over the zoo, e.g. 'biformer_*' herseg; a plain name may be any timm "
                        "model (default: the whole zoo)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda adds inference and training img/s and training peak memory (default: cpu)")
    p.add_argument("--paths", nargs="+", choices=("reference", "fused"),
                   help="which paths a CUDA run times (default: both)")
    p.add_argument("--compile", action="store_true", help="on CUDA also time each path under torch.compile")
    p.add_argument("--no-latency", action="store_true", help="skip the CPU latency")
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="CUDA inference batch (default: 128 for classifiers, 4 for segmentation networks)")
    p.add_argument("--train-batch-size", type=positive_int, metavar="N",
                   help="CUDA training batch (default: 64 for classifiers, 4 for segmentation networks)")
    p.add_argument("--warmup", type=non_negative_int, default=2, metavar="N",
                   help="untimed runs before each timing (default: 2)")
    p.add_argument("--repeat", type=positive_int, default=5, metavar="N",
                   help="timed runs; the median is kept (default: 5)")
    p.add_argument("--output", default="runs/benchmark", metavar="DIR",
                   help="folder for the results (default: runs/benchmark)")
    p.add_argument("--update-readme", nargs="?", const=README, metavar="README",
                   help="only count every model of the README's tables and rewrite them between their markers "
                        "(default file: the repository's README.md)")
    args = p.parse_args(argv)
    given = [flag for flag in CUDA_ONLY if getattr(args, flag[2:].replace("-", "_")) not in (None, False)]
    if args.update_readme is not None:
        extra = [flag for flag, on in (("--models", args.models), ("--device cuda", args.device == "cuda")) if on]
        if extra or given:
            raise UserError(f"--update-readme counts every model of the README's tables; drop {(extra + given)[0]}")
    elif given and args.device != "cuda":
        raise UserError(f"{given[0]} applies to CUDA timing; add --device cuda")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    check_output_folder(args.output, "the results")
    return args


def update_readme(path: str) -> int:
    from tqdm import tqdm

    from .. import benchmark as bench

    bench.read_readme(path)  # fails before the counting; the tables are written into the file as it is then
    published = bench.read_published(bench.PUBLISHED)
    names = bench.readme_models(published)
    counts = {}
    for name in tqdm(names, desc="counting", leave=False, disable=not sys.stderr.isatty()):
        try:
            counts[name] = bench.count_model(name)
        except Exception as err:  # the tables cannot be written without every row
            raise UserError(f"cannot count {name}: {first_line(err, with_type=True)}") from None
    changed = bench.update_readme(path, bench.readme_tables(counts, published))
    print(f"{path}: {'rewrote the tables' if changed else 'the tables were already up to date'} ({len(names)} models)")
    return 0


def settings(args, names: list[str], argv: list[str]) -> str:
    """The Markdown report's first lines: when, where, what and how (``argv``: the command line)."""
    import timm
    import torch

    cpu = f"CPU {platform.processor() or platform.machine()}"
    where = torch.cuda.get_device_name() if args.device == "cuda" else cpu
    lines = [f"# visattn benchmark — {datetime.date.today().isoformat()}", "",
             f"{where}, {torch.get_num_threads()} CPU threads; torch {torch.__version__}, timm {timm.__version__}. "
             f"Command: `{shlex.join(['python', 'tools/benchmark.py', *argv])}`", "",
             f"{len(names)} models. Params and MACs (FLOPs / 2) counted on the meta device at each model's input size."]
    if not args.no_latency:
        lines.append(f"CPU ms: eager float32 forward at batch 1, reference path, median of {args.repeat} run(s) after "
                     f"{args.warmup} warm-up run(s).")
    if args.device == "cuda":
        lines.append("CUDA: bf16 autocast; inference and training (AdamW step; cross-entropy, BCE for segmentation "
                     "networks) img/s, training peak GB; LaMamba's reference path (a token-by-token scan) is not "
                     "timed.")
    return "\n".join(lines) + "\n\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.update_readme is not None:
        return update_readme(args.update_readme)
    from tqdm import tqdm

    from .. import benchmark as bench

    zoo = bench.zoo_models(bench.read_published(bench.PUBLISHED))
    names = bench.select_models(args.models, zoo) if args.models else zoo
    runs = bench.cuda_runs(args.paths or list(bench.PATHS), args.compile) if args.device == "cuda" else []
    columns = bench.result_columns(not args.no_latency, runs)
    preamble = settings(args, names, argv)
    csv_path, md_path, png_path = (os.path.join(args.output, f) for f in
                                   ("benchmark.csv", "benchmark.md", "speed_vs_macs.png"))
    rows = []
    bar = tqdm(names, desc="benchmark", disable=not sys.stderr.isatty())
    for name in bar:
        bar.set_postfix_str(name)
        row = bench.benchmark_row(name, latency=not args.no_latency, runs=runs, device=args.device,
                                  infer_batch=args.batch_size, train_batch=args.train_batch_size,
                                  warmup=args.warmup, repeat=args.repeat)
        rows.append(row)
        bench.write_text(csv_path, bench.csv_text(rows, columns))
        bench.write_text(md_path, preamble + bench.markdown_table(rows, columns))
        shown = [f"{bench.column_label(c)} {bench.markdown_cell(c, row)}" for c in columns
                 if c not in ("model", "kind", "input_size", "trainable_params", "error") and row.get(c) is not None]
        bar.write(f"{name}: {', '.join(shown)}" + (f"; FAILED {row['error']}" if "error" in row else ""))
    plotted = bench.plot_speed_vs_macs(rows, columns, png_path, f"visattn zoo, {args.device}")
    if not plotted and os.path.exists(png_path):
        os.remove(png_path)  # an earlier run's plot would not match this table
    failed = [row["model"] for row in rows if "error" in row]
    print(f"wrote {csv_path}, {md_path}{f', {png_path}' if plotted else ' (no speed measured: no plot)'}")
    if failed:
        print(f"{len(failed)} of {len(rows)} models failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def console() -> None:
    """The `visattn-benchmark` command."""
    run(main)
