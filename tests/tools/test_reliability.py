"""Runs that survive, tried as a user would: a run killed at a random moment and resumed ends as the uninterrupted
run with the same seed (the killed run in a process of its own, the others in the test's: one seed gives one result in
separate processes); option values that cannot work stop before anything is written; a folder holding a run is never
silently reused."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.tools._runs import REID, ROOT, SEG_SMALL, SMALL, assert_one_line_error, tool

EPOCHS = "3"


def _task_args(task: str, request) -> list[str]:
    """A tiny deterministic run of ``task`` with DataLoader workers (their seeding is part of what is checked)."""
    if task == "classification":
        data = request.getfixturevalue("image_folder")
        return ["--data", str(data), "--model", "biformer_tiny", "--model-kwargs", SMALL, "--img-size", "32",
                "--batch-size", "8", "--warmup-epochs", "1", "--mixup", "0.2", "--drop-path", "0.1"]
    if task == "medical-seg":
        data = request.getfixturevalue("vessel_folder")
        return ["--task", "medical-seg", "--data", str(data), "--model", "herseg", "--model-kwargs", SEG_SMALL,
                "--img-size", "32", "--batch-size", "4", "--inference", "padded", "--cutmix-prob", "0.5"]
    data = request.getfixturevalue("reid_folder")
    return [*REID, "--data", data, "--warmup-epochs", "1", "--milestones", "2"]


def _history(folder) -> list[dict]:
    history = json.loads((folder / "metrics.json").read_text())["history"]
    return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in history]


@pytest.mark.parametrize("task", ["classification", "medical-seg", "reid"])
def test_a_run_killed_at_a_random_moment_and_resumed_ends_as_the_uninterrupted_run(task, request, tmp_path):
    args = [*_task_args(task, request), "--epochs", EPOCHS, "--workers", "2", "--seed", "7"]
    full = tool("train.py", *args, "--output", str(tmp_path / "full"))  # in this process: no interpreter start-up
    assert full.returncode == 0, full.stderr[-2000:]

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "train.py"), *args, "--output",
                                str(killed)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "last.pth").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.5))  # anywhere in the next epoch: a step, evaluation or a checkpoint write
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(_history(killed)) < int(EPOCHS), "the run ended before it was killed"

    resumed = tool("train.py", "--resume", str(killed / "last.pth"))  # its own options and folder
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _history(killed) == _history(tmp_path / "full")
    assert not [f for f in os.listdir(killed) if f.endswith(".tmp")]

    again = tool("train.py", "--resume", str(killed / "last.pth"))
    assert_one_line_error(again, f"has done {EPOCHS} epochs and --epochs is {EPOCHS}: nothing to train")
    assert_one_line_error(tool("train.py", *args, "--output", str(killed)), "already holds a run",
                          f"--resume {killed / 'last.pth'}", "--overwrite")


@pytest.mark.parametrize("command, option, value, why", [
    (["train.py"], "--epochs", "0", "must be >= 1"),
    (["train.py"], "--batch-size", "0", "must be >= 1"),
    (["train.py"], "--lr", "-0.001", "must be > 0"),
    (["train.py"], "--lr", "fast", "not a number"),
    (["train.py"], "--drop-path", "2.0", "must be in [0, 1)"),
    (["train.py"], "--ema-decay", "1.5", "must be in (0, 1)"),
    (["train.py"], "--workers", "-1", "must be >= 0"),
    (["train.py", "--task", "medical-seg"], "--jitter", "0.2,0.2", "expected BRIGHTNESS,CONTRAST,SATURATION,HUE"),
    (["train.py", "--task", "reid"], "--instances", "1", "must be >= 2 (the triplet loss needs two images"),
    (["train.py", "--task", "reid"], "--batch-size", "10",
     "a PK batch is identities x --instances 4 images: use a multiple of 4, e.g. 8"),  # it trained on 8, unsaid
    (["train.py", "--task", "reid"], "--milestones", "5,2", "epochs must increase, e.g. 40,90"),
    (["eval.py", "--task", "medical-seg", "--checkpoint", "best.pth"], "--threshold", "1.5", "must be in (0, 1)"),
])
def test_an_option_value_that_cannot_work_stops_before_anything_is_written(command, option, value, why, tmp_path):
    out = tmp_path / "out"
    result = tool(*command, option, value, "--output", str(out))
    assert_one_line_error(result, f"error: {option} {value}: {why}")
    assert not out.exists()


@pytest.mark.parametrize("command", [
    ["train.py", "--data", "{images}", "--model", "biformer_tiny", "--model-kwargs", SMALL, "--img-size", "32"],
    ["predict.py", "test_biformer", "{image}"],
    ["export.py", "test_biformer"],
    ["visualize.py", "test_biformer", "{image}"],
    ["benchmark.py", "--models", "test_biformer"],
    ["reid_placements.py", "--placements", "plain"],
    ["eval.py", "--task", "medical-seg", "--checkpoint", "best.pth"],
    ["eval.py", "--task", "reid", "--checkpoint", "best.pth"],
], ids=lambda command: " ".join(command[:3 if command[1] == "--task" else 1]))
def test_an_output_folder_that_cannot_be_made_stops_every_tool_in_one_line(command, image_folder, tmp_path):
    """--output a file, or a folder under a file: one line naming the file, before any work, nothing written."""
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    image = next((image_folder / "train" / "bright").glob("*.png"))
    argv = [{"{images}": str(image_folder), "{image}": str(image)}.get(a, a) for a in command]
    assert_one_line_error(tool(*argv, "--output", str(taken)), f"--output {taken} is a file")
    assert_one_line_error(tool(*argv, "--output", str(taken / "run")),
                          f"--output {taken / 'run'} lies under {taken}, which is a file")
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"] and taken.read_text() == "mine"


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    result = tool("train.py", "--resume", str(tmp_path / "missing.pth"), "--debug")
    assert result.returncode == 1 and "Traceback" in result.stderr and "does not exist" in result.stderr


def test_an_error_raised_in_a_dataloader_worker_is_reported_as_its_own_one_line():
    from torch.utils.data import DataLoader, Dataset

    from visattn.errors import UserError, first_line

    class Broken(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise UserError("cannot read /data/x.png: image file is truncated")

    with pytest.raises(UserError) as err:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert "Original Traceback" in str(err.value)
    assert first_line(err.value) == "cannot read /data/x.png: image file is truncated"
