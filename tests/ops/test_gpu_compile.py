"""Every Triton kernel compiles for an sm_90 GPU (H100 / H200), as the models launch it, on this GPU-less machine.

Each case runs ``tests/ops/_gpu_compile.py`` in a process of its own (kernels defined without the interpreter): one
model class forward and backward, each kernel launch compiled to a cubin with the specialisation a GPU launch would
use, every config of an autotuned kernel, and the compiled kernel's shared memory checked against the card's. The
interpreter the other op tests run under accepts code the compiler rejects; this catches it before a GPU session.
Kernels compile with this environment's Triton and with the GPU machine's (``requirements/gpu-triton.txt``, which
``make`` installs in ``<venv>/gpu-triton``). The op tests on a real GPU (``benchmarks/gpu_suite.py``) remain the check
of results.
"""

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
CASES = ([(m, "bfloat16", triton_) for m in MODELS for triton_ in ("venv", "gpu")]
         + [(m, "float32", "venv") for m, ops in MODELS.items() if ops])


def test_the_cases_cover_every_op():
    assert sorted(op for ops in MODELS.values() for op in ops) == sorted(OPS)


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


@pytest.mark.parametrize(("model", "dtype", "triton_"), CASES, ids=[f"{m}-{d}-{t}-triton" for m, d, t in CASES])
def test_kernels_compile_for_sm90(model, dtype, triton_, triton_cache):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "VISATTN_BACKEND", "PYTHONPATH")}
    env["TRITON_CACHE_DIR"] = str(triton_cache)
    if triton_ == "gpu":
        env["PYTHONPATH"] = GPU_TRITON
    size = [str(SIZES[model])] if model in SIZES else []
    result = subprocess.run([sys.executable, "-m", "tests.ops._gpu_compile", model, dtype, *size], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    lines = result.stdout.splitlines()
    failures = [line for line in lines if line.startswith("FAIL")]
    assert result.returncode == 0 and not failures, "\n".join(failures) or result.stderr[-3000:]
    used = next(line for line in lines if line.startswith("triton "))
    assert (GPU_TRITON in used) == (triton_ == "gpu"), used
    compiled = {line.split()[1] for line in lines if line.startswith("ok ")}
    for op in MODELS[model]:
        missing = _kernels(op) - compiled
        assert not missing, f"{model} did not launch {sorted(missing)}"
