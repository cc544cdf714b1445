"""timm-registered backbone families, one file each. Importing this module registers them all."""

from . import biformer, lamamba, mambaout
from .biformer import BiFormer
from .lamamba import LaMamba
from .mambaout import MambaOut

__all__ = ["BiFormer", "LaMamba", "MambaOut", "biformer", "lamamba", "mambaout"]
