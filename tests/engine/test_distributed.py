import torch

from visattn.engine.distributed import pick_device


def test_a_gpu_given_or_picked_becomes_the_current_device(monkeypatch):
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
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
