"""The model builder and the blank-input check every task uses."""

import pytest
import torch.nn as nn

from visattn.engine.models import build_model, check_model_input
from visattn.errors import UserError


def test_unknown_names_and_bad_arguments_are_one_line_errors():
    with pytest.raises(UserError, match="unknown model 'biformer_tny'; did you mean biformer_tiny"):
        build_model("biformer_tny")
    with pytest.raises(UserError, match="^cannot build biformer_tiny with"):
        build_model("biformer_tiny", n_win=2)


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
