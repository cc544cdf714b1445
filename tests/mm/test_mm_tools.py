"""tools/train.py CONFIG and tools/eval.py CONFIG CHECKPOINT, as a user runs them: the commands' mains as their
console entry points run them (one-line errors, exit codes), in this process; tools/eval.py once as a script."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.mm.synthetic import make_ade, make_coco
from tests.mm.test_det_seg_pipelines import DET, SEG, _det_cfg, _seg_cfg
from tests.tools._runs import ROOT, assert_one_line_error, tool
from visattn.cli import eval as eval_cli
from visattn.cli import run
from visattn.cli import train as train_cli
from visattn.errors import UserError
from visattn.mm.runner import build_runner, train


def _command(cli, *argv, monkeypatch, capsys) -> subprocess.CompletedProcess:
    """``cli.main(argv)`` run as its console command (``visattn.cli.run``) runs it: exit code, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", [f"{cli.__name__}", *argv])
    with pytest.raises(SystemExit) as exit_:
        run(lambda: cli.main(list(argv)))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, exit_.value.code, captured.out, captured.err)


def test_train_then_eval_a_detection_config(tmp_path, monkeypatch, capsys):
    make_coco(str(tmp_path / "coco"))
    retinanet = next(p for p in DET if "retinanet_biformer-s" in p)
    cfg = _det_cfg(retinanet, tmp_path / "unused", tmp_path / "coco")
    config = tmp_path / "retinanet_small_run.py"
    cfg.dump(str(config))
    work_dir = tmp_path / "work"
    result = _command(train_cli, str(config), "--work-dir", str(work_dir), "--cfg-options", "train_cfg.max_iters=2",
                      monkeypatch=monkeypatch, capsys=capsys)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"work dir: {work_dir}" in result.stdout
    result = tool("eval.py", str(config), str(work_dir / "iter_2.pth"), "--work-dir", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert "coco/bbox_mAP" in metrics


def test_runners_in_one_process_log_into_their_own_folders(tmp_path):
    make_ade(str(tmp_path / "ade"))
    first, second = (build_runner(_seg_cfg(SEG[0], tmp_path / name, tmp_path / "ade")) for name in ("a", "b"))
    assert first.experiment_name != second.experiment_name
    for runner, name in ((first, "a"), (second, "b")):
        save_dir = runner.visualizer._vis_backends["LocalVisBackend"]._save_dir
        assert save_dir.startswith(str(tmp_path / name)), save_dir
        log_files = [h.baseFilename for h in runner.logger.handlers if hasattr(h, "baseFilename")]
        assert log_files and all(f.startswith(str(tmp_path / name)) for f in log_files), log_files
        assert runner.message_hub.instance_name == runner.experiment_name


def test_config_errors_are_one_line(tmp_path, monkeypatch, capsys):
    result = _command(train_cli, str(tmp_path / "missing.py"), monkeypatch=monkeypatch, capsys=capsys)
    assert_one_line_error(result, "config", "does not exist")
    result = _command(eval_cli, DET[0], str(tmp_path / "missing.pth"), monkeypatch=monkeypatch, capsys=capsys)
    assert_one_line_error(result, "checkpoint", "does not exist")
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    result = _command(train_cli, DET[0], "--work-dir", str(taken / "run"), monkeypatch=monkeypatch, capsys=capsys)
    assert_one_line_error(result, f"--work-dir {taken / 'run'} lies under {taken}, which is a file")


SEG_CONFIG = os.path.join(ROOT, "configs", "seg", "fpn_biformer-s_4xb8-80k_ade20k-512x512.py")
MISTAKES = {
    "unknown arch": ("model = dict(backbone=dict(arch='smal'))", "there is no model 'biformer_smal': check the "
                     "backbone's arch (did you mean biformer_small"),
    "misspelled type": ("model = dict(backbone=dict(type='BiFormerBackbon'))",
                        "type 'BiFormerBackbon' is not a registered mmseg model; did you mean BiFormerBackbone?"),
    "unknown key": ("model = dict(backbone=dict(n_wn=8))", "BiFormerBackbone.__init__() got an unexpected keyword "
                    "argument 'n_wn'; check that key in the config"),
    "argument the model refuses": ("model = dict(backbone=dict(n_win=0))", "cannot build biformer_small with "
                                   "{'n_win': 0, 'drop_path_rate': 0.15}: n_win must be >= 1, got 0"),
    "shipped config without its dataset": ("", "data/ade/ADEChallengeData2016/images/training does not exist: put "
                                           "the dataset there, or point the config at it, e.g. --cfg-options "
                                           "train_dataloader.dataset.data_root=DIR"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_config_mistake_is_one_error_naming_the_config(mistake, tmp_path):
    body, expected = MISTAKES[mistake]
    config = tmp_path / "mine.py"
    config.write_text(f"_base_ = [{SEG_CONFIG!r}]\n{body}\n")
    with pytest.raises(UserError) as err:
        train(str(config), str(tmp_path / "work"))
    assert str(err.value).startswith(f"config {config}: {expected}"), str(err.value)


def test_config_file_mistakes_are_one_line_with_the_traceback_behind_debug(tmp_path, monkeypatch, capsys):
    (tmp_path / "no_base.py").write_text("_base_ = ['./missing.py']\n")
    result = _command(train_cli, str(tmp_path / "no_base.py"), monkeypatch=monkeypatch, capsys=capsys)
    assert_one_line_error(result, f"config {tmp_path / 'no_base.py'}: cannot find", "missing.py: check the _base_")
    broken = str(tmp_path / "broken.py")
    (tmp_path / "broken.py").write_text("model = dict(\n")
    result = _command(train_cli, broken, monkeypatch=monkeypatch, capsys=capsys)
    assert_one_line_error(result, "broken.py: line 1: '(' was never closed")
    monkeypatch.setattr(sys, "argv", ["train.py", broken, "--debug"])
    with pytest.raises(UserError) as err:  # uncaught: Python prints its traceback, the SyntaxError chained
        run(lambda: train_cli.main([broken, "--debug"]))
    assert isinstance(err.value.__cause__, SyntaxError)


@pytest.mark.parametrize("cli", [train_cli, eval_cli], ids=["train", "eval"])
@pytest.mark.parametrize("pair, expected", [
    ("model.backbone.n_win", "--cfg-options: expected KEY=VALUE pairs, got 'model.backbone.n_win'"),
    ("=8", "--cfg-options: expected KEY=VALUE pairs, got '=8'"),
    ("model.backbone.topks=[1,4", "--cfg-options model.backbone.topks=[1,4: Imbalanced brackets exist in [1,4"),
])
def test_a_malformed_cfg_option_is_one_line(cli, pair, expected, monkeypatch, capsys):
    checkpoint = ["work_dirs/epoch_12.pth"] if cli is eval_cli else []
    result = _command(cli, SEG_CONFIG, *checkpoint, "--cfg-options", "train_cfg.max_iters=2", pair,
                      monkeypatch=monkeypatch, capsys=capsys)
    assert_one_line_error(result, expected)


def test_a_checkpoint_of_something_else_is_one_line(tmp_path, monkeypatch, capsys):
    """tools/eval.py and --resume take an mmengine checkpoint of the config's model: mmengine itself loads any file
    leniently (a classification checkpoint evaluated with the model's initialisation, a warning in the log)."""
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    torch.save({"model": "biformer_small", "state_dict": {"stem.conv1.weight": torch.zeros(1)}},
               tmp_path / "classifier.pth")
    work = ["--work-dir", str(tmp_path / "work")]
    result = _command(eval_cli, SEG_CONFIG, str(tmp_path / "notes.pth"), *work, monkeypatch=monkeypatch, capsys=capsys)
    assert_one_line_error(result, f"cannot read checkpoint {tmp_path / 'notes.pth'}: not a PyTorch")
    for command in ([eval_cli, SEG_CONFIG, str(tmp_path / "classifier.pth")],
                    [train_cli, SEG_CONFIG, "--resume", str(tmp_path / "classifier.pth")]):
        result = _command(*command, *work, monkeypatch=monkeypatch, capsys=capsys)
        assert_one_line_error(result, f"checkpoint {tmp_path / 'classifier.pth'} is not a checkpoint of {SEG_CONFIG}'s "
                                      "model: 579 of its 579 weights are missing (backbone.model.stem.conv1.weight")
    result = _command(train_cli, SEG_CONFIG, "--resume", str(tmp_path / "gone.pth"), *work, monkeypatch=monkeypatch,
                      capsys=capsys)
    assert_one_line_error(result, f"checkpoint {tmp_path / 'gone.pth'} to resume from does not exist")


def test_a_missing_load_from_is_one_line_before_anything_is_built(tmp_path, monkeypatch, capsys):
    """mmengine reads a config's load_from after building the model and the data, and fails with a stack trace."""
    gone = tmp_path / "coco_pretrained.pth"
    result = _command(train_cli, SEG_CONFIG, "--work-dir", str(tmp_path / "work"), "--cfg-options",
                      f"load_from={gone}", monkeypatch=monkeypatch, capsys=capsys)
    assert_one_line_error(result, f"config {SEG_CONFIG}: load_from {gone} does not exist",
                          "load_from=None to train from the initialisation")
    assert not (tmp_path / "work").exists()
