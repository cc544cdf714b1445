#!/usr/bin/env python
"""Sparsifiner against the dense ViT it sparsifies, on this machine's CPU: inference latency at batch 1 and 8 (one
thread, float32, eval mode, the two models timed in turn in one process, medians of ``--rounds``), and where the
sparse model's time goes beside the dense one's (torch.profiler at batch 1 and 8, the operators grouped by the module
that runs them, the two models profiled in turn, medians), and the floor under the sparse model's extra time: its
exact key selections alone, each of the CPU's exact ways (NumPy's SIMD sort, NumPy's partition, torch.topk). The
machine's load averages before and after are written with the numbers: other work on the machine slows both models,
the interleaving keeps their ratio fair.

    .venv/bin/python -m benchmarks.sparse_cpu [--rounds 15] [--output benchmarks/SPARSE_CPU.md]

The target (issue: "make the sparse path pay") is the sparse model within 5% of the dense one on CPU; the GPU
targets are in benchmarks/gpu_suite.py.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRS = [("sparsifiner_deit_small", "deit_small_patch16_224"), ("sparsifiner_lvvit_small", "lvvit_small")]
BATCHES = (1, 8)
PROFILED_ROUNDS = 5
# The parts of a forward the profile is split into: profiler scopes the benchmark opens around modules (and around
# the predictor's attention mask), each operator counted in the part of its scope (the predictor's and the mask's
# whole, so the predictor's linear layers are the predictor's), a scope's own time (Python, NumPy) in its part.
PREDICTOR = "connectivity predictor (q', k', coefficients and their top 8, approximation)"
MASK = "connectivity mask (top ceil(rho N) keys of each patch query, as a -inf mask)"
SDPA = "attention (SDPA; sparse: under the mask)"
ATTENTION = "attention module, the rest (q/k/v views, merge of heads)"
LINEAR = "linear layers (qkv, projection, MLP, head)"
EMBED = "patch embedding (LV-ViT: convolutional stem)"
OTHER = "other (residuals, position embedding, pooling, Python)"
NORM, GELU = "LayerNorm", "GELU"
SDPA_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::scaled_dot_product_attention")


def interleaved_ms(models: dict[str, torch.nn.Module], batch: int, rounds: int,
                   side: int = 224) -> dict[str, tuple[float, float]]:
    """(median, minimum) milliseconds per forward of each model on a (batch, 3, side, side) input, the models run in
    turn each round."""
    x = torch.rand(batch, 3, side, side)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model(x)
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t) * 1e3, min(t) * 1e3) for name, t in times.items()}


def _label(model: torch.nn.Module, module: torch.nn.Module) -> str | None:
    """The part a module's scope is, or None (no scope)."""
    from timm.models.vision_transformer import Attention

    from visattn.blocks import ConnectivityPredictor, SparsifinerAttention

    if isinstance(module, ConnectivityPredictor):
        return PREDICTOR
    if isinstance(module, (SparsifinerAttention, Attention)):
        return ATTENTION
    if module is model.patch_embed:
        return EMBED
    kinds = ((torch.nn.Linear, LINEAR), (torch.nn.LayerNorm, NORM), (torch.nn.GELU, GELU))
    return next((label for kind, label in kinds if isinstance(module, kind)), None)


@contextlib.contextmanager
def attention_mask_replaced(replacement: Callable[[Callable], Callable]) -> Iterator[None]:
    """``ConnectivityPredictor.attention_mask`` replaced by ``replacement(original)`` while the block runs."""
    from visattn.blocks import ConnectivityPredictor

    original = ConnectivityPredictor.attention_mask
    ConnectivityPredictor.attention_mask = replacement(original)
    try:
        yield
    finally:
        ConnectivityPredictor.attention_mask = original


