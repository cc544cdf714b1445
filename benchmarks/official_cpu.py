#!/usr/bin/env python
"""visattn against the official implementations on this machine's CPU: inference latency of each model and of the
official code's same model (one thread, float32, eval mode, random weights, the two timed in turn in one process,
medians of ``--rounds``), with both parameter counts, which must agree.

    PYTHONPATH=<the official code's own dependencies> .venv/bin/python -m benchmarks.official_cpu \\
        --official biformer=CHECKOUT inline=CHECKOUT ... [--rounds 9] [--output benchmarks/OFFICIAL_CPU.md]

Each CHECKOUT is a clone of a family's official repository (the keys of :data:`FAMILIES` name them), read where it
lies and never copied here; a family left out is not measured. The official code needs, beyond this environment,
``einops`` and ``fairscale`` (BiFormer) and ``yacs`` (Sparsifiner): give them with PYTHONPATH (for instance
``uv pip install --target DIR --no-deps einops fairscale yacs``). Its unused imports of other projects (HER-Seg's
``sam2`` and SAM transforms) are stood in for by empty modules. The mission: visattn is never slower than the
official code on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import os
import platform
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from benchmarks.sparse_cpu import interleaved_ms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# top-level package names the official repositories use ("models" in most) and their stand-ins: each family
# imports its own
SHARED_NAMES = ("models", "ops", "tlt", "SAM", "config", "utils", "model", "transforms", "sam2", "train")


@dataclass(frozen=True)
class Case:
    """One model: visattn's name and keyword arguments, the official module (relative to the family's import root)
    and its builder, and the input (side, batches)."""

    model: str
    module: str
    build: Callable[[types.ModuleType], torch.nn.Module]
    side: int = 224
    batches: tuple[int, ...] = (1, 8)
    kwargs: tuple[tuple[str, object], ...] = ()


def _inline_swin(m):
    return m.InLineSwin(img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96, depths=[2, 2, 6, 2],
                        num_heads=[3, 6, 12, 24], window_size=56, mlp_ratio=4.0, qkv_bias=True, qk_scale=None,
                        drop_rate=0.0, drop_path_rate=0.2, ape=False, patch_norm=True, use_checkpoint=False,
                        attn_type="IIIS")


def _sparsifiner_cfg():
    """The official config object with the settings of visattn's ``sparsifiner_deit_small`` (keep rate 0.25, 8 basis
    coefficients, basis threshold 0.02, N / 6 basis vectors, head dim / 2 channels, no token pruning)."""
    from config.default_config import _C

    cfg = _C.clone()
    cfg.SPAR.REDUCE_N_FACTOR, cfg.SPAR.REDUCE_C_FACTOR, cfg.SPAR.ATTN_KEEP_RATE = 6, 2, 0.25
    cfg.SPAR.BASIS_THRESHOLD, cfg.SPAR.BASIS_COEF.USE_TOPK, cfg.SPAR.BASIS_COEF.TOPK = 0.02, True, 8
    cfg.SPAR.ATTN_SCORE.USE_TOPK = True
    return cfg


def _sparsifiner(m):
    return m.Sparsifiner(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4, qkv_bias=True,
                         attn_keep_rate_list=[0.25] * 12, token_keep_rate_list=[1.0] * 12,
                         token_pruning_loc_indicator=[False] * 12, reduce_n_factor=6, reduce_c_factor=2,
                         cfg=_sparsifiner_cfg())


# family -> (the import root inside its checkout, its cases)
FAMILIES: dict[str, tuple[str, list[Case]]] = {
    "biformer": (".", [Case(name, "models.biformer", lambda m, name=name: getattr(m, name)(pretrained=False))
                       for name in ("biformer_tiny", "biformer_small")]),
    "inline": (".", [
        # built as its inline_deit_tiny does, without the timm builder of its day (a default_cfg argument)
        Case("inline_deit_tiny", "models.inline_deit",
             lambda m: m.VisionTransformer(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=6)),
        Case("inline_swin_tiny", "models.inline_swin", _inline_swin),
        Case("inline_pvt_tiny", "models.inline_pvt",
             lambda m: m.inline_pvt_tiny(img_size=224, attn_type="IIII", la_sr_ratios="1111")),
        Case("inline_cswin_tiny", "models.inline_cswin",
             lambda m: m.inline_cswin_tiny(img_size=224, attn_type="IISS", la_split_size="56-28-14-7")),
    ]),
    "lvvit": (".", [Case("lvvit_small", "tlt.models.lvvit", lambda m: m.lvvit_s())]),
    "sparsifiner": ("src", [Case("sparsifiner_deit_small", "models.sparsifiner", _sparsifiner)]),
    # at its training crop (288): at 608, its evaluation size, a forward takes about a minute on one thread
    "fsgnet": (".", [Case("fsgnet", "models.backbones.FSGNet", lambda m: m.FSGNet(3, 1, 64, [3, 3, 9, 3], 3),
                          side=288, batches=(1,), kwargs=(("num_classes", 1),))]),
    "herseg": (".", [Case("herseg", "model", lambda m: m.MHRMedSeg(dim=96, img_size=1024), side=1024, batches=(1,),
                          kwargs=(("num_classes", 1),))]),
}


def _stand_ins() -> None:
    """Empty modules for the official code's imports of projects its models do not use (HER-Seg's)."""
    for name in ("sam2", "sam2.utils", "sam2.utils.transforms", "sam2.modeling", "sam2.modeling.sam2_base",
                 "sam2.modeling.position_encoding", "transforms", "train", "train.utils"):
        module = sys.modules.setdefault(name, types.ModuleType(name))
        for attr in ("SAM2Transforms", "SAM2Base", "PositionEmbeddingSine", "ResizeLongestSide", "device"):
            setattr(module, attr, lambda *args, **kwargs: None)


@contextlib.contextmanager
def _imports_from(root: str) -> Iterator[None]:
    """Imports from ``root`` first, with the modules of :data:`SHARED_NAMES` its own while the block runs and
    restored after it."""
    shared = lambda: [n for n in sys.modules if n.split(".")[0] in SHARED_NAMES]  # noqa: E731
    saved = {name: sys.modules.pop(name) for name in shared()}
    _stand_ins()
    sys.path.insert(0, root)
    try:
        yield
    finally:
        sys.path.remove(root)
        for name in shared():
            del sys.modules[name]
        sys.modules.update(saved)


def official_models(family: str, checkout: str) -> dict[str, torch.nn.Module]:
    """visattn model name -> the official code's model, built from ``checkout`` in eval mode."""
    subdir, cases = FAMILIES[family]
    root = os.path.abspath(os.path.join(checkout, subdir))
    if not os.path.isdir(root):
        raise SystemExit(f"error: --official {family}={checkout}: no folder {root}; give a clone of its repository")
    with _imports_from(root), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {case.model: case.build(importlib.import_module(case.module)).eval() for case in cases}


