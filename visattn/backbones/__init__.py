"""timm-registered backbone families, one file each. Importing this module registers them all."""

from . import biformer, fsgnet, herseg, inline, lamamba, psa, sparsifiner, tcpa
from .biformer import BiFormer
from .fsgnet import FSGNet
from .herseg import HerSeg
from .inline import InLineCSwin, InLineDeiT, InLinePVT, InLineSwin
from .lamamba import LaMamba
from .psa import PSAHRNet, PSAResNet
from .sparsifiner import SparsifinerViT
from .tcpa import TCPAViT

__all__ = ["BiFormer", "FSGNet", "HerSeg", "InLineCSwin", "InLineDeiT", "InLinePVT", "InLineSwin", "LaMamba",
           "PSAHRNet", "PSAResNet", "SparsifinerViT", "TCPAViT", "biformer", "fsgnet", "herseg", "inline", "lamamba",
           "psa", "sparsifiner", "tcpa"]