@contextlib.contextmanager
def scopes(model: torch.nn.Module) -> Iterator[None]:
    """Profiler scopes named by :func:`_label` around ``model``'s modules and around the predictors' attention masks,
    while the block runs."""
    open_scopes: list[torch.profiler.record_function] = []

    def enter(label: str):
        def hook(module, args):
            open_scopes.append(torch.profiler.record_function(label))
            open_scopes[-1].__enter__()
        return hook

    def leave(module, args, output):
        open_scopes.pop().__exit__(None, None, None)

    def scoped(attention_mask):
        def scoped_mask(self, *args, **kwargs):
            with torch.profiler.record_function(MASK):
                return attention_mask(self, *args, **kwargs)
        return scoped_mask

    handles = []
    for module in model.modules():
        if label := _label(model, module):
            handles += [module.register_forward_pre_hook(enter(label)), module.register_forward_hook(leave)]
    try:
        with attention_mask_replaced(scoped):
            yield
    finally:
        for handle in handles:
            handle.remove()


def _part(event) -> str:
    """The part a profiler event's self time belongs to (see :data:`PREDICTOR`'s comment)."""
    chain = []
    while event is not None:
        chain.append(event.name)
        event = event.cpu_parent
    for whole in (PREDICTOR, MASK):
        if whole in chain:
            return whole
    if chain[0] in SDPA_OPS:
        return SDPA
    return next((name for name in chain if name in (ATTENTION, LINEAR, EMBED, NORM, GELU)), OTHER)


