"""Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers (Wei et al., CVPR 2023).

DeiT (timm's VisionTransformer: class token, learned position embedding, class-token pooling) in which every
attention layer carries a connectivity predictor (:class:`visattn.blocks.ConnectivityPredictor`) that picks, per
head and patch query, the ceil(rho N) keys it attends to (rho = ``keep_rate``, 0.25 by default); the class query
attends densely (:class:`visattn.blocks.SparsifinerAttention`).

Training, as the official recipe (from DeiT-S, 50 epochs): ``set_training_phase("reconstruct")`` trains only the
predictors to reconstruct the dense attention (the backbone is frozen and attends densely, so its own attention is
the target), then ``set_training_phase("distill")`` trains the backbone with sparse attention against a dense
teacher (logits and last-layer patch tokens). ``forward_train`` (the model-training contract, :mod:`visattn.contract`)
gives what those losses need and the statistic ``keep_ratio``.

Any input size works: the image is padded to a multiple of 16, and the position embedding and the predictors'
token projections are resampled to the token grid.

Parameters and MACs (the sparse attention counted over the attended keys only, at 224): README's model table.

Weights: no trained Sparsifiner weights are published (lim142857/Sparsifiner, MIT, releases code only).
``pretrained=True`` loads the DeiT-S weights the official training starts from (facebookresearch/deit,
Apache-2.0) with the predictors at their initialisation, and warns about them. An official Sparsifiner training
checkpoint loads as is (``pretrained_cfg_overlay=dict(file=...)`` or :func:`visattn.load_pretrained`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import Mlp, resample_abs_pos_embed, to_2tuple
from timm.models import generate_default_cfgs, register_model

from ..blocks import SparsifinerAttention, maybe_checkpoint
from ..contract import Inspectable, TrainOutput
from ..weights import checkpoint_filter
from ._helpers import create_model
from ._vit import GridViT, ScaledResidualBlock

__all__ = ["SparsifinerViT"]



class SparsifinerBlock(ScaledResidualBlock):
    """X = X + DropPath(SparsifinerAttention(LN(X), grid)) / lambda; X = X + DropPath(MLP(LN(X))) / lambda.

    lambda (``skip_lam``) is 1 on DeiT, 2 on LV-ViT-S/M. Shapes: (B, 1 + H*W, C) -> same. Takes timm's
    ``block_fn`` arguments (``attn_layer`` builds the attention); the options Sparsifiner lacks (qk norm, layer
    scale, attention dropout, ...) are errors.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_bias: bool = True, proj_drop: float = 0.0, drop_path: float = 0.0,
                 norm_layer: Callable = nn.LayerNorm, act_layer: Callable = nn.GELU, mlp_layer: Callable = Mlp,
                 attn_layer: Callable = SparsifinerAttention, skip_lam: float = 1.0, device=None, dtype=None,
                 **kwargs):
        attn = partial(attn_layer, dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, proj_drop=proj_drop)
        super().__init__("Sparsifiner", dim, attn, mlp_ratio, proj_bias, proj_drop, drop_path, norm_layer, act_layer,
                         mlp_layer, skip_lam, ("qk_norm", "scale_attn_norm", "scale_mlp_norm", "init_values",
                                               "attn_drop"), kwargs, device, dtype)

    def forward(self, x: torch.Tensor, size: tuple[int, int], return_maps: bool = False):
        """``return_maps``: also the attention's approximate and dense maps (see :class:`SparsifinerAttention`)."""
        y = self.attn(self.norm1(x), size, return_maps)
        y, approx, probs = y if return_maps else (y, None, None)
        x = self.residual(x, y)
        x = self.residual(x, self.mlp(self.norm2(x)))
        return (x, approx, probs) if return_maps else x


