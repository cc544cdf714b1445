"""Checkpoints in OpenMMLab: loading under torch's ``weights_only`` default, and ``visattn://`` URLs.

mmengine 0.10 saves its message hub (``HistoryBuffer`` objects holding numpy arrays, plus references to
HistoryBuffer's own statistics methods, pickled through ``getattr``) in every checkpoint and loads them with a
plain ``torch.load``, which torch's ``weights_only=True`` default (torch >= 2.6) refuses. Rather than turning
the safe loader off, :func:`allow_mmengine_checkpoints` allow-lists HistoryBuffer and the numpy types, and
stops HistoryBuffer from pickling its class-level method table (which it rebuilds on load anyway).

``init_cfg=dict(type='Pretrained', checkpoint='visattn://biformer_small')`` loads a model's official
classification checkpoint, downloaded once to ``$TORCH_HOME/hub/checkpoints/<model>_<tag>.pth``.
"""

from __future__ import annotations

import numpy as np
import torch

SCHEME = "visattn://"


def _numpy_globals() -> list:
    core = getattr(np, "_core", None) or np.core
    types = [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype]
    types += [type(np.dtype(name)) for name in ("float64", "float32", "float16", "int64", "int32", "int8",
                                                   "uint8", "bool")]
    return types


def _history_buffer_state(self) -> dict:
    return {k: v for k, v in self.__dict__.items() if k != "statistics_methods"}


def allow_mmengine_checkpoints() -> None:
    """Make the checkpoints mmengine writes loadable with ``torch.load(weights_only=True)``."""
    from mmengine.logging import HistoryBuffer

    HistoryBuffer.__getstate__ = _history_buffer_state
    torch.serialization.add_safe_globals([HistoryBuffer, *_numpy_globals()])


def load_visattn_url(filename: str, map_location=None, logger=None):
    """mmengine checkpoint loader for ``visattn://<model>[.<tag>]`` (tag defaults to ``in1k``)."""
    from ..backbones._helpers import pretrained_file

    name = filename[len(SCHEME):]
    model, _, tag = name.partition(".")
    return torch.load(pretrained_file(model, tag or "in1k"), map_location=map_location, weights_only=True)


def register_scheme() -> None:
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes=SCHEME, loader=load_visattn_url, force=True)
