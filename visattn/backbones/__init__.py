"""timm-registered backbone families, one file each (InLine: one per host architecture). Importing this module
registers them all."""

from . import (
    biformer,
    fsgnet,
    herseg,
    inline_cswin,
    inline_deit,
    inline_pvt,
    inline_swin,
    lamamba,
    lvvit,
    psa,
    sparsifiner,
    sparsifiner_lvvit,
    tcpa,
)
from .biformer import BiFormer
from .fsgnet import FSGNet
from .herseg import HerSeg
from .inline_cswin import InLineCSwin
from .inline_deit import InLineDeiT
from .inline_pvt import InLinePVT
from .inline_swin import InLineSwin
from .lamamba import LaMamba
from .lvvit import LVViT
from .psa import PSAHRNet, PSAResNet
from .sparsifiner import SparsifinerViT
from .sparsifiner_lvvit import SparsifinerLVViT
from .tcpa import TCPAViT

__all__ = ["BiFormer", "FSGNet", "HerSeg", "InLineCSwin", "InLineDeiT", "InLinePVT", "InLineSwin", "LVViT", "LaMamba",
           "PSAHRNet", "PSAResNet", "SparsifinerLVViT", "SparsifinerViT", "TCPAViT", "biformer", "fsgnet", "herseg",
           "inline_cswin", "inline_deit", "inline_pvt", "inline_swin", "lamamba", "lvvit", "psa", "sparsifiner",
           "sparsifiner_lvvit", "tcpa"]
