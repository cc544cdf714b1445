#!/usr/bin/env python
"""The one prepared GPU run: op tests on CUDA, op timings, model throughput; writes benchmarks/RESULTS.md.

    PYTHONUNBUFFERED=1 python -m benchmarks.gpu_suite            # everything, a few minutes on an H100/H200
    python -m benchmarks.gpu_suite --skip-tests --models biformer_tiny

1. ``pytest tests/ops`` with ``VISATTN_TEST_DEVICE=cuda`` (fused kernels against the reference, bf16 included).
2. Each op at its models' shapes, fused kernels against the reference: routed attention (BiFormer; also
   dense SDPA over the same tokens, and FlexAttention, compiled, with a BlockMask from the same routing: the kernel
   alone with a prebuilt mask and end to end with routing and mask build, forward and forward+backward, compile
   time, peak memory, which of fused and flex wins per shape), selective scan and window attention (LaMamba-T),
   linear attention (InLine-Swin-T, HER-Seg at 1024), sparse attention (ViT token counts at 25% density, random
   and clustered key sets; also dense SDPA over the same tokens, forward and forward+backward); forward and
   forward+backward time, achieved GB/s, ratio to the memory floor (one read of the inputs and one write of
   the output at the measured copy bandwidth), peak memory.
3. Models end to end with the reference and the fused path in the same run, timed by the functions
   tools/benchmark.py uses (visattn/benchmark.py): inference img/s (batch 128, bf16 autocast), training
   img/s (batch 64, AdamW step, bf16 autocast), training peak memory. LaMamba's reference path runs its scan one
   token at a time, so LaMamba models are timed on the fused path only. Sparsifiner-DeiT-S and TCPA-ViT-B run
   next to timm's dense DeiT-S and ViT-B/16 (timed once: no visattn op). Segmentation networks at their native
   sizes (HER-Seg 1024 x 1024, FSG-Net 608 x 608 at batch 4, the setting of the official anchor), with training
   memory per image. Classifiers' inference also captured in a CUDA graph (GPU time without launch overhead; capture
   fails on a host synchronisation). ``--compile`` adds the classifiers under torch.compile next to eager. Then the
   targets: the fused path against the official models (anchors measured on the same card and settings) and
   against the reference path.
4. ``--profile``: profiler tables for the routed-attention op, a biformer_tiny training step, and inference of
   inline_deit_tiny and herseg on both paths (printed, and written to ``$OUT/profile.txt`` when set).
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from visattn.benchmark import (
    bench_model,
    forced_backend,
    fused_only,
    peak_gb,
    throughput,
    time_ms,
    training_step,
)
from visattn.ops.polarized_attention import LAYOUTS as PSA_LAYOUTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name, batch, H, W (attention map), channels, heads, n_win, topk
ROUTED_SHAPES = [
    ("T/S stage 1 @224", 64, 56, 56, 64, 2, 7, 1),
    ("T/S stage 2 @224", 64, 28, 28, 128, 4, 7, 4),
    ("T/S stage 3 @224", 64, 14, 14, 256, 8, 7, 16),
    ("B stage 1 @224", 64, 56, 56, 96, 3, 7, 1),
    ("B stage 3 @224", 64, 14, 14, 384, 12, 7, 16),
    ("S stage 1 @512, n_win 8", 8, 128, 128, 64, 2, 8, 1),
    ("S stage 2 @512, n_win 8", 8, 64, 64, 128, 4, 8, 4),
    ("S stage 3 @512, n_win 8", 8, 32, 32, 256, 8, 8, 16),
    ("S stage 1 @800x1344, n_win 16", 2, 200, 336, 64, 2, 16, 1),
    ("S stage 2 @800x1344, n_win 16", 2, 100, 168, 128, 4, 16, 4),
    ("S stage 3 @800x1344, n_win 16", 2, 50, 84, 256, 8, 16, 16),
]
# LaMamba-T at 224, batch 64: (name, side, channels, heads)
LAMAMBA_T_STAGES = [("stage 1", 56, 96, 3), ("stage 2", 28, 192, 6), ("stage 3", 14, 384, 12), ("stage 4", 7, 768, 24)]
# (name, batch, side, channels, heads, mode): InLine-Swin-T's InLine stages at 224 (injective) and HER-Seg's
# DLA stages at 1024 (normalized, ELU + 1 features and the 2-D RoPE'd numerator inside the op, as the block calls it)
LINEAR_SHAPES = [
    ("InLine-Swin-T stage 1 @224", 64, 56, 96, 3, "injective"),
    ("InLine-Swin-T stage 2 @224", 64, 28, 192, 6, "injective"),
    ("InLine-Swin-T stage 3 @224", 64, 14, 384, 12, "injective"),
    ("HER-Seg stage 1 @1024", 8, 64, 96, 6, "normalize"),
    ("HER-Seg stage 2 @1024", 8, 64, 96, 12, "normalize"),
    ("HER-Seg stage 3 @1024", 8, 64, 96, 24, "normalize"),
]
# (name, batch, tokens, heads, head dim, index pattern): ViT-S token counts (196 patches + class token at 224, and
# 784 / 3136 patches as at 448 / 896), 25% of the keys per query; "random" keys, or "clustered" keys near the
# query's position (neighbouring queries share most keys: whole key tiles go unattended and are skipped)
SPARSE_SHAPES = [
    (f"N={n}, {pattern}", b, n, 6, 64, pattern)
    for n, b in ((197, 64), (785, 16), (3137, 4)) for pattern in ("random", "clustered")
]
# (name, batch, channels, height, width, layout): PSA blocks of HRNet-W48 (OCRNet, Cityscapes 512x1024 crops)
POLARIZED_SHAPES = [
    (f"HRNet-W48 branch {i} {layout}", 2, 48 << i, 128 >> i, 256 >> i, layout)
    for i in range(4) for layout in PSA_LAYOUTS
]
# timm's dense models that visattn's sparse ones are measured against in the same run (no visattn op inside)
DENSE_BASELINES = ("deit_small_patch16_224", "vit_base_patch16_224")
# classifiers: input side, inference batch, training batch
CLASSIFIER_SETTING = (224, 128, 64)
# segmentation networks: (input side, inference batch, training batch)
SEGMENTATION_MODELS = {"herseg": (1024, 8, 4), "fsgnet": (608, 4, 4)}
# The official models on the same card and settings (H200, torch 2.11, bf16 autocast, eager; inference batch 128,
# training batch 64 with an AdamW step, 224 x 224; ../shared/reference/README.md): infer img/s, train img/s, train
# peak GB.
OFFICIAL = {"biformer_tiny": (3231, 804, 5.94), "biformer_small": (1544, 358, 11.62),
            "biformer_base": (1072, 323, 17.59), "inline_deit_tiny": (9601, 971, 1.44),
            "inline_swin_tiny": (5216, 820, 4.38)}
# Speed targets of the fused path: against the official model (inference and training img/s at least, training
# peak memory at most; None: none) and, for models without an official anchor, against our reference path.
OFFICIAL_TARGETS = {"biformer_tiny": (3.0, 2.0, 0.5), "biformer_small": (3.0, 2.0, None),
                    "biformer_base": (3.0, 2.0, None), "inline_deit_tiny": (1.5, 1.5, None),
                    "inline_swin_tiny": (1.5, 1.5, None)}
REFERENCE_TARGETS = {"herseg": (1.5, 1.5)}
DEVICE = "cuda"
FLEX = True  # time FlexAttention next to routed attention (--skip-flex: its compilations take minutes)


def cuda_time(fn, warmup: int = 3, repeat: int = 10) -> float:
    """Median milliseconds of ``fn()`` on the suite's device (:func:`visattn.benchmark.time_ms`); on the CPU,
    where only the tests run it, one run without warm-up."""
    return time_ms(fn, DEVICE, *((0, 1) if DEVICE == "cpu" else (warmup, repeat)))


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read plus bytes written)."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    ms = cuda_time(lambda: dst.copy_(src))
    return 2 * src.numel() / ms / 1e6


def run_op_tests() -> str:
    env = {**os.environ, "VISATTN_TEST_DEVICE": "cuda"}
    env.pop("TRITON_INTERPRET", None)
    workers = ["-n", str(min(16, os.cpu_count() or 1))] if (os.cpu_count() or 1) > 2 else []
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers, "tests/ops"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    tail = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-500:]
    if result.returncode != 0:
        print(result.stdout[-6000:], result.stderr[-3000:], sep="\n")
    return f"{'passed' if result.returncode == 0 else 'FAILED'}: {tail}"


def _synchronize() -> None:
    if DEVICE != "cpu":
        torch.cuda.synchronize()


def capture(fn) -> torch.cuda.CUDAGraph:
    """``fn()`` captured in a CUDA graph after three warm-up calls on a side stream (which also run any autotuning);
    raises what capture raises (a host synchronisation inside ``fn``, for one)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def graph_time(fn) -> float | None:
    """Median milliseconds of ``fn()`` captured in a CUDA graph and replayed: GPU time without launch overhead
    (None on the CPU, or when capture fails)."""
    if DEVICE == "cpu":
        return None
    try:
        return cuda_time(capture(fn).replay)
    except Exception as exc:  # some reference paths cannot be captured; the table shows "–"
        print(f"CUDA graph capture failed: {exc!r}", flush=True)
        return None


