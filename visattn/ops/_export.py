"""What keeps a reference path valid at every size when ``torch.export`` traces it (``visattn-export``)."""

from __future__ import annotations

import torch


def exported_crop(x: torch.Tensor, h: int, w: int, dims: tuple[int, int] = (1, 2)) -> torch.Tensor:
    """``x`` cut to its first ``h`` rows and ``w`` columns along ``dims`` (default: a (B, H, W, C) map), as two
    gathers: the values of ``x[:, :h, :w]``. For graphs ``torch.export`` traces, where a sliced view of a padded
    map makes it settle, at the traced size, whether the cut is contiguous (whether anything was padded) and so
    fixes the graph's height and width."""
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    return x.index_select(dims[0], rows).index_select(dims[1], cols)
