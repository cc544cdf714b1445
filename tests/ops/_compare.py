"""The comparison every op's kernel tests make: the fused output and every input's gradient against the
reference's."""

import torch


def assert_matches_reference(out: torch.Tensor, ref: torch.Tensor, leaves: dict[str, torch.Tensor], tol: dict,
                             ref_leaves: dict[str, torch.Tensor] | None = None) -> None:
    """``out`` (fused, from ``leaves``) equals ``ref`` (reference, from ``ref_leaves``, default the same leaves),
    and so does the gradient of each leaf for one random output gradient, in the leaf's dtype and shape."""
    ref_leaves = leaves if ref_leaves is None else ref_leaves
    assert out.shape == ref.shape
    torch.testing.assert_close(out.to(ref.dtype), ref, **tol)
    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, list(ref_leaves.values()), grad)
    got = torch.autograd.grad(out, list(leaves.values()), grad.to(out.dtype))
    for (name, leaf), g, w in zip(leaves.items(), got, want, strict=True):
        assert g.dtype == leaf.dtype and g.shape == leaf.shape, name
        torch.testing.assert_close(g.to(w.dtype), w, **tol, msg=lambda m, name=name: f"d{name}: {m}")
