"""visattn-reid-placements: placements spelled and checked, the Pareto front, a study end to end on a tiny synthetic
re-id set (files, overheads, reuse of finished runs) and its one-line errors."""

import csv
import json
import math
import random

import pytest
import timm
import torch

from tests.tools._runs import assert_one_line_error, script, tool
from visattn.errors import UserError
from visattn.tasks.reid.model import REID_ATTENTION
from visattn.tasks.reid.placements import Placement, pareto_front, parse_placement, study_placements

RECIPE = ["--model", "resnet18", "--input-size", "64,32", "--batch-size", "8", "--instances", "2", "--workers", "0",
          "--epochs", "1", "--warmup-epochs", "0", "--latency-batches", "2,1", "--warmup", "1", "--repeat", "2"]


def _dominated_brute_force(points):
    """True where some other point is at least as good in both and better in one (lower cost, higher score)."""
    return [any(c2 <= c and s2 >= s and (c2 < c or s2 > s) for j, (c2, s2) in enumerate(points) if j != i)
            for i, (c, s) in enumerate(points)]


def test_pareto_front_against_brute_force():
    points = [(10.0, 0.50), (12.0, 0.55), (12.0, 0.52), (11.0, 0.50), (15.0, 0.55), (20.0, 0.70), (20.0, 0.70),
              (9.0, 0.40), (math.nan, 0.9), (30.0, 0.69)]
    front = pareto_front(points)
    # by hand: (9, .40), (10, .50), (12, .55), the two identical (20, .70); NaN is never on the front
    assert [i for i, on in enumerate(front) if on] == [0, 1, 5, 6, 7]
    rng = random.Random(0)
    for _ in range(200):
        pts = [(rng.choice([1.0, 2.0, 3.0, 4.0]), rng.choice([0.1, 0.2, 0.3])) for _ in range(rng.randint(1, 8))]
        assert pareto_front(pts) == [not d for d in _dominated_brute_force(pts)], pts


def test_placements_are_spelled_and_named_once():
    p = parse_placement("psa_s@3,2")
    assert p == Placement("psa_s", (2, 3), "last") and p.name == "psa_s@2,3:last" and p.folder == "psa_s_at2-3_last"
    q = parse_placement("psa_p@4,1,2,3:2,0")
    assert q.name == "psa_p@1,2,3,4:0,2" and q.folder == "psa_p_at1-2-3-4_b0-2"
    assert q.model_settings() == {"attn": "psa_p", "attn_at": (1, 2, 3, 4), "attn_blocks": "0,2"}
    assert parse_placement("plain").model_settings() == {"attn": None, "attn_at": (), "attn_blocks": "all"}
    # the default study: plain, then every registered kind at stages 2,3 after the last block
    assert [p.name for p in study_placements()] == ["plain", *(f"{k}@2,3:last" for k in REID_ATTENTION)]
    grid = study_placements(kinds=["psa_s", "psa_p"], stage_sets=[(3,), (2, 3)], blocks=["last", "all"])
    assert len(grid) == 1 + 2 * 2 * 2 and grid[1].name == "psa_s@3:last" and grid[-1].name == "psa_p@2,3:all"
    assert [p.name for p in study_placements(["psa_s@2,3", "plain", "psa_s@3,2:last"])] == ["plain", "psa_s@2,3:last"]
    for spec, words in (("psa_s", "KIND@STAGES"), ("psa_s@2,x", "not ResNet stages"), ("psa_s@5", "stages 1-4"),
                        ("nope@2", "unknown attention kind 'nope'"), ("psa_s@2:first", "not all, last")):
        with pytest.raises(UserError, match=words):
            parse_placement(spec)


