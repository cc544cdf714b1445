#!/usr/bin/env python
"""The one prepared GPU run: op tests on CUDA, op timings, model throughput; writes benchmarks/RESULTS.md.

    PYTHONUNBUFFERED=1 python benchmarks/gpu_suite.py            # everything, a few minutes on an H100/H200
    python benchmarks/gpu_suite.py --skip-tests --models biformer_tiny

1. ``pytest tests/ops`` with ``VISATTN_TEST_DEVICE=cuda`` (fused kernels against the reference, bf16 included).
2. Routed attention at BiFormer's shapes: the fused kernels against the reference (the official gather
   approach) and dense SDPA over the same tokens; forward and forward+backward time, achieved GB/s, ratio
   to the memory floor (one read of Q, K, V and one write of O at the measured copy bandwidth), peak memory.
3. Models end to end with the reference and the fused path in the same run: inference img/s (batch 128,
   bf16 autocast), training img/s (batch 64, AdamW step, bf16 autocast), training peak memory.
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
OP_SHAPES = [
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


def cuda_time(fn, warmup: int = 3, repeat: int = 10) -> float:
    """Median milliseconds of ``fn()`` over ``repeat`` runs, timed with CUDA events."""
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
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_time(lambda: dst.copy_(src))
    return 2 * src.numel() / ms / 1e6


def peak_gb(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 1e9


def run_op_tests() -> str:
    env = {**os.environ, "VISATTN_TEST_DEVICE": "cuda"}
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/ops"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    tail = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-500:]
    if result.returncode != 0:
        print(result.stdout[-6000:], result.stderr[-3000:], sep="\n")
    return f"{'passed' if result.returncode == 0 else 'FAILED'}: {tail}"


def bench_op(shape, bandwidth: float, dtype=torch.bfloat16) -> dict:
    from visattn.ops.routed_attention import routed_attention

    name, b, h, w, c, heads, n_win, topk = shape
    q, k, v = (torch.randn(b, h, w, c, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(b, h, w, c, device="cuda", dtype=dtype)
    row = {"shape": name, "tokens": f"{b}x{h}x{w}x{c}, {heads}h, S={n_win}, k={topk}"}
    floor_ms = 4 * q.numel() * q.element_size() / bandwidth / 1e6
    row["floor_ms"] = floor_ms
    for backend in ("torch", "triton"):
        def fwd(backend=backend):
            with torch.no_grad():
                return routed_attention(q, k, v, heads, n_win, topk, backend=backend)

        def fwd_bwd(backend=backend):
            out = routed_attention(q, k, v, heads, n_win, topk, backend=backend)
            return torch.autograd.grad(out, (q, k, v), grad)

        row[f"{backend}_fwd_ms"] = cuda_time(fwd)
        row[f"{backend}_fwdbwd_ms"] = cuda_time(fwd_bwd)
        row[f"{backend}_peak_gb"] = peak_gb(fwd_bwd)
    qh, kh, vh = (t.detach().reshape(b, h * w, heads, c // heads).transpose(1, 2) for t in (q, k, v))
    row["sdpa_fwd_ms"] = cuda_time(lambda: F.scaled_dot_product_attention(qh, kh, vh))
    row["fused_gbs"] = 4 * q.numel() * q.element_size() / row["triton_fwd_ms"] / 1e6
    return row


def bench_model(name: str, backend: str, infer_batch: int = 128, train_batch: int = 64, size: int = 224) -> dict:
    import timm

    import visattn  # noqa: F401

    os.environ["VISATTN_BACKEND"] = backend
    torch.manual_seed(0)
    model = timm.create_model(name).cuda()
    x = torch.randn(infer_batch, 3, size, size, device="cuda")
    model.eval()

    def infer():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            model(x)

    infer_ms = cuda_time(infer, warmup=3, repeat=10)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    xt = torch.randn(train_batch, 3, size, size, device="cuda")
    yt = torch.randint(0, 1000, (train_batch,), device="cuda")

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
        lines += ["Routed attention, bf16 (ms; floor = one read of Q, K, V and one write of O at the copy bandwidth):",
                  "", "| shape | tokens | ref fwd | fused fwd | dense SDPA fwd | fused / floor | fused GB/s | "
                  "ref fwd+bwd | fused fwd+bwd | ref peak GB | fused peak GB |", "|" + "---|" * 11]
        for r in ops:
            lines.append(
                f"| {r['shape']} | {r['tokens']} | {r['torch_fwd_ms']:.3f} | {r['triton_fwd_ms']:.3f} | "
                f"{r['sdpa_fwd_ms']:.3f} | {r['triton_fwd_ms'] / r['floor_ms']:.1f}x | {r['fused_gbs']:.0f} | "
                f"{r['torch_fwdbwd_ms']:.3f} | {r['triton_fwdbwd_ms']:.3f} | {r['torch_peak_gb']:.2f} | "
                f"{r['triton_peak_gb']:.2f} |")
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--skip-ops", action="store_true")
    p.add_argument("--models", nargs="*", default=["biformer_tiny", "biformer_small", "biformer_base"])
    p.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "RESULTS.md"))
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
    tests = "skipped" if args.skip_tests else run_op_tests()
    print(f"op tests: {tests} ({time.time() - started:.0f} s)", flush=True)
    ops = []
    if not args.skip_ops:
        for shape in OP_SHAPES:
            ops.append(bench_op(shape, env["bandwidth"]))
            r = ops[-1]
            print(f"{r['shape']}: ref {r['torch_fwd_ms']:.3f} ms, fused {r['triton_fwd_ms']:.3f} ms, "
                  f"sdpa {r['sdpa_fwd_ms']:.3f} ms, floor {r['floor_ms']:.3f} ms", flush=True)
    models = []
    for name in args.models:
        for backend in ("torch", "triton"):
            models.append(bench_model(name, backend))
            torch.cuda.empty_cache()
            r = models[-1]
            print(f"{name} [{backend}]: {r['infer_img_s']:.0f} / {r['train_img_s']:.0f} img/s, "
                  f"{r['train_peak_gb']:.2f} GB ({time.time() - started:.0f} s)", flush=True)
    command = "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:])
    report = markdown(env, tests, ops, models, command)
    print(report)
    header = "# GPU results\n\nWritten by `benchmarks/gpu_suite.py`; newest first.\n\n"
    previous = ""
    if os.path.exists(args.output):
        with open(args.output) as f:
            previous = f.read().removeprefix(header)
    tmp = args.output + ".tmp"
    with open(tmp, "w") as f:
        f.write(header + report + ("\n" + previous if previous else ""))
    os.replace(tmp, args.output)
    out_dir = os.environ.get("OUT")
    if out_dir:
        with open(os.path.join(out_dir, "RESULTS.md"), "w") as f:
            f.write(header + report + ("\n" + previous if previous else ""))
    return 0 if tests.startswith(("passed", "skipped")) else 1


if __name__ == "__main__":
    sys.exit(main())
