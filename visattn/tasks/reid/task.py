"""Person re-identification as a task of the engine: BoT training (PK batches, CE + batch-hard triplet, optional
centre loss, warm-up and step schedule) and the standard retrieval evaluation (mAP, CMC, mINP with same-camera
removal, fast-reid's TPR@FPR, optional flip-averaged features and k-reciprocal re-ranking), on the training data's
query and gallery or another dataset's (``--eval-data``, cross-domain).

``tools/train.py --task reid [--data ROOT] [--model NAME]`` and ``tools/eval.py --task reid --checkpoint F``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ...engine.checkpoint import atomic_write, atomic_write_json
from ...engine.distributed import barrier
from ...engine.fit import fit
from ...engine.loop import autocast
from ...engine.models import check_model_input, sized_model_kwargs
from ...engine.options import (
    fraction,
    non_negative_float,
    non_negative_int,
    number,
    numbers,
    positive_float,
    probability,
)
from ...engine.progress import Progress
from ...engine.task import Step, Task, TrainConfig, absolute_folder, evaluated_with_amp, read_weights, register_task
from ...errors import UserError
from ...weights import load_pretrained
from ..images import load_rgb
from .data import (
    LAYOUTS,
    PKBatchSampler,
    ReIDData,
    ReIDImageSet,
    load_reid_data,
    reid_eval_transform,
    reid_train_transform,
    write_synthetic_reid,
)
from .metrics import FPR_TARGETS, distance_matrix, evaluate_ranking, rerank_features, tpr_at_fpr
from .model import REID_ATTENTION, ReIDLoss, ReIDModel

TASK = "reid"
SYNTHETIC = "synthetic-reid"
METRICS = ("euclidean", "cosine")
POOLINGS = ("avg", "gem")
RANKS = (1, 5, 10, 20)


def tpr_key(fpr: float) -> str:
    """The metric name of the TPR at false-positive rate ``fpr``: ``TPR@FPR1e-4``."""
    mantissa, exponent = f"{fpr:.0e}".split("e")
    return f"TPR@FPR{mantissa}e{int(exponent)}"


PANELS = (("loss", "loss", ("train_loss",)),
          ("retrieval", "fraction", ("val_mAP", "val_mINP")),
          ("CMC", "matching rate", tuple(f"val_rank{r}" for r in RANKS)),
          ("verification", "TPR", tuple(f"val_{tpr_key(f)}" for f in FPR_TARGETS)),
          ("learning rate", "lr", ("lr",)))


def synthetic_root() -> str:
    """Where the built-in synthetic re-id set is written once (``$VISATTN_CACHE`` or ~/.cache/visattn)."""
    cache = os.environ.get("VISATTN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "visattn")
    return os.path.join(cache, SYNTHETIC)


def open_data(data: str | None, layout: str, distinct_cameras: bool, rank: int = 0, option: str = "--data",
              test_only: bool = False) -> ReIDData:
    """The re-id data at ``data`` (None or ``synthetic-reid``: the built-in set, written on first use by rank 0);
    ``option`` names it in errors (``--data``, ``--eval-data``); ``test_only``: its query and gallery only."""
    cameras = "--eval-distinct-cameras" if option == "--eval-data" else "--distinct-cameras"
    if data in (None, SYNTHETIC):
        if rank == 0:
            write_synthetic_reid(synthetic_root())
        barrier()
        return load_reid_data(synthetic_root(), layout="market1501", test_only=test_only)
    if not os.path.isdir(data):
        what = "a file" if os.path.exists(data) else "no such folder"
        raise UserError(f"{option} {data}: {what}; expected a re-id dataset folder (Market-1501, DukeMTMC-reID, "
                        f"CUHK03-NP, MSMT17, folder or CSV layout)")
    if not os.access(data, os.R_OK | os.X_OK):
        raise UserError(f"{option} {data}: the folder cannot be read (permissions); make it readable")
    return load_reid_data(data, layout=layout, distinct_cameras=distinct_cameras, test_only=test_only,
                          cameras_option=cameras)


@dataclass
class ReIDConfig(TrainConfig):
    """A re-id run; the defaults are the BoT recipe (ResNet-50, 256x128, 16 ids x 4 images, Adam 3.5e-4, wd 5e-4,
    120 epochs with steps at 40 and 90 after a 10-epoch warm-up from lr/10)."""

    model: str = "resnet50"
    layout: str = "auto"
    distinct_cameras: bool = False
    eval_data: str | None = None  # evaluate on this dataset's query/gallery (cross-domain); None: the training data's
    eval_layout: str = "auto"
    eval_distinct_cameras: bool = False
    input_size: tuple[int, int] = (256, 128)  # H, W
    epochs: int = 120
    batch_size: int = 64
    instances: int = 4  # K images per identity in a batch; P = batch_size // K identities
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    opt: str = "adam"
    warmup_epochs: int = 10
    warmup_factor: float = 0.1
    milestones: tuple[int, ...] = (40, 90)
    gamma: float = 0.1
    clip_grad: float | None = None
    pooling: str = "avg"
    last_stride: int = 1
    attn: str | None = None
    attn_at: tuple[int, ...] = ()
    attn_blocks: str = "all"
    label_smoothing: float = 0.1
    margin: float = 0.3  # 0 = soft-margin triplet
    triplet_weight: float = 1.0
    center_weight: float = 0.0  # BoT's centre loss: 5e-4
    pad: int = 10
    flip_prob: float = 0.5
    erasing: float = 0.5
    metric: str = "euclidean"
    rerank: bool = False
    flip_test: bool = False

    def __post_init__(self):
        # the run's files name the datasets as absolute paths: tools/eval.py scores them again from any folder
        self.data, self.eval_data = (d if d == SYNTHETIC else absolute_folder(d) for d in (self.data, self.eval_data))
        checks = [
            (self.layout in LAYOUTS, "layout", self.layout, f"use one of {', '.join(LAYOUTS)}"),
            (self.eval_layout in LAYOUTS, "eval-layout", self.eval_layout, f"use one of {', '.join(LAYOUTS)}"),
            (self.eval_data is not None or (self.eval_layout == "auto" and not self.eval_distinct_cameras),
             "eval-layout/eval-distinct-cameras", (self.eval_layout, self.eval_distinct_cameras),
             "they describe --eval-data; give it too"),
            (self.pooling in POOLINGS, "pooling", self.pooling, f"use one of {', '.join(POOLINGS)}"),
            (self.metric in METRICS, "metric", self.metric, f"use one of {', '.join(METRICS)}"),
            (self.last_stride in (1, 2), "last-stride", self.last_stride, "use 1 or 2"),
            (self.attn is None or self.attn in REID_ATTENTION, "attn", self.attn,
             f"use one of {', '.join(REID_ATTENTION)}"),
            (self.attn is None or bool(self.attn_at), "attn-at", self.attn_at, "give the stages, e.g. --attn-at 2,3"),
            (not self.attn_at or self.attn is not None, "attn-at", self.attn_at, "it needs --attn"),
            (all(1 <= stage <= 4 for stage in self.attn_at), "attn-at", ",".join(map(str, self.attn_at)),
             "a ResNet's stages are 1-4 (layer1..layer4), e.g. --attn-at 2,3"),
            (len(self.input_size) == 2 and min(self.input_size) >= 16, "input-size", self.input_size,
             "use H,W of at least 16,16"),
            (self.instances >= 2, "instances", self.instances, "the triplet loss needs at least 2 per identity"),
            (self.batch_size >= 2 * self.instances, "batch-size", self.batch_size,
             f"it must hold at least 2 identities x --instances {self.instances}"),
            (self.batch_size % self.instances == 0, "batch-size", self.batch_size,
             f"a PK batch is identities x --instances {self.instances} images: use a multiple of {self.instances}, "
             f"e.g. {self.batch_size - self.batch_size % self.instances}"),
            (list(self.milestones) == sorted(set(self.milestones)), "milestones", ",".join(map(str, self.milestones)),
             "epochs must increase, e.g. 40,90"),
            (0 <= self.label_smoothing < 1, "label-smoothing", self.label_smoothing, "use a value in [0, 1)"),
            (self.margin >= 0, "margin", self.margin, "use a margin >= 0 (0 = soft margin)"),
            (self.triplet_weight >= 0 and self.center_weight >= 0, "triplet-weight/center-weight",
             (self.triplet_weight, self.center_weight), "weights must be >= 0"),
            (0 <= self.erasing <= 1 and 0 <= self.flip_prob <= 1, "erasing/flip-prob", (self.erasing, self.flip_prob),
             "probabilities must be in [0, 1]"),
            (0 < self.warmup_factor <= 1, "warmup-factor", self.warmup_factor, "use a value in (0, 1]"),
            (0 < self.gamma <= 1, "gamma", self.gamma, "use a value in (0, 1]"),
        ]
        for ok, name, value, hint in checks:
            if not ok:
                raise UserError(f"--{name} {value}: {hint}")

    @classmethod
    def demo(cls, output: str) -> ReIDConfig:
        """The built-in default run: ResNet-18 on the synthetic re-id set at 96x48 for 9 epochs, scored after every
        third, about 40 s on 2 CPU cores."""
        return cls(output=output, model="resnet18", input_size=(96, 48), epochs=9, batch_size=32, lr=1e-3,
                   warmup_epochs=2, milestones=(6,), eval_every=3, workers=0)

    @property
    def ids_per_batch(self) -> int:
        return self.batch_size // self.instances

    def model_settings(self) -> dict[str, Any]:
        """The ReIDModel arguments beyond the backbone name and the number of identities."""
        return {"pooling": self.pooling, "last_stride": self.last_stride, "attn": self.attn,
                "attn_at": tuple(self.attn_at), "attn_blocks": self.attn_blocks}

    def loss_settings(self) -> dict[str, Any]:
        return {"label_smoothing": self.label_smoothing, "margin": self.margin or None,
                "triplet_weight": self.triplet_weight, "center_weight": self.center_weight}


def build_reid_model(backbone: str, num_classes: int, settings: dict, loss: dict, model_kwargs: dict,
                     pretrained: bool = False) -> ReIDModel:
    """The re-id network with its loss as the submodule ``criterion`` (the centre loss's centres are trained with
    the network and saved in its checkpoints)."""
    model = ReIDModel(backbone, num_classes, pretrained=pretrained, model_kwargs=model_kwargs, **settings)
    model.criterion = ReIDLoss(num_classes, model.feature_dim, **loss)
    return model


@torch.no_grad()
def extract_features(model: nn.Module, dataset: ReIDImageSet, device: torch.device, batch_size: int = 128,
                     workers: int = 0, flip: bool = False, amp: bool = True) -> torch.Tensor:
    """Test features (N, D) float32 of every image of ``dataset`` (the mean over the image and its mirror image
    with ``flip``), in dataset order."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    feats = []
    bar = Progress(loader, "features")
    for images, _, _ in bar:
        images = images.to(device, non_blocking=True)
        with autocast(device, amp):
            f = model(images).float()
            if flip:
                f = (f + model(images.flip(-1)).float()) / 2
        feats.append(f.cpu())
        bar.update(len(images))
    return torch.cat(feats)


