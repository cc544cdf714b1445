"""Compile, for a GPU this machine does not have, every Triton kernel the models launch.

``python -m tests.ops._gpu_compile [--launches FILE] [--dtypes bfloat16,float32] [--through-llir float32]
MODEL[:SIZE][=DTYPE,...] ...`` runs each model (default input size: its own) in each dtype;
``python -m tests.ops._gpu_compile --replay FILE`` compiles the launches such a run recorded, with whichever Triton
this process imports. Each prints one line per kernel variant (``ok`` / ``FAIL MODEL DTYPE KERNEL VARIANT: reason``)
and exits 1 when any fails. The launches in a ``--through-llir`` dtype compile through Triton's passes to LLVM IR
only, as an autotuned kernel's later configs do (below).

The interpreter the op tests run under is lenient where Triton's compiler is not (types, layouts, shared memory),
so the kernels are also compiled as a GPU would compile them. A model runs forward and backward on CPU tensors with
``VISATTN_BACKEND=triton``; a stand-in driver reports an sm_90 (H100/H200) target, and every launch compiles its
kernel through ``JITFunction.run`` (the specialisation a GPU launch would use, down to the cubin by ptxas) instead of
running it. An autotuned kernel compiles each of its configs at its first launch in each dtype: the first config
to the cubin, the others through Triton's own passes to LLVM IR, where their shared memory is known; their PTX and
ptxas stages are left out, because a config that fails there (``PTXASError``, ``OutOfResources``) is dropped by the
autotuner on the GPU, while a failure in Triton's passes would stop the run. At its later launches (other group
counts, head sizes, strides) configs compile in order until one fits. A variant fails when it does not
compile or needs more shared memory than the card has; an autotuned kernel fails when none of its configs fits.
Kernels write nothing, so outputs are garbage: only the launches matter, and the models' heavy aten ops
(convolutions, matrix products, pooling, resampling, normalisation) only allocate their outputs (:class:`ShapesOnly`).

Which kernels launch, and with what, is decided by visattn's launchers, not by Triton, so a run records each launch
(kernel, argument dtypes and 16-byte alignment, integer and compile-time values) and a replay under another Triton
(the GPU machine's) compiles the same launches without running the models again.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import re
import sys
import tempfile
import traceback

os.environ.pop("TRITON_INTERPRET", None)
os.environ["VISATTN_BACKEND"] = "triton"
os.environ["TRITON_DISABLE_LINE_INFO"] = "1"  # source locations in the binary: debug data, no code, a tenth of the time
if "TRITON_CACHE_DIR" not in os.environ:
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="visattn-gpu-compile-")

import torch  # noqa: E402
import triton  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten, tree_map  # noqa: E402
from triton._C.libtriton import llvm  # noqa: E402
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


class ThroughLLIR:
    """Triton's ``add_stages_inspection_hook``: while :attr:`active`, the PTX and cubin stages are stand-ins (the
    kernel's name only), LLVM's O3 pipeline is left out of the LLIR stage (it follows Triton's passes and the shared
    memory allocation, and half the stage's time; nothing reads the code it would optimise), and compilations go to a
    cache folder of their own, so that a full compilation never finds a stand-in; asked with no arguments (Triton
    3.8's cache key), the mode."""

    active = False

    def __call__(self, *args):
        mode = "through-llir" if self.active else "full"
        if not args:
            return mode, hashlib.sha256(mode.encode()).hexdigest()
        _backend, stages, *_ = args
        if self.active:
            stages["ptx"] = _name_only
            stages["cubin"] = lambda src, metadata: b""
        return None

    @contextlib.contextmanager
    def enabled(self):
        cache, optimize = triton.knobs.cache.dir, llvm.optimize_module
        self.active, triton.knobs.cache.dir = True, os.path.join(cache, "through-llir")
        llvm.optimize_module = _unoptimized
        try:
            yield
        finally:
            self.active, triton.knobs.cache.dir = False, cache
            llvm.optimize_module = optimize


def _unoptimized(module, *args, **kwargs) -> None:
    """``llvm.optimize_module`` through LLIR: the module as Triton's passes lowered it."""


def _name_only(llir: str, metadata: dict) -> str:
    """The PTX stage's one duty the compiled kernel's metadata needs: the kernel's name."""
    metadata["name"] = re.search(r"define [^@]*@([\w.$]+)\(", llir).group(1)
    return ""


THROUGH_LLIR = ThroughLLIR()


class Recorder:
    """Launches become compilations: ``results`` maps (model, dtype, kernel, variant) to None or the reason it
    fails; ``launches`` keeps each distinct launch, encoded for a replay."""

    def __init__(self, through_llir_dtypes: tuple[str, ...] = ()):
        self.through_llir_dtypes = through_llir_dtypes
        self.results: dict[tuple[str, str, str, str], str | None] = {}
        self.launches: list[dict] = []
        self._seen: set[str] = set()
        self.tuned: set[tuple[JITFunction, str]] = set()  # (kernel, dtype) of the autotuned launches so far
        self.model = self.dtype = ""

    def compile(self, fn: JITFunction, args, kwargs, label: str, tuned: bool = False,
                through_llir: bool = False) -> str | None:
        """Compile one launch (``through_llir``: to LLVM IR only); its failure reason or None. A tuned config over
        the card's shared memory is recorded as skipped, not failed (the autotuner skips it on the GPU), but still
        returns its reason."""
        through_llir = through_llir or self.dtype in self.through_llir_dtypes
        label += " (through LLIR)" if through_llir else ""
        try:
            with THROUGH_LLIR.enabled() if through_llir else contextlib.nullcontext():
                kernel = _COMPILE(fn, *args, grid=(1,), warmup=True, **kwargs)
            shared = kernel.metadata.shared
            reason = None if shared <= MAX_SHARED_BYTES else f"needs {shared} bytes of shared memory"
        except Exception as err:  # a compiler error of any kind is the finding
            reason = "".join(traceback.format_exception_only(err)).strip().splitlines()[-1][:300]
            shared = None
        if tuned and reason and shared is not None:
            label = f"{label} (skipped by the autotuner: {reason})"
            reason = None
        self.results.setdefault((self.model, self.dtype, kernel_name(fn), label), reason)
        return reason

    def record(self, fn: JITFunction, args, kwargs) -> None:
        launch = {"module": fn.__module__, "kernel": fn.__name__, "args": [_encode(a) for a in args],
                  "kwargs": {k: _encode(v) for k, v in kwargs.items()}, "model": self.model, "dtype": self.dtype}
        key = json.dumps(launch, sort_keys=True)
        if key not in self._seen:
            self._seen.add(key)
            self.launches.append(launch)

    def install(self) -> None:
        recorder = self

        def run(fn, *args, grid, warmup=False, **kwargs):
            recorder.record(fn, args, kwargs)
            recorder.compile(fn, args, kwargs, _variant(fn, args, kwargs))

        def tuned_run(tuner, *args, grid=None, warmup=False, **kwargs):
            fn = tuner.fn
            recorder.record(fn, args, kwargs)
            first_launch = (fn, recorder.dtype) not in recorder.tuned
            recorder.tuned.add((fn, recorder.dtype))
            failures = []
            for i, config in enumerate(tuner.configs):
                merged = {**kwargs, **config.all_kwargs()}
                label = _variant(fn, args, merged)
                failures.append(recorder.compile(fn, args, merged, label, tuned=True, through_llir=i > 0))
                if not first_launch and failures[-1] is None:
                    break
            if all(failures):
                key = (recorder.model, recorder.dtype, kernel_name(fn), _variant(fn, args, kwargs) + " [every config]")
                recorder.results[key] = failures[0]

        driver.set_active(CompileOnlyDriver())
        triton.knobs.runtime.add_stages_inspection_hook = THROUGH_LLIR
        JITFunction.run = run
        Autotuner.run = tuned_run

    def report(self) -> int:
        """Print the results; the exit code."""
        print(f"triton {triton.__version__} from {os.path.dirname(triton.__file__)}")
        for (model, dtype, kernel, variant), reason in sorted(self.results.items()):
            status = f"FAIL {model} {dtype} {kernel} {variant}: {reason}" if reason else f"ok {model} {dtype} {kernel}"
            print(status if reason else f"{status} {variant}")
        return 1 if any(self.results.values()) else 0


def _encode(value):
    """A launch argument as JSON: a tensor by its dtype and 16-byte alignment (what Triton specialises on)."""
    if isinstance(value, torch.Tensor):
        return {"tensor": str(value.dtype).removeprefix("torch."), "aligned": value.data_ptr() % 16 == 0}
    return value


def _decode(value):
    """A stand-in for an encoded argument: a tensor of the dtype, 16-byte aligned or not, as recorded."""
    if isinstance(value, dict) and "tensor" in value:
        buffer = torch.empty(8, dtype=getattr(torch, value["tensor"]))
        return buffer if value["aligned"] else buffer[1:]
    return value


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


def _meta(value):
    """A tensor as a meta tensor of its size, strides and dtype; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return torch.empty_strided(value.size(), value.stride(), dtype=value.dtype, device="meta")
    return value


class ShapesOnly(TorchDispatchMode):
    """The :data:`HEAVY` aten ops return uninitialised outputs of the shapes, strides and dtypes their meta functions
    give (an output that aliases an input, as an in-place op's, is that input); every other op runs. Launches depend
    on shapes, dtypes, strides and alignment, never on values (the launchers read none back: test_compile's
    NoHostSync), and the values are garbage already where a kernel wrote nothing; a bfloat16 convolution on this CPU
    costs seconds."""

    HEAVY = {"convolution", "convolution_backward", "max_pool2d_with_indices", "max_pool2d_with_indices_backward",
             "avg_pool2d", "avg_pool2d_backward", "upsample_bilinear2d", "upsample_bilinear2d_backward", "mm",
             "addmm", "bmm", "native_batch_norm", "native_batch_norm_backward", "_native_batch_norm_legit",
             "_native_batch_norm_legit_no_training", "native_layer_norm", "native_layer_norm_backward"}

    def __init__(self):
        super().__init__()
        self._metas: dict[tuple, object] = {}  # the outputs' metadata per op and argument metadata

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket.__name__ not in self.HEAVY:
            return func(*args, **kwargs)
        leaves, spec = tree_flatten((args, kwargs))
        key = (func, str(spec), *((tuple(t.shape), t.stride(), t.dtype) if isinstance(t, torch.Tensor) else t
                                  for t in leaves))
        out = self._metas.get(key)
        if out is None:  # a layer's shapes recur (blocks, branches, the backward of each): their meta functions
            # (Python decompositions for the normalisations) run once
            out = self._metas[key] = func(*tree_map(_meta, args), **tree_map(_meta, kwargs))
        written = {}  # alias set -> the input an op writes in place
        for i, arg in enumerate(func._schema.arguments):
            if arg.alias_info is not None and arg.alias_info.is_write:
                for alias in arg.alias_info.before_set:
                    written[alias] = args[i] if i < len(args) else kwargs[arg.name]

        def allocate(value, returned):
            aliases = returned.alias_info.before_set if returned.alias_info is not None else ()
            alias = next((a for a in aliases if a in written), None)
            if alias is not None:
                return written[alias]
            return tree_map(lambda t: torch.empty_strided(t.size(), t.stride(), dtype=t.dtype)
                            if isinstance(t, torch.Tensor) else t, value)

        returns = func._schema.returns
        if len(returns) == 1:
            return allocate(out, returns[0])
        return tuple(allocate(value, returned) for value, returned in zip(out, returns, strict=True))


@contextlib.contextmanager
def no_random_init():
    """Models built without drawing their random initial weights (2.8 s of CPU for a ViT-Base's truncated normals,
    0.02 s without): the weights keep the uninitialised memory they were allocated with, which, as
    :class:`ShapesOnly` says, decides no launch. Everything else of a model's construction (buffers, index tables,
    constant fills) runs."""
    import timm.layers.weight_init

    def unchanged(tensor, *args, **kwargs):
        return tensor

    class SkipRandomFills(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in (torch.Tensor.uniform_, torch.Tensor.normal_) or (
                    getattr(func, "__module__", None) == "torch.nn.init"
                    and re.search("uniform|normal|orthogonal", func.__name__)):
                return args[0] if args else kwargs["tensor"]
            return func(*args, **(kwargs or {}))

    patched = [(timm.layers.weight_init, "_trunc_normal_"), (torch.nn.init, "_no_grad_trunc_normal_")]
    saved = [getattr(module, name) for module, name in patched]
    for module, name in patched:
        setattr(module, name, unchanged)
    try:
        with SkipRandomFills():
            yield
    finally:
        for (module, name), value in zip(patched, saved, strict=True):
            setattr(module, name, value)


def run_models(recorder: Recorder, models: list[str], dtypes: list[str]) -> None:
    """Each model forward and backward in each of ``dtypes`` (``MODEL=DTYPE,...``: its own), at its input size
    (``MODEL:SIZE``: that size)."""
    import timm

    import visattn  # noqa: F401

    for spec in models:
        spec, _, own_dtypes = spec.partition("=")
        name, _, size = spec.partition(":")
        for dtype_name in own_dtypes.split(",") if own_dtypes else dtypes:
            recorder.model, recorder.dtype = name, dtype_name
            dtype = getattr(torch, dtype_name)
            with no_random_init():
                model = timm.create_model(name)
            model = model.to(dtype).train()
            side = int(size) if size else model.pretrained_cfg["input_size"][-1]
            before = len(recorder.results)
            with ShapesOnly():
                out = model(torch.randn(1, model.in_chans, side, side, dtype=dtype))
                out = out[0] if isinstance(out, tuple | list) else out
                out.float().sum().backward()
            if len(recorder.results) == before:
                recorder.results[(name, dtype_name, "-", "no Triton kernel was launched")] = "no launch"


def replay(recorder: Recorder, launches: list[dict]) -> None:
    """Compile recorded launches, through the kernel objects (tuned or not) of this process's modules."""
    for launch in launches:
        recorder.model, recorder.dtype = launch["model"], launch["dtype"]
        kernel = getattr(importlib.import_module(launch["module"]), launch["kernel"])
        args = [_decode(a) for a in launch["args"]]
        kwargs = {k: _decode(v) for k, v in launch["kwargs"].items()}
        kernel.run(*args, grid=(1,), warmup=False, **kwargs)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help="MODEL, MODEL:SIZE, MODEL=DTYPE,DTYPE or MODEL:SIZE=DTYPE")
    p.add_argument("--dtypes", default="bfloat16", help="comma-separated, e.g. bfloat16,float32")
    p.add_argument("--launches", help="write the distinct launches of the run to this JSON file")
    p.add_argument("--replay", help="compile the launches of this JSON file instead of running models")
    p.add_argument("--through-llir", default="", help="comma-separated dtypes whose launches compile to LLVM IR only")
    args = p.parse_args(argv)
    recorder = Recorder(tuple(filter(None, args.through_llir.split(","))))
    recorder.install()
    if args.replay:
        with open(args.replay) as f:
            replay(recorder, json.load(f))
    else:
        run_models(recorder, args.models, args.dtypes.split(","))
    if args.launches:
        with open(args.launches, "w") as f:
            json.dump(recorder.launches, f)
    return recorder.report()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
