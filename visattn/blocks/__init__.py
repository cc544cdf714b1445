"""Shared attention blocks: one mechanism per file, each calling ops for its hot path."""

from .attention import LePEAttention
from .dual_gated_attention import DualGatedLinearAttention, DualGatedLinearAttentionBlock
from .gated_cnn import GatedCNNBlock
from .linear_attention import InjectiveLinearAttention
from .mask_decoder import PromptFreeMaskDecoder, TwoWayTransformer
from .routing_attention import BiLevelRoutingAttention
from .ss2d import SS2D
from .window_attention import WindowAttention

__all__ = ["SS2D", "BiLevelRoutingAttention", "DualGatedLinearAttention", "DualGatedLinearAttentionBlock",
           "GatedCNNBlock", "InjectiveLinearAttention", "LePEAttention", "PromptFreeMaskDecoder", "TwoWayTransformer",
           "WindowAttention"]
