"""The model-training contract: what a model may give the training engine beyond timm's ``forward``.

Every model's ``forward(x)`` stays timm's: logits (B, classes), or per-pixel logits (B, classes, H, W) for a
segmentation network, in training and in evaluation alike. A model whose training needs more defines, all
optional:

- ``forward_train(x) -> TrainOutput``: the training forward, returning the ``forward`` output together with named
  deep-supervision outputs, named auxiliary losses, named statistics and named tensors for other losses
  (distillation). The engine calls it through :func:`forward_train`; a model without it trains on ``forward``.
- ``set_epoch(epoch)``: the one per-epoch hook, called before each training epoch (0-based), for training that
  changes with the epoch (TCPA's random prompt matching in its first epochs).
- ``training_phases`` and ``set_training_phase(phase)``: named phases that choose which parameters train (the
  Sparsifiner recipe's ``reconstruct`` and ``distill``); ``None`` trains everything.
- ``aux_loss_keys``: a regular expression over parameter names matching those only an auxiliary loss trains (no
  gradient reaches them from ``output``), so DDP expects unused parameters in a step.

A model never keeps training state set as a side effect of ``forward``. The names a model gives its losses and
statistics are logged as they are (``metrics.json``'s history, TensorBoard, ``curves.png``), so they must not be one
of :data:`RESERVED_NAMES` nor start with ``val_``.

One more optional hook serves the tools that look inside a trained model (``visattn-visualize``), not training:

- ``inspect(x, query) -> Inspection``: ``forward``'s output and, per layer, what the layer did with this input, as
  an :class:`InspectionMap` of one of the generic :data:`INSPECTION_KINDS` (the regions a query routes to, the keys
  it keeps, its attention weights over the map, gates, prompt usage). ``query`` is the point of the image the
  query-following kinds look at, as fractions (row, column) of its height and width. A family gets it from
  :class:`Inspectable`, which collects the maps of its blocks (:func:`collect_inspections`): a block that has
  something to show defines ``inspect_forward(*forward_args, query=..., **forward_kwargs) -> InspectionMap | None``,
  called by a forward hook that lives only during ``inspect``; ``forward`` itself has no branch for it and nothing
  is kept between calls. The engine never calls it; :func:`inspect` calls it where a model defines it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

__all__ = ["INSPECTION_KINDS", "QUERY_CENTRE", "RESERVED_NAMES", "Inspectable", "Inspection", "InspectionMap",
           "TrainOutput", "collect_inspections", "forward_train", "inspect", "query_cell", "start_epoch"]

RESERVED_NAMES = frozenset({"epoch", "train_loss", "lr", "epoch_seconds", "best"})


@dataclass
class TrainOutput:
    """What ``forward_train`` returns.

    Attributes:
        output: what ``forward`` returns: (B, classes) logits or (B, classes, H, W) per-pixel logits.
        aux_outputs: more predictions of the same target, by name (deep supervision); the task scores each with its
            own loss, as it scores ``output``, and averages them all.
        aux_losses: loss terms the model computes itself, by name, already weighted: the task adds them to its loss.
        stats: scalar statistics to log, by name (not optimised).
        extras: tensors other losses read, by name (distillation reads ``tokens``, the final normed patch tokens
            (B, N, C); attention reconstruction ``approx`` and ``attention``, per-block attention maps).
    """

    output: torch.Tensor
    aux_outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def predictions(self) -> list[torch.Tensor]:
        """``output`` and then the ``aux_outputs``: everything a task's loss scores."""
        return [self.output, *self.aux_outputs.values()]

    def __post_init__(self):
        for name in (*self.aux_losses, *self.stats):
            if name in RESERVED_NAMES or name.startswith("val_"):
                raise ValueError(f"{name!r} is reserved for the engine's own scalars; name the loss or statistic "
                                 f"otherwise")


def forward_train(model: nn.Module, x: torch.Tensor) -> TrainOutput:
    """``model.forward_train(x)`` where the model defines it, else ``TrainOutput(model(x))``."""
    method = getattr(model, "forward_train", None)
    return method(x) if method is not None else TrainOutput(model(x))


def start_epoch(model: nn.Module, epoch: int) -> None:
    """Call the model's per-epoch hook ``set_epoch(epoch)`` where it defines one."""
    hook = getattr(model, "set_epoch", None)
    if hook is not None:
        hook(epoch)


QUERY_CENTRE = (0.5, 0.5)

