"""The built-in default job: the small BiFormer on scikit-learn's digits must pass 90% validation top-1."""

import pytest

from tests.engine._logged import assert_logged
from visattn.tasks.classification.task import ClassificationConfig, evaluate_checkpoint, train


def test_demo_reaches_90_percent_and_eval_reproduces_it(tmp_path):
    cfg = ClassificationConfig.demo(str(tmp_path))
    result = train(cfg)
    assert result["best"]["val_top1"] >= 90.0
    assert len(result["history"]) == cfg.epochs
    metrics = evaluate_checkpoint(str(tmp_path / "best.pth"), workers=0)
    assert metrics["count"] == 360
    assert abs(metrics["top1"] - result["best"]["val_top1"]) < 1e-6


def test_reid_demo_ranks_far_above_chance(tmp_path, monkeypatch):
    """The built-in re-id run (ResNet-18 from scratch on the synthetic people) against random distances under the
    same protocol on the same query and gallery."""
    import numpy as np

    from visattn.tasks.reid import evaluate_ranking
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
