import json
import subprocess
import sys

_PROBE = """
import json, sys, time
import torch, timm
before = set(sys.modules)
start = time.perf_counter()
import visattn
elapsed = time.perf_counter() - start
new = sorted(set(sys.modules) - before)
print(json.dumps({"seconds": elapsed, "new": new, "models": visattn.list_models()}))
"""


def test_import_is_fast_light_and_registers_models():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["seconds"] < 2.0
    heavy = [m for m in probe["new"] if m.split(".")[0] in {"mmdet", "mmseg", "mmengine", "albumentations", "triton"}
             or m.endswith(".triton")]
    assert heavy == []
    assert "biformer_tiny" in probe["models"]
