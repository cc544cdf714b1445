"""Every Triton kernel compiles for an sm_90 GPU (H100 / H200), as the models launch it, on this GPU-less machine.

Each case runs ``tests/ops/_gpu_compile.py`` in a process of its own (kernels defined without the interpreter): a group
of model classes forward and backward, each kernel launch compiled with the specialisation a GPU launch would use, the
configs of an autotuned kernel as ``_gpu_compile``'s docstring says, and the compiled kernel's shared memory checked
against the card's. The interpreter the other op tests run under accepts code the compiler rejects; this catches it
before a GPU session. Kernels compile with this environment's Triton and with the GPU machine's
(``requirements/gpu-triton.txt``, which ``make`` installs in ``<venv>/gpu-triton``): the first runs the models and
compiles their launches through Triton's passes to LLVM IR, where types, layouts and shared memory are decided; the
second compiles the bfloat16 launches the first recorded down to the cubin (PTX and ptxas, the stages the first leaves
out: they check no code of ours that LLVM IR has not), without running the models again. The op tests on a real GPU
(``benchmarks/gpu_suite.py``) remain the check of results.
"""

import json
import os
import subprocess
import sys

import pytest
import triton

from tests.ops.test_kernel_globals import KERNEL_MODULES, OPS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Model -> the ops all of whose kernels it launches (together, every op). Each model class runs in bfloat16, the
# models' GPU dtype, at its input size (FSG-Net at 256, whose tiles cover those at 608 and more); the ops' own models
# run in float32 too (full-precision dots, twice the shared memory).
SIZES = {"fsgnet": 256}
MODELS = {
    "biformer_tiny": ("routed_attention",),
    "lamamba_tiny": ("selective_scan", "window_attention"),
    "herseg": ("linear_attention",),
    "sparsifiner_deit_small": ("sparse_attention",),
    "hrnet_w18_psa_s": ("polarized_attention",),
    "fsgnet": ("guided_filter",),
    "inline_deit_tiny": (),
    "inline_swin_tiny": (),
    "inline_pvt_tiny": (),
    "inline_cswin_tiny": (),
    "hrnet_w18_psa": (),
    "tcpa_vit_base_patch16_224": (),
}
GPU_TRITON = os.path.join(sys.prefix, "gpu-triton")
# Two halves of about equal compile work, each a process per Triton: the environment's runs the models (bfloat16,
# and float32 for the ops' own models) and records their launches; the GPU machine's compiles the bfloat16 ones.
GROUPS = {
    "routed-psa-filter-vit": ("biformer_tiny", "hrnet_w18_psa_s", "hrnet_w18_psa", "fsgnet",
                              "tcpa_vit_base_patch16_224", "inline_deit_tiny", "inline_swin_tiny"),
    "scan-window-linear": ("lamamba_tiny", "herseg", "sparsifiner_deit_small", "inline_pvt_tiny", "inline_cswin_tiny"),
}


def test_the_cases_cover_every_op_and_model():
    assert sorted(op for ops in MODELS.values() for op in ops) == sorted(OPS)
    assert sorted(m for group in GROUPS.values() for m in group) == sorted(MODELS)


def test_the_gpu_machines_triton_is_installed():
    pinned = open(os.path.join(ROOT, "requirements", "gpu-triton.txt")).read().split("triton==")[1].split()[0]
    installed = os.path.join(GPU_TRITON, f"triton-{pinned}.dist-info")
    assert os.path.isdir(installed), f"{installed} is missing: run make test (it installs requirements/gpu-triton.txt)"


def _kernels(op: str) -> set[str]:
    """``<op>.<name>`` of the kernels (jitted ``*_kernel`` functions, autotuned or not) an op's module defines."""
    module = KERNEL_MODULES[OPS.index(op)]
    return {f"{op}.{name}" for name, value in vars(module).items()
            if name.endswith("_kernel") and isinstance(value, triton.runtime.jit.KernelInterface)}


@pytest.fixture(scope="session")
def triton_cache(request, tmp_path_factory):
    """One Triton cache for every case and xdist worker, kept in pytest's cache folder between runs: a kernel
    variant compiles once, for every model that launches it with the same specialisation, until its source, its
    specialisation or the compiler changes (Triton's cache key holds them all, the Triton version included; a
    compilation that fails is never cached). Without pytest's cache plugin, one folder for the run."""
    if getattr(request.config, "cache", None) is not None:
        return request.config.cache.mkdir("gpu-compile-triton")
    path = tmp_path_factory.getbasetemp().parent / "gpu-compile-triton"
    path.mkdir(exist_ok=True)
    return path


def _compile(argv: list[str], triton_cache, gpu_triton: bool) -> list[str]:
    """Run ``_gpu_compile`` with the environment's Triton or the GPU machine's; its lines, once it passed."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "VISATTN_BACKEND", "PYTHONPATH")}
    env["TRITON_CACHE_DIR"] = str(triton_cache)
    if gpu_triton:
        env["PYTHONPATH"] = GPU_TRITON
    result = subprocess.run([sys.executable, "-m", "tests.ops._gpu_compile", *argv], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1500)
    lines = result.stdout.splitlines()
    failures = [line for line in lines if line.startswith("FAIL")]
    assert result.returncode == 0 and not failures, "\n".join(failures) or result.stderr[-3000:]
    used = next(line for line in lines if line.startswith("triton "))
    assert (GPU_TRITON in used) == gpu_triton, used
    return lines


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_kernels_compile_for_sm90(group, triton_cache, tmp_path):
    """Every model of the group launches only kernels that compile, with both Tritons, in bfloat16 (and the ops' own
    models in float32, with this environment's); each model launches every kernel of its ops."""
    specs = [m + (f":{SIZES[m]}" if m in SIZES else "") + ("=bfloat16,float32" if MODELS[m] else "=bfloat16")
             for m in GROUPS[group]]
    launches = tmp_path / "launches.json"
    lines = _compile(["--launches", str(launches), "--through-llir", "bfloat16,float32", *specs], triton_cache,
                     gpu_triton=False)
    bf16 = [launch for launch in json.loads(launches.read_text()) if launch["dtype"] == "bfloat16"]
    launches.write_text(json.dumps(bf16))
    gpu_lines = _compile(["--replay", str(launches)], triton_cache, gpu_triton=True)
    for model in GROUPS[group]:
        for dtype, compiled_lines in [("bfloat16", lines), ("bfloat16", gpu_lines)] + (
                [("float32", lines)] if MODELS[model] else []):
            compiled = {line.split()[3] for line in compiled_lines if line.startswith(f"ok {model} {dtype} ")}
            assert compiled, f"{model} launched no kernel in {dtype}"
            for op in MODELS[model]:
                missing = _kernels(op) - compiled
                assert not missing, f"{model} did not launch {sorted(missing)} in {dtype}"
