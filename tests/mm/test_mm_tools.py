"""tools/train.py CONFIG and tools/eval.py CONFIG CHECKPOINT, as a user runs them."""

import json

from tests.mm.synthetic import make_coco
from tests.mm.test_det_seg_pipelines import DET, _det_cfg
from tests.tools._runs import assert_one_line_error, tool


def test_train_then_eval_a_detection_config(tmp_path):
    make_coco(str(tmp_path / "coco"))
    retinanet = next(p for p in DET if "retinanet_biformer-s" in p)
    cfg = _det_cfg(retinanet, tmp_path / "unused", tmp_path / "coco")
    cfg.model.backbone.arch = "tiny"
    config = tmp_path / "retinanet_small_run.py"
    cfg.dump(str(config))
    work_dir = tmp_path / "work"
    result = tool("train.py", str(config), "--work-dir", str(work_dir), "--cfg-options", "train_cfg.max_iters=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"work dir: {work_dir}" in result.stdout
    result = tool("eval.py", str(config), str(work_dir / "iter_2.pth"), "--work-dir", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert "coco/bbox_mAP" in metrics


def test_config_errors_are_one_line(tmp_path):
    assert_one_line_error(tool("train.py", str(tmp_path / "missing.py")), "config", "does not exist")
    result = tool("eval.py", DET[0], str(tmp_path / "missing.pth"))
    assert_one_line_error(result, "checkpoint", "does not exist")