@pytest.fixture(scope="module")
def study(reid_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("placements")
    args = [*RECIPE, "--data", reid_folder, "--placements", "psa_s@3", "--output", out]
    first = tool("reid_placements.py", *args)
    assert first.returncode == 0, first.stderr
    return out, args, first


def test_study_trains_measures_and_writes_its_files(study):
    out, _, result = study
    assert "2 placements: plain, psa_s@3:last" in result.stdout
    assert "[1/2] plain: training in" in result.stdout and "[2/2] psa_s@3:last: training in" in result.stdout
    assert result.stdout.count("epoch 1/1:") == 2
    assert (out / "plain" / "last.pth").is_file() and (out / "psa_s_at3_last" / "metrics.json").is_file()
    with open(out / "placements.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["placement"] for r in rows] == ["plain", "psa_s@3:last"]
    plain, psa = rows
    # the plain network's parameters: timm's ResNet-18 without its classifier and the BNNeck's weight and bias
    assert float(plain["params_m"]) == pytest.approx(
        (sum(p.numel() for p in timm.create_model("resnet18", num_classes=0).parameters()) + 2 * 512) / 1e6, abs=1e-4)
    assert float(psa["params_m"]) > float(plain["params_m"]) and float(psa["gmacs"]) > float(plain["gmacs"])
    for batch in (1, 2):  # overhead over the plain backbone, per batch size, against the table's own times
        ms, base = float(psa[f"cpu_b{batch}_ms"]), float(plain[f"cpu_b{batch}_ms"])
        assert float(psa[f"cpu_b{batch}_overhead_pct"]) == pytest.approx((ms / base - 1) * 100, abs=0.05)
        assert float(plain[f"cpu_b{batch}_overhead_pct"]) == 0
    saved = json.loads((out / "placements.json").read_text())
    assert saved["pareto_latency"] == "cpu_b1_ms" and saved["recipe"]["epochs"] == 1
    metrics = json.loads((out / "plain" / "metrics.json").read_text())["history"][-1]
    first = saved["placements"][0]
    assert first["mAP"] == metrics["val_mAP"] and first["mINP"] == metrics["val_mINP"] and first["reused"] is False
    points = [(r["cpu_b1_ms"], r["mAP"]) for r in saved["placements"]]
    assert [r["pareto"] for r in saved["placements"]] == [not d for d in _dominated_brute_force(points)]
    table = (out / "placements.md").read_text()
    assert "| `psa_s@3:last` | psa_s | 3 | last |" in table and "CPU b2 overhead" in table
    assert table.count("★") == sum(r["pareto"] for r in saved["placements"])
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob(".*.tmp"))


def test_a_finished_run_is_reused_and_another_recipe_is_refused(study):
    out, args, first = study
    again = tool("reid_placements.py", *args)
    assert again.returncode == 0, again.stderr
    assert "[1/2] plain: reusing the finished run in" in again.stdout
    assert "[2/2] psa_s@3:last: reusing the finished run in" in again.stdout and "epoch 1/1" not in again.stdout
    saved = json.loads((out / "placements.json").read_text())["placements"]
    assert all(r["reused"] for r in saved)
    assert_one_line_error(tool("reid_placements.py", *args, "--lr", "0.01"),
                          "plain holds a run of another recipe (lr 0.00035 (this study: 0.01))", "--overwrite")


def test_an_unfinished_run_is_resumed(study, reid_folder, tmp_path):
    out, _, _ = study
    ckpt = torch.load(out / "plain" / "last.pth", weights_only=False)
    ckpt["config"]["epochs"] = 2  # as a 2-epoch run stopped after its first epoch
    (tmp_path / "plain").mkdir()
    torch.save(ckpt, tmp_path / "plain" / "last.pth")
    result = tool("reid_placements.py", *RECIPE, "--epochs", "2", "--data", reid_folder, "--placements", "plain",
                  "--output", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[1/1] plain: resuming in" in result.stdout
    assert "epoch 2/2:" in result.stdout and "epoch 1/2:" not in result.stdout
    saved = json.loads((tmp_path / "placements.json").read_text())["placements"]
    assert [(r["placement"], r["epochs"], r["reused"]) for r in saved] == [("plain", 2, False)]


def test_bad_placements_give_one_line_errors(reid_folder, tmp_path):
    args = [*RECIPE, "--data", reid_folder, "--output", tmp_path / "study"]
    assert_one_line_error(tool("reid_placements.py", *args, "--placements", "psa_s"),
                          "--placements psa_s: write plain or KIND@STAGES[:BLOCKS]")
    assert_one_line_error(tool("reid_placements.py", *args, "--placements", "sea@2,3"),
                          "unknown attention kind 'sea'; registered: " + ", ".join(REID_ATTENTION))
    assert_one_line_error(tool("reid_placements.py", *args, "--attn", "sea"), "--attn sea: unknown attention kind")
    assert_one_line_error(tool("reid_placements.py", *args, "--attn", "psa_s", "--attn-at", "2,5"),
                          "placement psa_s@2,5:last: stages must be ResNet stages 1-4")
    assert_one_line_error(tool("reid_placements.py", *args, "--placements", "psa_s@2", "--attn-at", "3"),
                          "drop --attn, --attn-at and --attn-blocks, or drop --placements")
    assert_one_line_error(tool("reid_placements.py", *args, "--placements", "psa_s@2:5"),
                          "placement psa_s@2:5: --attn-blocks 5: stage 2 has blocks 0..1")
    assert_one_line_error(tool("reid_placements.py", *args, "--model", "test_biformer", "--placements", "psa_s@2"),
                          "placement psa_s@2:last:", "test_biformer has none")
    assert_one_line_error(tool("reid_placements.py", *args, "--resume", "x.pth"), "unrecognized arguments: --resume")
    assert not (tmp_path / "study").exists()  # nothing was trained or written


def test_the_script_lists_the_study_and_recipe_options():
    result = script("reid_placements.py", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--placements", "KIND@STAGES[:BLOCKS]", "--latency-batches", "--threads", "--epochs",
                   "--instances", "--attn-blocks"):
        assert option in result.stdout, option


def test_threads_are_restored_after_timing():
    from visattn.tasks.reid.placements import measure_costs

    before = torch.get_num_threads()
    [cost] = measure_costs("resnet18", [{"attn": "psa_s", "attn_at": (4,), "attn_blocks": "last"}], (32, 16),
                           batches=(1,), threads=1, warmup=0, repeat=1)
    assert torch.get_num_threads() == before and cost["cpu_b1_ms"] > 0
    assert set(cost) == {"params", "macs", "cpu_b1_ms"}  # no CUDA timing unless asked


def test_the_networks_are_timed_in_turn_within_each_round(monkeypatch):
    """Every round times each network once, in order, so that drift falls on all of them alike; the medians are each
    network's own."""
    from visattn.tasks.reid import placements

    calls = []
    fake_ms = iter(range(1, 100))

    def timed(model, run, x, warmup, repeat, amp_dtype=None):
        calls.append((model.attention_kind, x.shape[0], warmup))
        return float(next(fake_ms))

    monkeypatch.setattr(placements, "inference_ms", timed)
    plain, se = {}, {"attn": "se", "attn_at": (4,), "attn_blocks": "last"}
    costs = placements.measure_costs("resnet18", [plain, se], (32, 16), batches=(1, 2), warmup=2, repeat=3)
    timed_calls = [(kind, batch) for kind, batch, warmup in calls if warmup == 0]
    assert timed_calls == [(None, 1), ("se", 1)] * 3 + [(None, 2), ("se", 2)] * 3
    # fake times 1, 2 are the warm-ups of batch 1; rounds give plain 3, 5, 7 and se 4, 6, 8
    assert (costs[0]["cpu_b1_ms"], costs[1]["cpu_b1_ms"]) == (5.0, 6.0)
    assert costs[1]["params"] > costs[0]["params"] and costs[1]["macs"] > costs[0]["macs"]
