"""What the model tests share."""

import torch


def assert_fused_matches_reference(model, x, monkeypatch, tol: float = 1e-4) -> None:
    """``model(x)`` in eval with ``$VISATTN_BACKEND=triton`` equals it with ``torch``."""
    outputs = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("VISATTN_BACKEND", backend)
        with torch.no_grad():
            outputs[backend] = model(x)
    torch.testing.assert_close(outputs["triton"], outputs["torch"], atol=tol, rtol=tol)