def _time_op(row: dict, run, tensors, grad, repeat_ref: int = 10) -> None:
    """Forward and forward+backward times and fwd+bwd peak memory of ``run(backend)`` for both backends, and the
    fused forward's GPU time in a CUDA graph (eager calls on a slow host are bounded by launch overhead)."""
    for backend in ("torch", "triton"):
        repeat = repeat_ref if backend == "torch" else 10

        def fwd(backend=backend):
            with torch.no_grad():
                return run(backend)

        def fwd_bwd(backend=backend):
            return torch.autograd.grad(run(backend), tensors, grad)

        row[f"{backend}_fwd_ms"] = cuda_time(fwd, warmup=1 if repeat < 10 else 3, repeat=repeat)
        row[f"{backend}_fwdbwd_ms"] = cuda_time(fwd_bwd, warmup=1 if repeat < 10 else 3, repeat=repeat)
        row[f"{backend}_peak_gb"] = peak_gb(fwd_bwd, DEVICE)
        if backend == "triton" or repeat_ref == 10:
            row[f"{backend}_graph_fwd_ms"] = graph_time(fwd)
    row["fused_gbs"] = row["bytes"] / row["triton_fwd_ms"] / 1e6


def bench_routed(shape, bandwidth: float, dtype=torch.bfloat16) -> dict:
    from visattn.ops.routed_attention import routed_attention

    name, b, h, w, c, heads, n_win, topk = shape
    q, k, v = (torch.randn(b, h, w, c, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(b, h, w, c, device=DEVICE, dtype=dtype)
    nbytes = 4 * q.numel() * q.element_size()
    row = {"op": "routed attention", "shape": name, "tokens": f"{b}x{h}x{w}x{c}, {heads}h, S={n_win}, k={topk}",
           "bytes": nbytes, "floor_ms": nbytes / bandwidth / 1e6}
    _time_op(row, lambda be: routed_attention(q, k, v, heads, n_win, topk, backend=be), (q, k, v), grad)
    qh, kh, vh = (t.detach().reshape(b, h * w, heads, c // heads).transpose(1, 2) for t in (q, k, v))
    row["sdpa_fwd_ms"] = cuda_time(lambda: F.scaled_dot_product_attention(qh, kh, vh))
    if FLEX:
        time_routed_flex(row, q, k, v, grad, heads, n_win, topk)
    return row


def _allow_recompiles(limit: int = 64) -> None:
    """Each routed shape compiles flex_attention again (forward, and forward with grad): past dynamo's default
    limit of 8 per function it would silently fall back to the unfused eager path."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(limit, getattr(torch._dynamo.config, name)))


def time_routed_flex(row: dict, q, k, v, grad, heads: int, n_win: int, topk: int) -> None:
    """FlexAttention (compiled, benchmarks/routed_flex.py) on the same maps and routing as the fused op:
    "kernel" times flex_attention alone on region-major inputs with a prebuilt BlockMask; "e2e" adds what a call
    must do, like the fused op's times: routing, the BlockMask build (the mask depends on the data, so every forward
    rebuilds it) and the permutes in and out. A measurement that fails (e.g. a block size the installed torch cannot
    compile) is left out ("–" in the report) and its reason kept in ``flex_errors``."""
    from benchmarks.routed_flex import (
        region_layout,
        routed_attention_flex,
        routed_block_mask,
        routed_flex_kernel,
        to_flex,
    )
    from visattn.ops.routed_attention import route_regions, routed_attention

    _allow_recompiles()
    h, w = q.shape[1:3]
    scale = q.shape[-1] ** -0.5
    lay = region_layout(h, w, n_win)
    row["flex_layout"] = f"R={lay.tokens}" + (f"→{lay.padded}" if lay.padded != lay.tokens else "") + (
        f", {lay.group}/block" if lay.group > 1 else "")
    errors = row["flex_errors"] = {}  # reason -> the measurements it stopped

    def measure(key: str, fn) -> bool:
        try:
            row[key] = fn()
            return True
        except Exception as exc:  # recorded per measurement: the rest of the row and of the suite go on
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else ''}"
            if reason not in errors:
                print(f"flex {row['shape']}: {key} FAILED {reason}", flush=True)
            errors.setdefault(reason, []).append(key)
            return False

    with torch.no_grad():
        idx = route_regions(q, k, n_win, topk, scale)
        qf, kf, vf = (to_flex(t.detach(), n_win, heads) for t in (q, k, v))
        leaves = tuple(t.clone().requires_grad_() for t in (qf, kf, vf))  # same strides as e2e's
        out_grad = torch.randn(*qf.shape[:3], vf.shape[-1], device=qf.device, dtype=qf.dtype)
    if not measure("flex_mask", lambda: routed_block_mask(idx, n_win, h, w)):
        return
    mask = row.pop("flex_mask")

    def max_err() -> float:
        with torch.no_grad():
            reference = routed_attention(q, k, v, heads, n_win, topk, backend="torch")
            return (e2e_fwd().float() - reference.float()).abs().max().item()

    def kernel_fwd():
        with torch.no_grad():
            return routed_flex_kernel(qf, kf, vf, mask, scale)

    def kernel_fwd_bwd():
        return torch.autograd.grad(routed_flex_kernel(*leaves, mask, scale), leaves, out_grad)

    def e2e():
        return routed_attention_flex(q, k, v, route_regions(q, k, n_win, topk, scale), heads, n_win, scale)

    def e2e_fwd():
        with torch.no_grad():
            return e2e()

    def e2e_fwd_bwd():
        return torch.autograd.grad(e2e(), (q, k, v), grad)

    def first_call_s(fn) -> float:  # mostly compilation
        start = time.perf_counter()
        fn()
        if DEVICE != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    measure("flex_mask_ms", lambda: cuda_time(lambda: routed_block_mask(idx, n_win, h, w)))
    if measure("flex_compile_s", lambda: first_call_s(kernel_fwd)):  # a failed compilation is not retried
        measure("flex_fwd_ms", lambda: cuda_time(kernel_fwd))
        measure("flex_e2e_fwd_ms", lambda: cuda_time(e2e_fwd))
        measure("flex_max_err", max_err)
    if measure("flex_bwd_compile_s", lambda: first_call_s(kernel_fwd_bwd)):
        measure("flex_fwdbwd_ms", lambda: cuda_time(kernel_fwd_bwd))
        measure("flex_e2e_fwdbwd_ms", lambda: cuda_time(e2e_fwd_bwd))
        measure("flex_peak_gb", lambda: peak_gb(e2e_fwd_bwd, DEVICE))
    print(f"flex {row['shape']}: fwd kernel {row.get('flex_fwd_ms')} ms, e2e {row.get('flex_e2e_fwd_ms')} ms; fwd+bwd "
          f"kernel {row.get('flex_fwdbwd_ms')} ms, e2e {row.get('flex_e2e_fwdbwd_ms')} ms", flush=True)


def bench_scan(stage, bandwidth: float, batch: int = 64, dtype=torch.bfloat16) -> dict:
    """SS2D's scan in LaMamba-T: 4 directions x C channels, d_state 1, softplus step with bias, D skip."""
    from visattn.ops.selective_scan import selective_scan

    name, side, c, _ = stage
    d, length, n = 4 * c, side * side, 1
    u, delta = (torch.randn(batch, d, length, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(2))
    bs, cs = (torch.randn(batch, 4, n, length, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(2))
    a = -torch.rand(d, n, device=DEVICE)
    dskip, bias = torch.ones(d, device=DEVICE), torch.zeros(d, device=DEVICE)
    grad = torch.randn_like(u)
    nbytes = (3 * u.numel() + 2 * bs.numel()) * u.element_size()
    row = {"op": "selective scan", "shape": f"LaMamba-T {name} @224", "tokens": f"{batch}x{d}x{length}, n={n}",
           "bytes": nbytes, "floor_ms": nbytes / bandwidth / 1e6}
    _time_op(row, lambda be: selective_scan(u, delta, a, bs, cs, dskip, delta_bias=bias, delta_softplus=True,
                                            backend=be), (u, delta, bs, cs), grad, repeat_ref=2)
    return row


def bench_window(stage, bandwidth: float, batch: int = 64, dtype=torch.bfloat16) -> dict:
    """LaMamba-T's (shifted) 7x7 window attention with relative position bias."""
    from visattn.ops.window_attention import window_attention

    name, side, c, heads = stage
    q, k, v = (torch.randn(batch, side, side, c, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3))
    table = torch.zeros(heads, 13 * 13, device=DEVICE, requires_grad=True)
    grad = torch.randn_like(q)
    shift = 3 if side > 7 else 0
    nbytes = 4 * q.numel() * q.element_size()
    row = {"op": "window attention", "shape": f"LaMamba-T {name} @224",
           "tokens": f"{batch}x{side}x{side}x{c}, {heads}h, ws=7, shift={shift}", "bytes": nbytes,
           "floor_ms": nbytes / bandwidth / 1e6}
    _time_op(row, lambda be: window_attention(q, k, v, heads, 7, shift, table, backend=be), (q, k, v, table), grad)
    return row


def bench_linear(shape, bandwidth: float, dtype=torch.bfloat16) -> dict:
    """Linear attention on (B, N, C) projections read as (B, heads, N, d) views, as the blocks call it."""
    from visattn.blocks.dual_gated_attention import rope_2d_angles
    from visattn.ops.linear_attention import linear_attention

    name, b, side, c, heads, mode = shape
    n, d = side * side, c // heads
    maps = [torch.randn(b, n, c, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3)]
    q, k, v = (t.view(b, n, heads, d).transpose(1, 2) for t in maps)
    grad = torch.randn(b, heads, n, d, device=DEVICE, dtype=dtype)
    nbytes = (len(maps) + 1) * maps[0].numel() * maps[0].element_size()
    row = {"op": "linear attention", "shape": name, "tokens": f"{b}x{n}x{c}, {heads}h, {mode}", "bytes": nbytes,
           "floor_ms": nbytes / bandwidth / 1e6}
    if mode == "injective":
        kwargs = dict(scale=d ** -0.5 / n, injective=True)
    else:
        rope = rope_2d_angles(side, side, c, 1e4, DEVICE)
        kwargs = dict(scale=1.0 / n, normalize=True, feature_map="elu+1", rope=rope)
    _time_op(row, lambda be: linear_attention(q, k, v, backend=be, **kwargs), tuple(maps), grad)
    return row


def bench_sparse(shape, bandwidth: float, dtype=torch.bfloat16) -> dict:
    """Per-query sparse attention at 25% density against the reference (dense masked attention) and against dense
    SDPA over the same tokens, forward and forward+backward."""
    from visattn.ops.sparse_attention import sparse_attention

    name, b, n, heads, d, pattern = shape
    topk = max(1, n // 4)
    q, k, v = (torch.randn(b, heads, n, d, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn_like(q)
    scores = torch.rand(b, heads, n, n, device=DEVICE)
    if pattern == "clustered":  # the top-k nearest positions, ties broken at random
        pos = torch.arange(n, device=DEVICE, dtype=torch.float32)
        scores = scores - (pos[:, None] - pos[None, :]).abs()
    indices = scores.topk(topk, dim=-1).indices
    del scores
    nbytes = 4 * q.numel() * q.element_size() + indices.numel() * indices.element_size()
    row = {"op": "sparse attention", "shape": name, "tokens": f"{b}x{n}, {heads}h, d={d}, k={topk}",
           "bytes": nbytes, "floor_ms": nbytes / bandwidth / 1e6}
    _time_op(row, lambda be: sparse_attention(q, k, v, indices, backend=be), (q, k, v), grad)

    def sdpa_fwd():
        with torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v)

    row["sdpa_fwd_ms"] = cuda_time(sdpa_fwd)
    row["sdpa_fwdbwd_ms"] = cuda_time(lambda: torch.autograd.grad(F.scaled_dot_product_attention(q, k, v),
                                                                  (q, k, v), grad))
    row["sdpa_ratio"] = (row["sdpa_fwd_ms"] / row["triton_fwd_ms"], row["sdpa_fwdbwd_ms"] / row["triton_fwdbwd_ms"])
    return row


def bench_polarized(shape, bandwidth: float, dtype=torch.bfloat16) -> dict:
    """The official-form PSA block's op (poolings, spatial logits, gating) against the reference, which forms the
    softmax of conv_v_left(Z) of PSA_s as a (B, C/2, H*W) map like the official code."""
    from visattn.blocks import PolarizedSelfAttention

    name, b, c, h, w, layout = shape
    block = PolarizedSelfAttention(c, layout).to(DEVICE, dtype)
    x = torch.randn(b, c, h, w, device=DEVICE, dtype=dtype, requires_grad=True)
    grad = torch.randn_like(x)
    nbytes = 3 * x.numel() * x.element_size()  # the pooling must read x before the gating reads it and writes out
    row = {"op": "polarized attention", "shape": name, "tokens": f"{b}x{c}x{h}x{w}", "bytes": nbytes,
           "floor_ms": nbytes / bandwidth / 1e6}

    def run(backend):
        block.backend = backend
        return block(x)

    _time_op(row, run, (x,), grad)
    return row


def model_row(name: str, backend: str, compile: bool = False, warmup: int = 3, repeat: int = 10) -> dict:
    """A model's line of the report: a segmentation network at its native size (with its training memory per
    image), a classifier at :data:`CLASSIFIER_SETTING`, eager or compiled (which removes most launch overhead: eager
    training on a slow host is bounded by the CPU). An eager classifier's line also has its inference captured in a
    CUDA graph (GPU time without launch overhead; capture fails on any host synchronisation)."""
    if name in SEGMENTATION_MODELS:
        size, infer_batch, train_batch = SEGMENTATION_MODELS[name]
        label, compile = f"{name} @{size}", False
        warmup, repeat = min(warmup, 2), min(repeat, 5)  # seconds per step at 1024 x 1024
    else:
        size, infer_batch, train_batch = CLASSIFIER_SETTING
        label = f"{name} (compiled)" if compile else name
    result = bench_model(name, backend, DEVICE, size=size, infer_batch=infer_batch, train_batch=train_batch,
                         compile=compile, warmup=warmup, repeat=repeat)
    row = {"model": label, "name": name, "backend": backend, "compiled": compile, **result}
    if name not in SEGMENTATION_MODELS and not compile:
        row["graph_infer_img_s"], row["graph_error"] = graph_inference(name, backend, infer_batch, size)
    return row


def graph_inference(name: str, backend: str, batch: int, size: int) -> tuple[float | None, str | None]:
    """Inference img/s of ``name`` (bf16 autocast) captured in a CUDA graph and replayed, or None and why capture
    failed (neither on the CPU, where only the tests run it)."""
    import timm

    import visattn  # noqa: F401

    if DEVICE == "cpu":
        return None, None
    with forced_backend(backend):
        torch.manual_seed(0)
        model = timm.create_model(name).to(DEVICE).eval()
        x = torch.randn(batch, 3, size, size, device=DEVICE)

        def infer():
            with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, cache_enabled=False):
                return model(x)

        try:
            graph = capture(infer)
        except Exception as exc:
            return None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else ''}"
        return batch / cuda_time(graph.replay) * 1e3, None


def bench_reid(label: str, config: dict, backend: str, infer_batch: int = 256, train_batch: int = 64,
               warmup: int = 3, repeat: int = 10) -> dict:
    """A re-id configuration of benchmarks/reid_cost.py (ResNet-50 BoT with or without attention) at 256x128:
    inference and training img/s (CE on the BNNeck logits) and training peak memory."""
    from benchmarks.reid_cost import INPUT, build

    with forced_backend(backend):
        torch.manual_seed(0)
        model = build(config).to(DEVICE)
        result = throughput(model, torch.rand(infer_batch, 3, *INPUT, device=DEVICE),
                            torch.rand(train_batch, 3, *INPUT, device=DEVICE),
                            torch.randint(0, 751, (train_batch,), device=DEVICE), F.cross_entropy,
                            warmup=warmup, repeat=repeat)
    return {"model": f"re-id: {label} @256x128", "backend": backend, **result}


def profile_routed() -> str:
    """Where the fused BiFormer path spends its time: one routed-attention forward at BiFormer-T stage 3 (sorted by
    CPU time: launch and planning overhead) and one biformer_tiny training step at batch 64 (sorted by GPU time)."""
    import timm
    from torch.profiler import ProfilerActivity, profile

    import visattn  # noqa: F401
    from visattn.ops.routed_attention import routed_attention

    q, k, v = (torch.randn(64, 14, 14, 256, device=DEVICE, dtype=torch.bfloat16) for _ in range(3))
    for _ in range(3):
        routed_attention(q, k, v, 8, 7, 16)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as op_prof:
        for _ in range(5):
            routed_attention(q, k, v, 8, 7, 16)
        torch.cuda.synchronize()
    model = timm.create_model("biformer_tiny").to(DEVICE)
    train_step = training_step(model, F.cross_entropy)
    x, y = torch.randn(64, 3, 224, 224, device=DEVICE), torch.randint(0, 1000, (64,), device=DEVICE)

    for _ in range(2):
        train_step(x, y)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as step_prof:
        train_step(x, y)
        torch.cuda.synchronize()
    return "\n".join([
        "routed attention, BiFormer-T stage 3, 5 calls:",
        op_prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15),
        "biformer_tiny training step, batch 64:",
        step_prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20),
    ])


# (model, input side, inference batch) whose fused and reference inference the profile compares
PROFILED_INFERENCE = (("inline_deit_tiny", 224, 128), ("herseg", 1024, 8))


def profile_inference() -> str:
    """Where inference time goes on each path (sorted by GPU time): the models of :data:`PROFILED_INFERENCE`, whose
    fused path must beat its reference end to end as its ops do alone."""
    import timm
    from torch.profiler import ProfilerActivity, profile

    import visattn  # noqa: F401

    tables = []
    for name, size, batch in PROFILED_INFERENCE:
        for backend in ("torch", "triton"):
            with forced_backend(backend):
                model = timm.create_model(name).to(DEVICE).eval()
                x = torch.randn(batch, 3, size, size, device=DEVICE)

                def infer(model=model, x=x):
                    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
                        return model(x)

                for _ in range(3):
                    infer()
                _synchronize()
                with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if DEVICE != "cpu" else [])],
                             ) as prof:
                    infer()
                    _synchronize()
            path = "reference" if backend == "torch" else "fused"
            sort = "self_cuda_time_total" if DEVICE != "cpu" else "self_cpu_time_total"
            tables += [f"{name} inference, batch {batch} at {size}, {path} path:",
                       prof.key_averages().table(sort_by=sort, row_limit=20)]
    return "\n".join(tables)


