"""timm-registered backbone families, one file each. Importing this module registers them all."""

from . import biformer, mambaout
from .biformer import BiFormer
from .mambaout import MambaOut

__all__ = ["BiFormer", "MambaOut", "biformer", "mambaout"]