class SparsifinerViT(Inspectable, GridViT):
    """Sparsifiner-DeiT: timm's VisionTransformer (through :class:`GridViT`) with Sparsifiner attention.

    Args:
        keep_rate: rho, the fraction of the N tokens each patch query attends to (ceil(rho N) keys), in (0, 1].
        basis_threshold: tau, basis entries with |u| <= tau are zeroed (0.02).
        coef_topk: kappa, basis coefficients kept per query (8 of K).
        reduce_n_factor: K = N_0 // reduce_n_factor basis vectors, N_0 the token count at ``img_size`` (6: K = 32).
        reduce_c_factor: the predictor's query/key channels are head_dim // reduce_c_factor (2).
        num_basis: K itself, overriding ``reduce_n_factor`` (say 32 to fine-tune 224 weights at another size).
        **kwargs: timm's VisionTransformer arguments; exactly one prefix token (the class token).
    """

    block_fn = SparsifinerBlock
    addon_keys = r"\.mask_predictor\."  # the predictors a plain DeiT checkpoint lacks
    # Parameters only the reconstruction loss trains: no gradient reaches them from the logits.
    aux_loss_keys = addon_keys
    training_phases = ("reconstruct", "distill")

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int | tuple[int, int] = 16,
                 keep_rate: float = 0.25, basis_threshold: float = 0.02, coef_topk: int = 8,
                 reduce_n_factor: int = 6, reduce_c_factor: int = 2, num_basis: int | None = None, **kwargs):
        if not kwargs.get("class_token", True) or kwargs.get("reg_tokens"):
            raise ValueError("Sparsifiner needs exactly one prefix token, the class token")
        grid = tuple(s // p for s, p in zip(to_2tuple(img_size), to_2tuple(patch_size), strict=True))
        attn_layer = partial(SparsifinerAttention, grid=grid, keep_rate=keep_rate, basis_threshold=basis_threshold,
                             coef_topk=coef_topk, reduce_n_factor=reduce_n_factor, reduce_c_factor=reduce_c_factor,
                             num_basis=num_basis)
        super().__init__(img_size=img_size, patch_size=patch_size, attn_layer=attn_layer, **kwargs)

    def set_training_phase(self, phase: str | None) -> None:
        """``"reconstruct"``: only the predictors train (``requires_grad``), on dense attention in training;
        ``"distill"``: all but the predictors train, on sparse attention; None: everything trains, sparse."""
        if phase is not None and phase not in self.training_phases:
            raise ValueError(f"phase={phase!r}; use 'reconstruct', 'distill' or None")
        for name, param in self.named_parameters():
            param.requires_grad_(phase is None or (phase == "reconstruct") == bool(re.search(self.addon_keys, name)))
        for module in self.modules():
            if isinstance(module, SparsifinerAttention):
                module.reconstruct = phase == "reconstruct"

    def forward_train(self, x: torch.Tensor) -> TrainOutput:
        """Logits (B, classes), the statistic ``keep_ratio`` and the extras the Sparsifiner losses read:

        - ``keep_ratio``: the fraction of the N x N query-key pairs the blocks attend, averaged over blocks:
          (N + (N - 1) ceil(rho N)) / N^2 for sparse attention, 1 for a block attending densely (reconstructing);
        - ``tokens``: the final normed patch tokens (B, H*W, C) (on LV-ViT, :meth:`train_extras`: the per-token
          ``aux_head`` logits, also as ``token_logits``);
        - ``approx``: per block, the predictor's approximate attention of the patch queries (B, heads, H*W, N), in
          evaluation and while reconstructing in training (outside that phase no loss reads it, and an output no
          loss reads would leave DDP waiting for the predictors' gradients);
        - ``attention``: per block, the dense attention probabilities (B, heads, N, N), only while
          reconstructing in training (the phase-1 target).
        """
        x, size = self._embed(x)
        approx, attention, kept = [], [], []
        n = x.shape[1]
        for block in self.blocks:
            x, block_approx, probs = maybe_checkpoint(block, x, size, True, enabled=self.grad_checkpointing)
            approx.append(block_approx)
            kept.append(block.attn.keep_ratio(n))
            if probs is not None:
                attention.append(probs)
        x = self.norm(x)
        extras = self.train_extras(x)
        if attention or not self.training or any(block.attn.reconstruct for block in self.blocks):
            extras["approx"] = approx
        if attention:
            extras["attention"] = attention
        keep_ratio = torch.tensor(sum(kept) / len(kept), device=x.device)
        return TrainOutput(self.forward_head(x), stats={"keep_ratio": keep_ratio}, extras=extras)


_PREDICTOR_PROJECTIONS = ("mask_predictor.proj_n", "mask_predictor.proj_back_n")


@checkpoint_filter(SparsifinerViT)
def checkpoint_filter_fn(state_dict: dict, model: SparsifinerViT) -> dict:
    """Map an official Sparsifiner (or DeiT) checkpoint (weights under ``model`` or a raw state dict) onto ours.

    The keys are already ours; the position embedding and the predictors' token projections (``proj_n``,
    ``proj_back_n``: (1 + H*W, K)) are resampled when the checkpoint's token grid differs from the model's.
    """
    state_dict = state_dict.get("model", state_dict)
    grid = model.patch_embed.grid_size
    out = {}
    for key, value in state_dict.items():
        if key == "pos_embed" and value.shape != model.pos_embed.shape:
            value = resample_abs_pos_embed(value, new_size=grid, num_prefix_tokens=model.num_prefix_tokens)
        elif key.endswith(_PREDICTOR_PROJECTIONS) and value.shape[0] != 1 + grid[0] * grid[1]:
            value = resample_abs_pos_embed(value[None], new_size=grid, num_prefix_tokens=1)[0]
        out[key] = value
    return out


default_cfgs = generate_default_cfgs({
    "sparsifiner_deit_small.fb_in1k": {
        "url": "https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth",
        "hf_hub_id": "timm/deit_small_patch16_224.fb_in1k", "num_classes": 1000, "input_size": (3, 224, 224),
        "pool_size": None, "crop_pct": 0.875, "crop_mode": "center", "interpolation": "bicubic",
        "fixed_input_size": False, "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head", "license": "apache-2.0",
        "notes": ("DeiT-S weights (the official starting point); the connectivity predictors are untrained",),
        "paper_ids": "arXiv:2303.13755",
        "paper_name": "Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers",
        "origin_url": "https://github.com/lim142857/Sparsifiner",
    },
    "test_sparsifiner": {
        "url": "", "num_classes": 1000, "input_size": (3, 64, 64), "pool_size": None, "crop_pct": 0.875,
        "interpolation": "bicubic", "fixed_input_size": False, "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD, "first_conv": "patch_embed.proj", "classifier": "head",
        "license": "apache-2.0", "paper_ids": "arXiv:2303.13755",
    },
})


@register_model
def sparsifiner_deit_small(pretrained: bool = False, **kwargs) -> SparsifinerViT:
    """Sparsifiner-DeiT-S @224: 384 dims, 6 heads, 12 blocks, 25% of the keys per patch query."""
    args = dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, out_indices=3)
    return create_model(SparsifinerViT, "sparsifiner_deit_small", pretrained, dict(args, **kwargs), tag="fb_in1k")


@register_model
def test_sparsifiner(pretrained: bool = False, **kwargs) -> SparsifinerViT:
    """Tiny Sparsifiner for tests: 4 blocks of 32 dims and 2 heads on a 4x4 patch grid (64x64), 8 basis vectors."""
    args = dict(img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=2, reduce_n_factor=2, coef_topk=4,
                out_indices=3)
    return create_model(SparsifinerViT, "test_sparsifiner", pretrained, dict(args, **kwargs), tag="")
