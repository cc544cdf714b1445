"""timm-registered backbone families, one file each. Importing this module registers them all."""

from . import biformer
from .biformer import BiFormer

__all__ = ["BiFormer", "biformer"]
