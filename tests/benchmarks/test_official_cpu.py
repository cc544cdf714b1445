"""The CPU comparison with the official code (benchmarks/official_cpu.py): how it imports each family's checkout,
on stand-in checkouts written here (the official code is never part of the repository)."""

import sys

import pytest
import torch

from benchmarks import official_cpu
from benchmarks.sparse_cpu import interleaved_ms


def _checkout(root, files: dict[str, str]) -> str:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return str(root)


def test_each_family_imports_its_own_models_package(tmp_path):
    """Two repositories with a top-level ``models`` package: the second family gets its own, not the first's."""
    biformer = _checkout(tmp_path / "a", {
        "models/__init__.py": "",
        "models/biformer.py": "import torch\n"
                              "def biformer_tiny(pretrained=False):\n    return torch.nn.Linear(2, 3)\n"
                              "def biformer_small(pretrained=False):\n    return torch.nn.Linear(2, 5)\n"})
    fsgnet = _checkout(tmp_path / "b", {
        "models/__init__.py": "", "models/backbones/__init__.py": "",
        "models/backbones/FSGNet.py": "import torch\nclass FSGNet(torch.nn.Conv2d):\n"
                                      "    def __init__(self, channel, n_classes, base_c, depths, kernel_size):\n"
                                      "        super().__init__(channel, n_classes, kernel_size)\n"})
    first = official_cpu.official_models("biformer", biformer)
    assert first["biformer_small"].out_features == 5 and not first["biformer_tiny"].training
    second = official_cpu.official_models("fsgnet", fsgnet)
    assert second["fsgnet"].out_channels == 1 and second["fsgnet"].kernel_size == (3, 3)
    assert biformer not in sys.path and fsgnet not in sys.path


def test_the_official_imports_and_their_stand_ins_leave_no_module_behind(tmp_path, monkeypatch):
    """A module of a shared name the process had (here a "models") is back after the import, and the stand-ins for
    HER-Seg's unused imports are gone."""
    mine = type(sys)("models")
    monkeypatch.setitem(sys.modules, "models", mine)
    herseg = _checkout(tmp_path, {"model.py": "import torch\nfrom sam2.modeling.sam2_base import SAM2Base\n"
                                              "from transforms import ResizeLongestSide\n"
                                              "class MHRMedSeg(torch.nn.Linear):\n"
                                              "    def __init__(self, dim, img_size):\n"
                                              "        super().__init__(dim, 1)\n"})
    assert official_cpu.official_models("herseg", herseg)["herseg"].in_features == 96
    assert sys.modules["models"] is mine
    assert not {"model", "sam2", "transforms", "train"} & set(sys.modules)


def test_a_checkout_without_the_import_root_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match=r"sparsifiner=.*no folder .*src.*clone of its repository"):
        official_cpu.official_models("sparsifiner", str(tmp_path))


@pytest.mark.parametrize("given", [["nope=/x"], ["biformer"]])
def test_an_unknown_family_or_a_missing_checkout_is_a_one_line_error(given, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["official_cpu", "--official", *given])
    with pytest.raises(SystemExit, match="give FAMILY=CHECKOUT, FAMILY one of biformer, inline"):
        official_cpu.main()


def test_the_models_are_timed_on_inputs_of_the_cases_side():
    sides = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            sides.append(tuple(x.shape))
            return x

    times = interleaved_ms({"a": Probe(), "b": Probe()}, batch=2, rounds=3, side=40)
    assert sides == [(2, 3, 40, 40)] * 8 and set(times) == {"a", "b"}
