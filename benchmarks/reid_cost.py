#!/usr/bin/env python
"""Re-id costs on this machine's CPU: the inference overhead of each attention kind of the re-id registry
(``REID_ATTENTION``) at the placements below in the ResNet-50 BoT network against the plain baseline (parameters,
MACs at 256x128, latency at batch 1 on one thread, untrained weights), and the time of the retrieval evaluation on a
Market-1501-sized problem (3,368 queries x 15,913 gallery).

    .venv/bin/python -m benchmarks.reid_cost [--output benchmarks/REID.md] [--threads 1]

The measurement is :func:`visattn.tasks.reid.placements.measure_costs`, the one ``visattn-reid-placements`` makes.
benchmarks/gpu_suite.py times the same configurations on a GPU (``REID_CONFIGS``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INPUT = (256, 128)
# Where the attention goes, (stages, blocks). The paper (Eisenbach et al., ICRA 2023, arXiv 2302.14574) derives its
# placement rules by search, but only its abstract can be read here, so these are visattn's: a little attention
# (after the last block of stages 2 and 3), more (every block of stages 2 and 3) and everywhere (every block).
PLACEMENTS = (((2, 3), "last"), ((2, 3), "all"), ((1, 2, 3, 4), "all"))


def _where(stages: tuple[int, ...], blocks: str) -> str:
    at = "stages 1-4" if stages == (1, 2, 3, 4) else f"stages {', '.join(map(str, stages))}"
    return f"after {'the last block' if blocks == 'last' else 'every block'} of {at}"


def reid_configs() -> list[tuple[str, dict]]:
    """(label, ReIDModel arguments beyond the backbone): the plain network, then every registered kind at every
    placement of PLACEMENTS."""
    from visattn.tasks.reid.model import REID_ATTENTION

    return [("BoT ResNet-50 (plain)", {}),
            *((f"+ {kind} {_where(stages, blocks)}", {"attn": kind, "attn_at": stages, "attn_blocks": blocks})
              for kind in REID_ATTENTION for stages, blocks in PLACEMENTS)]


REID_CONFIGS = reid_configs()


def build(config: dict, device="cpu"):
    """The network with its 751-way Market-1501 classifier (gpu_suite trains it)."""
    from visattn.tasks.reid.model import ReIDModel

    with torch.device(device):
        return ReIDModel("resnet50", num_classes=751, **config).eval()


def evaluation_seconds() -> tuple[float, float]:
    """Seconds of evaluate_ranking on a random Market-sized problem, and its mAP (a sanity value)."""
    from visattn.tasks.reid import evaluate_ranking

    g = torch.Generator().manual_seed(0)
    q, n = 3368, 15913
    dist = torch.rand(q, n, generator=g)
    q_pids, g_pids = torch.randint(0, 750, (q,), generator=g), torch.randint(0, 751, (n,), generator=g)
    q_cams, g_cams = torch.randint(0, 6, (q,), generator=g), torch.randint(0, 6, (n,), generator=g)
    start = time.perf_counter()
    result = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams)
    return time.perf_counter() - start, result["mAP"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "REID.md"))
    p.add_argument("--threads", type=int, default=1, help="CPU threads of the latency (default 1)")
    p.add_argument("--repeat", type=int, default=15,
                   help="rounds, each timing every configuration once in turn; the median kept (default 15)")
    args = p.parse_args()
    import triton

    from visattn.benchmark import write_text
    from visattn.tasks.reid.placements import measure_costs

    load = os.getloadavg()[0]  # other work on a shared machine shows in the times
    costs = measure_costs("resnet50", [config for _, config in REID_CONFIGS], INPUT, threads=args.threads,
                          repeat=args.repeat)
    plain_ms = costs[0]["cpu_b1_ms"]
    rows = [{"label": label, "params": cost["params"] / 1e6, "macs": cost["macs"] / 1e9, "ms": cost["cpu_b1_ms"],
             "overhead": cost["cpu_b1_ms"] / plain_ms - 1}
            for (label, _), cost in zip(REID_CONFIGS, costs, strict=True)]
    for row in rows:
        print(f"{row['label']}: {row['params']:.2f} M, {row['macs']:.3f} GMACs, {row['ms']:.1f} ms", flush=True)
    seconds, m_ap = evaluation_seconds()
    print(f"evaluation, 3368 x 15913: {seconds:.2f} s (mAP of random distances {m_ap:.4f})", flush=True)
    lines = [
        "# Re-id costs (CPU)", "",
        f"Written by `benchmarks/reid_cost.py` on {datetime.date.today().isoformat()}: "
        f"{platform.processor() or 'CPU'} ({os.cpu_count()} cores, load average {load:.1f} at the start), "
        f"{args.threads} thread(s), torch {torch.__version__}, "
        f"Triton {triton.__version__}. Inference of one 256x128 image in eval mode, wall clock: the median of "
        f"{args.repeat} rounds, each timing every configuration once in turn, so that the drift of a shared "
        "machine falls on all of them alike; the overhead is the ratio to the plain network's median. "
        "Untrained weights, parameters without the identity classifier, MACs counted through the ops' FLOP formulas "
        "(`visattn.tasks.reid.placements.measure_costs`, as `visattn-reid-placements` measures). Every attention "
        "kind of the re-id registry at the same placements; the paper's own placements (arXiv 2302.14574, found by "
        "architecture search) are not readable here, so these are visattn's.", "",
        "| configuration | params (M) | GMACs | latency, batch 1 (ms) | overhead vs plain |", "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['label']} | {row['params']:.2f} | {row['macs']:.3f} | {row['ms']:.1f} | "
                     f"{round(row['overhead'] * 100):+d}% |")
    lines += ["", "Retrieval evaluation (`visattn.tasks.reid.evaluate_ranking`, same-camera removal, mAP, CMC, mINP) "
                  f"on a random 3,368 x 15,913 distance matrix, {torch.get_num_threads()} threads: "
                  f"**{seconds:.2f} s**.", ""]

    write_text(args.output, "\n".join(lines) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
