#!/usr/bin/env python
"""The one prepared GPU run: op tests on CUDA, op timings, model throughput; writes benchmarks/RESULTS.md.

    PYTHONUNBUFFERED=1 python benchmarks/gpu_suite.py            # everything, a few minutes on an H100/H200
    python benchmarks/gpu_suite.py --skip-tests --models biformer_tiny

1. ``pytest tests/ops`` with ``VISATTN_TEST_DEVICE=cuda`` (fused kernels against the reference, bf16 included).
2. Each op at its models' shapes, fused kernels against the reference: routed attention (BiFormer; also
   dense SDPA over the same tokens), selective scan and window attention (LaMamba-T); forward and
   forward+backward time, achieved GB/s, ratio to the memory floor (one read of the inputs and one write of
   the output at the measured copy bandwidth), peak memory.
3. Models end to end with the reference and the fused path in the same run: inference img/s (batch 128,
   bf16 autocast), training img/s (batch 64, AdamW step, bf16 autocast), training peak memory. LaMamba's
   reference path runs its scan one token at a time, so LaMamba models are timed on the fused path only.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

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
FUSED_ONLY_MODELS = ("lamamba_",)
DEVICE = "cuda"


def cuda_time(fn, warmup: int = 3, repeat: int = 10) -> float:
    """Median milliseconds of ``fn()`` over ``repeat`` runs, timed with CUDA events (wall clock on the CPU)."""
    if DEVICE == "cpu":
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read plus bytes written)."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    ms = cuda_time(lambda: dst.copy_(src))
    return 2 * src.numel() / ms / 1e6


def peak_gb(fn) -> float:
    if DEVICE == "cpu":
        fn()
        return 0.0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 1e9


def run_op_tests() -> str:
    env = {**os.environ, "VISATTN_TEST_DEVICE": "cuda"}
    env.pop("TRITON_INTERPRET", None)
    workers = ["-n", str(min(8, os.cpu_count() or 1))] if (os.cpu_count() or 1) > 2 else []
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers, "tests/ops"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    tail = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-500:]
    if result.returncode != 0:
        print(result.stdout[-6000:], result.stderr[-3000:], sep="\n")
    return f"{'passed' if result.returncode == 0 else 'FAILED'}: {tail}"


def _time_op(row: dict, run, tensors, grad, repeat_ref: int = 10) -> None:
    """Forward and forward+backward times and fwd+bwd peak memory of ``run(backend)`` for both backends."""
    for backend in ("torch", "triton"):
        repeat = repeat_ref if backend == "torch" else 10

        def fwd(backend=backend):
            with torch.no_grad():
                return run(backend)

        def fwd_bwd(backend=backend):
            return torch.autograd.grad(run(backend), tensors, grad)

        row[f"{backend}_fwd_ms"] = cuda_time(fwd, warmup=1 if repeat < 10 else 3, repeat=repeat)
        row[f"{backend}_fwdbwd_ms"] = cuda_time(fwd_bwd, warmup=1 if repeat < 10 else 3, repeat=repeat)
        row[f"{backend}_peak_gb"] = peak_gb(fwd_bwd)
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
    return row


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


def bench_model(name: str, backend: str, infer_batch: int = 128, train_batch: int = 64, size: int = 224) -> dict:
    import timm

    import visattn  # noqa: F401

    os.environ["VISATTN_BACKEND"] = backend
    torch.manual_seed(0)
    model = timm.create_model(name).cuda()
    torch.cuda.reset_peak_memory_stats()
    x = torch.randn(infer_batch, 3, size, size, device=DEVICE)
    model.eval()

    def infer():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            model(x)

    infer_ms = cuda_time(infer, warmup=3, repeat=10)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    xt = torch.randn(train_batch, 3, size, size, device=DEVICE)
    yt = torch.randint(0, 1000, (train_batch,), device=DEVICE)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(xt), yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    peak = peak_gb(step)
    train_ms = cuda_time(step, warmup=2, repeat=8)
    os.environ.pop("VISATTN_BACKEND", None)
    return {"model": name, "backend": backend, "infer_img_s": infer_batch / infer_ms * 1e3,
            "train_img_s": train_batch / train_ms * 1e3, "train_peak_gb": peak}


def markdown(env: dict, tests: str, ops: list[dict], models: list[dict], command: str) -> str:
    lines = [f"## {env['card']} — {env['date']}", "",
             f"torch {env['torch']}, Triton {env['triton']}, CUDA {env['cuda']}; measured copy bandwidth "
             f"{env['bandwidth']:.0f} GB/s. Command: `{command}`", "", f"Op tests on CUDA: {tests}", ""]
    if ops:
        lines += ["Ops, bf16 (ms; floor = one read of the inputs and one write of the output at the copy bandwidth; "
                  "dense SDPA = full attention over the same tokens, routed attention only):",
                  "", "| op | shape | tokens | ref fwd | fused fwd | fused speed-up | dense SDPA fwd | fused / floor | "
                  "fused GB/s | ref fwd+bwd | fused fwd+bwd | ref peak GB | fused peak GB |", "|" + "---|" * 13]
        for r in ops:
            sdpa = f"{r['sdpa_fwd_ms']:.3f}" if "sdpa_fwd_ms" in r else "–"
            lines.append(
                f"| {r['op']} | {r['shape']} | {r['tokens']} | {r['torch_fwd_ms']:.3f} | {r['triton_fwd_ms']:.3f} | "
                f"{r['torch_fwd_ms'] / r['triton_fwd_ms']:.1f}x | {sdpa} | {r['triton_fwd_ms'] / r['floor_ms']:.1f}x | "
                f"{r['fused_gbs']:.0f} | {r['torch_fwdbwd_ms']:.3f} | {r['triton_fwdbwd_ms']:.3f} | "
                f"{r['torch_peak_gb']:.2f} | {r['triton_peak_gb']:.2f} |")
        lines.append("")
    if models:
        lines += ["Models at 224, bf16 autocast (inference batch 128, training batch 64 with an AdamW step):", "",
                  "| model | path | infer img/s | train img/s | train peak GB |", "|---|---|---|---|---|"]
        for r in models:
            path = "reference" if r["backend"] == "torch" else "fused"
            lines.append(f"| {r['model']} | {path} | {r['infer_img_s']:.0f} | {r['train_img_s']:.0f} | "
                         f"{r['train_peak_gb']:.2f} |")
        by = {(r["model"], r["backend"]): r for r in models}
        lines.append("")
        for name in dict.fromkeys(r["model"] for r in models):
            ref, fused = by.get((name, "torch")), by.get((name, "triton"))
            if ref and fused:
                lines.append(f"- {name}: fused/reference inference {fused['infer_img_s'] / ref['infer_img_s']:.2f}x, "
                             f"training {fused['train_img_s'] / ref['train_img_s']:.2f}x, training peak memory "
                             f"{fused['train_peak_gb'] / ref['train_peak_gb']:.2f}x")
        lines.append("")
    return "\n".join(lines) + "\n"


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
    p.add_argument("--models", nargs="*", default=["biformer_tiny", "biformer_small", "biformer_base",
                                                   "visattn_mambaout_tiny", "lamamba_tiny", "lamamba_small"])
    p.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "RESULTS.md"))
    p.add_argument("--time-limit", type=float, default=float("inf"),
                   help="seconds; op and model cases that would start later are skipped, the report is still written")
    args = p.parse_args()
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
    command = "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:])
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
        cases = [(bench_routed, s) for s in ROUTED_SHAPES]
        cases += [(bench_scan, s) for s in LAMAMBA_T_STAGES] + [(bench_window, s) for s in LAMAMBA_T_STAGES]
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
        backends = ("triton",) if name.startswith(FUSED_ONLY_MODELS) else ("torch", "triton")
        for backend in backends:
            row = attempt(f"{name} [{backend}]", lambda name=name, backend=backend: bench_model(name, backend))
            if row is None:
                continue
            models.append(row)
            print(f"{name} [{backend}]: {row['infer_img_s']:.0f} / {row['train_img_s']:.0f} img/s, "
                  f"{row['train_peak_gb']:.2f} GB ({time.time() - started:.0f} s)", flush=True)
            report()
    report()
    print(markdown(env, tests, ops, models, command))
    if errors:
        return 1
    return 0 if tests.startswith(("passed", "skipped")) else 1


if __name__ == "__main__":
    sys.exit(main())
