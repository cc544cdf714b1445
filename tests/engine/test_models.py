"""The model builder and the blank-input check every task uses."""

import pytest
import torch
import torch.nn as nn

from visattn.engine.models import build_model, check_model_input, sized_model_kwargs
from visattn.errors import UserError


def test_unknown_names_and_bad_arguments_are_one_line_errors():
    with pytest.raises(UserError, match="unknown model 'biformer_tny'; did you mean biformer_tiny"):
        build_model("biformer_tny")
    with pytest.raises(UserError, match="^cannot build biformer_tiny with"):
        build_model("biformer_tiny", n_win=2)
    # timm's own error was "RuntimeError: Invalid pretrained tag (in1k) for lamamba_tiny."
    with pytest.raises(UserError, match=r"^lamamba_tiny has no published weights for pretrained=True \(--pretrained, "
                                        r"a --teacher named by model\) to load: use a weights file"):
        build_model("lamamba_tiny", pretrained=True)


def test_blank_input_check_reports_the_first_line_and_a_wrong_output_shape():
    class Picky(nn.Linear):
        def forward(self, x):
            raise ValueError("needs a multiple of 7\nmore detail")

    with pytest.raises(UserError, match="^image size 8 does not work with picky: needs a multiple of 7$"):
        check_model_input(Picky(1, 1), 8, "picky")
    pool = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1))
    check_model_input(pool, 8, "pool")
    with pytest.raises(UserError, match=r"^pool returns \(1, 2, 1, 1\) for a \(1, 3, 8, 8\) image; expected "
                                        r"\(1, 2, 8, 8\)$"):
        check_model_input(pool, 8, "pool", (1, 2, 8, 8))
    assert pool.training  # the check leaves the mode as it was


def test_a_model_built_for_one_input_size_is_built_for_the_runs_size_and_says_so():
    kwargs, line = sized_model_kwargs("vit_tiny_patch16_224", {"depth": 1}, (96, 48))
    assert kwargs == {"depth": 1, "img_size": [96, 48]}
    assert line == ("vit_tiny_patch16_224 is built for 224x224 images; this run builds it for 96x48 (img_size=[96, "
                    "48]; published position embeddings are resampled to it)")
    model = build_model("vit_tiny_patch16_224", num_classes=0, **kwargs)
    check_model_input(model, (96, 48), "vit")  # failed before: "Input height (96) doesn't match model (224)"
    assert model(torch.zeros(2, 3, 96, 48)).shape == (2, 192)
    assert sized_model_kwargs("vit_tiny_patch16_224", {"depth": 1}, 64)[0]["img_size"] == 64
    for name, given, size in [("vit_tiny_patch16_224", {}, 224),  # its own size
                              ("vit_tiny_patch16_224", {"img_size": 128}, 64),  # the user's img_size stays
                              ("resnet18", {}, 64),  # any size, no img_size argument
                              ("test_inline_deit", {}, 48)]:  # visattn's ViTs take any size
        assert sized_model_kwargs(name, given, size) == (given, None), name
