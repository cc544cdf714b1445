"""The built-in default job: the small BiFormer on scikit-learn's digits must pass 90% validation top-1."""

from visattn.engine.classification import ClassificationConfig, evaluate_checkpoint, train


def test_demo_reaches_90_percent_and_eval_reproduces_it(tmp_path):
    cfg = ClassificationConfig.demo(str(tmp_path))
    result = train(cfg)
    assert result["best"]["val_top1"] >= 90.0
    assert len(result["history"]) == cfg.epochs
    metrics = evaluate_checkpoint(str(tmp_path / "best.pth"), workers=0)
    assert metrics["count"] == 360
    assert abs(metrics["top1"] - result["best"]["val_top1"]) < 1e-6
