"""Published weights that cannot be fetched (no network, a dead URL, a bad hash) are a one-line error naming the
model, where the weights come from, the file timm or visattn looks them up at first, and the tool's way to load a
local file instead; the named file and the named option work."""

import urllib.error

import pytest
import timm
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import save_file

import visattn
from tests.tools._runs import REID, SMALL, assert_one_line_error, tool
from visattn.engine.models import build_model
from visattn.errors import UserError
from visattn.tasks.classification.distill import load_teacher
from visattn.tasks.opened import open_model
from visattn.tasks.reid.task import ReIDTask, build_reid_model
from visattn.weights import WeightsUnavailable, pretrained_file

ONEDRIVE = "https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHEOoGkgwgQzEDlM/root/content"


def _raise(err):
    def fail(*args, **kwargs):
        raise err

    return fail


def test_a_visattn_url_download_that_fails_names_url_cache_file_and_init(tmp_path, monkeypatch, image_folder):
    monkeypatch.setattr(torch.hub, "download_url_to_file", _raise(urllib.error.URLError("Name or service not known")))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = tool("train.py", "--data", image_folder, "--model", "biformer_tiny", "--model-kwargs", SMALL,
                  "--pretrained", "--output", tmp_path / "run")
    cache = tmp_path / "torch" / "hub" / "checkpoints" / "biformer_tiny_in1k.pth"
    assert_one_line_error(result, "cannot fetch the pretrained weights of biformer_tiny from " + ONEDRIVE,
                          "(no connection: Name or service not known)", f"put the file at {cache}",
                          "or load a local file instead: --init FILE without --pretrained")
    assert not (tmp_path / "run").exists()
    cache.write_bytes(b"")  # the loader reads the named file and downloads nothing
    assert pretrained_file("biformer_tiny", "in1k") == str(cache)


@pytest.mark.parametrize("failure, reason", [
    (urllib.error.HTTPError(ONEDRIVE, 404, "Not Found", {}, None), "(HTTP 404 Not Found)"),
    (RuntimeError('invalid hash value (expected "d63eafa0", got "0badf00d")'),
     '(RuntimeError: invalid hash value (expected "d63eafa0", got "0badf00d"))'),
], ids=["dead URL", "bad hash"])
def test_a_dead_url_or_a_bad_hash_says_so(failure, reason, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", _raise(failure))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable) as err:
        pretrained_file("biformer_stl", "in1k")
    assert "biformer_stl from https://api.onedrive.com/" in str(err.value) and reason in str(err.value)
    assert not (tmp_path / "hub" / "checkpoints" / "biformer_stl_in1k.pth").exists()


def test_a_hub_download_that_fails_names_the_hub_cache_layout_and_that_layout_loads(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", _raise(LocalEntryNotFoundError("offline")))
    with pytest.raises(WeightsUnavailable) as err:
        build_model("resnet18", pretrained=True)
    message = str(err.value)
    folder = tmp_path / "hub" / "models--timm--resnet18.a1_in1k"
    assert "\n" not in message and "resnet18 from the Hugging Face hub (timm/resnet18.a1_in1k, model.safetensors)" \
        in message and "the hub cannot be reached and the file is not in its cache" in message
    assert f"put the file at {folder}/snapshots/local/model.safetensors with the line 'local' in " \
           f"{folder}/refs/main" in message

    monkeypatch.undo()  # the real hub client, offline, reading what the message says to write
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    weights = {k: torch.full_like(v, 0.5) for k, v in timm.create_model("resnet18").state_dict().items()}
    (folder / "snapshots" / "local").mkdir(parents=True)
    save_file(weights, str(folder / "snapshots" / "local" / "model.safetensors"))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("local")
    assert torch.equal(build_model("resnet18", pretrained=True).conv1.weight, weights["conv1.weight"])


def test_reid_names_init_and_init_takes_the_backbone_alone_with_attention_inserted(tmp_path, monkeypatch,
                                                                                  reid_folder):
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", _raise(LocalEntryNotFoundError("offline")))
    result = tool("train.py", *REID, "--data", reid_folder, "--pretrained", "--output", tmp_path / "run")
    assert_one_line_error(result, "cannot fetch the pretrained weights of resnet18 from the Hugging Face hub",
                          "--init FILE without --pretrained")

    plain = timm.create_model("resnet18", num_classes=0)
    torch.save(plain.state_dict(), tmp_path / "resnet18.pth")
    settings = {"pooling": "avg", "last_stride": 1, "attn": "psa_s", "attn_at": (3,), "attn_blocks": "last",
                "num_classes": 4}
    model = build_reid_model("resnet18", 4, {k: v for k, v in settings.items() if k != "num_classes"},
                             {"label_smoothing": 0.1, "margin": 0.3, "triplet_weight": 1.0, "center_weight": 0.0},
                             {})
    with pytest.warns(UserWarning, match=r"11 tensors of the modules .* \(layer3\.1\.gate, layer3\.1\.attention\."):
        ReIDTask.load_init(model, str(tmp_path / "resnet18.pth"))
    assert torch.equal(model.backbone.layer3[1].block.conv1.weight, plain.layer3[1].conv1.weight)
    assert torch.equal(model.backbone.layer1[0].conv1.weight, plain.layer1[0].conv1.weight)


def test_teacher_and_predict_name_their_own_local_file_options(monkeypatch):
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", _raise(LocalEntryNotFoundError("offline")))
    with pytest.raises(UserError, match=r"resnet18 from the Hugging Face hub .* --teacher FILE --teacher-model "
                                        r"resnet18$"):
        load_teacher("resnet18", None, 1000)
    with pytest.raises(UserError, match=r"resnet18 from the Hugging Face hub .* --weights FILE \(Python: "
                                        r"weights=FILE\)$"):
        open_model("resnet18", pretrained=True, device="cpu")


def test_python_users_get_the_timm_overlay_and_visattn_uris_the_file_path(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", _raise(urllib.error.URLError("offline")))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable, match=r"or load a local file instead: "
                                                 r"pretrained_cfg_overlay=dict\(file=FILE\)$"):
        timm.create_model("biformer_tiny", pretrained=True)
    with pytest.raises(WeightsUnavailable, match=r"a file path in place of visattn://biformer_tiny$"):
        visattn.load_pretrained(torch.nn.Linear(1, 1), "visattn://biformer_tiny")
