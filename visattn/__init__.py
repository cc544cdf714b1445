"""visattn: efficient-attention vision backbones for timm, with fused Triton kernels.

``import visattn`` registers every visattn model with timm, so ``timm.create_model('biformer_tiny')`` works.
"""

from collections.abc import Sequence

from . import backbones
from .weights import load_pretrained

__version__ = "0.1.0"

__all__ = ["__version__", "backbones", "list_models", "load_pretrained"]

DEFAULT_KIND = "classification"  # of a family whose module declares no MODEL_KIND
MODEL_KINDS = (DEFAULT_KIND, "segmentation")


TEST_PREFIX = "test_"  # tiny variants for tests (``test_biformer``, ...), as timm's ``test_vit``


def list_models(filter: str | Sequence[str] = "", kind: str | None = None,
                include_test: bool | str = False) -> list[str]:
    """Names of the models visattn registers with timm; ``filter``: fnmatch patterns as ``timm.list_models`` takes
    (``"biformer_*"``); ``kind`` keeps only ``"classification"`` backbones or ``"segmentation"`` networks (per-pixel
    logits), as the family's module declares in ``MODEL_KIND``.

    The tiny ``test_<family>`` variants (a few blocks of small widths, untrained, no published numbers) are left out
    unless ``include_test``; ``include_test="only"`` lists them alone."""
    import fnmatch
    import sys

    import timm

    if kind not in (None, *MODEL_KINDS):
        raise ValueError(f"unknown model kind {kind!r}; use one of {', '.join(map(repr, MODEL_KINDS))}")
    if include_test not in (False, True, "only"):
        raise ValueError(f"include_test must be False, True or 'only', got {include_test!r}")
    names = []
    for name in timm.list_models():
        module = timm.models.model_entrypoint(name).__module__
        if not module.startswith(f"{__name__}."):
            continue
        is_test = name.startswith(TEST_PREFIX)
        if (is_test and not include_test) or (include_test == "only" and not is_test):
            continue
        if kind in (None, getattr(sys.modules[module], "MODEL_KIND", DEFAULT_KIND)):
            names.append(name)
    patterns = [filter] if isinstance(filter, str) else list(filter)
    if any(patterns):
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns if p)]
    return sorted(names)