def _num(value, fmt: str = ".3f") -> str:
    return "–" if value is None or value != value else format(value, fmt)


def flex_markdown(ops: list[dict]) -> list[str]:
    """The routed-attention rows against FlexAttention: a table, then which one wins per shape."""
    rows = [r for r in ops if r["op"] == "routed attention" and "flex_errors" in r]
    if not rows:
        return []
    lines = ["Routed attention against FlexAttention, bf16 (ms): flex = `torch.compile(flex_attention)` with a "
             "BlockMask from the same routing (layout: R region tokens, padded to a multiple of 16 or packed several "
             "regions to a 16-token block; benchmarks/routed_flex.py); kernel = flex_attention alone on "
             "region-major inputs with a prebuilt mask; e2e = routing + mask build + permutes + kernel, like the "
             "fused times; compile = seconds of the first forward, first forward+backward (when one fails, that "
             "direction is not timed: –); max err = largest |flex e2e - reference| in bf16:", "",
             "| shape | flex layout | fused fwd | flex fwd, kernel | flex mask build | flex fwd, e2e | fused fwd+bwd | "
             "flex fwd+bwd, kernel | flex fwd+bwd, e2e | fused peak GB | flex peak GB | flex compile s | "
             "flex max err |", "|" + "---|" * 13]
    verdicts, failures = [], []
    for r in rows:
        times = [_num(r.get(key)) for key in ("triton_fwd_ms", "flex_fwd_ms", "flex_mask_ms", "flex_e2e_fwd_ms",
                                              "triton_fwdbwd_ms", "flex_fwdbwd_ms", "flex_e2e_fwdbwd_ms")]
        compile_s = f"{_num(r.get('flex_compile_s'), '.0f')}, {_num(r.get('flex_bwd_compile_s'), '.0f')}"
        lines.append("| " + " | ".join([r["shape"], r["flex_layout"], *times, _num(r.get("triton_peak_gb"), ".2f"),
                                         _num(r.get("flex_peak_gb"), ".2f"), compile_s,
                                         _num(r.get("flex_max_err"), ".3g")]) + " |")
        wins, ratios = [], []
        for label, ours, key in (("forward", "triton_fwd_ms", "flex_e2e_fwd_ms"),
                                 ("forward+backward", "triton_fwdbwd_ms", "flex_e2e_fwdbwd_ms")):
            if r.get(key) is None:
                wins.append(f"flex failed the {label}")
                continue
            ratio = r[key] / r[ours]
            wins.append(f"{'fused' if ratio > 1 else 'flex'} wins the {label}")
            ratios.append(f"{label} {ratio:.2f}x")
        kernel = [f"{label} {r[key] / r[ours]:.2f}x" for label, ours, key in (
            ("forward", "triton_fwd_ms", "flex_fwd_ms"), ("forward+backward", "triton_fwdbwd_ms", "flex_fwdbwd_ms"))
            if r.get(key) is not None]
        detail = "; ".join(part for part in (
            "flex e2e / fused: " + ", ".join(ratios) if ratios else "",
            "flex kernel alone / fused: " + ", ".join(kernel) if kernel else "") if part)
        verdicts.append(f"- {r['shape']}: {', '.join(wins)}" + (f" ({detail})" if detail else ""))
        failures += [f"- {r['shape']}: {', '.join(keys)}: {reason}" for reason, keys in r["flex_errors"].items()]
    return lines + [""] + verdicts + [""] + (["FlexAttention failures:", ""] + failures + [""] if failures else [])


