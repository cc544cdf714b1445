"""Test set-up. On CPU (the default) Triton kernels run under the interpreter; benchmarks/gpu_suite.py runs the
op tests on a GPU with ``VISATTN_TEST_DEVICE=cuda``."""

import os
import shutil

DEVICE = os.environ.get("VISATTN_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.pop("VISATTN_BACKEND", None)

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # one thread per xdist worker: the workers already fill the cores


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


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
