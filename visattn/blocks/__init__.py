"""Shared attention blocks: one mechanism per file, each calling ops for its hot path."""

from ._checkpoint import maybe_checkpoint
from .attention import LePEAttention
from .dual_gated_attention import DualGatedLinearAttention, DualGatedLinearAttentionBlock
from .linear_attention import InjectiveLinearAttention
from .mask_decoder import PromptFreeMaskDecoder, TwoWayTransformer
from .routing_attention import BiLevelRoutingAttention
from .ss2d import SS2D
from .window_attention import WindowAttention

__all__ = ["SS2D", "BiLevelRoutingAttention", "DualGatedLinearAttention", "DualGatedLinearAttentionBlock",
           "InjectiveLinearAttention", "LePEAttention", "PromptFreeMaskDecoder", "TwoWayTransformer",
           "WindowAttention", "maybe_checkpoint"]
