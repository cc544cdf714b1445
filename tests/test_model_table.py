"""README's model tables are the one place parameters and MACs are written: every row is counted here, on the meta
device through the fused ops' FLOP formulas (attention, scan and window attention included), at the model's
pretrained input size, and every model visattn registers has a row."""

import os
import re

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import visattn

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
# | `name` [(size)] | params [(note)] | MACs | ...
ROW = re.compile(r"^\| `(\w+)`[^|]*\| ([\d.]+)[^|]*\| ([\d.]+) \|", re.MULTILINE)


def _rows() -> dict[str, tuple[str, str]]:
    with open(README, encoding="utf-8") as f:
        return {name: (params, macs) for name, params, macs in ROW.findall(f.read())}


ROWS = _rows()


def test_every_registered_model_has_a_row():
    assert set(visattn.list_models()) <= set(ROWS)


def _matches(counted: float, written: str) -> bool:
    """``counted`` rounds to ``written`` (to its printed digits)."""
    digits = len(written.partition(".")[2])
    return abs(counted - float(written)) <= 0.5 * 10 ** -digits + 1e-9


@pytest.mark.parametrize("name", sorted(ROWS))
def test_row_matches_the_counted_model(name, monkeypatch):
    monkeypatch.setenv("VISATTN_BACKEND", "triton")
    params, macs = ROWS[name]
    with torch.device("meta"):
        model = timm.create_model(name).eval()
        x = torch.empty(1, *model.pretrained_cfg["input_size"])
    with FlopCounterMode(display=False) as counter:
        model(x)
    counted_params = sum(p.numel() for p in model.parameters()) / 1e6
    counted_macs = counter.get_total_flops() / 2e9
    assert _matches(counted_params, params), f"{name}: {counted_params:.3f} M parameters, README says {params}"
    assert _matches(counted_macs, macs), f"{name}: {counted_macs:.3f} GMACs, README says {macs}"
