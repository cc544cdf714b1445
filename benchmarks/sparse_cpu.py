#!/usr/bin/env python
"""Sparsifiner against the dense ViT it sparsifies, on this machine's CPU: inference latency at batch 1 and 8 (one
thread, float32, eval mode, the two models timed in turn in one process, medians of ``--rounds``), and where the
sparse model's time goes (torch.profiler's operators at batch 1, grouped).

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
# profiler operator -> the part of the sparse model it is (anything else: "other")
PARTS = {
    "aten::addmm": "linear layers (qkv, projections, MLP)", "aten::mm": "linear layers (qkv, projections, MLP)",
    "aten::topk": "top-k (predictor coefficients, attended keys)",
    "aten::bmm": "attention and predictor products", "aten::_softmax": "softmax",
    "aten::masked_fill_": "masking", "aten::scatter_": "masking", "aten::nan_to_num": "masking",
    "aten::where": "masking", "aten::gelu": "GELU", "aten::native_layer_norm": "LayerNorm",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "dense attention (class query)",
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


def breakdown(model: torch.nn.Module) -> list[tuple[str, float]]:
    """(part, milliseconds of self CPU time) of one batch-1 forward, largest first."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
    parts: dict[str, float] = {}
    for event in prof.key_averages():
        part = PARTS.get(event.key, "other")
        parts[part] = parts.get(part, 0.0) + event.self_cpu_time_total / 1e3
    return sorted(parts.items(), key=lambda item: -item[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "SPARSE_CPU.md"))
    args = p.parse_args()
    import timm

    import visattn  # noqa: F401  (registers the models)
    from visattn.engine.checkpoint import atomic_write

    torch.set_num_threads(1)
    lines = [
        "# Sparsifiner against dense, CPU", "",
        f"Written by `benchmarks/sparse_cpu.py` on {datetime.date.today().isoformat()}: "
        f"{platform.processor() or 'CPU'}, 1 thread, torch {torch.__version__}, timm {timm.__version__}. "
        f"Inference of 224x224 images in eval mode, float32, random weights, the two models timed in turn in one "
        f"process, medians of {args.rounds} rounds.", "",
        "| sparse model | dense model | batch | sparse (ms) | dense (ms) | sparse / dense |",
        "|---|---|---|---|---|---|",
    ]
    profiles = []
    for sparse, dense in PAIRS:
        models = {name: timm.create_model(name).eval() for name in (sparse, dense)}
        for batch in BATCHES:
            ms = interleaved_ms(models, batch, args.rounds)
            ratio = ms[sparse] / ms[dense]
            lines.append(f"| `{sparse}` | `{dense}` | {batch} | {ms[sparse]:.1f} | {ms[dense]:.1f} | {ratio:.2f}x |")
            print(f"{sparse} vs {dense}, batch {batch}: {ms[sparse]:.1f} vs {ms[dense]:.1f} ms ({ratio:.2f}x)",
                  flush=True)
        profiles.append((sparse, breakdown(models[sparse])))
    for sparse, parts in profiles:
        total = sum(ms for _, ms in parts)
        lines += ["", f"Where `{sparse}`'s time goes at batch 1 (torch.profiler, self CPU time, {total:.1f} ms in "
                      "all):", "", "| part | ms | share |", "|---|---|---|"]
        lines += [f"| {part} | {ms:.1f} | {ms / total:.0%} |" for part, ms in parts]

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    atomic_write(args.output, write)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
