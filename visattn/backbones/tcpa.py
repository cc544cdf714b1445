"""TCPA: Token Coordinated Prompt Attention is Needed for Visual Prompting (Liu et al., ICML 2025, arXiv 2505.02406).

A frozen ViT-B/16 (timm's ``vit_base_patch16_224.augreg_in21k``) whose every block attends, besides its tokens, to
per-layer prompt tokens chosen per token (:class:`visattn.blocks.TokenCoordinatedPrompts`): the class token to
top-k entries of a CLS prompt pool, each patch to top-k entries of an image prompt pool, matched by cosine
similarity of the block's input token with the pools' keys. Only the prompts, their keys and the head train.
Defaults are the released VFPT-TCPA scripts: M = 18 entries per pool, Lp = 1, k = 10, Fourier-transformed prompts
(VFPT), prompt dropout 0.1, matching loss weight lambda = 0.01 and random matching for the first 10 epochs.

Training (the model-training contract, :mod:`visattn.contract`): ``forward_train`` returns the logits with the
matching loss lambda * sum_l d_l as the auxiliary loss ``matching``; ``set_epoch(epoch)`` switches random matching on
for ``epoch < random_topk_epochs``. Not
implemented: the official options the released scripts do not use (ADVP, SimAM, random prompt noise) and the
convolutional input prompter (``--IPrompt``) that the CUB script adds.

Any input size works (the image is padded to a multiple of 16, the position embedding resampled); the matching
runs over however many patches there are.

Parameters and MACs (at 224 with the 21843-class head): README's model table.

Weights: no trained TCPA weights are published (zhoujiahuan1991/ICML2025-TCPA has no LICENSE file and releases
code only). ``pretrained=True`` loads timm's ImageNet-21k ViT-B/16 (Apache-2.0) with the prompts at their
initialisation, and warns about them; pass ``num_classes`` for the task (the head is then reset, as the official
code does). An official TCPA checkpoint (``backbone.*``, ``Pool.*``) loads through
``pretrained_cfg_overlay=dict(file=...)`` or :func:`visattn.load_pretrained`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import DropPath, LayerScale, Mlp, resample_abs_pos_embed
from timm.models import generate_default_cfgs, register_model

from ..blocks import PromptedAttention, TokenCoordinatedPrompts, maybe_checkpoint
from ..contract import Inspectable, InspectionMap, TrainOutput
from ..weights import checkpoint_filter
from ._helpers import create_model, rename_keys
from ._vit import GridViT

__all__ = ["TCPAViT"]


class TCPABlock(nn.Module):
    """timm's ViT block with prompted attention (timm ``Block``'s parameter names, so ViT weights load as is):

    X = X + DropPath(LS(PromptedAttention(LN(X), LN(Z), indices))); X = X + DropPath(LS(MLP(LN(X)))).

    Shapes: x (B, N, C) -> same; prompts Z (B or 1, Z, C), indices (B, 1, N, K). The options timm's block has and
    TCPA's ViT-B lacks (qk norm, attention dropout, ...) are errors.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_bias: bool = True, proj_drop: float = 0.0, init_values: float | None = None,
                 drop_path: float = 0.0, norm_layer: Callable = nn.LayerNorm, act_layer: Callable = nn.GELU,
                 mlp_layer: Callable = Mlp, device=None, dtype=None, **kwargs):
        super().__init__()
        unsupported = [name for name in ("qk_norm", "scale_attn_norm", "scale_mlp_norm", "attn_drop")
                       if kwargs.get(name)]
        if unsupported:
            raise ValueError(f"TCPA blocks do not support {', '.join(unsupported)}")
        dd = dict(device=device, dtype=dtype)
        self.norm1 = norm_layer(dim, **dd)
        self.attn = PromptedAttention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, proj_drop=proj_drop,
                                      **dd)
        self.ls1 = LayerScale(dim, init_values=init_values, **dd) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = mlp_layer(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer,
                             bias=proj_bias, drop=proj_drop, **dd)
        self.ls2 = LayerScale(dim, init_values=init_values, **dd) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, prompts: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), self.norm1(prompts), indices)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

    def inspect_forward(self, x: torch.Tensor, prompts: torch.Tensor, indices: torch.Tensor, *,
                        query: tuple[float, float]) -> InspectionMap:
        """The contract's ``prompt_usage`` map: per prompt token of the layer's Z = [class pool; image pool] (the
        layout of :meth:`~visattn.blocks.TokenCoordinatedPrompts.prompt_tokens`), the tokens whose key indices chose
        it, each token's vote split over its K prompt keys."""
        b, n, _ = x.shape
        count, picks = prompts.shape[1], indices.shape[-1]
        chosen = (indices[:, 0] - n).reshape(b, -1)
        usage = torch.zeros(b, count, device=x.device).scatter_add_(1, chosen, torch.full(chosen.shape, 1.0 / picks,
                                                                                          device=x.device))
        return InspectionMap("prompt_usage", {"usage": usage, "pools": (("class", count // 2), ("image", count // 2)),
                                              "tokens": n})


class TCPAViT(Inspectable, GridViT):
    """TCPA on timm's VisionTransformer (through :class:`GridViT`): a frozen ViT plus trainable prompts and head.

    Args:
        pool_size: M entries per pool; prompt_len: Lp tokens per entry; top_k: k entries per token (k <= M).
        matching: ``"token"`` (T-TCPA, per-token top-k and the matching loss) or ``"role"`` (R-TCPA).
        fourier: Fourier-transform the prompts (VFPT-TCPA).
        match_loss_weight: lambda of the matching loss (``forward_train``'s auxiliary loss ``matching``).
        prompt_drop_rate: dropout on the prompt tokens.
        random_topk_epochs: ``set_epoch`` uses random matching for the epochs before this one.
        **kwargs: timm's VisionTransformer arguments; exactly one prefix token (the class token).

    Every parameter but the prompt module's (``prompts.*``) and the head's has ``requires_grad`` False, and the
    backbone stays in eval mode (``train()`` moves only the prompts and the head).
    """

    block_fn = TCPABlock
    addon_keys = r"^prompts\."  # the prompt pools a plain ViT checkpoint lacks
    # Parameters only the auxiliary (matching) loss trains: no gradient reaches the pools' keys from the logits.
    aux_loss_keys = r"^prompts\.(cls|image)_keys$"

    def __init__(self, pool_size: int = 18, prompt_len: int = 1, top_k: int = 10, matching: str = "token",
                 fourier: bool = True, match_loss_weight: float = 0.01, prompt_drop_rate: float = 0.1,
                 random_topk_epochs: int = 10, **kwargs):
        if not kwargs.get("class_token", True) or kwargs.get("reg_tokens"):
            raise ValueError("TCPA needs exactly one prefix token, the class token")
        super().__init__(**kwargs)
        self.prompts = TokenCoordinatedPrompts(
            self.embed_dim, len(self.blocks), pool_size, prompt_len, top_k, matching, fourier, prompt_drop_rate,
            device=self.cls_token.device, dtype=self.cls_token.dtype)
        self.match_loss_weight = match_loss_weight
        self.random_topk_epochs = random_topk_epochs
        for name, param in self.named_parameters():
            param.requires_grad_(name.startswith(("prompts.", "head.")))
        self.train(self.training)

    def train(self, mode: bool = True):
        """Prompts, head dropout and head follow ``mode``; the frozen backbone stays in eval mode."""
        super().train(mode)
        for name, module in self.named_children():
            if name not in ("prompts", "head_drop", "head"):
                module.train(False)
        return self

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """timm's head reset; the new head trains."""
        super().reset_classifier(num_classes, global_pool)
        self.head.requires_grad_(True)

    def set_epoch(self, epoch: int) -> None:
        """Random matching for ``epoch < random_topk_epochs`` (the official ``random_epoch``), top-k after."""
        self.prompts.random = epoch < self.random_topk_epochs

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's ViT groups, with the prompts in the last group (no layer decay)."""
        return dict(stem=r"^cls_token|reg_token|pos_embed|patch_embed|norm_pre",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm|^prompts\.", (99999,))])

    def _run_prompted(self, x: torch.Tensor, blocks, take_indices=(),
                      norm: bool = False) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor | None]]:
        """:class:`GridViT`'s block loop, each block with its layer's prompts and key indices; also returns each
        layer's matching distance d_l (None where the layer does not match by token in training)."""
        intermediates, distances = [], []
        for i, block in enumerate(blocks):
            prompts, indices, distance = self.prompts(i, x)
            distances.append(distance)
            x = maybe_checkpoint(block, x, prompts, indices, enabled=self.grad_checkpointing)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        return x, intermediates, distances

    def _run_blocks(self, x: torch.Tensor, size: tuple[int, int], blocks, take_indices=(),
                    norm: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self._run_prompted(x, blocks, take_indices, norm)[:2]

    def forward_train(self, x: torch.Tensor) -> TrainOutput:
        """Logits (B, classes) and, in training with token matching, the auxiliary loss ``matching`` =
        lambda * sum_l d_l."""
        x, _ = self._embed(x)
        x, _, distances = self._run_prompted(x, self.blocks)
        matched = [d for d in distances if d is not None]
        aux = {"matching": self.match_loss_weight * torch.stack(matched).sum()} if self.training and matched else {}
        return TrainOutput(self.forward_head(self.norm(x)), aux_losses=aux)


# Official layout (models/VFPT_TCPA.py, models/TCPA.py) -> ours, first match wins.
_RENAMES = [
    (r"^backbone\.", ""),
    (r"^Pool\.Pool_cls\.", "prompts.cls_"),
    (r"^Pool\.Pool_image\.", "prompts.image_"),
]
_UNSUPPORTED = ("ADVP_", "Prompter.", "simam.")


@checkpoint_filter(TCPAViT)
def checkpoint_filter_fn(state_dict: dict, model: TCPAViT) -> dict:
    """Map an official TCPA checkpoint (``backbone.*``, ``Pool.Pool_cls.{keys,prompts}``,
    ``Pool.Pool_image.{keys,prompts}``), a timm ViT state dict or one in our layout onto our keys.

    The position embedding is resampled when the checkpoint's grid differs from the model's. Tensors of official
    options visattn does not implement (ADVP, the input prompter) are dropped with a warning.
    """
    dropped = [k for k in state_dict if k.startswith(_UNSUPPORTED)]
    if dropped:
        warnings.warn(f"TCPA checkpoint: {len(dropped)} tensors of official options visattn does not implement "
                      f"(ADVP, IPrompt: {', '.join(dropped[:3])}) are ignored", stacklevel=3)
    out = rename_keys({k: v for k, v in state_dict.items() if k not in dropped}, _RENAMES)
    pos = out.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape:
        out["pos_embed"] = resample_abs_pos_embed(pos, new_size=model.patch_embed.grid_size,
                                                  num_prefix_tokens=model.num_prefix_tokens)
    return out


default_cfgs = generate_default_cfgs({
    "tcpa_vit_base_patch16_224.augreg_in21k": {
        "hf_hub_id": "timm/vit_base_patch16_224.augreg_in21k", "hf_hub_filename": "model.safetensors",
        "custom_load": "hf", "num_classes": 21843, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.9, "interpolation": "bicubic", "fixed_input_size": False, "mean": IMAGENET_INCEPTION_MEAN,
        "std": IMAGENET_INCEPTION_STD, "first_conv": "patch_embed.proj", "classifier": "head",
        "license": "unknown: zhoujiahuan1991/ICML2025-TCPA has no LICENSE file (timm's ViT weights: apache-2.0)",
        "notes": ("timm's ImageNet-21k ViT-B/16 (the official starting point); the prompts are untrained",),
        "paper_ids": "arXiv:2505.02406",
        "paper_name": "Token Coordinated Prompt Attention is Needed for Visual Prompting",
        "origin_url": "https://github.com/zhoujiahuan1991/ICML2025-TCPA",
    },
    "test_tcpa": {
        "url": "", "num_classes": 1000, "input_size": (3, 64, 64), "pool_size": None, "crop_pct": 0.9,
        "interpolation": "bicubic", "fixed_input_size": False, "mean": IMAGENET_INCEPTION_MEAN,
        "std": IMAGENET_INCEPTION_STD, "first_conv": "patch_embed.proj", "classifier": "head",
        "paper_ids": "arXiv:2505.02406",
    },
})


def _create(variant: str, pretrained: bool, kwargs: dict) -> TCPAViT:
    return create_model(TCPAViT, variant, pretrained, dict(dict(out_indices=3), **kwargs), tag="augreg_in21k")


@register_model
def tcpa_vit_base_patch16_224(pretrained: bool = False, **kwargs) -> TCPAViT:
    """VFPT-TCPA on ViT-B/16 @224: 768 dims, 12 heads, 12 blocks; 2 x 18 prompts per layer, top-10 per token."""
    args = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create("tcpa_vit_base_patch16_224", pretrained, dict(args, **kwargs))


@register_model
def test_tcpa(pretrained: bool = False, **kwargs) -> TCPAViT:
    """Tiny TCPA for tests: 4 blocks of 32 dims and 2 heads on a 4x4 patch grid (64x64); pools of 4 prompts, top-2
    per token."""
    args = dict(img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=2, pool_size=4, top_k=2, out_indices=3)
    return create_model(TCPAViT, "test_tcpa", pretrained, dict(args, **kwargs), tag="")
