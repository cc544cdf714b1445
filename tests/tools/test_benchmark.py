"""tools/benchmark.py and visattn.benchmark on the CPU: counts, latency, the CSV / Markdown / plot, error
rows, one-line option errors and the README tables."""

import csv
import math
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import timm
import torch

from visattn import benchmark as bench
from visattn.cli import benchmark as tool
from visattn.cli import run as run_tool
from visattn.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FAKE_COUNTS = {"input_size": (224, 224), "params": 1_000_000, "trainable_params": 500_000, "macs": 2.5e9}


def _csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, {row["model"]: row for row in reader}


def _meta_params(name):
    with torch.device("meta"):
        return sum(p.numel() for p in timm.create_model(name).parameters())


def _run_tool(argv, capsys):
    """The tool's main as its command line runs it: (exit code, last line on stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        run_tool(lambda: tool.main(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return exit_info.value.code, err[-1] if err else ""


def test_cli_writes_csv_markdown_and_plot(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--models",
                             "inline_deit_t*", "herseg", "--warmup", "0", "--repeat", "1", "--output", str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    columns, rows = _csv(tmp_path / "benchmark.csv")
    assert columns == ["model", "kind", "input_size", "params", "trainable_params", "macs", "cpu_latency_ms", "error"]
    assert list(rows) == ["inline_deit_tiny", "herseg"]
    expected = (("inline_deit_tiny", "classification", "224x224"), ("herseg", "segmentation", "1024x1024"))
    for name, kind, size in expected:
        row = rows[name]
        params = _meta_params(name)
        assert (row["kind"], row["input_size"], row["error"]) == (kind, size, "")
        assert int(row["params"]) == int(row["trainable_params"]) == params
        assert int(row["macs"]) == round(bench.count_model(name)["macs"])
        assert float(row["cpu_latency_ms"]) > 0
    assert 1.10e9 < int(rows["inline_deit_tiny"]["macs"]) < 1.12e9  # README: 1.11 GMACs
    md = (tmp_path / "benchmark.md").read_text()
    assert "| model | kind | input | params (M) | MACs (G) | CPU ms (batch 1) | error |" in md
    assert "| `herseg` | segmentation | 1024×1024 | 3.24 | 8.23 | " in md
    assert (tmp_path / "speed_vs_macs.png").read_bytes()[:4] == b"\x89PNG"
    assert "inline_deit_tiny: params (M) 6.48, MACs (G) 1.11, CPU ms (batch 1)" in result.stdout
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_a_failing_model_is_an_error_row_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    create = timm.create_model

    def create_or_fail(name, *args, **kwargs):
        if name == "inline_deit_small":
            raise RuntimeError("cannot build\nsecond line of the message")
        return create(name, *args, **kwargs)

    def slow(*args, **kwargs):
        raise ValueError("too slow\nmore")

    monkeypatch.setattr(timm, "create_model", create_or_fail)
    monkeypatch.setattr(bench, "cpu_latency_ms", slow)
    (tmp_path / "speed_vs_macs.png").write_bytes(b"an earlier run's plot")
    code = tool.main(["--models", "inline_deit_tiny", "inline_deit_small", "--output", str(tmp_path)])
    assert code == 1
    _, rows = _csv(tmp_path / "benchmark.csv")
    assert rows["inline_deit_small"]["error"] == "count: RuntimeError: cannot build"
    assert rows["inline_deit_small"]["params"] == "" and rows["inline_deit_small"]["cpu_latency_ms"] == ""
    assert rows["inline_deit_tiny"]["params"] == "6477736" and rows["inline_deit_tiny"]["cpu_latency_ms"] == ""
    assert rows["inline_deit_tiny"]["error"] == "cpu: ValueError: too slow"
    assert "| `inline_deit_small` | classification | – | – | – | – | count: RuntimeError: cannot build |" in (
        tmp_path / "benchmark.md").read_text()
    assert not (tmp_path / "speed_vs_macs.png").exists()  # nothing timed: no plot, and no stale one
    assert "2 of 2 models failed: inline_deit_tiny, inline_deit_small" in capsys.readouterr().err


@pytest.mark.parametrize("argv, fragment", [
    (["--models", "nomatch_*"], "--models 'nomatch_*' matches no model"),
    (["--models", "biformer_tin"], "did you mean biformer_tiny"),
    (["--batch-size", "0", "--device", "cuda"], "--batch-size 0: must be >= 1"),
    (["--repeat", "x"], "--repeat x: not an integer"),
    (["--compile"], "--compile applies to CUDA timing; add --device cuda"),
    (["--paths", "fused"], "--paths applies to CUDA timing"),
    (["--update-readme", "--models", "biformer_tiny"], "--update-readme counts every model"),
    (["--update-readme", "/nonexistent/README.md"], "cannot read /nonexistent/README.md"),
])
def test_bad_options_are_one_line_errors(argv, fragment, capsys):
    code, last = _run_tool(argv, capsys)
    assert code == 2 and last.startswith("error: ") and fragment in last, last


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_one_line_error(capsys):
    code, last = _run_tool(["--device", "cuda"], capsys)
    assert code == 2 and "--device cuda: no CUDA device is available" in last


def test_output_that_is_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--output",
                             str(tmp_path / "file")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    expected = f"error: --output {tmp_path / 'file'} is a file; give a folder for the results"
    assert result.stderr.strip().splitlines() == [expected]


def _outside_tables(text):
    return re.sub(r"(<!-- zoo-table:(\w+):start -->).*?(<!-- zoo-table:\2:end -->)", r"\1\3", text, flags=re.S)


def test_update_readme_rewrites_only_between_the_markers(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    shutil.copy(os.path.join(ROOT, "README.md"), readme)
    original = readme.read_text()
    monkeypatch.setattr(bench, "count_model", lambda name: FAKE_COUNTS)
    assert tool.main(["--update-readme", str(readme)]) == 0
    text = readme.read_text()
    assert _outside_tables(text) == _outside_tables(original) and text != original
    classification = bench.readme_table(text, "classification").splitlines()
    published = bench.read_published(bench.PUBLISHED)
    assert len(classification) == 2 + sum(bench.model_kind(name) == "classification" for name in published)
    assert classification[2].startswith(
        "| `biformer_tiny` | 224×224 | 1.00 (0.50 trainable) | 2.50 | 81.4 | [BiFormer](docs/models/biformer.md), CVPR")
    segmentation = bench.readme_table(text, "segmentation").splitlines()
    assert segmentation[2].startswith(
        "| `herseg` | 224×224 | 1.00 (0.50 trainable) | 2.50 | [HER-Seg](docs/models/herseg.md) (3.53 M")
    assert tool.main(["--update-readme", str(readme)]) == 0
    assert "already up to date" in capsys.readouterr().out and readme.read_text() == text


def test_update_readme_needs_the_markers(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# a README\n\n<!-- zoo-table:classification:start -->\n| old |\n")
    code, last = _run_tool(["--update-readme", str(readme)], capsys)
    assert code == 2 and "needs one <!-- zoo-table:classification:start --> line" in last
    assert readme.read_text() == "# a README\n\n<!-- zoo-table:classification:start -->\n| old |\n"


def test_time_ms_is_the_median_after_the_warm_up():
    calls = []

    def fn():
        calls.append(None)
        time.sleep(0.02 if len(calls) == 1 else 0.002)  # a slow first call, as a warm-up is

    assert 2 <= bench.time_ms(fn, "cpu", warmup=1, repeat=3) < 15
    assert len(calls) == 4
    ran = []
    assert math.isnan(bench.peak_gb(lambda: ran.append(1), "cpu")) and ran == [1]


def test_cuda_timing_runs_on_the_cpu_and_skips_lamambas_reference_path():
    runs = bench.cuda_runs(["reference"], compile=False)
    row = bench.benchmark_row("mambaout_femto", latency=False, runs=runs, device="cpu", infer_batch=1, train_batch=1,
                              warmup=0, repeat=1)
    assert "error" not in row and row["reference_eager_infer_img_s"] > 0 and row["reference_eager_train_img_s"] > 0
    columns = bench.result_columns(False, runs)
    assert columns[-4:] == ["reference_eager_infer_img_s", "reference_eager_train_img_s",
                            "reference_eager_train_peak_gb", "error"]
    assert bench.csv_text([row], columns).splitlines()[1].endswith(",,")  # no peak memory off CUDA, no error
    lamamba = bench.benchmark_row("lamamba_tiny", latency=False, runs=runs, device="cpu")
    assert "error" not in lamamba and not any(key.startswith("reference_") for key in lamamba)
    assert bench.cuda_runs(["reference", "fused"], compile=True) == [
        ("reference", "eager"), ("reference", "compiled"), ("fused", "eager"), ("fused", "compiled")]


def test_model_patterns_and_the_published_table(tmp_path):
    zoo = bench.zoo_models(bench.read_published(bench.PUBLISHED))
    assert set(bench.select_models(["inline_*_tiny", "biformer_tiny", "inline_deit_tiny"], zoo)) == {
        "inline_deit_tiny", "inline_swin_tiny", "inline_pvt_tiny", "inline_cswin_tiny", "biformer_tiny"}
    assert bench.select_models(["deit_small_patch16_224"], zoo) == ["deit_small_patch16_224"]  # a timm baseline
    with pytest.raises(UserError, match="matches no model"):
        bench.select_models(["deit_*"], zoo)
    bad = tmp_path / "published.csv"
    bad.write_text("model,top1\nbiformer_tiny,81.4\n")
    with pytest.raises(UserError, match="expected the columns model,top1,notes"):
        bench.read_published(str(bad))
    bad.write_text("model,top1,notes\nbiformer_tiny,81.4,\nbiformer_tiny,81.4,\n")
    with pytest.raises(UserError, match="biformer_tiny has two rows"):
        bench.read_published(str(bad))
    with pytest.raises(UserError, match="no row for"):
        bench.readme_models({"biformer_tiny": {"top1": "81.4", "notes": ""}})


def test_a_model_whose_reference_path_is_sequential_is_timed_fused_only():
    assert bench.fused_only("lamamba_tiny") and not bench.fused_only("biformer_tiny")
    row = bench.benchmark_row("lamamba_tiny", latency=False, runs=[("reference", "eager")], device="cpu")
    assert "error" not in row and row["params"] > 0 and not any(key.startswith("reference_") for key in row)
