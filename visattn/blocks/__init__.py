"""Shared attention blocks: one mechanism per file, each calling ops for its hot path."""

from .attention import LePEAttention
from .gated_cnn import GatedCNNBlock
from .routing_attention import BiLevelRoutingAttention
from .ss2d import SS2D
from .window_attention import WindowAttention

__all__ = ["SS2D", "BiLevelRoutingAttention", "GatedCNNBlock", "LePEAttention", "WindowAttention"]
