"""timm-registered backbone families, one file each. Importing this module registers them all."""

from . import biformer, herseg, inline, lamamba, sparsifiner, tcpa
from .biformer import BiFormer
from .herseg import HerSeg
from .inline import InLineDeiT, InLineSwin
from .lamamba import LaMamba
from .sparsifiner import SparsifinerViT
from .tcpa import TCPAViT

__all__ = ["BiFormer", "HerSeg", "InLineDeiT", "InLineSwin", "LaMamba", "SparsifinerViT", "TCPAViT", "biformer",
           "herseg", "inline", "lamamba", "sparsifiner", "tcpa"]
