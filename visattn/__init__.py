"""visattn: efficient-attention vision backbones for timm, with fused Triton kernels.

``import visattn`` registers every visattn model with timm, so ``timm.create_model('biformer_tiny')`` works.
"""

from . import backbones
from .weights import load_pretrained

__version__ = "0.1.0"

__all__ = ["__version__", "backbones", "list_models", "load_pretrained"]

DEFAULT_KIND = "classification"  # of a family whose module declares no MODEL_KIND
MODEL_KINDS = (DEFAULT_KIND, "segmentation")


def list_models(kind: str | None = None) -> list[str]:
    """Names of the models visattn registers with timm; ``kind`` keeps only ``"classification"`` backbones or
    ``"segmentation"`` networks (per-pixel logits), as the family's module declares in ``MODEL_KIND``."""
    import sys

    import timm

    if kind not in (None, *MODEL_KINDS):
        raise ValueError(f"unknown model kind {kind!r}; use one of {', '.join(map(repr, MODEL_KINDS))}")
    names = []
    for name in timm.list_models():
        module = timm.models.model_entrypoint(name).__module__
        if not module.startswith(f"{__name__}."):
            continue
        if kind in (None, getattr(sys.modules[module], "MODEL_KIND", DEFAULT_KIND)):
            names.append(name)
    return sorted(names)
