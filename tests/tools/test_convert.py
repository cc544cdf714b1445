import json

import timm
import torch
from safetensors.torch import load_file

from tests.backbones.test_biformer import _randomized, official_state_dict
from tests.tools._runs import assert_one_line_error, script, tool


def convert(*args):
    return tool("convert.py", *args)


def test_official_checkpoint_converts_to_safetensors(tmp_path):
    source = _randomized("biformer_tiny")
    torch.save({"model": official_state_dict(source)}, tmp_path / "official.pth")
    out = tmp_path / "biformer_tiny.safetensors"
    result = script("convert.py", "--model", "biformer_tiny", "--checkpoint", str(tmp_path / "official.pth"),
                    "--output", str(out))
    assert result.returncode == 0, result.stderr
    model = timm.create_model("biformer_tiny").eval()
    model.load_state_dict(load_file(out))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))


def test_checkpoint_of_another_model_names_the_keys(tmp_path):
    torch.save({"model": official_state_dict(timm.create_model("biformer_tiny"))}, tmp_path / "tiny.pth")
    result = convert("--model", "biformer_small", "--checkpoint", str(tmp_path / "tiny.pth"),
                     "--output", str(tmp_path / "x.safetensors"))
    assert_one_line_error(result, "does not match the model", "missing (stages.0.blocks.2.")
    assert not (tmp_path / "x.safetensors").exists()
    result = convert("--model", "biformer_tiny", "--checkpoint", str(tmp_path / "tiny.pth"),
                     "--output", str(tmp_path / "x.pth"))  # safetensors content under a name torch.load would try
    assert_one_line_error(result, f"--output {tmp_path / 'x.pth'}: the file is written in the safetensors format; "
                                  f"name it {tmp_path / 'x'}.safetensors")
    assert not (tmp_path / "x.pth").exists()


def test_fine_tuned_prompt_and_sparsifiner_checkpoints_convert_with_their_classes(tmp_path):
    from tests.backbones import test_sparsifiner, test_tcpa

    cases = [("tcpa_vit_base_patch16_224", test_tcpa.SMALL,
              lambda: test_tcpa._randomized(test_tcpa._model(num_classes=5)).eval(), test_tcpa.official_state_dict),
             ("sparsifiner_deit_small", test_sparsifiner.SMALL,
              lambda: test_sparsifiner._randomized(num_classes=7), lambda m: dict(m.state_dict()))]
    for name, kwargs, build, official in cases:
        source = build()
        torch.save({"model": official(source)}, tmp_path / f"{name}.pth")
        out = tmp_path / f"{name}.safetensors"
        result = convert("--model", name, "--model-kwargs", json.dumps(kwargs), "--checkpoint",
                         str(tmp_path / f"{name}.pth"), "--output", str(out))
        assert result.returncode == 0, result.stderr
        model = timm.create_model(name, num_classes=source.num_classes, **kwargs).eval()
        model.load_state_dict(load_file(out))
        x = torch.randn(1, 3, 224, 224)
        with torch.no_grad():
            torch.testing.assert_close(model(x), source(x))


def test_the_files_model_options_give_the_classifier_it_holds(tmp_path):
    """A fine-tuned checkpoint's classes go into the file's model options; asking for other classes is an error
    (the converted file keeps the checkpoint's classifier), not options that contradict the tensors."""
    from safetensors import safe_open

    torch.save(timm.create_model("test_biformer", num_classes=7).state_dict(), tmp_path / "seven.pth")
    out = tmp_path / "seven.safetensors"
    result = convert("--model", "test_biformer", "--checkpoint", str(tmp_path / "seven.pth"), "--output", str(out))
    assert result.returncode == 0 and 'model options {"num_classes": 7}' in result.stdout, result.stderr
    with safe_open(out, "pt") as f:
        assert json.loads(f.metadata()["model_kwargs"]) == {"num_classes": 7}
        assert f.get_slice("head.fc.weight").get_shape()[0] == 7
    result = convert("--model", "test_biformer", "--model-kwargs", '{"num_classes": 5}', "--checkpoint",
                     str(tmp_path / "seven.pth"), "--output", str(tmp_path / "five.safetensors"))
    assert_one_line_error(result, "asks for num_classes=5, but", "classifier has 7 classes", "leave num_classes out")
    assert not (tmp_path / "five.safetensors").exists()
