"""OpenMMLab integration. ``custom_imports = dict(imports=['visattn.mm'])`` in an mmdet or mmseg config registers
the visattn backbones (``VisattnBackbone`` for any timm model with ``feature_info``, ``BiFormerBackbone``,
``MambaOutBackbone``, ``LaMambaBackbone``, ``InLineSwinBackbone``, ``InLinePVTBackbone``,
``InLineCSwinBackbone``, ``PSAHRNetBackbone``) in the MODELS registry of
whichever of mmdet and mmseg is installed. Importing changes nothing else.

:func:`setup` makes the environment runnable and is called by ``tools/train.py`` / ``tools/eval.py`` (call it
yourself before building a runner elsewhere): where mmcv-lite lacks the compiled extension it installs a
torchvision-based stand-in for the ops common detectors and segmentors use (:mod:`visattn.mm.mmcv_ext`), and it
lets mmengine checkpoints load under torch's ``weights_only`` default (:mod:`visattn.mm.checkpoint`).
"""

from __future__ import annotations

import importlib

from .backbones import (
    BiFormerBackbone,
    InLineCSwinBackbone,
    InLinePVTBackbone,
    InLineSwinBackbone,
    LaMambaBackbone,
    MambaOutBackbone,
    PSAHRNetBackbone,
    VisattnBackbone,
)

BACKBONES = (VisattnBackbone, BiFormerBackbone, MambaOutBackbone, LaMambaBackbone, InLineSwinBackbone,
             InLinePVTBackbone, InLineCSwinBackbone, PSAHRNetBackbone)
REGISTERED_IN: list[str] = []

for _library in ("mmdet", "mmseg"):
    try:
        _registry = importlib.import_module(f"{_library}.registry")
    except ImportError:
        continue
    for _cls in BACKBONES:
        _registry.MODELS.register_module(module=_cls, force=True)
    REGISTERED_IN.append(_library)


def setup() -> None:
    """Install the mmcv op stand-in (only where mmcv's compiled ops are missing) and allow mmengine checkpoints
    under ``weights_only``. Idempotent; call it before mmcv.ops or a Runner is used."""
    from . import mmcv_ext
    from .checkpoint import allow_mmengine_checkpoints

    mmcv_ext.install()
    allow_mmengine_checkpoints()


__all__ = ["BACKBONES", "BiFormerBackbone", "InLineCSwinBackbone", "InLinePVTBackbone", "InLineSwinBackbone",
           "LaMambaBackbone", "MambaOutBackbone", "PSAHRNetBackbone", "REGISTERED_IN", "VisattnBackbone", "setup"]