def markdown(env: dict, tests: str, ops: list[dict], models: list[dict], command: str) -> str:
    lines = [f"## {env['card']} — {env['date']}", "",
             f"torch {env['torch']}, Triton {env['triton']}, CUDA {env['cuda']}; measured copy bandwidth "
             f"{env['bandwidth']:.0f} GB/s. Command: `{command}`", "", f"Op tests on CUDA: {tests}", ""]
    if ops:
        lines += ["Ops, bf16 (ms; floor = one read of the inputs and one write of the output at the copy bandwidth; "
                  "dense SDPA = full attention over the same tokens (routed and sparse attention; SDPA / fused = "
                  "its time over the fused time, forward and forward+backward); "
                  "graph = the forward captured in a CUDA graph and replayed, i.e. GPU time without launch overhead):",
                  "", "| op | shape | tokens | ref fwd | fused fwd | fused speed-up | dense SDPA fwd | fused / floor | "
                  "fused GB/s | ref fwd+bwd | fused fwd+bwd | ref peak GB | fused peak GB | ref fwd, graph | "
                  "fused fwd, graph | fused graph / floor | dense SDPA fwd+bwd | SDPA / fused |", "|" + "---|" * 18]
        def ms(value):
            return "–" if value is None else f"{value:.3f}"

        for r in ops:
            sdpa = ms(r.get("sdpa_fwd_ms"))
            graph = r.get("triton_graph_fwd_ms")
            graph_floor = "–" if graph is None else f"{graph / r['floor_ms']:.1f}x"
            ratio = r.get("sdpa_ratio")
            sdpa_ratio = "–" if ratio is None else f"{ratio[0]:.2f}x, {ratio[1]:.2f}x"
            lines.append(
                f"| {r['op']} | {r['shape']} | {r['tokens']} | {r['torch_fwd_ms']:.3f} | {r['triton_fwd_ms']:.3f} | "
                f"{r['torch_fwd_ms'] / r['triton_fwd_ms']:.1f}x | {sdpa} | {r['triton_fwd_ms'] / r['floor_ms']:.1f}x | "
                f"{r['fused_gbs']:.0f} | {r['torch_fwdbwd_ms']:.3f} | {r['triton_fwdbwd_ms']:.3f} | "
                f"{r['torch_peak_gb']:.2f} | {r['triton_peak_gb']:.2f} | {ms(r.get('torch_graph_fwd_ms'))} | "
                f"{ms(graph)} | {graph_floor} | {ms(r.get('sdpa_fwdbwd_ms'))} | {sdpa_ratio} |")
        lines.append("")
        lines += flex_markdown(ops)
    if models:
        lines += ["Models, bf16 autocast: classifiers at 224 (inference batch 128, training batch 64 with an AdamW "
                  "step); segmentation networks at their native size (herseg: 1024, inference batch 8, training "
                  "batch 4, BCE loss):", "",
                  "| model | path | infer img/s | train img/s | train peak GB | infer img/s, CUDA graph |",
                  "|---|---|---|---|---|---|"]
        for r in models:
            path = "reference" if r["backend"] == "torch" else "fused"
            lines.append(f"| {r['model']} | {path} | {r['infer_img_s']:.0f} | {r['train_img_s']:.0f} | "
                         f"{r['train_peak_gb']:.2f} | {_num(r.get('graph_infer_img_s'), '.0f')} |")
        failed = [f"- {r['model']} ({'reference' if r['backend'] == 'torch' else 'fused'}): {r['graph_error']}"
                  for r in models if r.get("graph_error")]
        if failed:
            lines += ["", "CUDA graph capture failed:", *failed]
        for r in models:
            if "peak_gb_per_image" in r:
                path = "reference" if r["backend"] == "torch" else "fused"
                batch = SEGMENTATION_MODELS[r["model"].split()[0]][2]
                lines.append(f"\n{r['model']} ({path}): training memory {r['peak_gb_per_image']:.2f} GB per image "
                             f"(batch 1 peak {r['peak_gb_batch1']:.2f} GB; batch {batch} peak "
                             f"{r['train_peak_gb']:.2f} GB)")
        by = {(r["model"], r["backend"]): r for r in models}
        lines.append("")
        for name in dict.fromkeys(r["model"] for r in models):
            ref, fused = by.get((name, "torch")), by.get((name, "triton"))
            if ref and fused:
                lines.append(f"- {name}: fused/reference inference {fused['infer_img_s'] / ref['infer_img_s']:.2f}x, "
                             f"training {fused['train_img_s'] / ref['train_img_s']:.2f}x, training peak memory "
                             f"{fused['train_peak_gb'] / ref['train_peak_gb']:.2f}x")
        lines.append("")
        lines += targets_markdown(models)
    return "\n".join(lines) + "\n"


