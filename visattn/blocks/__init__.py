"""Shared attention blocks: one mechanism per file, each calling ops for its hot path."""

from .attention import LePEAttention
from .gated_cnn import GatedCNNBlock
from .routing_attention import BiLevelRoutingAttention

__all__ = ["BiLevelRoutingAttention", "GatedCNNBlock", "LePEAttention"]
