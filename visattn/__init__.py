"""visattn: efficient-attention vision backbones for timm, with fused Triton kernels.

``import visattn`` registers every visattn model with timm, so ``timm.create_model('biformer_tiny')`` works.
"""

from . import backbones

__version__ = "0.1.0"

__all__ = ["__version__", "backbones", "list_models"]


def list_models(task: str | None = None) -> list[str]:
    """Names of the models visattn registers with timm; ``task`` keeps only ``"classification"`` backbones or
    ``"segmentation"`` networks (per-pixel logits)."""
    import sys

    import timm

    if task not in (None, "classification", "segmentation"):
        raise ValueError(f"unknown task {task!r}; use 'classification' or 'segmentation'")
    names = []
    for name in timm.list_models():
        module = timm.models.model_entrypoint(name).__module__
        if module.startswith(f"{__name__}.") and task in (None, getattr(sys.modules[module], "TASK", "classification")):
            names.append(name)
    return sorted(names)
