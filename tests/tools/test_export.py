"""visattn-export: every family's tiny variant to ONNX (checked in onnxruntime at the traced size and, along the
dynamic axes, at another size and batch), .pt2 programs, a training checkpoint's classes in the JSON, the
TorchScript fallback, and one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
import torch.nn as nn

from tests.graphs import graph_kwargs
from tests.tools._runs import ROOT
from visattn import export
from visattn.cli import export as cli
from visattn.cli import run as run_tool
from visattn.errors import UserError

# One tiny variant per family (InLine-Swin, traced at a fixed size like LaMamba, is left to the other InLine host),
# the ViTs one block deep (tests/graphs.py). BiFormer's is the README's quick start (tests/engine/test_demo.py): the
# demo BiFormer exported with every axis dynamic and checked in onnxruntime at another size and a batch of 1. The
# graphs are not run through onnxscript's optimizer, which takes longer than the export on the larger ones; the
# checkpoint's is.
FAMILIES = ["test_fsgnet", "test_herseg", "test_resnet_psa", "test_inline_deit", "test_lamamba",
            "test_lvvit", "test_sparsifiner", "test_tcpa"]


def _model(name, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    if name == "test_sparsifiner":
        # At its initialisation the connectivity predictor's scores nearly tie (its logits are ~1e-4), so rounding
        # picks among them and any two implementations pick differently: spread them, as trained weights do.
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if "mask_predictor" in param_name:
                    param.normal_(0.0, 1.0)
    return model


def _input_size(model):
    return tuple(timm.data.resolve_data_config(model=model)["input_size"])


def _run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def _assert_matches(got, want, rel=1e-4):
    assert got.shape == want.shape
    assert (got - want).abs().max() <= rel * want.abs().max()


def _run_cli(argv, capsys):
    """The command as its console entry runs it: (exit code, stdout, last line on stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        run_tool(lambda: cli.main(argv))
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    return exit_info.value.code, out, lines[-1] if lines else ""


@pytest.mark.parametrize("name", FAMILIES)
def test_family_exports_to_onnx_matching_pytorch(name, tmp_path):
    model = _model(name, **graph_kwargs(name))
    size = _input_size(model)
    done = export.export_onnx(model, str(tmp_path / f"{name}.onnx"), size, optimize=False)
    proto = onnx.load(done.path)
    assert {op.domain for op in proto.opset_import} >= {""} and proto.opset_import[0].version >= 17
    assert not [n.op_type for n in proto.graph.node if n.domain.startswith("visattn")]  # no Triton custom op
    assert json.loads({p.key: p.value for p in proto.metadata_props}["visattn"])["dynamic_axes"]["input"]
    fixed = getattr(model, "export_fixed_size", None)
    axes = done.dynamic_axes["input"]
    assert axes == ({0: "batch"} if fixed else {0: "batch", 2: "height", 3: "width"}), done.notes
    c, h, w = size
    shapes = [(2, c, h, w), (1, c, h, w) if fixed else (1, c, h + 17, w + 9)]
    for i, shape in enumerate(shapes):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            want = model(x)
        _assert_matches(_run_onnx(done.path, x), want)
    if fixed:
        assert any("fixed at" in note and fixed in note for note in done.notes)
    # the traced program (a .pt2 file's) takes a batch of 1; not test_lamamba's: its one-row dt projection (dt_rank 1
    # at its widths) and 1x1 last map make torch's view and pooling metadata guard the batch (lamamba_tiny's do not)
    if name != "test_lamamba":
        assert not [note for note in done.notes if "refuses a batch of 1" in note]


def test_maps_of_one_pixel_and_regions_of_one_token_at_the_traced_size_keep_every_axis_dynamic():
    """At 32x32, test_biformer's last map is 1x1 (a channels-last map permuted for its convolution) and its stage 3
    regions hold one token each: the program still takes other heights, widths and a batch of 1."""
    model = _model("test_biformer")
    cap = export.capture(model, (3, 32, 32))
    assert cap.axes == (0, 2, 3) and cap.min_batch == 1 and not cap.notes, cap.notes
    program = cap.program.module()
    for shape in ((1, 3, 32, 32), (1, 3, 70, 45)):
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(program(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["test_fsgnet_nogrm", "test_tcpa", "test_resnet_psa", "test_lvvit"])
def test_pt2_program_matches_eager_at_other_sizes(name, tmp_path):
    model = _model(name, **graph_kwargs(name))
    c, h, w = _input_size(model)
    done = export.export_pt2(model, str(tmp_path / f"{name}.pt2"), (c, h, w))
    assert done.dynamic_axes["input"] == {0: "batch", 2: "height", 3: "width"} and done.min_batch == 1
    assert export.read_metadata(done.path)["dynamic_axes"]["input"] == {"0": "batch", "2": "height", "3": "width"}
    program = torch.export.load(done.path).module()
    for shape in ((2, c, h, w), (1, c, h + 8, w - 5), (4, c, 2 * h, w + 3)):
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(program(x), model(x), rtol=1e-5, atol=1e-6)
    check = export.check_pt2(model, done.path, (c, h, w))
    assert check.shapes == [(2, c, h, w), (1, c, h + 17, w + 9)] and check.max_rel < 1e-5


class _BatchBranch(nn.Module):
    """A model whose output depends on whether its batch holds one image: torch.export traces the branch of its
    batch of 2, and a .pt2 program refuses a batch of 1."""

    def forward(self, x):
        return x * 2 if x.shape[0] > 1 else x * 3


def test_a_program_that_refuses_batch_1_says_so_and_the_onnx_check_catches_it(tmp_path):
    done = export.export_pt2(_BatchBranch(), str(tmp_path / "b.pt2"), (1, 4, 4))
    assert done.min_batch == 2 and "refuses a batch of 1" in done.notes[-1]
    check = export.check_pt2(_BatchBranch(), done.path, (1, 4, 4))
    assert check.shapes == [(2, 1, 4, 4), (3, 1, 21, 13)] and check.max_abs == 0
    onnx_file = export.export_onnx(_BatchBranch(), str(tmp_path / "b.onnx"), (1, 4, 4))
    check = export.check_onnx(_BatchBranch(), onnx_file.path, (1, 4, 4))
    assert check.shapes[1][0] == 1 and check.max_rel == pytest.approx(1 / 3)  # 2x where PyTorch computes 3x


class _ChannelsLastBlock(nn.Module):
    """An NHWC block's map permuted to NCHW for a depthwise convolution, then pooled: the layout of BiFormer's,
    InLine's and LaMamba's stages."""

    def __init__(self):
        super().__init__()
        self.mix, self.conv = nn.Linear(3, 8), nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x):
        y = self.conv(self.mix(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return nn.functional.adaptive_avg_pool2d(y.permute(0, 2, 3, 1).permute(0, 3, 1, 2), 1).flatten(1)


def test_a_program_fed_channels_last_views_takes_a_batch_of_1(tmp_path):
    model = _ChannelsLastBlock()
    done = export.export_pt2(model, str(tmp_path / "nhwc.pt2"), (3, 12, 12))
    assert done.min_batch == 1 and not done.notes
    program = torch.export.load(done.path).module()
    x = torch.randn(1, 3, 15, 9)
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x))


@pytest.fixture
def checkpoint(tmp_path):
    """A classification best.pth as fit writes it: the common fields, the task's extra and the weights."""
    model = _model("test_resnet", num_classes=3)
    data_cfg = {"input_size": (3, 40, 40), "interpolation": "bilinear", "mean": (0.5, 0.4, 0.3),
                "std": (0.2, 0.25, 0.3), "crop_pct": 0.9, "crop_mode": "center"}
    path = tmp_path / "best.pth"
    torch.save({"task": "classification", "model": "test_resnet", "model_kwargs": {}, "num_classes": 3,
                "classes": ["cat", "dog", "owl"], "img_size": 40, "data_cfg": data_cfg, "dataset": "folder",
                "config": {}, "epoch": 0, "state_dict": model.state_dict(), "optimizer": {}, "scheduler": {},
                "best": {}, "history": []}, path)
    return path, model


def test_training_checkpoint_exports_with_its_classes_and_preprocessing(checkpoint, tmp_path, capsys):
    path, model = checkpoint
    code, out, _ = _run_cli([str(path), "--output", str(tmp_path / "out"), "--check"], capsys)
    assert code == 0
    assert "dynamic axes: batch, height, width" in out and "check: onnxruntime vs PyTorch" in out
    info = json.loads((tmp_path / "out" / "test_resnet.json").read_text())
    assert info["classes"] == ["cat", "dog", "owl"] and info["num_classes"] == 3
    assert info["task"] == "classification" and info["input_size"] == [3, 40, 40]
    assert info["mean"] == [0.5, 0.4, 0.3] and info["std"] == [0.2, 0.25, 0.3]
    assert (info["interpolation"], info["crop_pct"], info["crop_mode"]) == ("bilinear", 0.9, "center")
    assert info["dynamic_axes"]["input"] == {"0": "batch", "2": "height", "3": "width"} and info["check"]["passed"]
    assert info["check"]["inputs"] == [[2, 3, 40, 40], [1, 3, 57, 49]] and info["check"]["max_rel_diff"] <= 1e-4
    for shape in ((2, 3, 40, 40), (1, 3, 33, 50)):
        x = torch.randn(*shape)
        with torch.no_grad():
            _assert_matches(_run_onnx(tmp_path / "out" / "test_resnet.onnx", x), model(x))


def test_a_segmentation_checkpoint_states_its_scale_threshold_and_logits(tmp_path, capsys):
    """A medical-seg checkpoint's JSON gave timm's resize and centre crop (interpolation, crop_pct) and no threshold:
    it now says the whole image goes in, resized by the run's scale, how the run's evaluation padded or tiled it,
    and how the logits become a mask."""
    model = _model("test_fsgnet", num_classes=1)
    path = tmp_path / "best.pth"
    torch.save({"task": "medical-seg", "model": "test_fsgnet", "model_kwargs": {}, "num_classes": 1, "img_size": 32,
                "scale": 0.5, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3), "threshold": 0.3,
                "inference": {"mode": "padded", "tile": 32, "overlap": 0.5, "pad_multiple": 16, "batch_size": 8,
                              "pad_to": 48}, "fov_loss": False, "dataset": "synthetic-vessels", "config": {},
                "epoch": 0, "state_dict": model.state_dict(), "optimizer": {}, "scheduler": {}, "best": {},
                "history": []}, path)
    code, _, _ = _run_cli([str(path), "--output", str(tmp_path / "out"), "--static", "--no-optimize"], capsys)
    info = json.loads((tmp_path / "out" / "test_fsgnet.json").read_text())
    assert code == 0 and info["kind"] == "segmentation"
    assert info["scale"] == 0.5 and info["threshold"] == 0.3
    assert info["mean"] == [0.5, 0.4, 0.3] and info["std"] == [0.2, 0.25, 0.3]
    assert "crop_pct" not in info and "interpolation" not in info
    assert "whole image (resized by scale)" in info["preprocessing"]
    assert "sigmoid(logit) >= threshold" in info["preprocessing"]
    # how the run evaluated (ONNX users pad or slide as it did), not this machine's batch size
    assert info["inference"] == {"mode": "padded", "tile": 32, "overlap": 0.5, "pad_multiple": 16, "pad_to": 48}
    assert "multiple of pad_multiple" in info["preprocessing"]


