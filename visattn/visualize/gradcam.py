"""Grad-CAM (Selvaraju et al., ICCV 2017) of any classifier with timm's ``forward_features`` / ``forward_head``:
which cells of a feature map raise a class score.

For a feature map A (C, h, w) and the score y of class c (its logit):

    alpha_k = mean_{h,w} dy / dA_k,    CAM = ReLU(sum_k alpha_k A_k)    (h, w)

The map is the output of the modules named in ``layers``, else the model's last map: ``forward_features``' output,
or, for a model with prefix (class) tokens and ``blocks``, the input of its last block (its patch tokens reach the
class token only through that block's attention; after it the pooled class token depends on no patch token). A
CNN's (B, C, h, w) or (B, h, w, C) map or a ViT's (B, prefix + h*w, C) tokens (prefix tokens dropped, the grid
taken from the image's aspect ratio).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import UserError

FINAL = "forward_features"  # the layer name of the default map


@dataclass
class GradCAM:
    """Grad-CAM of one layer: ``cam`` (B, h, w) float32 >= 0 on the layer's grid, for the classes ``targets`` whose
    logits are ``scores`` (one per image) of the model's ``classes`` outputs."""

    layer: str
    cam: torch.Tensor
    targets: list[int]
    scores: list[float]
    classes: int


def module_of(model: nn.Module, name: str) -> nn.Module:
    """The submodule ``name`` of ``model``; a one-line error naming a few of its modules otherwise."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        import difflib

        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else f"its modules include {', '.join(names[:4])}, ..."
        raise UserError(f"--layer {name}: the model has no such module; {hint}") from None


def _last_maps(model: nn.Module, layers: Sequence[str]) -> list[tuple[str, nn.Module | None, bool]]:
    """(layer name, module to hook or None for ``forward_features``, whether its input is the map) per map."""
    if layers:
        return [(name, module_of(model, name), False) for name in layers]
    blocks = getattr(model, "blocks", None)
    if getattr(model, "num_prefix_tokens", 0) and isinstance(blocks, nn.Sequential | nn.ModuleList) and len(blocks):
        return [(f"blocks.{len(blocks) - 1} (input)", blocks[-1], True)]
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise UserError(f"Grad-CAM needs timm's forward_features / forward_head, which {type(model).__name__} "
                        "lacks; name the feature map's module with --layer")
    return [(FINAL, None, False)]


def grad_cam(model: nn.Module, x: torch.Tensor, layers: Sequence[str] = (),
             targets: Sequence[int] | None = None) -> list[GradCAM]:
    """Grad-CAM of ``model`` on images ``x`` (B, C, H, W) for each image's top class (or ``targets``), on the
    model's last map or on the output of each module in ``layers``. The model's mode is left as it is (use eval);
    gradients are taken with respect to the maps only, no parameter gradient is kept."""
    x = x.detach().requires_grad_(True)  # keeps the maps in the graph when every parameter is frozen
    wanted = _last_maps(model, layers)
    captured: dict[str, object] = {}

    def keep(name: str, of_input: bool):
        if of_input:
            return lambda module, args: captured.__setitem__(name, args[0] if args else None)
        return lambda module, args, output: captured.__setitem__(name, output)

    handles = [module.register_forward_pre_hook(keep(name, True)) if of_input
               else module.register_forward_hook(keep(name, False))
               for name, module, of_input in wanted if module is not None]
    try:
        with torch.enable_grad():
            if handles:
                logits = model(x)
            else:
                captured[FINAL] = model.forward_features(x)
                logits = model.forward_head(captured[FINAL])
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise UserError(f"Grad-CAM explains a class score, and {type(model).__name__} returns {shape}, not "
                        "(B, classes) logits")
    chosen = logits.argmax(dim=1) if targets is None else torch.as_tensor(list(targets), device=logits.device)
    scores = logits.gather(1, chosen[:, None]).squeeze(1)
    names = [name for name, _, _ in wanted]
    maps = []
    for name in names:
        out = captured.get(name)
        if not isinstance(out, torch.Tensor) or out.dim() not in (3, 4):
            kind = "no output" if out is None else (f"a {tuple(out.shape)} tensor" if isinstance(out, torch.Tensor)
                                                    else f"a {type(out).__name__}")
            raise UserError(f"--layer {name} gives {kind}, not a feature map (B, C, h, w) or tokens (B, N, C) for "
                            "Grad-CAM; name a module with one map, or choose other pictures with --picture")
        maps.append(out)
    grads = torch.autograd.grad(scores.sum(), maps, allow_unused=True)
    image = tuple(x.shape[-2:])
    results = []
    for name, out, grad in zip(names, maps, grads, strict=True):
        grad = torch.zeros_like(out) if grad is None else grad  # a layer the score does not depend on
        channels = getattr(model, "num_features", None) if name == FINAL else None
        prefix = getattr(model, "num_prefix_tokens", 0)
        a, g = (as_map(t.detach().float(), image, channels, prefix) for t in (out, grad))
        cam = (g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1).clamp_min(0)
        results.append(GradCAM(name, cam, chosen.tolist(), scores.detach().tolist(), logits.shape[1]))
    return results


def _stride_mismatch(image: tuple[int, int], h: int, w: int) -> float:
    """How far an h x w grid is from having one stride along both sides of the image."""
    return abs(math.log((image[0] / h) / (image[1] / w)))


def token_grid(tokens: int, image: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) with h * w = ``tokens`` whose aspect ratio is closest to the image's."""
    pairs = [(h, tokens // h) for h in range(1, tokens + 1) if tokens % h == 0]
    return min(pairs, key=lambda hw: _stride_mismatch(image, *hw))


def as_map(t: torch.Tensor, image: tuple[int, int], channels: int | None = None, prefix: int = 0) -> torch.Tensor:
    """A layer output as a (B, C, h, w) map: NCHW as is, NHWC permuted (the channel side is the one of size
    ``channels``, else the layout whose grid has one stride along both image sides), tokens (B, N, C) without their
    ``prefix`` tokens on the :func:`token_grid` of the rest."""
    if t.dim() == 3:
        b, n, c = t.shape
        prefix = prefix if n > prefix else 0
        h, w = token_grid(n - prefix, image)
        return t[:, prefix:].reshape(b, h, w, c).permute(0, 3, 1, 2)
    first, last = t.shape[1], t.shape[3]
    if channels is not None and (first == channels) != (last == channels):
        return t if first == channels else t.permute(0, 3, 1, 2)
    nhwc = _stride_mismatch(image, t.shape[1], t.shape[2]) < _stride_mismatch(image, t.shape[2], t.shape[3])
    return t.permute(0, 3, 1, 2) if nhwc else t