def parameters(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", nargs="+", required=True, metavar="FAMILY=CHECKOUT",
                   help=f"families to measure, each with its official checkout ({', '.join(FAMILIES)})")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "OFFICIAL_CPU.md"))
    args = p.parse_args()
    checkouts = dict(item.split("=", 1) for item in args.official if "=" in item)
    unknown = sorted(set(checkouts) - set(FAMILIES)) or [i for i in args.official if "=" not in i]
    if unknown:
        raise SystemExit(f"error: --official {' '.join(unknown)}: give FAMILY=CHECKOUT, FAMILY one of "
                         f"{', '.join(FAMILIES)}")
    import timm

    import visattn  # noqa: F401  (registers the models)
    from visattn.benchmark import write_text

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    rows = []
    for family, checkout in checkouts.items():
        cases = {case.model: case for case in FAMILIES[family][1]}
        # visattn's models first: an official module may register a timm name of the same spelling
        ours = {name: timm.create_model(name, **dict(case.kwargs)).eval() for name, case in cases.items()}
        official = official_models(family, checkout)
        for name, case in cases.items():
            for batch in case.batches:
                times = interleaved_ms({"official": official[name], "visattn": ours[name]}, batch, args.rounds,
                                       side=case.side)
                (theirs, _), (mine, _) = times["official"], times["visattn"]
                row = (f"| `{name}` | {case.side} | {batch} | {parameters(official[name]):.2f} | "
                       f"{parameters(ours[name]):.2f} | {theirs:.1f} | {mine:.1f} | **{mine / theirs:.2f}x** |")
                rows.append(row)
                print(row, flush=True)
    load = " / ".join(f"{a:.2f}, {b:.2f}, {c:.2f}" for a, b, c in (load_before, os.getloadavg()))
    lines = [
        "# visattn against the official code, CPU", "",
        f"Written by `benchmarks/official_cpu.py` on {datetime.date.today().isoformat()}: "
        f"{platform.processor() or 'CPU'}, 1 thread, torch {torch.__version__}, timm {timm.__version__}. Inference "
        f"in eval mode, float32, random weights, the official model and visattn's timed in turn in one process, "
        f"medians of {args.rounds} rounds. Load averages (1, 5, 15 min) of the machine's {os.cpu_count()} cores "
        f"before / after: {load}.", "",
        "| model | input side | batch | official params (M) | visattn params (M) | official (ms) | visattn (ms) | "
        "visattn / official |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]

    write_text(args.output, "\n".join(lines) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
