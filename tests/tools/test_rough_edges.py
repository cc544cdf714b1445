"""What a new user ran into, each now a one-line error, a line that says what happens, or a warning that names it:
a recipe given with another model, the demo's reduced model named as such (and kept off another model), training
images smaller than the crop, and progress while a step or a set-up check is slow."""

import io
import os
import re
import time
import warnings

import pytest
import torch

import visattn.tasks  # noqa: F401  (registers the tasks)
from tests.tools._runs import assert_one_line_error, tool
from visattn.cli import parse_task_args
from visattn.cli.train import add_shared_arguments
from visattn.engine.fit import assemble_config
from visattn.engine.progress import Progress
from visattn.engine.task import get_task
from visattn.errors import UserError
from visattn.tasks.medical.data import SegmentationTrainSet, SyntheticVessels
from visattn.tasks.medical.task import MedicalConfig, MedicalTask


def _config(argv, tmp_path):
    args, task = parse_task_args([*argv, "--output", str(tmp_path)], "", add_shared_arguments, "train")
    given = {k: v for k, v in vars(args).items() if k not in ("task", "debug", "demo")}
    return assemble_config(task, given, bool(args.demo))


def test_a_recipe_trains_its_own_model_and_says_so(tmp_path, capsys):
    cfg = _config(["--task", "medical-seg", "--recipe", "fsgnet", "--data", "synthetic-vessels"], tmp_path)
    assert cfg.model == "fsgnet" and cfg.model_kwargs == {} and (cfg.img_size, cfg.lr) == (288, 1e-3)
    demo = _config(["--task", "medical-seg", "--recipe", "fsgnet"], tmp_path)  # the demo's HER-Seg settings stay off
    assert demo.model == "fsgnet" and demo.model_kwargs == {}
    assert "medical-seg demo recipe: fsgnet on synthetic-vessels" in capsys.readouterr().out
    variant = _config(["--task", "medical-seg", "--recipe", "fsgnet", "--model", "fsgnet_nogrm", "--data", "x"],
                      tmp_path)
    assert variant.model == "fsgnet_nogrm"
    cfg = MedicalConfig(output=str(tmp_path), model="test_fsgnet", recipe="fsgnet", img_size=32, batch_size=2,
                        lr=1e-3, weight_decay=0.05, warmup_epochs=20, data="synthetic-vessels:size=24,train=1,val=1")
    with pytest.warns(UserWarning, match=r"1 of 1 training images are smaller than the 32x32 crop \(smallest 24x24\)"):
        MedicalTask(cfg).build(torch.device("cpu"), 0, 1)
    assert capsys.readouterr().out.strip() == ("medical-seg recipe fsgnet: FSG-Net's official training on test_fsgnet "
                                               "(32x32 crops, batch 2, lr 0.001, weight decay 0.05, 20 warm-up "
                                               "epochs)")


def test_a_recipe_with_another_model_is_a_one_line_error(tmp_path):
    result = tool("train.py", "--task", "medical-seg", "--recipe", "fsgnet", "--model", "herseg", "--output",
                  tmp_path)
    assert_one_line_error(result, "--recipe fsgnet is FSG-Net's official training, for fsgnet and its variants; "
                                  "--model herseg is another network: drop --model to train fsgnet, or drop --recipe")
    with pytest.raises(UserError, match="--model herseg is another network"):
        MedicalConfig(output="x", recipe="fsgnet")  # the Python default model is not the recipe's


@pytest.mark.parametrize("task, description", [
    ("classification", "biformer_tiny (the demo's reduced configuration: depths 1-1-2-1, dims 32-64-128-256, "
                       "n_win 4)"),
    ("medical-seg", "herseg (the demo's reduced configuration: embed_dim 64, depths 1-1-2-1, num_heads 2-2-4-4, "
                    "decoder_dim 64, decoder_heads 4, decoder_depth 1, drop_path_rate 0.0)"),
    ("reid", "resnet18"),
])
def test_the_demo_names_its_reduced_model_and_another_model_is_built_as_it_is(task, description, tmp_path):
    cfg = assemble_config(get_task(task), {"output": str(tmp_path)})
    assert cfg.model_description() == description
    other = assemble_config(get_task(task), {"output": str(tmp_path), "model": "resnet34"})
    assert other.model_kwargs == {} and other.model_description() == "resnet34"
    given = assemble_config(get_task(task), {"output": str(tmp_path), "model": "resnet34",
                                             "model_kwargs": {"drop_rate": 0.1}})
    assert given.model_description() == "resnet34 (model arguments: drop_rate 0.1)"


def test_training_images_smaller_than_the_crop_are_said_once():
    with pytest.warns(UserWarning) as caught:
        SegmentationTrainSet(SyntheticVessels(3, (40, 24)), crop=32, scale=0.5)
    assert len(caught) == 1 and str(caught[0].message).startswith(
        "3 of 3 training images are smaller than the 32x32 crop (smallest 12x20 after --scale 0.5): their crops are "
        "zero-padded to 32x32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # images as large as the crop: nothing to say
        SegmentationTrainSet(SyntheticVessels(1, 32), crop=32)


def _slow(steps, seconds):
    for i in range(steps):
        time.sleep(seconds)
        yield i


def test_steps_that_end_in_time_are_reported_by_periodic_lines_only():
    stream = io.StringIO()
    bar = Progress(_slow(40, 0.05), "train epoch 1/3", total=40, enabled=True, interval=1000, seconds=0.4,
                   stream=stream)
    for _ in bar:
        bar.update(4, loss=0.5)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 3 and all(re.match(r"train epoch 1/3  step \d+/40 \(\d+%\)  loss 0.5000", line)
                                   for line in lines), lines


def test_a_step_slower_than_the_reporting_period_is_reported_while_it_runs():
    stream = io.StringIO()
    bar = Progress(_slow(2, 0.6), "train epoch 1/3", total=2, enabled=True, interval=50, seconds=0.25, stream=stream)
    for _ in bar:
        bar.update(4, loss=0.5)
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(r"train epoch 1/3  step 0/2 \(0%\)  still in step 1 \(0:00:00 so far\)", lines[0]), lines
    assert any(line.startswith("train epoch 1/3  step 1/2 (50%)  still in step 2") for line in lines), lines
    assert lines[-1].startswith("train epoch 1/3  step 2/2 (100%)  loss 0.5000"), lines
    quick = io.StringIO()
    checks = Progress(range(3), "checking 3 image files", enabled=True, interval=4, final=False, stream=quick)
    for _ in checks:
        checks.update(1)
    assert quick.getvalue() == ""  # a quick set-up check says nothing


def test_a_backend_environment_that_cannot_work_stops_every_tool_in_one_line(tmp_path):
    assert_one_line_error(tool("train.py", "--output", str(tmp_path), env={"VISATTN_BACKEND": "cuda"}),
                          "$VISATTN_BACKEND=cuda is no backend: use one of torch, triton, or unset it")
    if not torch.cuda.is_available():
        assert_one_line_error(tool("predict.py", "test_biformer", str(tmp_path), "--output", str(tmp_path / "p"),
                                   env={"VISATTN_BACKEND": "triton", "TRITON_INTERPRET": "0"}),
                              "$VISATTN_BACKEND=triton forces the Triton kernels, which need a CUDA device")
    assert not os.listdir(tmp_path)
