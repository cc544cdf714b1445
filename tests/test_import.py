import json
import subprocess
import sys

_PROBE = """
import json, sys, time
import torch, timm
before = set(sys.modules)
timm_models = set(timm.list_models())
start = time.perf_counter()
import visattn
elapsed = time.perf_counter() - start
new = sorted(set(sys.modules) - before)
ours = visattn.list_models(include_test=True)
print(json.dumps({"seconds": elapsed, "new": new, "models": visattn.list_models(),
                  "test_models": visattn.list_models(include_test="only"),
                  "shadowed": sorted(timm_models & set(ours))}))
"""


def test_import_is_fast_light_and_registers_models():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["seconds"] < 2.0
    heavy = [m for m in probe["new"] if m.split(".")[0] in {"mmdet", "mmseg", "mmengine", "albumentations", "triton",
                                                          "onnx", "onnxscript", "onnx_ir", "onnxruntime"}
             or m.endswith(".triton") or m.startswith(("torch.onnx", "visattn.export"))]
    assert heavy == []
    assert "biformer_tiny" in probe["models"] and "test_biformer" in probe["test_models"]
    assert probe["shadowed"] == []  # no visattn name replaces one of timm's (test_<family> included)