def _profiled_parts(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Part -> milliseconds of self CPU time of one forward of ``model`` on ``x``, in one scope so that its Python
    time outside the modules counts too."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.profiler.record_function(OTHER):
        model(x)
    parts: dict[str, float] = {}
    for event in prof.events():
        part = _part(event)
        parts[part] = parts.get(part, 0.0) + event.self_cpu_time_total / 1e3
    return parts


def breakdowns(models: dict[str, torch.nn.Module], batch: int, rounds: int) -> dict[str, dict[str, float]]:
    """Model -> part -> median milliseconds per forward at ``batch`` over ``rounds`` profiled forwards, the models
    profiled in turn each round (so that other work on the machine weighs on both alike)."""
    x = torch.rand(batch, 3, 224, 224)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    with torch.no_grad(), contextlib.ExitStack() as stack:
        for model in models.values():
            stack.enter_context(scopes(model))
            model(x)
        for _ in range(rounds):
            for name, model in models.items():
                runs[name].append(_profiled_parts(model, x))
    return {name: {part: statistics.median(run.get(part, 0.0) for run in parts)
                   for part in set().union(*parts)} for name, parts in runs.items()}


def breakdown_table(sparse: str, dense: str, batch: int, parts: dict[str, dict[str, float]],
                    rounds: int) -> list[str]:
    """Markdown lines: each part's milliseconds in the sparse and the dense model, largest difference first."""
    names = sorted(set(parts[sparse]) | set(parts[dense]),
                   key=lambda part: -(parts[sparse].get(part, 0.0) - parts[dense].get(part, 0.0)))
    total = {name: sum(parts[name].values()) for name in (sparse, dense)}
    lines = ["", f"Where the time goes at batch {batch} (torch.profiler, self CPU time per forward, medians of "
                 f"{rounds} forwards profiled in turn, the profiler's own overhead included; the parts "
                 "both models have differ by the noise of the machine's load):", "",
             f"| part | `{sparse}` (ms) | `{dense}` (ms) | difference (ms) |", "|---|---|---|---|"]
    for part in names:
        a, b = parts[sparse].get(part, 0.0), parts[dense].get(part, 0.0)
        lines.append(f"| {part} | {a:.1f} | {b:.1f} | {a - b:+.1f} |")
    a, b = total[sparse], total[dense]
    lines.append(f"| all (sum of the medians) | {a:.1f} | {b:.1f} | {a - b:+.1f} |")
    return lines


def selection_inputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The approximate attention (B, H, N-1, N) each of ``model``'s connectivity predictors selects its keys from,
    in one evaluation forward on ``x``: the input of every exact top-k the sparse path cannot do without."""
    inputs: list[torch.Tensor] = []

    def recording(attention_mask):
        def recorded(self, approx, *args, **kwargs):
            inputs.append(approx.clone())
            return attention_mask(self, approx, *args, **kwargs)
        return recorded

    with attention_mask_replaced(recording), torch.no_grad():
        model(x)
    return inputs


def selection_ms(model: torch.nn.Module, batch: int, rounds: int, side: int = 224) -> dict[str, float]:
    """Way -> median milliseconds per forward (the sum over the layers) of selecting the ceil(rho N) keys of every
    patch query alone, each of the CPU's exact ways: the floor under what the sparse path costs beyond dense
    attention, before its predictor and its mask."""
    from visattn.blocks import ConnectivityPredictor

    approx = selection_inputs(model, torch.rand(batch, 3, side, side))
    n = approx[0].shape[-1]
    k = next(m for m in model.modules() if isinstance(m, ConnectivityPredictor)).budget(n)  # one rho per model
    rows = [a.numpy().reshape(-1, n) for a in approx]
    ways = {
        "np.sort (the model's way)": lambda: [np.sort(r, axis=-1) for r in rows],
        "np.partition": lambda: [np.partition(r, n - k, axis=-1) for r in rows],
        "torch.topk": lambda: [a.topk(k, dim=-1, sorted=False) for a in approx],
    }
    times: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(rounds):
        for way, run in ways.items():
            start = time.perf_counter()
            run()
            times[way].append(time.perf_counter() - start)
    return {way: statistics.median(t) * 1e3 for way, t in times.items()}


def floor_table(rows: list[tuple[str, int, float, dict[str, float]]]) -> list[str]:
    """Markdown lines: per sparse model and batch, the dense model's time, the 5% target's allowance and what the
    exact selections alone take each way."""
    ways = list(rows[0][3])
    lines = ["", "The floor: the exact top ceil(rho N) keys of every patch query alone (each layer's approximate "
                 "attention recorded in one forward, then selected, summed over the layers; medians), against the "
                 "allowance of the 5% target (5% of the dense model's median above):", "",
             "| sparse model | batch | dense (ms) | 5% allowance (ms) | "
             + " | ".join(f"{way} (ms)" for way in ways) + " |", "|---" * (4 + len(ways)) + "|"]
    for sparse, batch, dense_ms, ways_ms in rows:
        lines.append(f"| `{sparse}` | {batch} | {dense_ms:.1f} | {0.05 * dense_ms:.1f} | "
                     + " | ".join(f"{ways_ms[way]:.1f}" for way in ways) + " |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "SPARSE_CPU.md"))
    args = p.parse_args()
    import timm

    import visattn  # noqa: F401  (registers the models)
    from visattn.benchmark import write_text

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    lines = [
        "# Sparsifiner against dense, CPU", "",
        f"Written by `benchmarks/sparse_cpu.py` on {datetime.date.today().isoformat()}: "
        f"{platform.processor() or 'CPU'}, 1 thread, torch {torch.__version__}, timm {timm.__version__}. "
        f"Inference of 224x224 images in eval mode, float32, random weights, the two models timed in turn in one "
        f"process, medians (and the fastest) of {args.rounds} rounds.", "",
        "| sparse model | dense model | batch | sparse (ms) | dense (ms) | sparse / dense | sparse, fastest (ms) | "
        "dense, fastest (ms) | fastest / fastest |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    tables, floors = [], []
    for sparse, dense in PAIRS:
        models = {name: timm.create_model(name).eval() for name in (sparse, dense)}
        for batch in BATCHES:
            (median, fastest), (dense_median, dense_fastest) = interleaved_ms(models, batch, args.rounds).values()
            row = (f"| `{sparse}` | `{dense}` | {batch} | {median:.1f} | {dense_median:.1f} | "
                   f"**{median / dense_median:.2f}x** | {fastest:.1f} | {dense_fastest:.1f} | "
                   f"{fastest / dense_fastest:.2f}x |")
            lines.append(row)
            print(row, flush=True)
            floors.append((sparse, batch, dense_median, selection_ms(models[sparse], batch, args.rounds)))
        for batch in BATCHES:
            parts = breakdowns(models, batch, PROFILED_ROUNDS)
            tables += breakdown_table(sparse, dense, batch, parts, PROFILED_ROUNDS)
    lines += floor_table(floors) + tables
    load = " / ".join(f"{a:.2f}, {b:.2f}, {c:.2f}" for a, b, c in (load_before, os.getloadavg()))
    lines.insert(4, f"Load averages (1, 5, 15 min) of the machine's {os.cpu_count()} cores before / after: {load}.")
    lines.insert(5, "")

    write_text(args.output, "\n".join(lines) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
