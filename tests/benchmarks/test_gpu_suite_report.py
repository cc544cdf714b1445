"""The GPU suite's report, built from made-up rows: a GPU run must not fail at its last step."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
spec = importlib.util.spec_from_file_location("gpu_suite", os.path.join(ROOT, "benchmarks", "gpu_suite.py"))
gpu_suite = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_suite)


def test_report_has_every_table_and_the_ratios():
    env = {"card": "Card X", "date": "2026-01-01", "torch": "2.11", "triton": "3.6", "cuda": "13.0",
           "bandwidth": 3000.0}
    op = {"shape": "T/S stage 1 @224", "tokens": "64x56x56x64", "floor_ms": 0.01, "sdpa_fwd_ms": 0.5,
          "fused_gbs": 1500.0, **{f"{b}_{k}": 1.0 for b in ("torch", "triton")
                                  for k in ("fwd_ms", "fwdbwd_ms", "peak_gb")}}
    op["triton_fwd_ms"] = 0.02
    models = [{"model": "biformer_tiny", "backend": "torch", "infer_img_s": 1000.0, "train_img_s": 300.0,
               "train_peak_gb": 6.0},
              {"model": "biformer_tiny", "backend": "triton", "infer_img_s": 3500.0, "train_img_s": 700.0,
               "train_peak_gb": 2.5}]
    report = gpu_suite.markdown(env, "passed: 40 passed", [op], models, "python benchmarks/gpu_suite.py")
    assert "## Card X — 2026-01-01" in report and "torch 2.11, Triton 3.6" in report
    assert "| T/S stage 1 @224 | 64x56x56x64 | 1.000 | 0.020 | 0.500 | 2.0x | 1500 |" in report
    assert "| biformer_tiny | fused | 3500 | 700 | 2.50 |" in report
    assert "inference 3.50x, training 2.33x, training peak memory 0.42x" in report
