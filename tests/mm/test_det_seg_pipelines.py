"""Every shipped detection and segmentation config: build, train 2 iterations and evaluate; a config built on none
of the others (its ``_base_`` files are mmdet's / mmseg's) also saves, reloads and resumes. A config derived from
another shipped one changes its backbone (and the neck's channels), not the run: its base's run covers the
checkpoint, reload and resume path it shares.

Runs on CPU with the mmcv stand-in ops; mmdet and mmseg are required (an import failure fails the test)."""

import glob
import os
import re

import pytest
import torch

from tests.mm.synthetic import make_ade, make_coco
from visattn.mm import runner as mm_runner

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DET = sorted(glob.glob(os.path.join(ROOT, "configs", "det", "*.py")))
SEG = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "seg", "*.py")) if "cityscapes" not in p)
CITYSCAPES = sorted(glob.glob(os.path.join(ROOT, "configs", "seg", "*cityscapes*.py")))


def _walk(node, fn):
    if isinstance(node, dict):
        fn(node)
        for value in node.values():
            _walk(value, fn)
    elif isinstance(node, list | tuple):
        for value in node:
            _walk(value, fn)


def _shrink(cfg, scale, crop=None):
    """Small images everywhere: resize targets, crops and the preprocessor's pad size."""
    def fix(node):
        if node.get("type") in ("Resize", "RandomResize", "RandomChoiceResize") and "scale" in node:
            node["scale"] = scale
        if node.get("type") == "RandomCrop" and crop:
            node["crop_size"] = crop
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        _walk(cfg[key], fix)
    if crop and cfg.model.data_preprocessor.get("size"):
        cfg.model.data_preprocessor.size = crop


def _small_run(cfg, work_dir, data_root, max_iters=2):
    cfg.work_dir = str(work_dir)
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", by_epoch=False, interval=2)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=1)
    cfg.log_processor = dict(by_epoch=False)
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg[key]
        loader.num_workers = 0
        loader.persistent_workers = False
        loader.batch_size = 2 if key == "train_dataloader" else 1
        loader.dataset.data_root = str(data_root)
    cfg.model.backbone.init_cfg = None
    return cfg


def _det_cfg(path, work_dir, data_root):
    cfg = mm_runner.load_config(path)
    cfg = _small_run(cfg, work_dir, data_root)
    _shrink(cfg, (128, 96))
    for key in ("val_evaluator", "test_evaluator"):
        cfg[key].ann_file = os.path.join(str(data_root), "annotations", "instances_val2017.json")
    cfg.model.test_cfg = _fast_test_cfg(cfg.model.test_cfg)
    return cfg


def _fast_test_cfg(test_cfg):
    """Keep a few detections whatever their score: an untrained detector must still produce some to score."""
    final = test_cfg.rcnn if "rcnn" in test_cfg else test_cfg
    final.max_per_img = 10
    final.score_thr = 0.0
    return test_cfg


def _seg_cfg(path, work_dir, data_root):
    cfg = mm_runner.load_config(path)
    cfg = _small_run(cfg, work_dir, data_root)
    _shrink(cfg, (96, 64), crop=(64, 64))
    return cfg


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    make_coco(str(root))
    return root


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    make_ade(str(root))
    return root


def _derived(path: str) -> bool:
    """Whether the config's ``_base_`` is another shipped config (``'./<name>.py'``)."""
    return re.search(r"^_base_ = \['\./[^']+\.py'\]", open(path).read(), re.MULTILINE) is not None


def _train_and_evaluate(cfg_fn, path, tmp_path, data_root, metric_keys):
    cfg = cfg_fn(path, tmp_path / "run", data_root)
    cfg.train_cfg.val_interval = cfg.train_cfg.max_iters + 1  # evaluated once, below
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=-1, save_last=False)
    runner = mm_runner.build_runner(cfg)
    runner.train()
    assert runner.iter == 2
    metrics = runner.val()
    for key in metric_keys:
        assert key in metrics, f"{key} not in {sorted(metrics)}"
    assert not list((tmp_path / "run").glob("*.pth"))


def _run(cfg_fn, path, tmp_path, data_root, metric_keys):
    run = _train_and_evaluate if _derived(path) else _train_test_resume
    run(cfg_fn, path, tmp_path, data_root, metric_keys)


