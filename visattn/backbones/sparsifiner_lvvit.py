"""Sparsifiner on LV-ViT (Wei et al., CVPR 2023): LV-ViT (:mod:`visattn.backbones.lvvit`: convolutional stem,
``skip_lam`` residual scaling, token-labelling ``aux_head``) whose every attention layer carries Sparsifiner's
connectivity predictor (:class:`visattn.blocks.SparsifinerAttention`, as in
:class:`~visattn.backbones.sparsifiner.SparsifinerViT`): each patch query attends to ceil(rho N) keys (rho = 0.25),
the class query densely.

Output, as the official ``SparsifinerLVViT.forward``: in evaluation the class-token logits plus half the per-class
maximum of the patch tokens' ``aux_head`` logits; in training the class-token logits. The training phases are
Sparsifiner's (``set_training_phase("reconstruct" | "distill")``); the official LV-ViT recipe distils the
per-token ``aux_head`` logits of the dense LV-ViT teacher (MSE) where the DeiT recipe distils the patch tokens, so
``forward_train``'s extra ``tokens`` are those logits; it uses no token labels.

The official code (lim142857/Sparsifiner, MIT) builds the small model only; ``sparsifiner_lvvit_medium`` is visattn's
application of the same predictor settings to LV-ViT-M. No trained Sparsifiner weights are published:
``pretrained=True`` loads the TokenLabeling LV-ViT weights the official training starts from, the predictors at
their initialisation (with a warning); an official Sparsifiner-LV-ViT checkpoint loads as it is.
"""

from __future__ import annotations

from functools import partial

import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from ._helpers import create_model
from .lvvit import MEDIUM, SMALL, TINY, TOKEN_LABELING_URL, LVViTStem, TokenLabelingHead, lvvit_cfg
from .sparsifiner import SparsifinerBlock, SparsifinerViT

__all__ = ["SparsifinerLVViT"]


class SparsifinerLVViT(TokenLabelingHead, SparsifinerViT):
    """Sparsifiner-LV-ViT: :class:`SparsifinerViT` on LV-ViT's stem, residual scaling and token-labelling head.

    Args:
        skip_lam: lambda, the residual branches' divisor (2 for S and M).
        stem_chs: the stem's convolution channels (64).
        **kwargs: :class:`SparsifinerViT`'s arguments (``keep_rate``, ``reduce_n_factor``, ...) and timm's
            VisionTransformer's (``mlp_ratio`` 3 and no qkv bias by default).
    """

    # trained by their own losses only: the predictors (attention reconstruction), the aux head (token losses)
    aux_loss_keys = SparsifinerViT.addon_keys + "|" + TokenLabelingHead.aux_loss_keys

    def __init__(self, skip_lam: float = 1.0, stem_chs: int = 64, **kwargs):
        if kwargs.get("global_pool", "token") != "token":
            raise ValueError("LV-ViT needs class-token pooling")
        kwargs.setdefault("mlp_ratio", 3.0)
        kwargs.setdefault("qkv_bias", False)
        kwargs.setdefault("norm_layer", nn.LayerNorm)  # eps 1e-5, the official (timm's ViT default is 1e-6)
        kwargs.setdefault("block_fn", partial(SparsifinerBlock, skip_lam=skip_lam))
        kwargs.setdefault("embed_layer", partial(LVViTStem, stem_chs=stem_chs))
        super().__init__(**kwargs)
        self._make_aux_head(self.num_classes)


default_cfgs = generate_default_cfgs({
    "sparsifiner_lvvit_small.in1k": lvvit_cfg(
        TOKEN_LABELING_URL + "lvvit_s-26M-224-83.3.pth.tar",
        notes=("LV-ViT-S weights (the official starting point); the connectivity predictors are untrained",),
        paper_ids="arXiv:2303.13755", origin_url="https://github.com/lim142857/Sparsifiner",
        paper_name="Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers"),
    "sparsifiner_lvvit_medium.in1k": lvvit_cfg(
        TOKEN_LABELING_URL + "lvvit_m-56M-224-84.0.pth.tar", crop_pct=1.0,
        notes=("LV-ViT-M weights; the connectivity predictors are untrained",),
        paper_ids="arXiv:2303.13755", origin_url="https://github.com/lim142857/Sparsifiner",
        paper_name="Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers"),
    "test_sparsifiner_lvvit": lvvit_cfg(input_size=(3, 64, 64), paper_ids="arXiv:2303.13755"),
})


@register_model
def sparsifiner_lvvit_small(pretrained: bool = False, **kwargs) -> SparsifinerLVViT:
    """Sparsifiner-LV-ViT-S @224: LV-ViT-S (384 dims, 6 heads, 16 blocks), 25% of the keys per patch query."""
    return create_model(SparsifinerLVViT, "sparsifiner_lvvit_small", pretrained,
                        dict(dict(SMALL, out_indices=3), **kwargs))


@register_model
def sparsifiner_lvvit_medium(pretrained: bool = False, **kwargs) -> SparsifinerLVViT:
    """Sparsifiner-LV-ViT-M @224: LV-ViT-M (512 dims, 8 heads, 20 blocks), 25% of the keys per patch query."""
    return create_model(SparsifinerLVViT, "sparsifiner_lvvit_medium", pretrained,
                        dict(dict(MEDIUM, out_indices=3), **kwargs))


@register_model
def test_sparsifiner_lvvit(pretrained: bool = False, **kwargs) -> SparsifinerLVViT:
    """Tiny Sparsifiner-LV-ViT for tests: :func:`~visattn.backbones.lvvit.test_lvvit`'s layout, 8 basis vectors."""
    args = dict(TINY, reduce_n_factor=2, coef_topk=4, out_indices=3)
    return create_model(SparsifinerLVViT, "test_sparsifiner_lvvit", pretrained, dict(args, **kwargs), tag="")
