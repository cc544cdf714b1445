"""mmengine checkpoints loadable under torch's ``weights_only`` default.

mmengine 0.10 saves its message hub (``HistoryBuffer`` objects holding numpy arrays, plus references to
HistoryBuffer's own statistics methods, pickled through ``getattr``) in every checkpoint and loads them with a
plain ``torch.load``, which torch's ``weights_only=True`` default (torch >= 2.6) refuses. Rather than turning
the safe loader off, :func:`allow_mmengine_checkpoints` allow-lists HistoryBuffer and the numpy types, and
stops HistoryBuffer from pickling its class-level method table (which it rebuilds on load anyway).
"""

from __future__ import annotations

import numpy as np
import torch


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
