"""Every family compiles whole and never makes the host wait for the device, so that it runs under
``torch.compile(fullgraph=True)`` and can be captured in a CUDA graph.

One small variant per model class (and the re-id network with its loss), compiled with ``aot_eager`` (no C++
compiler) against eager: evaluation on the Triton kernels (the interpreter on CPU; the references' evaluation is
test_conformance's, compiled by inductor), a training step on the references. ``fullgraph=True`` turns any graph
break into an error. Dynamo sees the registered ops as opaque, so every eager run goes through :class:`NoHostSync`,
which also looks inside them: their Triton launchers run inside the capture on a GPU (benchmarks/gpu_suite.py
captures the classifiers' inference in CUDA graphs).
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
from visattn.contract import TrainOutput
from visattn.engine.loop import TrainingForward
from visattn.tasks.reid.model import ReIDLoss, ReIDModel

ON_CPU = pytest.mark.skipif(DEVICE != "cpu", reason="the Triton kernels run under the interpreter on CPU only")

_HRNET_CFG = dict(
    stem_width=16,
    stage1=dict(num_modules=1, num_branches=1, block_type="BOTTLENECK", num_blocks=(1,), num_channels=(8,),
                fuse_method="SUM"),
    **{f"stage{n}": dict(num_modules=1, num_branches=n, block_type="BASIC", num_blocks=(1,) * n,
                         num_channels=(8, 16, 32, 64)[:n], fuse_method="SUM") for n in (2, 3, 4)},
)

# model class -> (a variant, the arguments that shrink it, the input side)
CASES = {
    "BiFormer": ("biformer_tiny", dict(depths=(1, 1, 1, 1), dims=(32, 32, 64, 64), topks=(1, 2, 4, None), n_win=2,
                                       full_attn_heads=2), 32),
    "FSGNet": ("fsgnet", dict(base_c=1, depths=(1, 1, 1, 1)), 8),
    "HerSeg": ("herseg", dict(embed_dim=32, depths=(1, 1), num_heads=(2, 2), decoder_dim=32, decoder_depth=1,
                              decoder_heads=2, num_mask_tokens=2), 32),
    "InLineDeiT": ("inline_deit_tiny", dict(img_size=32, embed_dim=48, depth=1, num_heads=3), 32),
    # 6 x 6 tokens: the InLine windows leave remainders, the shifted softmax windows pad
    "InLineSwin": ("inline_swin_tiny", dict(depths=(2, 1), num_heads=(1, 2), inline_depths=(1, 0), embed_dim=16,
                                            window_size=4, inline_window=4), 24),
    # 44 x 44 image: maps 11, 6, 3, 2: padded stripes of 2 in stage 3
    "InLineCSwin": ("inline_cswin_tiny", dict(depths=(1, 1, 1, 1), embed_dim=8, num_heads=(1, 2, 2, 2), split=2),
                    44),
    # 36 x 28 image: padded patch embeddings and resampled position tables at every stage
    "InLinePVT": ("inline_pvt_tiny", dict(depths=(1, 1), dims=(16, 32), num_heads=(1, 2), mlp_ratios=(2, 2),
                                          img_size=32), 36),
    # 3 x 3 tokens: the shifted windows pad
    "LaMamba": ("lamamba_tiny", dict(depths=(2, 1), dims=(16, 16), head_dim=16, window_size=2), 12),
    "PSAHRNet": ("hrnet_w18_psa_s", dict(model_cfg=_HRNET_CFG), 32),
    "PSAResNet": ("resnet50_psa", dict(layers=(1, 1, 1, 1)), 32),
    "SparsifinerViT": ("sparsifiner_deit_small", dict(img_size=48, embed_dim=64, depth=1, num_heads=2,
                                                      reduce_n_factor=2, coef_topk=4), 48),
    "TCPAViT": ("tcpa_vit_base_patch16_224", dict(img_size=32, embed_dim=64, depth=1, num_heads=2, pool_size=4,
                                                  top_k=2), 32),
}

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
    assert families == {model_entrypoint(name).__module__ for name, _, _ in CASES.values()}


def _build(case: str) -> tuple[torch.nn.Module, torch.Tensor]:
    name, kwargs, side = CASES[case]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3, **kwargs)
    return model, torch.randn(2, model.in_chans, side, side)


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
    """On the Triton kernels (the references' evaluation is test_conformance's), eager checked for host syncs."""
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    model, x = _build(case)
    model.eval()
    with torch.no_grad():
        with NoHostSync():
            eager = model(x)
        torch.testing.assert_close(_compiled(model)(x), eager)


@ON_CPU
@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_training_step_matches_eager(case, monkeypatch):
    """On the references, eager checked for host syncs; and eagerly on the Triton kernels, for host syncs only (the
    kernels' backward included)."""
    model, x = _build(case)
    model.train()
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    _train_step(model, TrainingForward(model), x, NoHostSync())
    monkeypatch.setenv("VISATTN_BACKEND", "torch")
    eager_outs, eager_grads = _train_step(model, TrainingForward(model), x, NoHostSync())
    outs, grads = _train_step(model, _compiled(TrainingForward(model)), x, contextlib.nullcontext())
    torch.testing.assert_close(outs, eager_outs)
    assert grads.keys() == eager_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], msg=lambda m, name=name: f"{name}: {m}")


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
