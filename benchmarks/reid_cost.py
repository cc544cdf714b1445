#!/usr/bin/env python
"""Re-id costs on this machine's CPU: the inference cost of each attention configuration of the ResNet-50 BoT
network against the plain baseline (parameters, MACs at 256x128, latency at batch 1), and the time of the
retrieval evaluation on a Market-1501-sized problem (3,368 queries x 15,913 gallery).

    .venv/bin/python -m benchmarks.reid_cost [--output benchmarks/REID.md]

benchmarks/gpu_suite.py times the same configurations on a GPU (``REID_CONFIGS``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (label, ReIDModel arguments beyond the backbone): where the cheap attention goes in the ResNet-50 BoT network
REID_CONFIGS = [
    ("BoT ResNet-50 (plain)", {}),
    ("+ PSA_s after the last block of stages 2, 3", {"attn": "psa_s", "attn_at": (2, 3), "attn_blocks": "last"}),
    ("+ PSA_p after the last block of stages 2, 3", {"attn": "psa_p", "attn_at": (2, 3), "attn_blocks": "last"}),
    ("+ PSA_s after every block of stages 2, 3", {"attn": "psa_s", "attn_at": (2, 3)}),
    ("+ PSA_s after every block of stages 1-4", {"attn": "psa_s", "attn_at": (1, 2, 3, 4)}),
]
INPUT = (256, 128)


def build(config: dict, device="cpu"):
    from visattn.tasks.reid.model import ReIDModel

    with torch.device(device):
        return ReIDModel("resnet50", num_classes=751, **config).eval()


def macs(config: dict) -> float:
    """GMACs of one 256x128 image, counted on the meta device through the ops' FLOP formulas."""
    os.environ["VISATTN_BACKEND"] = "triton"
    try:
        model = build(config, "meta")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(1, 3, *INPUT, device="meta"))
    finally:
        os.environ.pop("VISATTN_BACKEND")
    return counter.get_total_flops() / 2e9


def latency_ms(model, batch: int = 1, repeat: int = 10) -> float:
    x = torch.rand(batch, 3, *INPUT)
    with torch.no_grad():
        for _ in range(2):
            model(x)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


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
    args = p.parse_args()
    import triton

    import visattn  # noqa: F401  (registers the models)

    rows, base = [], None
    for label, config in REID_CONFIGS:
        model = build(config)
        params = sum(t.numel() for t in model.parameters() if t is not model.classifier.weight) / 1e6
        row = {"label": label, "params": params, "macs": macs(config), "ms": latency_ms(model)}
        base = base or row
        rows.append(row)
        print(f"{label}: {params:.2f} M, {row['macs']:.3f} GMACs, {row['ms']:.1f} ms", flush=True)
    seconds, m_ap = evaluation_seconds()
    print(f"evaluation, 3368 x 15913: {seconds:.2f} s (mAP of random distances {m_ap:.4f})", flush=True)
    lines = [
        "# Re-id costs (CPU)", "",
        f"Written by `benchmarks/reid_cost.py` on {datetime.date.today().isoformat()}: "
        f"{platform.processor() or 'CPU'}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, Triton {triton.__version__}. "
        "Inference of one 256x128 image in eval mode (median of 10), parameters without the 751-way classifier, "
        "MACs counted through the ops' FLOP formulas.", "",
        "| configuration | params (M) | GMACs | latency, batch 1 (ms) | vs plain |", "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['label']} | {row['params']:.2f} | {row['macs']:.3f} | {row['ms']:.1f} | "
                     f"{row['ms'] / base['ms']:.2f}x |")
    lines += ["", f"Retrieval evaluation (`visattn.tasks.reid.evaluate_ranking`, same-camera removal, mAP, CMC, mINP) "
                  f"on a random 3,368 x 15,913 distance matrix: **{seconds:.2f} s**.", ""]
    from visattn.engine.checkpoint import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("\n".join(lines))

    atomic_write(args.output, write)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
