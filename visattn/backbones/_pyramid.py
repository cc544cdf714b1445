"""The timm API shared by the pyramid families (stem, stages, final norm, classifier head)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from timm.layers import ClassifierHead, calculate_drop_path_rates, get_device_dtype
from timm.models._features import feature_take_indices

from ..blocks import maybe_checkpoint
from ..weights import PretrainedMixin
from ._helpers import check_images, init_linear_weights


class PyramidStage(nn.Module):
    """Optional downsampling followed by a sequence of blocks, with optional gradient checkpointing."""

    def __init__(self, downsample: nn.Module, blocks: list[nn.Module]):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            x = maybe_checkpoint(block, x, enabled=self.grad_checkpointing)
        return x


def pyramid_stages(depths: Sequence[int], drop_path_rate: float, downsample: Callable[[int], nn.Module],
                   block: Callable[[int, int, float], nn.Module]) -> list[PyramidStage]:
    """Stage i: ``downsample(i)`` into it (none before stage 0) and the blocks ``block(i, j, drop_path)`` for
    j < depths[i], the drop-path rate rising linearly from 0 to ``drop_path_rate`` over all blocks."""
    rates = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
    stages = []
    for i, depth in enumerate(depths):
        blocks = [block(i, j, rates[i][j]) for j in range(depth)]
        stages.append(PyramidStage(downsample(i) if i else nn.Identity(), blocks))
    return stages


class PyramidModel(PretrainedMixin, nn.Module):
    """Base class of the pyramid families: ``stem``, then ``stages`` (stage i at stride ``stem_stride * 2**i`` with
    ``dims[i]`` channels), ``norm`` on the last stage's map and a timm ClassifierHead. Subclasses build the stem
    (taking ``in_chans`` channels), stages and norm and set ``channels_last`` when their stages work on (B, H, W, C)
    maps; features leave the model as NCHW either way. The base adds the head, ``feature_info``, the weight
    initialisation and the input check (:func:`check_images`, at least the last stage's stride per side)."""

    channels_last = False

    _init_weights = staticmethod(init_linear_weights)

    def __init__(self, stem: nn.Module, stages: list[PyramidStage], norm: nn.Module, dims: Sequence[int],
                 in_chans: int, num_classes: int = 1000, global_pool: str = "avg", drop_rate: float = 0.0,
                 stem_stride: int = 4, device=None, dtype=None):
        super().__init__()
        self.in_chans, self.num_classes = in_chans, num_classes
        self.global_pool, self.drop_rate = global_pool, drop_rate
        self.num_features = self.head_hidden_size = dims[-1]
        self.stem = stem
        self.stages = nn.Sequential(*stages)
        self.norm = norm
        self.head = ClassifierHead(dims[-1], num_classes, pool_type=global_pool, drop_rate=drop_rate, device=device,
                                   dtype=dtype)
        self.feature_info = [dict(num_chs=dim, reduction=stem_stride * 2 ** i, module=f"stages.{i}")
                             for i, dim in enumerate(dims)]
        self.min_input_size = self.feature_info[-1]["reduction"]
        self.apply(self._init_weights)

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
        self.head.reset(num_classes, global_pool, **get_device_dtype(self))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """NCHW features of the stages in ``indices``, and the final map unless ``intermediates_only``.

        ``norm=True`` applies the final norm to the last stage's intermediate.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r} is not supported; features are 'NCHW'")
        check_images(self, x, self.min_input_size)
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
        """Keep the stages up to the last of ``indices``; the final norm and the head fit the last stage only, so
        they go with it."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_kept = max_index == len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        if prune_norm or not last_kept:
            self.norm = nn.Identity()
        if prune_head or not last_kept:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_images(self, x, self.min_input_size)
        return self._nchw(self.norm(self.stages(self.stem(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
