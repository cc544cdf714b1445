"""Test set-up: Triton kernels run under the interpreter on CPU tensors."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.pop("VISATTN_BACKEND", None)

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
