"""Frozen weights (a prompt-tuned TCPA's backbone) are saved by reference to their source, the --init file with its
SHA-256 or the model's published weights, unless --save-frozen; resume, eval, predict (open_model), convert and
--init restore them, and a source that is gone or changed is a one-line error."""

import json
import os
import shutil

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.tools._runs import assert_one_line_error, tool
from visattn.errors import UserError
from visattn.tasks.opened import open_model


def _train(data, output, *extra, epochs=1):
    result = tool("train.py", "--data", data, "--output", output, "--model", "test_tcpa", "--img-size", "32",
                  "--epochs", str(epochs), "--batch-size", "4", "--workers", "0", "--warmup-epochs", "0", *extra)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two classes, four training and two validation images each."""
    root = tmp_path_factory.mktemp("frozen_images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for label, level in (("bright", 220), ("dark", 30)):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(level + rng.normal(0, 10, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def runs(images, tmp_path_factory):
    """The same run of test_tcpa from a weights file, with its frozen backbone by reference and with
    --save-frozen."""
    image_folder = images
    root = tmp_path_factory.mktemp("frozen")
    vit = timm.create_model("test_tcpa")
    torch.save(vit.state_dict(), root / "vit.pth")
    by_reference = _train(image_folder, root / "ref", "--init", root / "vit.pth")
    _train(image_folder, root / "full", "--init", root / "vit.pth", "--save-frozen")
    return root, vit, by_reference


def test_the_checkpoint_leaves_the_frozen_backbone_to_its_source_and_says_so(runs):
    root, vit, result = runs
    frozen = [n for n, p in timm.create_model("test_tcpa", num_classes=2).named_parameters() if not p.requires_grad]
    ref, full = (torch.load(root / run / "last.pth", weights_only=True) for run in ("ref", "full"))
    assert set(ref["frozen"]["sha256"]) == set(frozen) and not set(frozen) & set(ref["state_dict"])
    assert ref["frozen"]["init"] == str(root / "vit.pth") and not ref["frozen"]["pretrained"]
    assert full.get("frozen") is None and set(frozen) <= set(full["state_dict"])
    assert os.path.getsize(root / "ref" / "last.pth") < os.path.getsize(root / "full" / "last.pth") / 2
    assert f"checkpoints keep {len(frozen)} frozen tensors (0.3 MiB) by reference to --init {root / 'vit.pth'} " \
           f"(SHA-256 " in result.stdout and "--save-frozen keeps them in the checkpoints" in result.stdout


def test_eval_predict_and_convert_restore_the_weights_the_run_trained(runs, tmp_path):
    root, _, _ = runs
    restored, full = (open_model(str(root / run / "best.pth"), device="cpu").model.state_dict()
                      for run in ("ref", "full"))
    assert restored.keys() == full.keys() and all(torch.equal(restored[k], full[k]) for k in full)
    scored = [json.loads(tool("eval.py", "--checkpoint", root / run / "best.pth", "--workers", "0")
                         .stdout.strip().splitlines()[-1]) for run in ("ref", "full")]
    assert scored[0] == scored[1]
    converted = tool("convert.py", "--checkpoint", root / "ref" / "best.pth", "--output", tmp_path / "c.safetensors")
    assert converted.returncode == 0, converted.stderr
    tensors = load_file(tmp_path / "c.safetensors")
    assert tensors.keys() == full.keys() and all(torch.equal(tensors[k], full[k]) for k in full)


def test_resume_and_init_restore_them_too(runs, tmp_path):
    root, _, _ = runs
    shutil.copytree(root / "ref", tmp_path / "ref")
    resumed = tool("train.py", "--resume", tmp_path / "ref" / "last.pth", "--epochs", "2")
    assert resumed.returncode == 0 and "epoch 2/2" in resumed.stdout, resumed.stderr
    from visattn.engine.task import read_weights

    weights = read_weights(str(tmp_path / "ref" / "last.pth"))
    backbone = open_model(str(root / "full" / "last.pth"), device="cpu").model.state_dict()
    assert torch.equal(weights["blocks.0.attn.qkv.weight"], backbone["blocks.0.attn.qkv.weight"])


def test_a_source_that_is_gone_or_changed_is_a_one_line_error(runs, tmp_path):
    root, vit, _ = runs
    shutil.copytree(root / "ref", tmp_path / "ref")
    checkpoint = tmp_path / "ref" / "best.pth"
    os.rename(root / "vit.pth", root / "vit.moved")
    try:
        result = tool("eval.py", "--checkpoint", checkpoint, "--workers", "0")
        assert_one_line_error(result, f"{checkpoint}: the frozen weights come from --init {root / 'vit.pth'}, which "
                                      "does not exist; put that file back")
        torch.save({k: v + 1 for k, v in vit.state_dict().items()}, root / "vit.pth")
        result = tool("convert.py", "--checkpoint", checkpoint, "--output", tmp_path / "c.safetensors")
        assert_one_line_error(result, "which has changed since the run (SHA-256 ", "put the run's file back")
        with pytest.raises(UserError, match="saves its frozen weights by reference"):
            import visattn

            visattn.load_pretrained(timm.create_model("test_tcpa", num_classes=2), str(checkpoint))
    finally:
        os.replace(root / "vit.moved", root / "vit.pth")


def test_published_weights_are_a_source_too(images, tmp_path):
    """--pretrained through a local copy of the published weights (timm's pretrained_cfg_overlay)."""
    torch.save(timm.create_model("test_tcpa").state_dict(), tmp_path / "published.pth")
    overlay = json.dumps({"pretrained_cfg_overlay": {"file": str(tmp_path / "published.pth")}})
    result = _train(images, tmp_path / "run", "--pretrained", "--model-kwargs", overlay)
    assert "by reference to the published weights of test_tcpa" in result.stdout
    ckpt = torch.load(tmp_path / "run" / "best.pth", weights_only=True)
    assert ckpt["frozen"]["pretrained"] and ckpt["frozen"]["init"] is None
    model = open_model(str(tmp_path / "run" / "best.pth"), device="cpu").model
    assert torch.equal(model.patch_embed.proj.weight, torch.load(tmp_path / "published.pth")["patch_embed.proj.weight"])
    os.remove(tmp_path / "published.pth")
    assert_one_line_error(tool("eval.py", "--checkpoint", tmp_path / "run" / "best.pth"),
                          f"{tmp_path / 'run' / 'best.pth'}: checkpoint {tmp_path / 'published.pth'} does not exist")
