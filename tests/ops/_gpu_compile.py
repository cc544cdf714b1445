"""Compile, for a GPU this machine does not have, every Triton kernel a model launches.

``python -m tests.ops._gpu_compile MODEL [DTYPE [SIZE]]`` (default bfloat16 at the model's input size) prints one
line per kernel variant and exits 1 when any fails.

The interpreter the op tests run under is lenient where Triton's compiler is not (types, layouts, shared memory),
so the kernels are also compiled as a GPU would compile them. The model runs forward and backward on CPU tensors
with ``VISATTN_BACKEND=triton``; a stand-in driver reports an sm_90 (H100/H200) target, and every launch compiles
its kernel through ``JITFunction.run`` (the specialisation a GPU launch would use, down to the cubin by ptxas)
instead of running it. An autotuned kernel compiles each of its configs. A variant fails when it does not compile
or needs more shared memory than the card has; an autotuned kernel fails when none of its configs fits. Kernels
write nothing, so outputs are garbage: only the launches matter.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback

os.environ.pop("TRITON_INTERPRET", None)
os.environ["VISATTN_BACKEND"] = "triton"
os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="visattn-gpu-compile-"))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
MAX_SHARED_BYTES = 232448  # sm_90's opt-in shared memory per block (227 KB)


class CompileOnlyDriver:
    """What ``JITFunction.run`` asks of the active driver before a launch: device, stream and target."""

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return TARGET


_COMPILE = JITFunction.run  # with warmup=True: specialise and compile, do not launch


class Recorder:
    """Launches become compilations: ``results`` maps (kernel, variant) to None or the reason it fails."""

    def __init__(self):
        self.results: dict[tuple[str, str], str | None] = {}

    def compile(self, fn: JITFunction, args, kwargs, label: str, tuned: bool = False) -> str | None:
        """Compile one launch; its failure reason or None. A tuned config over the card's shared memory is recorded
        as skipped, not failed (the autotuner skips it on the GPU), but still returns its reason."""
        try:
            kernel = _COMPILE(fn, *args, grid=(1,), warmup=True, **kwargs)
            shared = kernel.metadata.shared
            reason = None if shared <= MAX_SHARED_BYTES else f"needs {shared} bytes of shared memory"
        except Exception as err:  # a compiler error of any kind is the finding
            reason = "".join(traceback.format_exception_only(err)).strip().splitlines()[-1][:300]
            shared = None
        if tuned and reason and shared is not None:
            self.results.setdefault((kernel_name(fn), f"{label} (skipped by the autotuner: {reason})"), None)
        else:
            self.results.setdefault((kernel_name(fn), label), reason)
        return reason

    def install(self) -> None:
        recorder = self

        def run(fn, *args, grid, warmup=False, **kwargs):
            recorder.compile(fn, args, kwargs, _variant(fn, args, kwargs))

        def tuned_run(tuner, *args, grid=None, warmup=False, **kwargs):
            fn = tuner.fn
            failures = []
            for config in tuner.configs:
                merged = {**kwargs, **config.all_kwargs()}
                failures.append(recorder.compile(fn, args, merged, _variant(fn, args, merged), tuned=True))
            if all(failures):
                recorder.results[(kernel_name(fn), _variant(fn, args, kwargs) + " [every config]")] = failures[0]

        driver.set_active(CompileOnlyDriver())
        JITFunction.run = run
        Autotuner.run = tuned_run


def kernel_name(fn: JITFunction) -> str:
    """``<op>.<kernel>``, e.g. ``routed_attention._fwd_kernel``."""
    return f"{fn.__module__.split('.')[-2]}.{fn.__name__}"


def _variant(fn: JITFunction, args, kwargs) -> str:
    """The argument dtypes and the compile-time values of a launch: what makes it a separate compilation."""
    named = dict(zip(fn.arg_names, args, strict=False)) | kwargs
    parts = []
    for name, value in named.items():
        if isinstance(value, torch.Tensor):
            parts.append(f"{name}:{str(value.dtype).removeprefix('torch.')}")
        elif name in fn.arg_names and fn.params[fn.arg_names.index(name)].is_constexpr or name in ("num_warps",
                                                                                                      "num_stages"):
            parts.append(f"{name}={value}")
    return " ".join(parts)


def main(argv: list[str]) -> int:
    import timm

    import visattn  # noqa: F401

    name, dtype = argv[0], getattr(torch, argv[1] if len(argv) > 1 else "bfloat16")
    recorder = Recorder()
    recorder.install()
    model = timm.create_model(name)
    size = int(argv[2]) if len(argv) > 2 else model.pretrained_cfg["input_size"][-1]
    model = model.to(dtype).train()
    x = torch.randn(1, model.in_chans, size, size, dtype=dtype)
    out = model(x)
    out = out[0] if isinstance(out, tuple | list) else out
    out.float().sum().backward()
    print(f"triton {triton.__version__} from {os.path.dirname(triton.__file__)}")
    for (kernel, variant), reason in sorted(recorder.results.items()):
        print(f"{'FAIL' if reason else 'ok'} {kernel} {variant}" + (f": {reason}" if reason else ""))
    if not recorder.results:
        print(f"no Triton kernel was launched by {name}")
        return 1
    return 1 if any(recorder.results.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
