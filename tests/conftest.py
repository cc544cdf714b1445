"""Test set-up. On CPU (the default) Triton kernels run under the interpreter; benchmarks/gpu_suite.py runs the
op tests on a GPU with ``VISATTN_TEST_DEVICE=cuda``."""

import os

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