def retrieval_metrics(q_feats: torch.Tensor, g_feats: torch.Tensor, query: list, gallery: list, metric: str,
                      rerank: bool, device: torch.device | None = None) -> tuple[dict[str, Any], torch.Tensor]:
    """mAP, CMC, mINP and TPR@FPR (``result["tpr"]``: {FPR: TPR}) of query against gallery features, ranked on
    ``device`` (re-ranking on the CPU); also returns the distance matrix (Q, G) on the CPU."""
    if rerank:
        dist = torch.as_tensor(rerank_features(q_feats, g_feats, metric=metric))
    else:
        dist = distance_matrix(q_feats.to(device), g_feats.to(device), metric=metric)
    q_pids, q_cams = (torch.tensor([getattr(i, k) for i in query]) for k in ("pid", "camid"))
    g_pids, g_cams = (torch.tensor([getattr(i, k) for i in gallery]) for k in ("pid", "camid"))
    result = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, max_rank=min(50, len(gallery)))
    result["tpr"] = tpr_at_fpr(dist, q_pids, g_pids, q_cams, g_cams)
    return result, dist.cpu()


def ranking_figure(dist: torch.Tensor, query: list, gallery: list, path: str, rows: int = 8, top: int = 10,
                   cell: tuple[int, int] = (128, 64)) -> None:
    """A PNG of ``rows`` queries (evenly spaced over the query set), each followed by its ``top`` gallery images
    after same-camera removal, framed green (same identity) or red (another one)."""
    from PIL import Image, ImageDraw

    h, w = cell
    border, gap = 4, 12
    picks = np.linspace(0, len(query) - 1, min(rows, len(query))).round().astype(int)
    canvas = Image.new("RGB", (w * (top + 1) + gap + border * 2 * (top + 1), len(picks) * (h + 2 * border)),
                       "white")
    draw = ImageDraw.Draw(canvas)
    g_pids = torch.tensor([i.pid for i in gallery])
    g_cams = torch.tensor([i.camid for i in gallery])
    for row, qi in enumerate(picks):
        q = query[qi]
        order = torch.argsort(dist[qi], stable=True)
        keep = ~((g_pids[order] == q.pid) & (g_cams[order] == q.camid))
        shown = [(query[qi], None)] + [(gallery[j], gallery[j].pid == q.pid) for j in order[keep][:top].tolist()]
        y = row * (h + 2 * border)
        for col, (item, right) in enumerate(shown):
            x = col * (w + 2 * border) + (gap if col else 0)
            colour = "black" if right is None else ("#1a9e1a" if right else "#d62020")
            draw.rectangle([x, y, x + w + 2 * border - 1, y + h + 2 * border - 1], fill=colour)
            canvas.paste(load_rgb(item.path).resize((w, h)), (x + border, y + border))
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))


