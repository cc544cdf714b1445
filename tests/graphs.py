"""Test variants cut down for the tests that trace a whole graph (torch.compile, torch.export, ONNX).

Tracing and compiling cost about a second per block, and a ViT's blocks are one piece of code traced again: the
tiny ViT variants run one block deep there (their last block's features, ``out_indices=0``). The hierarchical
variants keep their stages, whose blocks differ (downsampling, shifted windows, one map size per stage)."""

ONE_BLOCK = {"depth": 1, "out_indices": 0}
GRAPH_KWARGS = {name: ONE_BLOCK for name in ("test_inline_deit", "test_lvvit", "test_sparsifiner",
                                              "test_sparsifiner_lvvit", "test_tcpa")}


def graph_kwargs(name: str) -> dict:
    """The arguments that cut test variant ``name`` down for a graph-tracing test ({} for most)."""
    return dict(GRAPH_KWARGS.get(name, {}))
