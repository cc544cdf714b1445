import pytest
import torch
import torch.nn as nn

from visattn import load_pretrained
from visattn.engine import checkpoint as ckpt_mod
from visattn.engine.checkpoint import atomic_save, read_training_checkpoint
from visattn.errors import UserError


def _half_written_save(error: BaseException):
    """A torch.save that writes part of the file, then raises ``error``."""
    def save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise error

    return save


@pytest.mark.parametrize("error, raised, message", [
    (KeyboardInterrupt(), KeyboardInterrupt, ""),
    (RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0"), UserError,
     r"cannot write .*last\.pth: torch\.save could not write the file \(\d+ MiB free"),  # a full disk
    (RuntimeError("another bug"), RuntimeError, "another bug"),
], ids=["interrupted", "full_disk", "other_error"])
def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch, error, raised, message):
    path = tmp_path / "last.pth"
    atomic_save({"epoch": 1}, str(path))
    monkeypatch.setattr(ckpt_mod.torch, "save", _half_written_save(error))
    with pytest.raises(raised, match=message):
        atomic_save({"epoch": 2}, str(path))
    monkeypatch.undo()
    assert torch.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_strict_load_names_missing_unexpected_and_reshaped_keys():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    state = {"0.weight": torch.zeros(3, 4), "0.bias": torch.zeros(5), "2.weight": torch.zeros(1)}
    with pytest.raises(UserError) as err:
        load_pretrained(model, state, strict=True, name="checkpoint x.pth")
    message = str(err.value)
    assert "\n" not in message
    assert "2 missing (1.weight, 1.bias)" in message
    assert "1 unexpected (2.weight)" in message
    assert "0.bias (5,) vs (3,)" in message


def test_load_checkpoint_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_training_checkpoint(str(tmp_path / "nope.pth"))
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty.pth is empty \(0 bytes\): its write was cut off"):
        read_training_checkpoint(str(tmp_path / "empty.pth"))
    (tmp_path / "junk.pth").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match="cannot read checkpoint .*junk.pth: not a PyTorch .* or safetensors file$"):
        read_training_checkpoint(str(tmp_path / "junk.pth"))
    torch.save({"state_dict": {"w": torch.ones(3)}}, tmp_path / "whole.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:300])
    with pytest.raises(UserError, match="cut.pth: the file is cut off or damaged"):
        read_training_checkpoint(str(tmp_path / "cut.pth"))
    torch.save({"state_dict": {}, "module": nn.Linear(2, 2)}, tmp_path / "pickled.pth")
    with pytest.raises(UserError, match=r"holds Python objects \(torch.nn.modules.linear.Linear\) beyond tensors"):
        read_training_checkpoint(str(tmp_path / "pickled.pth"))
    torch.save({"model": {}}, tmp_path / "official.pth")
    with pytest.raises(UserError, match="not a visattn training checkpoint"):
        read_training_checkpoint(str(tmp_path / "official.pth"))


def test_metric_files_are_strict_json_with_nan_as_null(tmp_path):
    import json

    from visattn.engine.checkpoint import atomic_write_json

    path = tmp_path / "metrics.json"
    atomic_write_json({"dice": float("nan"), "history": [{"auc": float("inf"), "epoch": 1}], "pair": (1.5, 2)}, path)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"dice": None, "history": [{"auc": None, "epoch": 1}], "pair": [1.5, 2]}


def test_atomic_writes_give_a_new_file_the_umask_mode_and_keep_an_existing_files(tmp_path):
    import os

    from visattn.engine.checkpoint import atomic_write_json

    umask = os.umask(0o022)
    try:
        atomic_write_json({"a": 1}, str(tmp_path / "new.json"))
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o644
        (tmp_path / "kept.json").write_text("{}")
        os.chmod(tmp_path / "kept.json", 0o640)
        atomic_write_json({"a": 2}, str(tmp_path / "kept.json"))
        assert (tmp_path / "kept.json").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(umask)


@pytest.mark.parametrize("links", [True, False], ids=["hard-link", "copy"])
def test_atomic_link_gives_the_sources_bytes_and_outlives_its_replacement(tmp_path, monkeypatch, links):
    import os

    from visattn.engine.checkpoint import atomic_link

    def unsupported(*args):
        raise OSError(95, "Operation not supported")

    if not links:  # a filesystem without hard links
        monkeypatch.setattr(os, "link", unsupported)
    best, last = tmp_path / "best.pth", tmp_path / "last.pth"
    atomic_save({"epoch": 1}, str(last))
    atomic_save({"epoch": 2}, str(best))
    atomic_link(str(best), str(last))
    assert last.read_bytes() == best.read_bytes()
    assert (os.stat(last).st_ino == os.stat(best).st_ino) == links
    atomic_save({"epoch": 3}, str(best))  # the next improvement replaces best.pth only
    assert torch.load(last)["epoch"] == 2 and torch.load(best)["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth", "last.pth"]  # no temporary file left