# kind -> the ``data`` entries every map of that kind has (B: the batch; tokens and cells are in the map's ``grid``).
INSPECTION_KINDS: dict[str, tuple[str, ...]] = {
    # regions: (B, S*S, k) int64, the k key regions each of the S x S query regions routes to (row-major);
    # query_region: int, the region holding the query; n_win: S; region_size: (rows, columns) of tokens per region
    # (the regions tile the grid padded to a multiple of S)
    "routing": ("regions", "query_region", "n_win", "region_size"),
    # keys: (B, heads, K) int64, the keys the query attends in each head, as indices into the layer's N tokens
    # (``prefix`` prefix tokens first, then the grid row-major), ascending; keep_ratio: float, the fraction of the
    # layer's N x N query-key pairs it attends
    "kept_keys": ("keys", "prefix", "keep_ratio"),
    # weights: (B, heads, h, w), the query's attention weights over the grid's tokens (0 outside the query's window);
    # prefix_weights: (B, heads, P), over the prefix tokens; optional local_share: (B,), the share of a local
    # (convolutional) residual in the query's output, |local| / (|attention| + |local|)
    "query_attention": ("weights", "prefix_weights"),
    # channel: (B, C) and spatial: (B, h, w) gates in (0, 1); combine: "sum" (output = x (channel + spatial)) or
    # "product" (output = x channel spatial)
    "gates": ("channel", "spatial", "combine"),
    # usage: (B, Z), per prompt token, the tokens that chose it, each token's one vote split evenly over the prompts
    # it chose (a row sums to the token count); pools: ((name, count), ...) the prompt pools in order along Z;
    # tokens: the token count
    "prompt_usage": ("usage", "pools", "tokens"),
}


@dataclass
class InspectionMap:
    """What one layer did with a batch, as one of :data:`INSPECTION_KINDS` (its ``data`` entries are listed there).

    Attributes:
        kind: one of :data:`INSPECTION_KINDS`.
        data: the kind's named tensors and numbers.
        grid: (h, w) of the layer's token map, which spans the whole image; None when the kind has no map.
        query: the cell of ``grid`` that holds the query, for the kinds that follow one.
    """

    kind: str
    data: dict[str, Any]
    grid: tuple[int, int] | None = None
    query: tuple[int, int] | None = None

    def __post_init__(self):
        if self.kind not in INSPECTION_KINDS:
            raise ValueError(f"unknown inspection kind {self.kind!r}; use one of {', '.join(INSPECTION_KINDS)}")
        missing = [name for name in INSPECTION_KINDS[self.kind] if name not in self.data]
        if missing:
            raise ValueError(f"a {self.kind!r} map needs {', '.join(missing)}")


@dataclass
class Inspection:
    """What ``inspect`` returns: ``output``, what ``forward`` returns, and ``maps``, by layer (the module's name
    in the model; ``name#2`` for its second call), in the order the layers ran."""

    output: torch.Tensor
    maps: dict[str, InspectionMap] = field(default_factory=dict)


def query_cell(query: tuple[float, float], grid: tuple[int, int]) -> tuple[int, int]:
    """The cell (row, column) of an h x w ``grid`` spanning the image that holds ``query`` (fractions of the
    image's height and width, each in [0, 1))."""
    return tuple(min(int(f * n), n - 1) for f, n in zip(query, grid, strict=True))


def collect_inspections(model: nn.Module, x: torch.Tensor, query: tuple[float, float] = QUERY_CENTRE) -> Inspection:
    """Run ``model(x)`` once without gradients, in the model's current mode, and collect the maps of every submodule
    that defines ``inspect_forward``: a forward hook, removed afterwards, calls
    ``module.inspect_forward(*args, query=query, **kwargs)`` with the arguments the module's forward ran with."""
    if len(query) != 2 or not all(0 <= f < 1 for f in query):
        raise ValueError(f"query={tuple(query)} must be two fractions in [0, 1) (row, column)")
    maps: dict[str, InspectionMap] = {}

    def recorder(name: str):
        def hook(module, args, kwargs, output):
            found = module.inspect_forward(*args, query=tuple(query), **kwargs)
            if found is not None:
                key, call = name, 1
                while key in maps:
                    call += 1
                    key = f"{name}#{call}"
                maps[key] = found

        return hook

    handles = [module.register_forward_hook(recorder(name), with_kwargs=True)
               for name, module in model.named_modules() if callable(getattr(module, "inspect_forward", None))]
    try:
        with torch.no_grad():
            output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return Inspection(output, maps)


class Inspectable:
    """Mixin of the model classes whose blocks show something: ``inspect(x, query)`` is
    :func:`collect_inspections` over the model."""

    def inspect(self, x: torch.Tensor, query: tuple[float, float] = QUERY_CENTRE) -> Inspection:
        """``forward(x)``'s output and the maps of the blocks (see :data:`INSPECTION_KINDS`) for the image point
        ``query`` (fractions of its height and width)."""
        return collect_inspections(self, x, query)


def inspect(model: nn.Module, x: torch.Tensor, query: tuple[float, float] = QUERY_CENTRE) -> Inspection | None:
    """``model.inspect(x, query)`` where the model defines it, else None."""
    method = getattr(model, "inspect", None)
    return method(x, query) if method is not None else None