def _ratio(a, b) -> float | None:
    return None if a is None or b is None else a / b


def _verdict(checks: list[tuple[float | None, float, bool]]) -> str:
    """"yes" when every (value, target, at_least) check holds, "no" when one fails, "–" when one was not measured."""
    if any(value is None for value, _, _ in checks):
        return "–"
    return "yes" if all(value >= t if at_least else value <= t for value, t, at_least in checks) else "no"


_SPEED_KEYS = ("infer_img_s", "train_img_s", "train_peak_gb")


def _speed_text(r: dict | None) -> str:
    return "–" if r is None else f"{r['infer_img_s']:.0f} / {r['train_img_s']:.0f}, {r['train_peak_gb']:.2f}"


def _speed_ratios(fused: dict, other: dict | None) -> tuple:
    """fused / other for inference, training and training peak memory, and their text."""
    if other is None:
        return None, None, None, "–"
    values = tuple(_ratio(fused[key], other[key]) for key in _SPEED_KEYS)
    return (*values, f"{values[0]:.2f}x / {values[1]:.2f}x / {values[2]:.2f}x")


def targets_markdown(models: list[dict]) -> list[str]:
    """The speed targets: each eager model's fused path against the official model (anchors measured on the same
    card and settings: :data:`OFFICIAL`) and against our reference path."""
    eager = {(r["name"], r["backend"]): r for r in models if "name" in r and not r.get("compiled")}
    lines = ["Targets (eager, bf16): fused against the official model (measured on the same card with the same "
             "settings) and against the reference path; infer / train img/s, train peak GB:", "",
             "| model | fused | reference | official | fused / official | fused / reference | target | met |",
             "|---|---|---|---|---|---|---|---|"]
    rows = 0
    for name in dict.fromkeys(n for n, _ in eager):
        fused, ref = eager.get((name, "triton")), eager.get((name, "torch"))
        if fused is None or (name not in OFFICIAL_TARGETS and name not in REFERENCE_TARGETS):
            continue
        official = dict(zip(_SPEED_KEYS, OFFICIAL[name], strict=True)) if name in OFFICIAL else None
        o_infer, o_train, o_mem, o_text = _speed_ratios(fused, official)
        r_infer, r_train, _, r_text = _speed_ratios(fused, ref)
        if name in OFFICIAL_TARGETS:
            infer_t, train_t, mem_t = OFFICIAL_TARGETS[name]
            checks = [(o_infer, infer_t, True), (o_train, train_t, True)] + \
                ([(o_mem, mem_t, False)] if mem_t is not None else [])
            target = f"official x{infer_t:g} / x{train_t:g}" + (f", memory <= x{mem_t:g}" if mem_t else "")
        else:
            infer_t, train_t = REFERENCE_TARGETS[name]
            checks = [(r_infer, infer_t, True), (r_train, train_t, True)]
            target = f"reference x{infer_t:g} / x{train_t:g}"
        lines.append(f"| {fused['model']} | {_speed_text(fused)} | {_speed_text(ref)} | {_speed_text(official)} | "
                     f"{o_text} | {r_text} | {target} | {_verdict(checks)} |")
        rows += 1
    return lines + [""] if rows else []


