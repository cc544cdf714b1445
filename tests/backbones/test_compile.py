"""Every family compiles whole and never makes the host wait for the device, so that it runs under
``torch.compile(fullgraph=True)`` and can be captured in a CUDA graph.

The tiny test variant of each model class (the ViTs one block deep, tests/graphs.py) and the re-id network with its
loss, compiled with ``aot_eager`` (no C++ compiler) against eager: evaluation on the Triton kernels (the interpreter
on CPU; the references' evaluation is test_conformance's, compiled by inductor), a training step on the references.
``fullgraph=True`` turns any graph break into an error. Dynamo sees the registered ops as opaque, so every eager run
goes through :class:`NoHostSync`, which also looks inside them: their Triton launchers run inside the capture on a GPU
(benchmarks/gpu_suite.py captures the classifiers' inference in CUDA graphs).
"""

import contextlib

import pytest
import timm
import torch
from timm.models import model_entrypoint
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import visattn
from tests.conftest import DEVICE
from tests.fused import FusedOps
from tests.graphs import graph_kwargs
from visattn.contract import TrainOutput
from visattn.engine.loop import TrainingForward
from visattn.tasks.reid.model import ReIDLoss, ReIDModel

ON_CPU = pytest.mark.skipif(DEVICE != "cpu", reason="the Triton kernels run under the interpreter on CPU only")

# model class -> (its test variant, the input side: small, as the interpreter runs every kernel program on the CPU)
CASES = {
    "BiFormer": ("test_biformer", 32),
    "FSGNet": ("test_fsgnet", 8),
    "HerSeg": ("test_herseg", 32),
    "InLineDeiT": ("test_inline_deit", 32),
    # 8 x 8 tokens: the InLine windows of 3 leave remainders, the shifted softmax windows pad
    "InLineSwin": ("test_inline_swin", 32),
    # maps 8, 4, 2, 1: padded stripes of 3 in stage 3
    "InLineCSwin": ("test_inline_cswin", 32),
    # 36 x 36 image: padded patch embeddings and resampled position tables at every stage
    "InLinePVT": ("test_inline_pvt", 36),
    # 8 x 8 and 4 x 4 tokens: windows of 3 pad, shifted in stage 2
    "LaMamba": ("test_lamamba", 32),
    # 2 x 2 patches: the position embedding resampled from the 4 x 4 grid, BatchNorm in the stem
    "LVViT": ("test_lvvit", 32),  # timm's dense attention: no visattn op
    "PSAHRNet": ("test_hrnet_psa", 32),
    "PSAResNet": ("test_resnet_psa", 32),
    # 2 x 2 patches: position embedding and predictor projections resampled from the 4 x 4 grid
    "SparsifinerViT": ("test_sparsifiner", 32),
    "SparsifinerLVViT": ("test_sparsifiner_lvvit", 32),
    "TCPAViT": ("test_tcpa", 32),
}

NO_OPS = {"LVViT"}  # families that call no visattn op: their evaluation is checked for host syncs and compiled only

_aten = torch.ops.aten
# ops whose result the host must wait for: a value read back, or an output whose size depends on the data
_SYNCING = {_aten.item.default, _aten._local_scalar_dense.default, _aten.is_nonzero.default, _aten.equal.default,
            _aten.allclose.default, _aten.nonzero.default, _aten.masked_select.default, _aten._unique2.default,
            _aten.unique_dim.default, _aten.unique_consecutive.default, _aten.bincount.default,
            _aten.repeat_interleave.Tensor}
_INDEXING = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default, _aten._index_put_impl_.default}
_PYTHON_SYNCING = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"}


