"""Shared attention blocks: one mechanism per file, each calling ops for its hot path."""

from ._checkpoint import maybe_checkpoint
from .attention import LePEAttention
from .downsample import ConvDownsample
from .dual_gated_attention import DualGatedLinearAttention, DualGatedLinearAttentionBlock
from .linear_attention import InjectiveLinearAttention, PredictedLocalResidual
from .mask_decoder import PromptFreeMaskDecoder, TwoWayTransformer
from .polarized_attention import PolarizedSelfAttention
from .routing_attention import BiLevelRoutingAttention
from .sparse_attention import ConnectivityPredictor, SparsifinerAttention
from .spatial import pad_to_multiple, stripe_partition, stripe_reverse, window_apply, window_span
from .ss2d import SS2D
from .stripe_attention import StripeAttention
from .token_prompts import PromptedAttention, TokenCoordinatedPrompts
from .window_attention import WindowAttention

__all__ = ["SS2D", "BiLevelRoutingAttention", "ConnectivityPredictor", "ConvDownsample", "DualGatedLinearAttention",
           "DualGatedLinearAttentionBlock", "InjectiveLinearAttention", "LePEAttention", "PolarizedSelfAttention",
           "PredictedLocalResidual", "PromptFreeMaskDecoder", "PromptedAttention", "SparsifinerAttention",
           "StripeAttention", "TokenCoordinatedPrompts", "TwoWayTransformer", "WindowAttention", "maybe_checkpoint",
           "pad_to_multiple", "stripe_partition", "stripe_reverse", "window_apply", "window_span"]