RESULTS_HEADER = "# GPU results\n\nWritten by `benchmarks/gpu_suite.py`; newest first.\n\n"


def earlier_results(path: str) -> str:
    """The results file's runs before this one (without its header); empty when there is none."""
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return f.read().removeprefix(RESULTS_HEADER)


def write_report(path: str, report: str, earlier: str) -> None:
    """Write this run's ``report`` above the ``earlier`` runs, atomically (re-written as the run goes, so a run
    cut short keeps what it measured); also copy the file to ``$OUT`` when set."""
    text = RESULTS_HEADER + report + ("\n" + earlier if earlier else "")
    targets = [path] + ([os.path.join(os.environ["OUT"], "RESULTS.md")] if os.environ.get("OUT") else [])
    for target in targets:
        with open(target + ".tmp", "w") as f:
            f.write(text)
        os.replace(target + ".tmp", target)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--skip-ops", action="store_true")
    p.add_argument("--ops", nargs="*", choices=["routed", "scan", "window", "linear", "sparse", "polarized"],
                   default=["routed", "scan", "window", "linear", "sparse", "polarized"],
                   help="which op benchmarks to run")
    p.add_argument("--models", nargs="*", default=["biformer_tiny", "biformer_small", "biformer_base",
                                                   "mambaout_tiny", "lamamba_tiny", "lamamba_small",
                                                   "inline_deit_tiny", "inline_swin_tiny", "herseg",
                                                   "sparsifiner_deit_small", "deit_small_patch16_224",
                                                   "tcpa_vit_base_patch16_224", "vit_base_patch16_224",
                                                   "fsgnet", "hrnet_w18_psa", "hrnet_w18_psa_s", "resnet50_psa"])
    p.add_argument("--skip-flex", action="store_true",
                   help="skip the FlexAttention comparator of routed attention (it compiles every shape)")
    p.add_argument("--skip-reid", action="store_true", help="skip the re-id configurations (benchmarks/reid_cost.py)")
    p.add_argument("--compile", action="store_true",
                   help="also time the classifiers under torch.compile (eager numbers stay the headline)")
    p.add_argument("--profile", action="store_true",
                   help="print profiles of the fused routed-attention op, a biformer_tiny training step and both "
                        "paths' inference of inline_deit_tiny and herseg (also $OUT/profile.txt)")
    p.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "RESULTS.md"))
    p.add_argument("--time-limit", type=float, default=float("inf"),
                   help="seconds; op and model cases that would start later are skipped, the report is still written")
    args = p.parse_args()
    global FLEX
    FLEX = not args.skip_flex
    if not torch.cuda.is_available():
        print("error: benchmarks/gpu_suite.py needs a CUDA device", file=sys.stderr)
        return 2
    import triton

    torch.backends.cudnn.benchmark = True
    started = time.time()
    env = {"card": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(),
           "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
           "bandwidth": copy_bandwidth()}
    print(f"{env['card']}: copy bandwidth {env['bandwidth']:.0f} GB/s", flush=True)
    command = "python -m benchmarks.gpu_suite " + " ".join(sys.argv[1:])
    tests = "skipped" if args.skip_tests else run_op_tests()
    print(f"op tests: {tests} ({time.time() - started:.0f} s)", flush=True)
    ops, models, errors = [], [], []
    earlier = earlier_results(args.output)

    def report() -> None:
        text = markdown(env, tests, ops, models, command)
        if errors:
            text += "\nFailed or skipped cases:\n\n" + "\n".join(f"- {e}" for e in errors) + "\n"
        write_report(args.output, text, earlier)

    def attempt(label: str, fn):
        if time.time() - started > args.time_limit:
            errors.append(f"{label}: skipped, past --time-limit {args.time_limit:.0f} s")
            return None
        try:
            return fn()
        except Exception as exc:  # one broken case must not lose the rest of the run
            last_line = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ""
            errors.append(f"{label}: {type(exc).__name__}: {last_line}")
            print(f"{label}: FAILED {exc!r}", flush=True)
            return None
        finally:
            torch.cuda.empty_cache()

    report()
    if not args.skip_ops:
        shapes = {"routed": (bench_routed, ROUTED_SHAPES), "scan": (bench_scan, LAMAMBA_T_STAGES),
                  "window": (bench_window, LAMAMBA_T_STAGES), "linear": (bench_linear, LINEAR_SHAPES),
                  "sparse": (bench_sparse, SPARSE_SHAPES), "polarized": (bench_polarized, POLARIZED_SHAPES)}
        cases = [(shapes[op][0], s) for op in args.ops for s in shapes[op][1]]
        for bench, shape in cases:
            label = f"{bench.__name__} {shape[0]}"
            row = attempt(label, lambda bench=bench, shape=shape: bench(shape, env["bandwidth"]))
            if row is None:
                continue
            ops.append(row)
            print(f"{row['op']} {row['shape']}: ref {row['torch_fwd_ms']:.3f} ms, fused {row['triton_fwd_ms']:.3f} ms, "
                  f"floor {row['floor_ms']:.3f} ms ({time.time() - started:.0f} s)", flush=True)
            report()
    for name in args.models:
        backends = (("triton",) if fused_only(name) else
                    ("torch",) if name in DENSE_BASELINES else ("torch", "triton"))
        modes = (False, True) if args.compile and name not in SEGMENTATION_MODELS else (False,)
        for compiled in modes:
            for backend in backends:
                label = f"{name} [{backend}{', compiled' if compiled else ''}]"
                row = attempt(label, lambda name=name, backend=backend, compiled=compiled:
                              model_row(name, backend, compile=compiled))
                if row is None:
                    continue
                models.append(row)
                print(f"{label}: {row['infer_img_s']:.0f} / {row['train_img_s']:.0f} img/s, "
                      f"{row['train_peak_gb']:.2f} GB, CUDA graph {row.get('graph_infer_img_s')} img/s "
                      f"({time.time() - started:.0f} s)", flush=True)
                report()
    if not args.skip_reid:
        from benchmarks.reid_cost import REID_CONFIGS

        for label, config in REID_CONFIGS:
            for backend in ("torch", "triton") if config else ("torch",):
                row = attempt(f"re-id {label} [{backend}]",
                              lambda label=label, config=config, backend=backend: bench_reid(label, config, backend))
                if row is not None:
                    models.append(row)
                    print(f"{row['model']} [{backend}]: {row['infer_img_s']:.0f} img/s ({time.time() - started:.0f} s)",
                          flush=True)
                    report()
    report()
    if args.profile:
        text = "\n".join(t for t in (attempt("routed-attention profile", profile_routed),
                                      attempt("inference profile", profile_inference)) if t)
        print(text, flush=True)
        if os.environ.get("OUT"):
            with open(os.path.join(os.environ["OUT"], "profile.txt"), "w") as f:
                f.write(text)
    print(markdown(env, tests, ops, models, command))
    if errors:
        return 1
    return 0 if tests.startswith(("passed", "skipped")) else 1


if __name__ == "__main__":
    sys.exit(main())