def test_a_check_beyond_the_tolerance_exits_1_in_one_line(checkpoint, tmp_path, monkeypatch, capsys):
    path, _ = checkpoint
    monkeypatch.setattr(export, "TOLERANCE", {torch.float32: 0.0})  # any rounding difference now fails
    code, out, last = _run_cli([str(path), "--output", str(tmp_path), "--check", "--static", "--no-optimize"],
                               capsys)
    assert code == 1 and "dynamic axes: none" in out
    assert last.startswith("error: check failed: onnxruntime vs PyTorch") and last.endswith("above 0e+00")
    assert json.loads((tmp_path / "test_resnet.json").read_text())["check"]["passed"] is False


class _Erfinv(nn.Module):
    """A tiny model whose op (erfinv) ONNX has no operator for."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return torch.erfinv(self.conv(x).tanh() * 0.5)


def test_an_op_onnx_cannot_express_is_a_one_line_error_naming_it(tmp_path, monkeypatch, capsys):
    with pytest.raises(UserError, match=r"the op prims\.erf_inv\.default cannot be exported"):
        export.export_onnx(_Erfinv(), str(tmp_path / "m.onnx"), (3, 8, 8))
    assert not os.listdir(tmp_path)  # nothing half-written
    monkeypatch.setattr(timm.models.resnet.ResNet, "forward_head",
                        lambda self, x, pre_logits=False: torch.erfinv(x.mean((2, 3)).tanh()))
    code, _, last = _run_cli(["test_resnet", "--output", str(tmp_path), "--static", "--img-size", "32"], capsys)
    assert code == 2 and "Traceback" not in last
    assert last.startswith("error: cannot export ResNet to ONNX opset 18: the op prims.erf_inv.default")


def test_the_torchscript_exporter_takes_over_when_the_dynamo_one_fails(tmp_path, monkeypatch):
    real = torch.onnx.export

    def dynamo_fails(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("No ONNX function found for <OpOverload(op='aten.fake', overload='default')>")
        return real(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    model = _model("test_resnet")
    done = export.export_onnx(model, str(tmp_path / "m.onnx"), (3, 32, 32))
    assert done.exporter == "torchscript" and done.dynamic_axes["input"] == {0: "batch"}
    assert "aten.fake.default" in done.notes[-1] and "TorchScript exporter" in done.notes[-1]
    for batch in (2, 5):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            _assert_matches(_run_onnx(done.path, x), model(x))


def test_unsupported_op_names_are_found_in_exporter_errors():
    try:
        try:
            raise RuntimeError("No ONNX function found for <OpOverload(op='aten.sort', overload='stable')>. x")
        except RuntimeError as inner:
            raise RuntimeError("Failed to convert the exported program to an ONNX model.") from inner
    except RuntimeError as err:
        assert export.unsupported_op(err) == "aten.sort.stable"
    legacy = RuntimeError("Exporting the operator 'aten::erfinv' to ONNX opset version 17 is not supported.")
    assert export.unsupported_op(legacy) == "aten::erfinv"
    assert export.unsupported_op(RuntimeError("something else")) is None


def test_a_stable_sort_exports_as_topk_with_ties_lowest_index_first(tmp_path):
    class Sorter(nn.Module):
        def forward(self, x):
            return x.sort(dim=-1, descending=True, stable=True).indices.float()

    done = export.export_onnx(Sorter(), str(tmp_path / "s.onnx"), (3, 4, 6), dynamic=False)
    x = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0, 1.0]]).expand(2, 3, 4, 6).contiguous()
    np.testing.assert_array_equal(_run_onnx(done.path, x).numpy(), Sorter()(x).numpy())


def test_a_graph_calling_a_triton_op_is_refused(tmp_path):
    from visattn.ops.routed_attention.fused import routed_attention_fused

    class Fused(nn.Module):  # a model that calls the fused op directly (the export forces only pick()'s choice)
        def forward(self, x):
            q = x.permute(0, 2, 3, 1)
            return routed_attention_fused(q, q, q, 1, 2, 1, 1.0)

    with pytest.raises(UserError, match=r"calls the Triton kernel op visattn::"):
        export.export_onnx(Fused(), str(tmp_path / "f.onnx"), (4, 8, 8), dynamic=False)


@pytest.mark.parametrize("argv,fragment", [
    (["no_such_model"], "unknown model 'no_such_model'"),
    (["/nowhere/best.pth"], "/nowhere/best.pth: no such file"),
    (["test_resnet", "--format", "pt2", "--opset", "18"], "--opset applies to --format onnx, not pt2"),
    (["test_resnet", "--format", "pt2", "--no-optimize"], "--no-optimize applies to --format onnx, not pt2"),
    (["test_resnet", "--opset", "13"], "opset 13: visattn exports opsets 17 to "),
    (["test_resnet", "--opset", "99"], f"opset 99: visattn exports opsets 17 to {onnx.defs.onnx_opset_version()} "
                                       f"(the newest the installed onnx {onnx.__version__} knows)"),
    (["test_resnet", "--img-size", "0"], "--img-size 0: must be >= 1"),
])
def test_bad_input_is_a_one_line_error(argv, fragment, tmp_path, capsys):
    code, _, last = _run_cli([*argv, "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and last.startswith("error: ") and fragment in last, last
    assert not (tmp_path / "out").exists()


def test_missing_onnxruntime_tells_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    code, _, last = _run_cli(["test_resnet", "--output", str(tmp_path), "--check"], capsys)
    assert code == 2
    assert last == ("error: onnxruntime is not installed; ONNX export needs onnx, onnxscript and onnxruntime: "
                    "pip install 'visattn[export]'")


def test_the_script_writes_a_pt2_program_and_its_json(tmp_path):
    model = _model("test_resnet")
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export.py"), "test_resnet", "--weights",
                             str(tmp_path / "weights.pth"), "--format", "pt2", "--img-size", "32", "--output",
                             str(tmp_path), "--check"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "check: the loaded program vs PyTorch" in result.stdout
    info = json.loads((tmp_path / "test_resnet.json").read_text())
    assert info["format"] == "pt2" and info["opset"] is None and info["input_size"] == [3, 32, 32]
    program = torch.export.load(str(tmp_path / "test_resnet.pt2")).module()
    x = torch.randn(1, 3, 45, 37)
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x), rtol=1e-5, atol=1e-6)
