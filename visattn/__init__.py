"""visattn: efficient-attention vision backbones for timm, with fused Triton kernels.

``import visattn`` registers every visattn model with timm, so ``timm.create_model('biformer_tiny')`` works.
"""

from . import backbones

__version__ = "0.1.0"

__all__ = ["__version__", "backbones", "list_models"]


def list_models() -> list[str]:
    """Names of every model visattn registers with timm."""
    import timm

    return sorted(
        name for name in timm.list_models()
        if timm.models.model_entrypoint(name).__module__.startswith(f"{__name__}.")
    )