def save_features(path: str, q_feats: torch.Tensor, g_feats: torch.Tensor, query: list, gallery: list) -> None:
    """query/gallery features, pids and camids as one safetensors file (written atomically)."""
    from safetensors.torch import save_file

    tensors = {"query_features": q_feats.contiguous(), "gallery_features": g_feats.contiguous(),
               "query_pids": torch.tensor([i.pid for i in query]),
               "query_camids": torch.tensor([i.camid for i in query]),
               "gallery_pids": torch.tensor([i.pid for i in gallery]),
               "gallery_camids": torch.tensor([i.camid for i in gallery])}
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def summarise(result: dict[str, Any]) -> dict[str, float]:
    """mAP, rank-1/5/10/20, mINP and TPR@FPR1e-4/1e-3/1e-2 as plain floats (fractions)."""
    cmc = np.asarray(result["cmc"])
    return {"mAP": float(result["mAP"]), **{f"rank{r}": float(cmc[min(r, len(cmc)) - 1]) for r in RANKS},
            "mINP": float(result["mINP"]), **{tpr_key(f): float(v) for f, v in result["tpr"].items()}}


@register_task
class ReIDTask(Task):
    """Person re-id: a ReIDModel trained on PK batches, scored by retrieval of the query set in the gallery."""

    name = TASK
    config = ReIDConfig
    default_data = SYNTHETIC
    score = "val_mAP"
    tiebreak = "val_rank1"
    panels = PANELS
    eval_keys = ("num_classes", "reid", "loss", "input_size", "layout", "distinct_cameras", "metric", "rerank",
                 "flip_test")
    distributed_eval = False
    shared_help = {"data": "re-id root: Market-1501, DukeMTMC-reID or CUHK03-NP (bounding_box_train/, query/, "
                           "bounding_box_test/), MSMT17 list files, train|query|gallery/<pid>/<cam>_*.jpg or CSV "
                           "files; default: the built-in synthetic set",
                   "img_size": "not used by re-id: see --input-size",
                   "batch_size": "P x K images per batch (default 64 = 16 identities x --instances 4)"}

    @staticmethod
    def add_train_arguments(parser) -> None:
        parser.add_argument("--layout", choices=LAYOUTS, help="data layout (default: auto-detected)")
        parser.add_argument("--distinct-cameras", action="store_true",
                            help="the data has no camera ids but every query and gallery image comes from "
                                 "different cameras")
        parser.add_argument("--eval-data", help="evaluate every epoch (and pick best.pth) on this dataset's query "
                                                "and gallery instead of the training data's (cross-domain)")
        parser.add_argument("--eval-layout", choices=LAYOUTS, help="layout of --eval-data (default: auto-detected)")
        parser.add_argument("--eval-distinct-cameras", action="store_true",
                            help="--distinct-cameras for --eval-data")
        parser.add_argument("--input-size", type=numbers(2, int, "H,W such as 256,128", low=1),
                            help="H,W of the network input (default 256,128)")
        parser.add_argument("--instances", type=number(int, 2, why="the triplet loss needs two images of an identity"),
                            help="K images per identity in a PK batch (default 4)")
        parser.add_argument("--milestones", type=numbers(None, int, "epochs such as 40,90", low=1),
                            help="epochs where the lr drops by --gamma (default 40,90)")
        parser.add_argument("--gamma", type=positive_float, help="lr factor at each milestone (default 0.1)")
        parser.add_argument("--warmup-factor", type=number(float, 0, 1, low_open=True),
                            help="warm-up starts at lr x this (default 0.1)")
        parser.add_argument("--pooling", choices=POOLINGS, help="global pooling: avg (default) or GeM")
        parser.add_argument("--last-stride", type=number(int, 1, 2), help="1 (default, BoT) or 2")
        parser.add_argument("--attn", choices=tuple(REID_ATTENTION),
                            help="insert this attention block after bottlenecks of a ResNet backbone")
        parser.add_argument("--attn-at", type=numbers(None, int, "ResNet stages such as 2,3", low=1),
                            help="ResNet stages (1-4) for --attn, e.g. 2,3")
        parser.add_argument("--attn-blocks", help="bottlenecks of each stage: all (default), last, or indices 0,2")
        parser.add_argument("--label-smoothing", type=fraction, help="CE label smoothing (default 0.1)")
        parser.add_argument("--margin", type=non_negative_float, help="triplet margin (default 0.3; 0 = soft margin)")
        parser.add_argument("--triplet-weight", type=non_negative_float, help="triplet loss weight (default 1)")
        parser.add_argument("--center-weight", type=non_negative_float, help="centre loss weight (default 0; BoT 5e-4)")
        parser.add_argument("--pad", type=non_negative_int, help="pad before the random crop, pixels (default 10)")
        parser.add_argument("--flip-prob", type=probability, help="horizontal flip probability (default 0.5)")
        parser.add_argument("--erasing", type=probability, help="random erasing probability (default 0.5)")
        ReIDTask._add_retrieval_arguments(parser)

    @staticmethod
    def _add_retrieval_arguments(parser) -> None:
        parser.add_argument("--metric", choices=METRICS, help="feature distance (default euclidean)")
        parser.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3)")
        parser.add_argument("--flip-test", action="store_true", help="average each feature with its mirror image's")

    @staticmethod
    def add_eval_arguments(parser) -> None:
        parser.add_argument("--output", help="folder for metrics.json, ranking.png and features.safetensors "
                                             "(default: CHECKPOINT_DIR/eval)")
        parser.add_argument("--layout", choices=LAYOUTS,
                            help="layout of --data (default: the run's for its own data, else auto-detected)")
        parser.add_argument("--distinct-cameras", action="store_true",
                            help="--data has no camera ids but every query and gallery image comes from different "
                                 "cameras (default: the run's for its own data)")
        ReIDTask._add_retrieval_arguments(parser)

    @classmethod
    def run_eval(cls, args) -> str:
        result = evaluate_checkpoint(args.checkpoint, args.data, args.output, args.device, args.workers,
                                     metric=args.metric, rerank=args.rerank, flip=args.flip_test, layout=args.layout,
                                     distinct_cameras=args.distinct_cameras)
        return report(result)

    def build(self, device: torch.device, rank: int, world_size: int) -> tuple[nn.Module, Dataset]:
        cfg = self.cfg
        data = open_data(cfg.data, cfg.layout, cfg.distinct_cameras, rank)
        self.data = self.eval_data = data
        if cfg.eval_data is not None:
            self.eval_data = open_data(cfg.eval_data, cfg.eval_layout, cfg.eval_distinct_cameras, rank, "--eval-data",
                                       test_only=True)
        cfg.model_kwargs, sized = sized_model_kwargs(cfg.model, cfg.model_kwargs, tuple(cfg.input_size))
        model = build_reid_model(cfg.model, data.num_train_ids, cfg.model_settings(), cfg.loss_settings(),
                                 cfg.model_kwargs, cfg.pretrained)
        if rank == 0:
            if sized:
                print(sized, flush=True)
            test = self.eval_data
            where = "" if cfg.eval_data is None else f"; evaluated on {test.name} (--eval-data)"
            print(f"{data.name}: {data.num_train_ids} training identities, {len(data.train)} training images{where}, "
                  f"{len(test.query)} queries, {len(test.gallery)} gallery images; {model.describe()}", flush=True)
        size = tuple(cfg.input_size)
        train_set = ReIDImageSet(data.train, reid_train_transform(size, pad=cfg.pad, flip=cfg.flip_prob,
                                                                  erasing=cfg.erasing))
        self.query_set, self.gallery_set = eval_sets(self.eval_data, size)
        self.criterion = model.criterion
        return model, train_set

    @classmethod
    def rebuild_model(cls, ckpt: dict, model_name: str | None = None, pretrained: bool = False) -> nn.Module:
        return build_reid_model(model_name or ckpt["model"], ckpt["num_classes"], ckpt["reid"], ckpt["loss"],
                                ckpt.get("model_kwargs", {}) if model_name in (None, ckpt["model"]) else {},
                                pretrained)

    @classmethod
    def load_init(cls, model: nn.Module, source: str) -> None:
        """``--init``: a re-id checkpoint's weights (``backbone.*``, BNNeck, classifier), or weights of the backbone
        alone (e.g. a timm ResNet-50 file), loaded into the backbone."""
        state = read_weights(source)
        if any(k.startswith("backbone.") for k in state):
            load_pretrained(model, state, name=f"--init {source}")
        else:
            load_pretrained(model.backbone, model.backbone_state(state), name=f"--init {source} (backbone weights)")

    def check_input(self, model: nn.Module) -> None:
        check_model_input(model, tuple(self.cfg.input_size), self.cfg.model)

    def train_loader(self, dataset: Dataset, device: torch.device, rank: int, world_size: int) -> DataLoader:
        cfg = self.cfg
        sampler = PKBatchSampler([item.pid for item in dataset.items], num_ids=cfg.ids_per_batch,
                                 num_instances=cfg.instances, seed=cfg.seed, world_size=world_size, rank=rank)
        return DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.workers, pin_memory=device.type == "cuda")

    def schedule(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"sched": "multistep", "decay_milestones": list(cfg.milestones), "decay_rate": cfg.gamma,
                "warmup_lr": cfg.lr * cfg.warmup_factor}

    def compute_loss(self, net: nn.Module, batch, device: torch.device) -> Step:
        """The re-id loss's terms (``ce``, ``triplet``, ``center``) on the identity logits and pre-BN features."""
        images, pids, _ = batch
        images, pids = images.to(device, non_blocking=True), pids.to(device, non_blocking=True)
        with autocast(device, self.cfg.amp):
            out = net(images)
        parts = self.criterion(out.output, out.extras["features"], pids)
        return Step.from_parts({**parts, **out.aux_losses}, images.shape[0], out.stats)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, Any]:
        cfg = self.cfg
        q = extract_features(model, self.query_set, device, workers=cfg.workers, flip=cfg.flip_test, amp=cfg.amp)
        g = extract_features(model, self.gallery_set, device, workers=cfg.workers, flip=cfg.flip_test, amp=cfg.amp)
        result, _ = retrieval_metrics(q, g, self.eval_data.query, self.eval_data.gallery, cfg.metric, cfg.rerank,
                                      device)
        return summarise(result)

    @property
    def eval_dataset(self) -> str:
        """The dataset whose query and gallery score the epochs: ``--eval-data``, else the training data."""
        return self.cfg.eval_data or self.dataset

    def metrics_fields(self) -> dict[str, Any]:
        return {"eval_dataset": self.eval_dataset}

    def val_scalars(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {f"val_{k}": v for k, v in metrics.items()}

    def checkpoint_extra(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"num_classes": self.data.num_train_ids, "input_size": tuple(cfg.input_size),
                "reid": cfg.model_settings(), "loss": cfg.loss_settings(), "layout": cfg.layout,
                "distinct_cameras": cfg.distinct_cameras, "eval_data": cfg.eval_data, "eval_layout": cfg.eval_layout,
                "eval_distinct_cameras": cfg.eval_distinct_cameras, "metric": cfg.metric, "rerank": cfg.rerank,
                "flip_test": cfg.flip_test}

    def epoch_line(self, metrics: dict[str, Any], scalars: dict[str, float]) -> str:
        tpr = tpr_key(1e-2)
        return (f"mAP {metrics['mAP']:.4f}, rank-1 {metrics['rank1']:.4f}, rank-5 {metrics['rank5']:.4f}, "
                f"mINP {metrics['mINP']:.4f}, {tpr} {metrics[tpr]:.4f} ({scalars['epoch_seconds']:.1f} s)")

    def summary(self, best: dict[str, Any]) -> str:
        return (f"best val mAP {best['val_mAP']:.4f} (rank-1 {best['val_rank1']:.4f}, mINP {best['val_mINP']:.4f}) "
                f"at epoch {best['epoch']}; checkpoints in {self.cfg.output}")


def train(cfg: ReIDConfig) -> dict[str, Any]:
    """Train a re-id model; returns ``{"best", "history"}`` (also written to ``metrics.json``)."""
    return fit(ReIDTask(cfg))


def eval_sets(data: ReIDData, size: tuple[int, int]) -> tuple[ReIDImageSet, ReIDImageSet]:
    """The query and gallery images of ``data`` at ``size`` (H, W), as evaluation sees them."""
    transform = reid_eval_transform(size)
    return ReIDImageSet(data.query, transform), ReIDImageSet(data.gallery, transform)


def evaluate_checkpoint(checkpoint: str, data: str | None = None, output: str | None = None,
                        device: str | None = None, workers: int = 0, metric: str | None = None,
                        rerank: bool | None = None, flip: bool | None = None, layout: str | None = None,
                        distinct_cameras: bool | None = None) -> dict[str, Any]:
    """Rebuild a re-id checkpoint's model and score the query set of ``data`` against its gallery; writes
    ``metrics.json``, ``ranking.png`` and ``features.safetensors`` under ``output`` (default ``<checkpoint
    folder>/eval``). ``data`` defaults to the data the run evaluated on (its ``--eval-data``, else its training
    data); another dataset is a cross-dataset evaluation (metrics.json names both). ``layout`` and
    ``distinct_cameras`` default to the run's for the data it used, else auto-detection and False. Options left
    None take the training run's values."""
    model, ckpt, dev = ReIDTask.model_from_checkpoint(checkpoint, device)
    ran = {ckpt["dataset"]: (ckpt["layout"], ckpt["distinct_cameras"])}
    if ckpt.get("eval_data"):
        ran[ckpt["eval_data"]] = (ckpt["eval_layout"], ckpt["eval_distinct_cameras"])
    data_name = data if data is not None else ckpt.get("eval_data") or ckpt["dataset"]
    run_layout, run_cameras = ran.get(data_name, ("auto", False))
    metric = metric or ckpt["metric"]
    rerank = ckpt["rerank"] if rerank is None else rerank
    flip = ckpt["flip_test"] if flip is None else flip
    dataset = open_data(data_name, layout or run_layout, run_cameras if distinct_cameras is None else distinct_cameras,
                        test_only=True)
    size = tuple(ckpt["input_size"])
    q_set, g_set = eval_sets(dataset, size)
    amp = evaluated_with_amp(ckpt)
    q = extract_features(model, q_set, dev, workers=workers, flip=flip, amp=amp)
    g = extract_features(model, g_set, dev, workers=workers, flip=flip, amp=amp)
    result, dist = retrieval_metrics(q, g, dataset.query, dataset.gallery, metric, rerank, dev)
    output = output or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "eval")
    summary = {"checkpoint": os.path.abspath(checkpoint), "model": ckpt["model"], "dataset": data_name,
               "trained_on": ckpt["dataset"], "metric": metric, "rerank": rerank, "flip_test": flip,
               **summarise(result), "cmc": [float(v) for v in np.asarray(result["cmc"])],
               "queries": len(dataset.query), "valid_queries": int(result.get("num_valid_queries", len(dataset.query))),
               "gallery": len(dataset.gallery)}
    atomic_write_json(summary, os.path.join(output, "metrics.json"))
    ranking_figure(dist, dataset.query, dataset.gallery, os.path.join(output, "ranking.png"))
    save_features(os.path.join(output, "features.safetensors"), q, g, dataset.query, dataset.gallery)
    return {**summary, "output": output}


def report(result: dict[str, Any]) -> str:
    """The lines tools/eval.py prints."""
    ranks = ", ".join(f"rank-{r} {result[f'rank{r}']:.4f}" for r in RANKS)
    tprs = ", ".join(f"{tpr_key(f)} {result[tpr_key(f)]:.4f}" for f in FPR_TARGETS)
    trained = f", trained on {result['trained_on']}" if result["trained_on"] != result["dataset"] else ""
    return (f"{result['model']} on {result['dataset']} ({result['queries']} queries, {result['gallery']} gallery, "
            f"{result['metric']}{', re-ranked' if result['rerank'] else ''}{trained}): mAP {result['mAP']:.4f}, "
            f"{ranks}, mINP {result['mINP']:.4f}, {tprs}\n"
            f"wrote metrics.json, ranking.png, features.safetensors to {result['output']}")
