"""Every shipped detection and segmentation config: build, train 2 iterations and evaluate; a config built on none
of the others (its ``_base_`` files are mmdet's / mmseg's) also saves, reloads and resumes. A config derived from
another shipped one changes its backbone (and the neck's channels), not the run: its base's run covers the
checkpoint, reload and resume path it shares.

Each run is the shipped one (heads, losses, evaluation, checkpoints) with the backbone swapped for its family's tiny
``test_<family>`` variant and the neck's (or the heads') ``in_channels`` set from the tiny backbone's channels
(:func:`tiny_backbone`). The shipped full-size backbone itself is built on the meta device by
tests/mm/test_backbones.py: its output channels against the neck's, its ``out_indices`` and the checkpoint its
``init_cfg`` names.

Runs on CPU with the mmcv stand-in ops; mmdet and mmseg are required (an import failure fails the test)."""

import copy
import functools
import glob
import inspect
import os
import re

import pytest
import torch

import visattn.mm
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


# the shipped backbone's type (and arch, where an arch is a family of its own) -> its family's tiny test variant
TINY_VARIANTS = {"BiFormerBackbone": "test_biformer", "BiFormerBackbone:stl": "test_biformer_stl",
                 "MambaOutBackbone": "test_mambaout", "LaMambaBackbone": "test_lamamba",
                 "InLineSwinBackbone": "test_inline_swin", "InLinePVTBackbone": "test_inline_pvt",
                 "InLineCSwinBackbone": "test_inline_cswin", "PSAHRNetBackbone": "test_hrnet_psa"}


def tiny_backbone(cfg):
    """``cfg.model.backbone`` replaced, in place, by its family's tiny test variant (``TINY_VARIANTS`` by type, or by
    ``type:arch`` where an arch has a layout of its own, BiFormer-STL) as a ``VisattnBackbone`` with
    the shipped backbone's options (its class defaults for those the config leaves out): out_indices, frozen stages,
    norm_eval, output norms and drop path; for PSA HRNet the layout and fuse upsampling, without timm's classifier.
    The attention settings (BiFormer's n_win) are the tiny variant's own. The neck's ``in_channels`` (no neck: each
    decode and auxiliary head's, by ``in_index`` where it takes one map) become the tiny backbone's channels."""
    shipped = dict(cfg.model.backbone)
    kind = shipped.pop("type")
    defaults = {name: p.default for name, p in inspect.signature(getattr(visattn.mm, kind)).parameters.items()}
    args = {**defaults, **shipped}
    if kind == "PSAHRNetBackbone":
        model_kwargs = dict(head="", upsample=args["upsample"], psa_layout=args["layout"])
    else:
        model_kwargs = dict(drop_path_rate=args["drop_path_rate"])
        if model_kwargs["drop_path_rate"] is None:  # a family backbone's own default
            model_kwargs["drop_path_rate"] = getattr(visattn.mm, kind).default_drop_path_rate
    tiny = TINY_VARIANTS.get(f"{kind}:{args.get('arch')}", TINY_VARIANTS[kind])
    cfg.model.backbone = dict(type="VisattnBackbone", model_name=tiny,
                              out_indices=tuple(args["out_indices"]), frozen_stages=args.get("frozen_stages", -1),
                              norm_eval=args["norm_eval"], out_norms=args.get("out_norms", False),
                              model_kwargs=model_kwargs, init_cfg=None)
    channels = visattn.mm.VisattnBackbone(tiny, tuple(args["out_indices"]),
                                          model_kwargs=model_kwargs).out_channels
    for consumer in backbone_consumers(cfg.model):
        consumer.in_channels = channels if isinstance(consumer.in_channels, list) else channels[consumer.in_index]


def backbone_consumers(model_cfg) -> list:
    """The config nodes that take the backbone's maps: the neck, else each decode and auxiliary head (a head with an
    int ``in_channels`` takes the one map at its ``in_index``)."""
    if "neck" in model_cfg:
        return [model_cfg.neck]
    heads = model_cfg.decode_head if isinstance(model_cfg.decode_head, list) else [model_cfg.decode_head]
    return heads + ([model_cfg.auxiliary_head] if model_cfg.get("auxiliary_head") else [])


