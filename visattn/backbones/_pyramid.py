"""The timm API shared by the four-stage pyramid families (stem, stages, final norm, classifier head)."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq

from ._helpers import check_input_size, init_linear_weights


class PyramidStage(nn.Module):
    """Optional downsampling followed by a sequence of blocks, with optional gradient checkpointing."""

    def __init__(self, downsample: nn.Module, blocks: list[nn.Module]):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class PyramidModel(nn.Module):
    """Base class: subclasses build ``stem``, ``stages``, ``norm`` (applied to the last stage's map in
    ``forward_features``), ``head`` (a timm ClassifierHead-like module), ``feature_info`` and
    ``min_input_size``, and set ``channels_last`` when their stages work on (B, H, W, C) maps.
    Features leave the model as NCHW either way."""

    channels_last = False

    _init_weights = staticmethod(init_linear_weights)

    def _nchw(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2) if self.channels_last else x

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """No position tables or tokens; timm already exempts norms and biases from weight decay."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """NCHW features of the stages in ``indices``, and the final map unless ``intermediates_only``.

        ``norm=True`` applies the final norm to the last stage's intermediate.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r} is not supported; features are 'NCHW'")
        check_input_size(x, self.min_input_size, type(self).__name__)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_idx = len(self.stages) - 1
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[: max_index + 1]
        intermediates = []
        x = self.stem(x)
        for idx, stage in enumerate(stages):
            x = stage(x)
            if idx in take_indices:
                intermediates.append(self._nchw(self.norm(x) if norm and idx == last_idx else x))
        if intermediates_only:
            return intermediates
        if idx == last_idx:
            x = self.norm(x)
        return self._nchw(x), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.min_input_size, type(self).__name__)
        return self._nchw(self.norm(self.stages(self.stem(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
