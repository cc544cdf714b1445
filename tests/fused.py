"""Evidence that a fused-vs-reference test compared two different paths: which of visattn's custom ops (the
fused kernels, ``visattn::*``) ran."""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

NAMESPACE = "visattn"


class FusedOps(TorchDispatchMode):
    """Counts the ``visattn::`` custom ops dispatched inside the ``with`` block (forward and backward ops alike):
    ``ran`` maps each op's name to its calls."""

    def __init__(self):
        super().__init__()
        self.ran: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == NAMESPACE:
            self.ran[func.name()] += 1
        return func(*args, **(kwargs or {}))


def fused_ops_in_graph(out: torch.Tensor) -> set[str]:
    """The ``visattn::`` custom ops in ``out``'s autograd graph (their backward nodes are named after them)."""
    found, seen, stack = set(), set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        if name.startswith(f"GeneratedBackwardFor_{NAMESPACE}_"):
            found.add(name.removeprefix("GeneratedBackwardFor_").removesuffix("Backward"))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def run_both_backends(fn, monkeypatch) -> dict[str, object]:
    """``fn()`` with ``$VISATTN_BACKEND=torch`` and with ``triton``: the outputs by backend, after checking that the
    fused kernels ran with ``triton`` and none with ``torch`` (else a test would compare the reference with
    itself)."""
    outputs, ran = {}, {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("VISATTN_BACKEND", backend)
        with FusedOps() as ops:
            outputs[backend] = fn()
        ran[backend] = ops.ran
    assert not ran["torch"], f"VISATTN_BACKEND=torch ran fused ops: {dict(ran['torch'])}"
    assert ran["triton"], "no visattn:: op ran with VISATTN_BACKEND=triton: the reference was compared with itself"
    return outputs
