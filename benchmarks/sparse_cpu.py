#!/usr/bin/env python
"""Sparsifiner against the dense ViT it sparsifies, on this machine's CPU: inference latency at batch 1 and 8 (one
thread, float32, eval mode, the two models timed in turn in one process, medians of ``--rounds``), and where the
sparse model's time goes beside the dense one's (torch.profiler's operators at batch 1 and 8, grouped). The machine's
load averages before and after are written with the numbers: other work on the machine slows both models, the
interleaving keeps their ratio fair.

    .venv/bin/python -m benchmarks.sparse_cpu [--rounds 15] [--output benchmarks/SPARSE_CPU.md]

The target (issue: "make the sparse path pay") is the sparse model within 5% of the dense one on CPU; the GPU
targets are in benchmarks/gpu_suite.py.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRS = [("sparsifiner_deit_small", "deit_small_patch16_224"), ("sparsifiner_lvvit_small", "lvvit_small")]
BATCHES = (1, 8)
PROFILED_FORWARDS = 3
# profiler operator -> the part of a model it is (anything else: "other")
LINEAR, PREDICTOR, TOPK, MASK = ("linear layers (qkv, projections, MLP, head)",
                                 "predictor products and softmax (q', k', coefficients, approximation)",
                                 "top-k (predictor coefficients, attended keys)", "masks (coefficients, -inf mask)")
PARTS = {
    "aten::addmm": LINEAR, "aten::mm": PREDICTOR, "aten::bmm": PREDICTOR, "aten::_softmax": PREDICTOR,
    "aten::topk": TOPK, "aten::aminmax": TOPK,
    "aten::scatter_": MASK, "aten::scatter": MASK, "aten::gather": MASK, "aten::fill_": MASK, "aten::abs": MASK,
    "aten::where": MASK,
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention (SDPA; sparse: under the mask)",
    "aten::copy_": "copies (strided q/k/v, head merge)",
    "aten::gelu": "GELU", "aten::native_layer_norm": "LayerNorm",
    "aten::mkldnn_convolution": "stem convolutions", "aten::native_batch_norm": "stem convolutions",
}


def interleaved_ms(models: dict[str, torch.nn.Module], batch: int, rounds: int) -> dict[str, float]:
    """Median milliseconds per forward of each model, the models run in turn each round."""
    x = torch.rand(batch, 3, 224, 224)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model(x)
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def breakdown(model: torch.nn.Module, batch: int) -> dict[str, float]:
    """Part -> milliseconds of self CPU time per forward at ``batch`` (torch.profiler, mean of
    :data:`PROFILED_FORWARDS` forwards)."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.rand(batch, 3, 224, 224)
    with torch.no_grad():
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(PROFILED_FORWARDS):
                model(x)
    parts: dict[str, float] = {}
    for event in prof.key_averages():
        part = PARTS.get(event.key, "other")
        parts[part] = parts.get(part, 0.0) + event.self_cpu_time_total / 1e3 / PROFILED_FORWARDS
    return parts


def breakdown_table(sparse: str, dense: str, batch: int, parts: dict[str, dict[str, float]]) -> list[str]:
    """Markdown lines: each part's milliseconds in the sparse and the dense model, largest difference first."""
    names = sorted(set(parts[sparse]) | set(parts[dense]),
                   key=lambda part: -(parts[sparse].get(part, 0.0) - parts[dense].get(part, 0.0)))
    total = {name: sum(parts[name].values()) for name in (sparse, dense)}
    lines = ["", f"Where the time goes at batch {batch} (torch.profiler, self CPU time per forward, mean of "
                 f"{PROFILED_FORWARDS}; the profiler's own overhead included):", "",
             f"| part | `{sparse}` (ms) | `{dense}` (ms) | difference (ms) |", "|---|---|---|---|"]
    for part in names:
        a, b = parts[sparse].get(part, 0.0), parts[dense].get(part, 0.0)
        lines.append(f"| {part} | {a:.1f} | {b:.1f} | {a - b:+.1f} |")
    lines.append(f"| all | {total[sparse]:.1f} | {total[dense]:.1f} | {total[sparse] - total[dense]:+.1f} |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "SPARSE_CPU.md"))
    args = p.parse_args()
    import timm

    import visattn  # noqa: F401  (registers the models)
    from visattn.engine.checkpoint import atomic_write

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    lines = [
        "# Sparsifiner against dense, CPU", "",
        f"Written by `benchmarks/sparse_cpu.py` on {datetime.date.today().isoformat()}: "
        f"{platform.processor() or 'CPU'}, 1 thread, torch {torch.__version__}, timm {timm.__version__}. "
        f"Inference of 224x224 images in eval mode, float32, random weights, the two models timed in turn in one "
        f"process, medians of {args.rounds} rounds.", "",
        "| sparse model | dense model | batch | sparse (ms) | dense (ms) | sparse / dense |",
        "|---|---|---|---|---|---|",
    ]
    tables = []
    for sparse, dense in PAIRS:
        models = {name: timm.create_model(name).eval() for name in (sparse, dense)}
        for batch in BATCHES:
            ms = interleaved_ms(models, batch, args.rounds)
            ratio = ms[sparse] / ms[dense]
            lines.append(f"| `{sparse}` | `{dense}` | {batch} | {ms[sparse]:.1f} | {ms[dense]:.1f} | {ratio:.2f}x |")
            print(f"{sparse} vs {dense}, batch {batch}: {ms[sparse]:.1f} vs {ms[dense]:.1f} ms ({ratio:.2f}x)",
                  flush=True)
        for batch in BATCHES:
            parts = {name: breakdown(model, batch) for name, model in models.items()}
            tables += breakdown_table(sparse, dense, batch, parts)
    lines += tables
    load = " / ".join(f"{a:.2f}, {b:.2f}, {c:.2f}" for a, b, c in (load_before, os.getloadavg()))
    lines.insert(4, f"Load averages (1, 5, 15 min) of the machine's {os.cpu_count()} cores before / after: {load}.")
    lines.insert(5, "")

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    atomic_write(args.output, write)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
