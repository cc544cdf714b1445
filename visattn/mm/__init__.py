"""OpenMMLab integration. ``custom_imports = dict(imports=['visattn.mm'])`` in an mmdet or mmseg config:

- registers the visattn backbones (``VisattnBackbone`` for any model, ``BiFormerBackbone``,
  ``MambaOutBackbone``, ``LaMambaBackbone``, ``InLineSwinBackbone``) in the MODELS
  registry of whichever of mmdet and mmseg is installed;
- when mmcv-lite lacks the compiled extension, installs a torchvision-based stand-in for the ops common
  detectors and segmentors use (:mod:`visattn.mm.mmcv_ext`);
- lets mmengine checkpoints load under torch's ``weights_only`` default, and ``init_cfg`` checkpoints be given
  as ``visattn://<model>`` (:mod:`visattn.mm.checkpoint`).
"""

from __future__ import annotations

import importlib

from . import mmcv_ext
from .checkpoint import allow_mmengine_checkpoints, register_scheme

mmcv_ext.install()
allow_mmengine_checkpoints()
register_scheme()

from .backbones import (  # noqa: E402
    BiFormerBackbone,
    InLineSwinBackbone,
    LaMambaBackbone,
    MambaOutBackbone,
    VisattnBackbone,
)

BACKBONES = (VisattnBackbone, BiFormerBackbone, MambaOutBackbone, LaMambaBackbone, InLineSwinBackbone)
REGISTERED_IN: list[str] = []

for _library in ("mmdet", "mmseg"):
    try:
        _registry = importlib.import_module(f"{_library}.registry")
    except ImportError:
        continue
    for _cls in BACKBONES:
        _registry.MODELS.register_module(module=_cls, force=True)
    REGISTERED_IN.append(_library)

__all__ = ["BACKBONES", "BiFormerBackbone", "InLineSwinBackbone", "LaMambaBackbone", "MambaOutBackbone",
           "REGISTERED_IN", "VisattnBackbone"]