class _NoPythonReadback(TorchFunctionMode):
    """Fails on a tensor read into Python (``tolist``, ``bool(t)``, ...), which the dispatcher may not see."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in _PYTHON_SYNCING:
            raise AssertionError(f"host sync: Tensor.{func.__name__} inside a registered op")
        return func(*args, **(kwargs or {}))


class NoHostSync(TorchDispatchMode):
    """Fails on any op that makes the host wait for the device: ``.item()``, ``bool(t)``, ``nonzero``, boolean-mask
    indexing, ``unique``, ``torch.tensor(...)`` from Python data (a host-to-device copy), ...

    The registered ops of ``namespaces`` (visattn's) run their CPU implementations (the Triton launchers) under this
    mode too, not as one opaque call, with Python read-backs checked as well.
    """

    def __init__(self, namespaces: tuple[str, ...] = ("visattn",)):
        super().__init__()
        self.namespaces = namespaces

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SYNCING:
            raise AssertionError(f"host sync: {func}")
        if func is _aten.lift_fresh.default and args[0].dim():  # torch.tensor(data), not a wrapped Python scalar
            raise AssertionError("host sync: a tensor made from Python data (a host-to-device copy on a GPU)")
        if func in _INDEXING and any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                                     for i in args[1] if i is not None):
            raise AssertionError(f"host sync: {func} with a boolean mask")
        if func.namespace in self.namespaces:
            with self, _NoPythonReadback():
                return func.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args, **kwargs)
        return func(*args, **kwargs)


@torch.library.custom_op("visattn_test::readback", mutates_args=())
def _readback(x: torch.Tensor, how: str) -> torch.Tensor:
    """A registered op that reads ``x`` back to the host in one of the ways :class:`NoHostSync` must catch."""
    if how == "item":
        x.sum().item()
    elif how == "tolist":
        x.tolist()
    elif how == "mask":
        x = x[x > 0]
    elif how == "tensor":
        x = x + torch.tensor([1.0])
    return x.clone()


def test_the_sync_check_sees_inside_registered_ops():
    x = torch.randn(4)
    for how in ("item", "tolist", "mask", "tensor"):
        with pytest.raises(AssertionError, match="host sync"), NoHostSync(namespaces=("visattn_test",)):
            _readback(x, how)
    with NoHostSync(namespaces=("visattn_test",)):
        out = _readback(x, "nothing")
    torch.testing.assert_close(out, x)


def test_every_family_and_model_class_has_a_case():
    classes = {name for name in visattn.backbones.__all__ if isinstance(getattr(visattn.backbones, name), type)}
    assert classes == set(CASES)
    families = {model_entrypoint(name).__module__ for name in visattn.list_models()}
    assert families == {model_entrypoint(name).__module__ for name, _ in CASES.values()}
    assert {type(timm.create_model(name, device="meta")).__name__ for name, _ in CASES.values()} == set(CASES)


def _build(case: str, batch: int = 2) -> tuple[torch.nn.Module, torch.Tensor]:
    name, side = CASES[case]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3, **graph_kwargs(name))
    return model, torch.randn(batch, model.in_chans, side, side)


def _compiled(fn):
    """``fn`` compiled whole: a graph break is an error."""
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


def _train_step(model: torch.nn.Module, forward, x: torch.Tensor, check: contextlib.AbstractContextManager):
    """Outputs and parameter gradients of one training step of ``model`` run by ``forward`` (the model, or it
    compiled), its random draws (dropout, DropBlock, drop path) from seed 0."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    with check:
        out = forward(x)
        if isinstance(out, TrainOutput):  # the model's training forward: every prediction and its own losses
            outs = out.predictions()
            loss = sum(o.square().mean() for o in outs) + sum(out.aux_losses.values())
        else:
            outs = [out]
            loss = out
        torch.autograd.backward(loss)
    return [o.detach() for o in outs], {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@ON_CPU
@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_evaluation_matches_eager(case, monkeypatch):
    """On the Triton kernels (the references' evaluation is test_conformance's), eager checked for host syncs. One
    image: the interpreter runs every kernel program per image, and the graph is the same at any batch size (the
    training step below runs two)."""
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    model, x = _build(case, batch=1)
    model.eval()
    with torch.no_grad():
        with NoHostSync(), FusedOps() as ops:
            eager = model(x)
        assert ops.ran or case in NO_OPS, "no visattn:: op ran: the evaluation was not on the Triton kernels"
        torch.testing.assert_close(_compiled(model)(x), eager)


@ON_CPU
@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_training_step_matches_eager(case, monkeypatch):
    """On the references in float64 (compiled code reorders sums), eager checked for host syncs; and eagerly on the
    Triton kernels, for host syncs only (the kernels' backward included), on one image as the interpreter runs every
    kernel program per image (two where a training BatchNorm needs two values per channel at a 1x1 map)."""
    model, x = _build(case)
    model.train()
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    _train_step(model, TrainingForward(model), x if batch_norm else x[:1], NoHostSync())
    monkeypatch.setenv("VISATTN_BACKEND", "torch")
    model, x = model.double(), x.double()
    eager_outs, eager_grads = _train_step(model, TrainingForward(model), x, NoHostSync())
    outs, grads = _train_step(model, _compiled(TrainingForward(model)), x, contextlib.nullcontext())
    torch.testing.assert_close(outs, eager_outs)
    # a parameter that reaches only an extra no loss here reads (LV-ViT's aux head) has no gradient eagerly and a
    # zero one compiled (AOT autograd gives the unused output a zero gradient)
    assert all(not grads[name].any() for name in grads.keys() - eager_grads.keys())
    assert eager_grads.keys() <= grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(grads[name], grad, msg=lambda m, name=name: f"{name}: {m}")


def test_compiled_reid_training_step_matches_eager():
    """The re-id network (PSA after a ResNet block, GeM pooling, BNNeck) and its loss (CE, batch-hard triplet with
    an anchor that has no positive, centre loss) as one compiled step."""
    torch.manual_seed(0)
    model = ReIDModel("resnet18", num_classes=3, pooling="gem", attn="psa_s", attn_at=(4,), attn_blocks="last")
    criterion = ReIDLoss(3, model.feature_dim, center_weight=0.5)
    images, pids = torch.rand(4, 3, 64, 32), torch.tensor([0, 0, 1, 2])

    def step(x):
        out = model.forward_train(x)
        return sum(criterion(out.output, out.extras["features"], pids).values())

    model.train()
    eager_loss, eager_grads = _train_step(model, step, images, NoHostSync())
    loss, grads = _train_step(model, _compiled(step), images, contextlib.nullcontext())
    torch.testing.assert_close(loss, eager_loss)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], msg=lambda m, name=name: f"{name}: {m}")
