"""What the model tests share."""

import torch

from tests.fused import run_both_backends


def assert_fused_matches_reference(model, x, monkeypatch, tol: float = 1e-4) -> None:
    """``model(x)`` in eval with ``$VISATTN_BACKEND=triton`` equals it with ``torch``, and the triton run went
    through visattn's fused ops (the torch run through none)."""
    with torch.no_grad():
        outputs = run_both_backends(lambda: model(x), monkeypatch)
    torch.testing.assert_close(outputs["triton"], outputs["torch"], atol=tol, rtol=tol)