def test_derived_configs_are_told_apart_from_base_configs():
    derived = {os.path.basename(p) for p in DET + SEG + CITYSCAPES if _derived(p)}
    assert "mask-rcnn_biformer-b_fpn_1x_coco.py" in derived and "mask-rcnn_biformer-s_fpn_1x_coco.py" not in derived
    assert "ocrnet_hrnetv2-w48-psa_p_4xb2-40k_cityscapes-512x1024.py" in derived
    assert "ocrnet_hrnetv2-w18-psa_s_4xb4-160k_ade20k-512x512.py" not in derived  # its base is mmseg's


def _train_test_resume(cfg_fn, path, tmp_path, data_root, metric_keys):
    cfg = cfg_fn(path, tmp_path / "run", data_root)
    runner = mm_runner.build_runner(cfg)
    runner.train()
    assert runner.iter == 2
    checkpoint = tmp_path / "run" / "iter_2.pth"
    assert checkpoint.exists()
    torch.load(checkpoint, map_location="cpu")  # mmengine's checkpoint under torch's weights_only default
    test_cfg = cfg_fn(path, tmp_path / "test", data_root)
    test_cfg.load_from = str(checkpoint)
    metrics = mm_runner.build_runner(test_cfg).test()
    for key in metric_keys:
        assert key in metrics, f"{key} not in {sorted(metrics)}"
    resumed_cfg = cfg_fn(path, tmp_path / "run", data_root)
    resumed_cfg.train_cfg.max_iters = 4
    resumed_cfg.train_cfg.val_interval = 4
    resumed_cfg.resume = True
    resumed = mm_runner.build_runner(resumed_cfg)
    resumed.train()
    assert resumed.iter == 4
    newest_log = max(glob.glob(str(tmp_path / "run" / "*" / "*.log")), key=os.path.getmtime)
    assert re.search(r"resumed epoch: \d+, iter: 2", open(newest_log).read())


@pytest.mark.parametrize("path", DET, ids=os.path.basename)
def test_detection_config(path, tmp_path, coco_root):
    keys = ["coco/bbox_mAP"] + (["coco/segm_mAP"] if "mask-rcnn" in path else [])
    _run(_det_cfg, path, tmp_path, coco_root, keys)


@pytest.mark.parametrize("path", SEG, ids=os.path.basename)
def test_segmentation_config(path, tmp_path, ade_root):
    _run(_seg_cfg, path, tmp_path, ade_root, ["mIoU"])


def _make_cityscapes(root: str, images: int = 2, size: tuple[int, int] = (64, 96)) -> None:
    """``root/leftImg8bit/{train,val}/city/*_leftImg8bit.png`` with train-id label maps
    ``root/gtFine/.../*_gtFine_labelTrainIds.png`` (255 = ignore), the layout mmseg's CityscapesDataset reads."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = size
    for split in ("train", "val"):
        os.makedirs(os.path.join(root, "leftImg8bit", split, "city"), exist_ok=True)
        os.makedirs(os.path.join(root, "gtFine", split, "city"), exist_ok=True)
        for i in range(images):
            labels = np.zeros((h, w), np.uint8)  # road
            labels[: h // 2] = 10  # sky
            labels[h // 2:, w // 2:] = 13  # car
            labels[:2] = 255
            pixels = (labels[..., None] % 200 + rng.integers(0, 20, (h, w, 3))).astype(np.uint8)
            name = f"city_{i:06d}_000019"
            images_dir, labels_dir = (os.path.join(root, top, split, "city") for top in ("leftImg8bit", "gtFine"))
            Image.fromarray(pixels).save(os.path.join(images_dir, f"{name}_leftImg8bit.png"))
            Image.fromarray(labels).save(os.path.join(labels_dir, f"{name}_gtFine_labelTrainIds.png"))


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    _make_cityscapes(str(root))
    return root


@pytest.mark.parametrize("path", CITYSCAPES, ids=os.path.basename)
def test_cityscapes_segmentation_config(path, tmp_path, cityscapes_root):
    _run(_seg_cfg, path, tmp_path, cityscapes_root, ["mIoU"])
