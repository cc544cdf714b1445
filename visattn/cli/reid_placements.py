"""Where does cheap attention pay off in a re-id ResNet? Train and evaluate a list of attention placements with one
re-id recipe, time each network, and write a table and a speed-against-mAP plot with the Pareto front.

    visattn-reid-placements --placements plain psa_s@2,3:last --output runs/placements    # demo recipe, synthetic set
    visattn-reid-placements --data /data/Market-1501 --pretrained --attn psa_s psa_p --attn-at 3 2,3 1,2,3,4 \\
        --attn-blocks last all --output runs/market_placements

A placement is `plain` (the backbone without attention, always trained: the overheads are over it) or
KIND@STAGES[:BLOCKS]: a registered attention kind after BLOCKS (all, last or indices such as 0,2; default last) of
each ResNet stage (1-4) in STAGES, e.g. psa_s@2,3:last. Either list them with --placements, or give --attn kinds x
--attn-at stage sets x --attn-blocks choices (defaults: every registered kind, 2,3, last).

Every placement trains as `visattn-train --task reid` would, with the recipe options below (the demo recipe on the
built-in synthetic set without --data, the full BoT recipe with it), in OUTPUT/<placement>/; a finished run of the
same recipe there is reused and an unfinished one resumed, so an interrupted study continues where it stopped. Then
the networks' inference costs at the recipe's --input-size, timed in turn within each round: parameters (without the
identity classifier), MACs, and the median latency per --latency-batches size on --threads CPU threads (float32,
eager) and, when a GPU is present, on the GPU. Writes OUTPUT/placements.csv, placements.md, placements.json and
pareto.png (mAP against the CPU latency at the smallest batch; the front's members are starred).
"""

from __future__ import annotations

import argparse
import sys

from ..engine.options import non_negative_int, numbers, positive_int
from . import ToolParser, run

DEFAULT_OUTPUT = "runs/placements"
# shared training options the study sets itself (or that re-id does not read)
NOT_RECIPE = ("--resume", "--img-size")
# the re-id options the study takes as lists of its own
STUDY_OWN = ("--attn", "--attn-at", "--attn-blocks")


class _Recipe:
    """What the training options are added to: the study's own flags are left out, the rest default to None (not
    given) and their dests are remembered as the recipe's."""

    def __init__(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup, leave_out: tuple[str, ...],
                 dests: list[str]):
        self.parser, self.leave_out, self.dests = parser, leave_out, dests

    def add_argument(self, *names: str, **kwargs) -> None:
        flag = next(n for n in names if n.startswith("--"))
        if flag in self.leave_out:
            return
        if flag == "--output":
            kwargs["help"] = (f"the study's folder: a run folder per placement and the study's files (default: "
                              f"{DEFAULT_OUTPUT})")
        if flag == "--overwrite":
            kwargs["help"] = "train every placement again instead of reusing or resuming the runs OUTPUT holds"
        kwargs.setdefault("default", None)
        action = self.parser.add_argument(*names, **kwargs)
        self.dests.append(action.dest)


def parse_args(argv: list[str]):
    from ..tasks.reid.model import REID_ATTENTION
    from ..tasks.reid.task import ReIDTask
    from .train import add_shared_arguments

    p = ToolParser(description=__doc__)
    study = p.add_argument_group("placements")
    study.add_argument("--placements", nargs="+", metavar="SPEC",
                       help="the placements: plain or KIND@STAGES[:BLOCKS] such as psa_s@2,3:last")
    study.add_argument("--attn", nargs="+", metavar="KIND",
                       help=f"attention kinds of the re-id registry: {', '.join(REID_ATTENTION)} (default: all)")
    study.add_argument("--attn-at", nargs="+", metavar="STAGES",
                       type=numbers(None, int, "ResNet stages such as 2,3", low=1),
                       help="stage sets, each like 2,3 (default: 2,3)")
    study.add_argument("--attn-blocks", nargs="+", metavar="BLOCKS",
                       help="blocks of each stage: all, last or indices such as 0,2; several choices study each "
                            "(default: last)")
    study.add_argument("--latency-batches", type=numbers(None, int, "batch sizes such as 1,32", low=1),
                       default=(1, 32), metavar="B,B", help="batch sizes to time (default: 1,32)")
    study.add_argument("--threads", type=non_negative_int, default=1,
                       help="CPU threads of the latency measurement (default 1; 0: torch's setting)")
    study.add_argument("--warmup", type=non_negative_int, default=2, help="untimed runs before each timing (default 2)")
    study.add_argument("--repeat", type=positive_int, default=10, help="timed runs, the median kept (default 10)")
    dests: list[str] = []
    add_shared_arguments(_Recipe(p.add_argument_group("recipe"), NOT_RECIPE, dests), ReIDTask)
    ReIDTask.add_train_arguments(_Recipe(p.add_argument_group("re-id recipe"), STUDY_OWN, dests))
    args = p.parse_args(argv)
    return args, {dest: getattr(args, dest) for dest in dests}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, given = parse_args(argv)
    from ..engine.fit import assemble_config
    from ..tasks.reid.placements import run_study, study_placements
    from ..tasks.reid.task import ReIDTask

    placements = study_placements(args.placements, args.attn, args.attn_at, args.attn_blocks)
    output = given.pop("output", None) or DEFAULT_OUTPUT
    overwrite = bool(given.pop("overwrite", None))
    demo = bool(given.pop("demo", None))
    base = assemble_config(ReIDTask, {**given, "output": output}, demo)
    print(f"{len(placements)} placement{'s' if len(placements) > 1 else ''}: "
          f"{', '.join(p.name for p in placements)}", flush=True)
    rows = run_study(base, placements, output, batches=sorted(set(args.latency_batches)),
                     threads=args.threads or None, warmup=args.warmup, repeat=args.repeat, overwrite=overwrite)
    front = [r["placement"] for r in rows if r["pareto"]]
    print(f"Pareto front (mAP against CPU latency): {', '.join(front)}")
    print(f"wrote placements.csv, placements.md, placements.json and pareto.png to {output}")
    return 0


def console() -> None:
    """The `visattn-reid-placements` command."""
    run(main)