def _small_run(cfg, work_dir, data_root, max_iters=2):
    cfg.work_dir = str(work_dir)
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
    # the shipped schedule's first iterations: its iteration-based linear warm-up, if any (an SGD detector at its full
    # learning rate from a random start can diverge in 2 iterations and then detect nothing)
    schedulers = cfg.get("param_scheduler") or []
    cfg.param_scheduler = [s for s in (schedulers if isinstance(schedulers, list) else [schedulers])
                           if s["type"] == "LinearLR" and s.get("by_epoch") is False]
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", by_epoch=False, interval=2)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=1)
    cfg.log_processor = dict(by_epoch=False)
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg[key]
        loader.num_workers = 0
        loader.persistent_workers = False
        loader.batch_size = 2 if key == "train_dataloader" else 1
        loader.dataset.data_root = str(data_root)
        loader.dataset.serialize_data = False  # serialising is for worker processes, and ends in a gc.collect()
    tiny_backbone(cfg)
    return cfg


@functools.cache
def _shipped(path):
    cfg = mm_runner.load_config(path)
    # each runner logs and dumps its config, and yapf formats it for seconds: the test runs' dumps stay unformatted
    object.__setattr__(cfg, "_format_python_code", False)
    return cfg


def load_shipped(path):
    """``mm_runner.load_config(path)``, read once per process (mmengine looks each ``mmdet::``/``mmseg::`` base up
    in all the package's metafiles): a copy per call."""
    return copy.deepcopy(_shipped(path))


def _det_cfg(path, work_dir, data_root):
    cfg = load_shipped(path)
    cfg = _small_run(cfg, work_dir, data_root)
    _shrink(cfg, (128, 96))
    for key in ("val_evaluator", "test_evaluator"):
        cfg[key].ann_file = os.path.join(str(data_root), "annotations", "instances_val2017.json")
    cfg.model.test_cfg = _fast_test_cfg(cfg.model.test_cfg)
    if "rcnn" in cfg.model.train_cfg:
        cfg.model.train_cfg.rcnn.sampler.num = 16  # RoIs per image through the box and mask heads (shipped: 512)
    # the shipped loader is epoch-based: iterated past its end it waits 2 s for (absent) workers each time
    cfg.train_dataloader.sampler.type = "InfiniteSampler"
    return cfg


def _fast_test_cfg(test_cfg):
    """Keep a few detections whatever their score: an untrained detector must still produce some to score; a
    two-stage detector scores 100 proposals (shipped: 1000)."""
    final = test_cfg.rcnn if "rcnn" in test_cfg else test_cfg
    final.max_per_img = 10
    final.score_thr = 0.0
    if "rpn" in test_cfg:
        test_cfg.rpn.max_per_img = 100
    return test_cfg


def _seg_cfg(path, work_dir, data_root):
    cfg = load_shipped(path)
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
    assert "mask-rcnn_hrnetv2p-w18-psa_s_1x_coco.py" not in derived  # its own neck (HRFPN) and recipe (SGD)
    assert "mask-rcnn_inline-cswin-t_fpn_1x_coco.py" in derived  # derived from a derived one


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
    resumed_cfg.train_cfg.val_interval = 5  # evaluated in the first run's loop and by test() already
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


def _make_cityscapes(root: str, images: int = 2, val_images: int = 1, size: tuple[int, int] = (64, 96)) -> None:
    """``root/leftImg8bit/{train,val}/city/*_leftImg8bit.png`` with train-id label maps
    ``root/gtFine/.../*_gtFine_labelTrainIds.png`` (255 = ignore), the layout mmseg's CityscapesDataset reads:
    ``images`` and ``val_images`` of them."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = size
    for split, count in (("train", images), ("val", val_images)):
        os.makedirs(os.path.join(root, "leftImg8bit", split, "city"), exist_ok=True)
        os.makedirs(os.path.join(root, "gtFine", split, "city"), exist_ok=True)
        for i in range(count):
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
