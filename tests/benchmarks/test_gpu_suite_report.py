"""The GPU suite checked on the CPU (tiny shapes, interpreted kernels): a GPU run must not fail on a typo."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
spec = importlib.util.spec_from_file_location("gpu_suite", os.path.join(ROOT, "benchmarks", "gpu_suite.py"))
gpu_suite = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_suite)


def test_report_has_every_table_and_the_ratios():
    env = {"card": "Card X", "date": "2026-01-01", "torch": "2.11", "triton": "3.6", "cuda": "13.0",
           "bandwidth": 3000.0}
    op = {"op": "routed attention", "shape": "T/S stage 1 @224", "tokens": "64x56x56x64", "floor_ms": 0.01,
          "sdpa_fwd_ms": 0.5,
          "fused_gbs": 1500.0, **{f"{b}_{k}": 1.0 for b in ("torch", "triton")
                                  for k in ("fwd_ms", "fwdbwd_ms", "peak_gb")}}
    op["triton_fwd_ms"] = 0.02
    op["triton_graph_fwd_ms"] = 0.015
    op.update(flex_layout="R=64", flex_fwd_ms=0.01, flex_mask_ms=0.2, flex_e2e_fwd_ms=0.25, flex_fwdbwd_ms=0.5,
              flex_e2e_fwdbwd_ms=0.8, flex_peak_gb=2.0, flex_compile_s=12.0, flex_bwd_compile_s=30.0,
              flex_max_err=0.0078, flex_errors={})
    failed = {**op, "shape": "T/S stage 3 @224", "flex_layout": "R=4, 4/block", "flex_fwdbwd_ms": None,
              "flex_e2e_fwdbwd_ms": None, "flex_peak_gb": None, "flex_bwd_compile_s": None,
              "flex_errors": {"InductorError: no valid config": ["flex_bwd_compile_s"]}}
    models = [{"model": "biformer_tiny", "name": "biformer_tiny", "backend": "torch", "infer_img_s": 1000.0,
               "train_img_s": 300.0, "train_peak_gb": 6.0, "graph_infer_img_s": None,
               "graph_error": "RuntimeError: operation not permitted when stream is capturing"},
              {"model": "biformer_tiny", "name": "biformer_tiny", "backend": "triton", "infer_img_s": 3500.0,
               "train_img_s": 700.0, "train_peak_gb": 2.5, "graph_infer_img_s": 5000.0, "graph_error": None},
              {"model": "herseg @1024", "name": "herseg", "backend": "torch", "infer_img_s": 300.0,
               "train_img_s": 40.0, "train_peak_gb": 1.4},
              {"model": "herseg @1024", "name": "herseg", "backend": "triton", "infer_img_s": 600.0,
               "train_img_s": 64.0, "train_peak_gb": 1.2}]
    scan = {**op, "op": "selective scan", "shape": "LaMamba-T stage 1 @224"}
    del scan["sdpa_fwd_ms"]
    report = gpu_suite.markdown(env, "passed: 40 passed", [op, scan, failed], models, "python benchmarks/gpu_suite.py")
    assert "## Card X — 2026-01-01" in report and "torch 2.11, Triton 3.6" in report
    row = "| routed attention | T/S stage 1 @224 | 64x56x56x64 | 1.000 | 0.020 | 50.0x | 0.500 | 2.0x | 1500 |"
    assert row in report
    assert "| 1.00 | 1.00 | – | 0.015 | 1.5x |" in report  # graph columns: no reference graph, fused 1.5x floor
    assert "| selective scan | LaMamba-T stage 1 @224 | 64x56x56x64 | 1.000 | 0.020 | 50.0x | – | 2.0x |" in report
    assert "| biformer_tiny | fused | 3500 | 700 | 2.50 | 5000 |" in report
    assert "- biformer_tiny (reference): RuntimeError: operation not permitted when stream is capturing" in report
    # targets: against the official anchors (3231 / 804, 5.94) and against the reference path
    assert "| biformer_tiny | 3500 / 700, 2.50 | 1000 / 300, 6.00 | 3231 / 804, 5.94 | 1.08x / 0.87x / 0.42x | " \
        "3.50x / 2.33x / 0.42x | official x3 / x2, memory <= x0.5 | no |" in report
    assert "| herseg @1024 | 600 / 64, 1.20 | 300 / 40, 1.40 | – | – | 2.00x / 1.60x / 0.86x | reference x1.5 / x1.5 " \
        "| yes |" in report
    # FlexAttention next to the fused op: kernel alone, mask build, end to end; who wins; what failed
    assert "| T/S stage 1 @224 | R=64 | 0.020 | 0.010 | 0.200 | 0.250 | 1.000 | 0.500 | 0.800 | 1.00 | 2.00 | " \
        "12, 30 | 0.0078 |" in report
    assert "- T/S stage 1 @224: fused wins the forward, flex wins the forward+backward (flex e2e / fused: forward " \
        "12.50x, forward+backward 0.80x; flex kernel alone / fused: forward 0.50x, forward+backward 0.50x)" in report
    assert "| T/S stage 3 @224 | R=4, 4/block | 0.020 | 0.010 | 0.200 | 0.250 | 1.000 | – | – | 1.00 | – | 12, – |" \
        in report
    assert "- T/S stage 3 @224: fused wins the forward, flex failed the forward+backward" in report
    assert "- T/S stage 3 @224: flex_bwd_compile_s: InductorError: no valid config" in report
    assert report.count("LaMamba-T stage 1 @224") == 1  # only routed attention is compared with flex
    assert "inference 3.50x, training 2.33x, training peak memory 0.42x" in report


def test_op_benchmarks_run_end_to_end(monkeypatch):
    monkeypatch.setattr(gpu_suite, "DEVICE", "cpu")
    rows = [gpu_suite.bench_routed(("tiny", 1, 8, 8, 32, 2, 2, 2), bandwidth=100.0),
            gpu_suite.bench_scan(("tiny", 4, 16, 1), bandwidth=100.0, batch=1),
            gpu_suite.bench_window(("tiny", 8, 32, 2), bandwidth=100.0, batch=1),
            gpu_suite.bench_linear(("tiny injective", 1, 6, 32, 2, "injective"), bandwidth=100.0),
            gpu_suite.bench_linear(("tiny normalize", 1, 6, 32, 4, "normalize"), bandwidth=100.0)]
    for row in rows:
        assert row["triton_fwd_ms"] > 0 and row["torch_fwdbwd_ms"] > 0 and row["fused_gbs"] > 0
    assert "sdpa_fwd_ms" in rows[0]
    flex = rows[0]  # eager flex on the CPU: forward only (torch has no flex backward on CPU), failures recorded
    assert flex["flex_fwd_ms"] > 0 and flex["flex_e2e_fwd_ms"] > 0 and flex["flex_mask_ms"] > 0
    assert flex["flex_max_err"] < 0.05
    assert "flex_fwdbwd_ms" in flex or any("flex_bwd_compile_s" in keys for keys in flex["flex_errors"].values())
    env = {"card": "cpu", "date": "d", "torch": "t", "triton": "x", "cuda": None, "bandwidth": 100.0}
    assert "| window attention | LaMamba-T tiny @224 |" in gpu_suite.markdown(env, "skipped", rows, [], "cmd")
    assert "| linear attention | tiny normalize | 1x36x32, 4h, normalize |" in gpu_suite.markdown(
        env, "skipped", rows, [], "cmd")


def test_segmentation_benchmark_runs_end_to_end(monkeypatch):
    monkeypatch.setattr(gpu_suite, "DEVICE", "cpu")
    monkeypatch.setattr(gpu_suite, "SEGMENTATION_MODELS", {"herseg": (32, 2, 3)})
    row = gpu_suite.model_row("herseg", "torch", warmup=0, repeat=1)
    assert row["model"] == "herseg @32" and row["infer_img_s"] > 0 and row["train_img_s"] > 0
    assert "peak_gb_per_image" in row
    env = {"card": "cpu", "date": "d", "torch": "t", "triton": "x", "cuda": None, "bandwidth": 100.0}
    row.update(train_peak_gb=2.6, peak_gb_batch1=1.1, peak_gb_per_image=0.75)
    report = gpu_suite.markdown(env, "skipped", [], [row], "cmd")
    assert "herseg @32 (reference): training memory 0.75 GB per image (batch 1 peak 1.10 GB; batch 3 peak 2.60 GB)" \
        in report


def test_a_run_rewrites_its_own_report_above_the_earlier_runs(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("OUT", str(out))
    path = tmp_path / "RESULTS.md"
    gpu_suite.write_report(str(path), "## run 1\n", gpu_suite.earlier_results(str(path)))
    earlier = gpu_suite.earlier_results(str(path))
    gpu_suite.write_report(str(path), "## run 2, partial\n", earlier)
    gpu_suite.write_report(str(path), "## run 2, complete\n", earlier)
    text = path.read_text()
    assert text.startswith("# GPU results") and text.count("# GPU results") == 1
    assert "partial" not in text and text.index("## run 2, complete") < text.index("## run 1")
    assert (out / "RESULTS.md").read_text() == text
    assert not list(tmp_path.glob("*.tmp"))


def test_model_benchmark_runs_end_to_end(monkeypatch):
    monkeypatch.setattr(gpu_suite, "DEVICE", "cpu")
    monkeypatch.setattr(gpu_suite, "CLASSIFIER_SETTING", (32, 2, 2))
    row = gpu_suite.model_row("mambaout_femto", "torch", warmup=0, repeat=1)
    assert row["model"] == "mambaout_femto" and row["backend"] == "torch" and row["graph_infer_img_s"] is None
    assert row["infer_img_s"] > 0 and row["train_img_s"] > 0


def test_reid_benchmark_runs_end_to_end(monkeypatch):
    import benchmarks.reid_cost

    monkeypatch.setattr(gpu_suite, "DEVICE", "cpu")
    monkeypatch.setattr(benchmarks.reid_cost, "INPUT", (64, 32))  # the same network and code path, 1/16 the pixels
    row = gpu_suite.bench_reid("plain", {}, "torch", infer_batch=1, train_batch=2, warmup=0, repeat=1)
    assert row["model"] == "re-id: plain @256x128" and row["infer_img_s"] > 0 and row["train_img_s"] > 0


def test_inference_profile_runs_on_both_paths(monkeypatch):
    monkeypatch.setattr(gpu_suite, "DEVICE", "cpu")
    monkeypatch.setattr(gpu_suite, "PROFILED_INFERENCE", (("inline_deit_tiny", 32, 1),))
    text = gpu_suite.profile_inference()
    assert "inline_deit_tiny inference, batch 1 at 32, reference path:" in text
    assert "inline_deit_tiny inference, batch 1 at 32, fused path:" in text
    assert text.count("Self CPU time total") == 2  # a profiler table per path
