"""timm-registered backbone families, one file each. Importing this module registers them all."""

from . import biformer, herseg, inline, lamamba
from .biformer import BiFormer
from .herseg import HerSeg
from .inline import InLineDeiT, InLineSwin
from .lamamba import LaMamba

__all__ = ["BiFormer", "HerSeg", "InLineDeiT", "InLineSwin", "LaMamba", "biformer", "herseg", "inline",
           "lamamba"]
