"""Test set-up. On CPU (the default) Triton kernels run under the interpreter, its reductions and scans with a kernel's
own combine function folding slices (tests/triton_interpreter.py); benchmarks/gpu_suite.py runs the op tests on a
GPU with ``VISATTN_TEST_DEVICE=cuda``."""

import os
import shutil

DEVICE = os.environ.get("VISATTN_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # torch.compile's tests check what the graph computes; the C++ inductor generates for it is built the cheapest way
    # (inductor's own code generation, not the models', is what these settings change): scalar loops instead of SIMD
    # tiling, whose analysis is half the compile time, and -O0 (half the C++ compiler's time)
    os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "0")
    os.environ.setdefault("TORCHINDUCTOR_DEBUG_COMPILE", "1")
os.environ.pop("VISATTN_BACKEND", None)
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    # one thread per xdist worker, and per process a test starts: the workers already fill the cores, and OpenMP
    # threads of a second process spin-wait for cores that are busy (several times the CPU time of one thread)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no pool of compile workers to start per process

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("TRITON_INTERPRET") == "1":
    from tests.triton_interpreter import install

    install()
if XDIST_WORKER:
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# The slowest tests (``--durations=0``, one file at a time), in the order they start: under ``pytest -n N`` they are
# dealt to the workers one by one before anything else, so that the light tests fill in around them and no worker is
# left running a long test alone at the end. Node id prefixes; the first that matches ranks a test.
HEAVY = (
    "tests/ops/test_gpu_compile.py::test_kernels_compile_for_sm90",
    "tests/engine/test_demo.py::",
    "tests/tools/test_reliability.py::test_a_run_killed",
    "tests/backbones/test_compile.py::test_compiled_training_step_matches_eager[LaMamba]",
    "tests/backbones/test_conformance.py::test_torch_compile_matches_eager[test_lamamba]",
    "tests/backbones/test_compile.py::test_compiled_training_step_matches_eager[PSAHRNet]",
    "tests/backbones/test_compile.py::test_compiled_training_step_matches_eager[FSGNet]",
    "tests/backbones/test_compile.py::test_compiled_",
    "tests/backbones/test_conformance.py::test_torch_compile_matches_eager",
    "tests/mm/test_det_seg_pipelines.py::test_detection_config",
)


def heavy_rank(nodeid: str) -> int:
    """The index of the first :data:`HEAVY` prefix of ``nodeid``; ``len(HEAVY)`` for a light test."""
    return next((i for i, prefix in enumerate(HEAVY) if nodeid.startswith(prefix)), len(HEAVY))


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: heavy_rank(item.nodeid))  # stable: light tests keep pytest's order


def pytest_xdist_make_scheduler(config, log):
    """xdist's load scheduling, except that the heavy tests (first in the collection) are dealt one at a time,
    round-robin, before the first chunks of light ones."""
    from xdist.scheduler import LoadScheduling

    class HeavyFirst(LoadScheduling):
        def schedule(self):
            collection = next(iter(self.node2collection.values()), [])
            if (self.collection is not None or len(collection) < 4 * len(self.nodes)
                    or not self._check_nodes_have_same_collection()):
                return super().schedule()
            heavy = sum(heavy_rank(nodeid) < len(HEAVY) for nodeid in collection)
            self.collection = collection
            self.pending[:] = range(len(collection))
            self.maxschedchunk = self.maxschedchunk or len(collection)
            for i in range(min(heavy, len(collection) - 2 * len(self.nodes))):
                self._send_tests(self.nodes[i % len(self.nodes)], 1)
            chunk = max(2, min(len(self.pending) // len(self.nodes) // 4, self.maxschedchunk))
            for node in self.nodes:
                self._send_tests(node, chunk)

    return HeavyFirst(config, log)


_CALL_PASSED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.stash[_CALL_PASSED] = report.passed
    return report


@pytest.fixture(autouse=True)
def _drop_tmp_path_of_passed_test(request):
    """A passed test's ``tmp_path`` is deleted at teardown (the mm pipeline tests write full-size checkpoints, GBs
    a run); a failed test's stays for inspection. Shared ``tmp_path_factory`` folders are left to pytest."""
    yield
    tmp_path = request.node.funcargs.get("tmp_path")
    if tmp_path is not None and request.node.stash.get(_CALL_PASSED, False):
        shutil.rmtree(tmp_path, ignore_errors=True)
