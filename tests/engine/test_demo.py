"""The built-in default jobs: the README's quick start (what `make demo` runs) as written, and the re-id demo."""

import csv
import json

import pytest

from tests.engine._logged import assert_logged
from tests.test_readme import quick_start_commands
from tests.tools._runs import tool
from visattn.tasks.classification.task import ClassificationConfig


def test_quick_start_runs_as_written(tmp_path, monkeypatch):
    """Every command of the README's quick start, in order, in a scratch folder: the demo BiFormer passes 90% validation
    top-1 and evaluation reproduces it; it predicts the ten sample digits it wrote (one per class) mostly right, exports
    to ONNX within 1e-4 of PyTorch in onnxruntime (at another size and a batch of 1 too), and draws its routing."""
    monkeypatch.chdir(tmp_path)
    results = {}
    for argv in quick_start_commands():
        assert argv[0] == ".venv/bin/python" and argv[1].startswith("tools/"), argv
        name = argv[1].removeprefix("tools/").removesuffix(".py")
        results[name] = tool(name, *argv[2:])
        assert results[name].returncode == 0, results[name].stderr[-3000:]
    run = tmp_path / "runs" / "demo"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best"]["val_top1"] >= 90.0
    assert len(metrics["history"]) == ClassificationConfig.demo("runs/demo").epochs
    evaluated = json.loads(results["eval"].stdout.strip().splitlines()[-1])
    assert evaluated["count"] == 360 and abs(evaluated["top1"] - metrics["best"]["val_top1"]) < 1e-3
    samples = sorted(p.name for p in (run / "samples").iterdir())
    assert samples == [f"digit_{d}.png" for d in range(10)]
    with open(run / "predict" / "predictions.csv", newline="") as f:
        top1 = {row["file"]: row["class"] for row in csv.DictReader(f) if row["rank"] == "1"}
    assert len(top1) == 10
    assert sum(top1[file] == file.split("digit_")[1][0] for file in top1) >= 8
    exported = json.loads(next((run / "export").glob("*.json")).read_text())
    # BiFormer's ONNX export test (tests/tools/test_export.py leaves the family to this one)
    assert exported["model"].startswith("biformer") and exported["exporter"] == "dynamo"
    assert exported["check"]["max_rel_diff"] < 1e-4
    assert exported["dynamic_axes"]["input"] == {"0": "batch", "2": "height", "3": "width"} and not exported["notes"]
    assert (run / "visualize" / "routing.png").stat().st_size > 0


def test_reid_demo_ranks_far_above_chance(tmp_path, monkeypatch):
    """The built-in re-id run (ResNet-18 from scratch on the synthetic people) against random distances under the
    same protocol on the same query and gallery; the prediction API's features of its best.pth score what the run's
    evaluation scored."""
    import numpy as np

    from visattn.tasks.reid import evaluate_ranking
    from visattn.tasks.reid.metrics import distance_matrix
    from visattn.tasks.reid.predict import FeatureExtractor
    from visattn.tasks.reid.task import ReIDConfig, open_data
    from visattn.tasks.reid.task import train as train_reid

    monkeypatch.setenv("VISATTN_CACHE", str(tmp_path / "cache"))
    result = train_reid(ReIDConfig.demo(str(tmp_path / "run")))
    best, last = result["best"], result["history"][-1]
    assert last["ce"] + last["triplet"] == pytest.approx(last["train_loss"], rel=1e-4)
    assert_logged(tmp_path / "run", ["ce", "triplet"])
    data = open_data(None, "auto", False)
    pids = [np.array([i.pid for i in s]) for s in (data.query, data.gallery)]
    cams = [np.array([i.camid for i in s]) for s in (data.query, data.gallery)]
    rng = np.random.default_rng(0)
    chance = [evaluate_ranking(rng.random((len(pids[0]), len(pids[1]))), *pids, *cams) for _ in range(20)]
    assert best["val_mAP"] > 2.5 * np.mean([c["mAP"] for c in chance])
    assert best["val_rank1"] > 4 * np.mean([c["cmc"][0] for c in chance])
    extractor = FeatureExtractor(str(tmp_path / "run" / "best.pth"), device="cpu")
    features = [extractor([item.path for item in split]) for split in (data.query, data.gallery)]
    predicted = evaluate_ranking(distance_matrix(*features, "euclidean").numpy(), *pids, *cams)
    assert predicted["mAP"] == pytest.approx(best["val_mAP"], abs=1e-4)
