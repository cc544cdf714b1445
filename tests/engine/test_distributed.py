import pytest
import torch

from visattn.engine.distributed import pick_device
from visattn.errors import UserError


def test_a_gpu_given_or_picked_becomes_the_current_device(monkeypatch):
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert pick_device("cuda:1") == torch.device("cuda", 1) and current == [torch.device("cuda", 1)]
    assert pick_device("cuda") == torch.device("cuda", 3)  # a bare "cuda" is this rank's GPU
    assert pick_device(None) == torch.device("cuda", 3)
    assert current[1:] == [torch.device("cuda", 3)] * 2
    assert pick_device("cpu") == torch.device("cpu") and len(current) == 3


def test_without_a_gpu_the_default_is_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(None) == torch.device("cpu")


def test_a_device_this_machine_lacks_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match=r"device 'cuda:2': this machine has 2 CUDA device\(s\), cuda:0 to cuda:1$"):
        pick_device("cuda:2")
    with pytest.raises(UserError, match="device 'tpu': not a device; use cpu, cuda or cuda:N"):
        pick_device("tpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(UserError, match="this machine has no CUDA device; use cpu"):
        pick_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UserError, match="^device 'mps': this PyTorch build or machine has no mps device; use cpu$"):
        pick_device("mps")
