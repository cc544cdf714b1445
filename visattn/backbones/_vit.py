"""The timm API shared by the ViT families: timm's VisionTransformer whose blocks also take the patch grid."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from timm.layers import DropPath, resample_abs_pos_embed, to_2tuple
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import VisionTransformer

from ..blocks import maybe_checkpoint
from ..weights import PretrainedMixin
from ._helpers import check_images

# one call in torch.fx graphs, whatever module's forward the trace starts from (timm's registry wraps it only where the
# root's forward is defined): it branches on the grid's size
torch.fx.wrap("resample_abs_pos_embed")


class ScaledResidualBlock(nn.Module):
    """The pre-norm ViT block the ViT families share, its residual branches scaled by 1 / lambda (``skip_lam``: 1 on
    DeiT, 2 on LV-ViT): X = X + DropPath(A(LN(X))) / lambda; X = X + DropPath(MLP(LN(X))) / lambda.

    ``attn(device=..., dtype=...)`` builds the family's attention A; subclasses define ``forward``. ``options``: the
    timm ``block_fn`` arguments the family does not take, an error when one is set (``family`` names it).
    """

    def __init__(self, family: str, dim: int, attn: Callable[..., nn.Module], mlp_ratio: float, proj_bias: bool,
                 proj_drop: float, drop_path: float, norm_layer: Callable, act_layer: Callable, mlp_layer: Callable,
                 skip_lam: float, unsupported: Sequence[str], options: dict, device=None, dtype=None):
        super().__init__()
        given = [name for name in unsupported if options.get(name)]
        if given:
            raise ValueError(f"{family} blocks do not support {', '.join(given)}")
        if skip_lam <= 0:
            raise ValueError(f"skip_lam={skip_lam} must be > 0")
        dd = dict(device=device, dtype=dtype)
        self.skip_lam = skip_lam
        self.norm1 = norm_layer(dim, **dd)
        self.attn = attn(**dd)
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = mlp_layer(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer,
                             bias=proj_bias, drop=proj_drop, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def residual(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """X + DropPath(branch) / lambda; with lambda = 1 no division (the same values, one pass less)."""
        branch = self.drop_path(branch)
        return x + (branch if self.skip_lam == 1 else branch / self.skip_lam)


class GridViT(PretrainedMixin, VisionTransformer):
    """Base class: timm's VisionTransformer with the family's ``block_fn``, whose blocks run as ``block(x, (H, W))``
    on (B, prefix + H*W, C) tokens.

    The block loops of ``forward_features`` and ``forward_intermediates`` are ours (they pass the grid and
    checkpoint); everything else (embedding, position-embedding resampling, pooling, head, pruning) is timm's.
    Defaults to ``dynamic_img_size`` and ``dynamic_img_pad``: any input size works. Patch dropout (which breaks the
    grid) and attention masks are not supported. A ``block_fn`` argument (the class's with options bound, say)
    replaces the class attribute.
    """

    block_fn: type[nn.Module]

    def __init__(self, **kwargs):
        if kwargs.get("patch_drop_rate"):
            raise ValueError(f"{type(self).__name__} does not support patch dropout: its blocks need the full grid")
        img_size, patch = kwargs.get("img_size", 224), to_2tuple(kwargs.get("patch_size", 16))
        if img_size is not None and any(s < p for s, p in zip(to_2tuple(img_size), patch, strict=True)):
            raise ValueError(f"{type(self).__name__}: img_size={img_size} is smaller than one {patch[0]}x{patch[1]} "
                             f"patch: the position table needs a grid of at least 1 x 1 (img_size sets the table's "
                             f"grid; any input size runs)")
        kwargs.setdefault("dynamic_img_size", True)
        kwargs.setdefault("dynamic_img_pad", True)
        kwargs.setdefault("block_fn", self.block_fn)
        super().__init__(**kwargs)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {name for name in ("pos_embed", "cls_token", "reg_token") if getattr(self, name, None) is not None}

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """timm's, with the patch grid flattened by its sizes: timm's ``view(B, -1, C)`` cannot flatten an empty
        batch. ``x``: (B, H, W, C) with ``dynamic_img_size`` (the position embedding resampled to H x W), else
        (B, N, C): the patch embedding's layout, decided when the model is built (so torch.fx can trace it)."""
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        pos_embed = self.pos_embed
        if self.dynamic_img_size and pos_embed is not None:
            pos_embed = resample_abs_pos_embed(pos_embed, new_size=(x.shape[1], x.shape[2]),
                                               old_size=self.patch_embed.grid_size,
                                               num_prefix_tokens=0 if self.no_embed_class else self.num_prefix_tokens)
        x = x.flatten(1, 2) if self.dynamic_img_size else x
        if pos_embed is None:
            return torch.cat([*prefix, x], dim=1) if prefix else x
        if self.no_embed_class:
            x = x + pos_embed
        x = torch.cat([*prefix, x], dim=1) if prefix else x
        return self.pos_drop(x if self.no_embed_class else x + pos_embed)

    def train_extras(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Final normed tokens (B, prefix + H*W, C) -> the token extras a family's ``forward_train`` gives:
        ``tokens`` (what token distillation matches), the patch tokens (B, H*W, C)."""
        return {"tokens": x[:, self.num_prefix_tokens:]}

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        check_images(self, x)
        x = self.patch_embed(x)
        size = (x.shape[1], x.shape[2]) if self.dynamic_img_size else self.patch_embed.grid_size
        return self.norm_pre(self._pos_embed(x)), size

    def _no_masks(self, attn_mask: torch.Tensor | None, is_causal: bool) -> None:
        if isinstance(attn_mask, torch.fx.Proxy):  # torch.fx symbolic tracing: every argument is a placeholder
            return
        if attn_mask is not None or is_causal:
            raise ValueError(f"{type(self).__name__} takes no attention mask and is not causal")

    def _run_blocks(self, x: torch.Tensor, size: tuple[int, int], blocks, take_indices=(),
                    norm: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run ``blocks`` (checkpointed when asked) on tokens of an H x W grid; returns the final tokens and the
        outputs of the blocks in ``take_indices`` (normed when ``norm``). Families whose blocks take more than the
        grid override this loop only."""
        intermediates = []
        for i, block in enumerate(blocks):
            x = maybe_checkpoint(block, x, size, enabled=self.grad_checkpointing)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        return x, intermediates

    def forward_features(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                         is_causal: bool = False) -> torch.Tensor:
        self._no_masks(attn_mask, is_causal)
        x, size = self._embed(x)
        return self.norm(self._run_blocks(x, size, self.blocks)[0])

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False, output_dict: bool = False,
                              attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        """timm's ViT ``forward_intermediates``: block outputs in ``indices`` as NCHW maps (or NLC tokens), and
        the final normed tokens unless ``intermediates_only``."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r} is not supported; use 'NCHW' or 'NLC'")
        self._no_masks(attn_mask, is_causal)
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        b = x.shape[0]
        x, (h, w) = self._embed(x)
        blocks = self.blocks[: max_index + 1] if stop_early and not torch.jit.is_scripting() else self.blocks
        x, intermediates = self._run_blocks(x, (h, w), blocks, take_indices, norm)
        prefix = [y[:, : self.num_prefix_tokens] for y in intermediates]
        intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]
        if output_fmt == "NCHW":
            intermediates = [y.reshape(b, h, w, y.shape[-1]).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if output_dict:
            out = {"image_intermediates": intermediates}
            if return_prefix_tokens and self.num_prefix_tokens:
                out["image_intermediates_prefix"] = prefix
            if not intermediates_only:
                out["image_features"] = self.norm(x)
            return out
        if return_prefix_tokens and self.num_prefix_tokens:
            intermediates = list(zip(intermediates, prefix, strict=True))
        return intermediates if intermediates_only else (self.norm(x), intermediates)
