"""The comparison every op's kernel tests make: the fused output and every input's gradient against the
reference's."""

import torch

from tests.fused import fused_ops_in_graph


def assert_matches_reference(out: torch.Tensor, ref: torch.Tensor, leaves: dict[str, torch.Tensor], tol: dict,
                             ref_leaves: dict[str, torch.Tensor] | None = None, fused: bool = True) -> None:
    """``out`` (fused, from ``leaves``) equals ``ref`` (reference, from ``ref_leaves``, default the same leaves),
    and so does the gradient of each leaf for one random output gradient, in the leaf's dtype and shape.

    ``fused``: ``out`` comes from a visattn custom op (checked in its autograd graph, and none in ``ref``'s); False
    for an output of another implementation (FlexAttention).
    """
    ref_leaves = leaves if ref_leaves is None else ref_leaves
    assert not fused_ops_in_graph(ref), f"the reference output went through {fused_ops_in_graph(ref)}"
    if fused:
        assert fused_ops_in_graph(out), "the output went through no visattn:: op: the fused path did not run"
    assert out.shape == ref.shape
    torch.testing.assert_close(out.to(ref.dtype), ref, **tol)
    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, list(ref_leaves.values()), grad)
    got = torch.autograd.grad(out, list(leaves.values()), grad.to(out.dtype))
    for (name, leaf), g, w in zip(leaves.items(), got, want, strict=True):
        assert g.dtype == leaf.dtype and g.shape == leaf.shape, name
        torch.testing.assert_close(g.to(w.dtype), w, **tol, msg=lambda m, name=name: f"d{name}: {m}")
