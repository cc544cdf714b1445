"""The command-line tools end to end, as a user runs them."""

import inspect
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tools._runs import REID, SEG_SMALL, SMALL, assert_one_line_error, script, tool, torchrun_train


@pytest.fixture(scope="module")
def trained_run(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    args = ["--data", str(image_folder), "--output", str(out), "--model", "biformer_tiny", "--model-kwargs", SMALL,
            "--img-size", "32", "--epochs", "2", "--batch-size", "8", "--workers", "0", "--lr", "1e-3",
            "--warmup-epochs", "0", "--ema-decay", "0.9"]
    result = tool("train.py", *args)
    assert result.returncode == 0, result.stderr
    return out, args, result


def test_training_writes_checkpoints_metrics_curves_and_tensorboard(trained_run):
    out, _, result = trained_run
    assert "skipped 1 unreadable image file(s)" in result.stderr and "corrupt.png" in result.stderr
    description = ("biformer_tiny (model arguments: depths 1-1-1-1, dims 16-32-64-128, n_win 2, topks 1-2-4-None, "
                   "head_dim 16)")
    assert f"{description}: trainable 328,130 of 328,130 parameters (100.00%)" in result.stdout
    assert {"last.pth", "best.pth", "metrics.json", "curves.png", "tensorboard"} <= set(os.listdir(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["model"] == "biformer_tiny" and metrics["best"]["epoch"] in (1, 2)
    assert metrics["model_description"] == description
    assert metrics["parameters"] == {"total": 328130, "trainable": 328130}
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out / "tensorboard"))
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["epoch"] == 1 and "optimizer" in last and "state_dict_ema" in last
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_resume_continues_where_training_stopped(trained_run, tmp_path):
    out, args, _ = trained_run
    resumed = tmp_path / "resumed"
    args = [a if a != str(out) else str(resumed) for a in args]
    args[args.index("--epochs") + 1] = "4"
    args[args.index("--lr") + 1] = "2e-3"
    result = tool("train.py", *args, "--weight-decay", "0.01", "--resume", str(out / "last.pth"))
    assert result.returncode == 0, result.stderr
    assert "epoch 1/4" not in result.stdout and "epoch 4/4" in result.stdout
    assert f"resuming {out / 'last.pth'} after epoch 2 of 4; options changed from the run: " in result.stdout
    for change in ("epochs 2 -> 4", "lr 0.001 -> 0.002", "weight_decay 0.05 -> 0.01", f"output {out} -> {resumed}"):
        assert change in result.stdout.split("options changed from the run: ")[1].splitlines()[0], change
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4]
    # the new options' per-step cosine (no warm-up, min_lr 1e-6) three quarters through: not the old schedule's end
    expected = 1e-6 + 0.5 * (2e-3 - 1e-6) * (1 + np.cos(np.pi * 3 / 4))
    assert metrics["history"][2]["lr"] == pytest.approx(expected, rel=1e-6)
    groups = torch.load(resumed / "last.pth", weights_only=True)["optimizer"]["param_groups"]
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.01] and {g["lr"] for g in groups} == {1e-6}


def test_ctrl_c_names_the_checkpoint_to_resume_from(trained_run, tmp_path, monkeypatch):
    import visattn.engine.fit as fit

    out, args, _ = trained_run
    stopped = tmp_path / "stopped"
    args = [a if a != str(out) else str(stopped) for a in args]
    args[args.index("--epochs") + 1] = "4"
    train_pass = fit.train_pass

    def interrupted_in_epoch_4(*a, **kw):
        if inspect.signature(train_pass).bind(*a, **kw).arguments["epoch"] == 3:
            raise KeyboardInterrupt
        return train_pass(*a, **kw)

    monkeypatch.setattr(fit, "train_pass", interrupted_in_epoch_4)
    result = tool("train.py", *args, "--resume", str(out / "last.pth"))
    last = stopped / "last.pth"
    assert result.returncode == 130 and "epoch 3/4" in result.stdout
    assert result.stderr.splitlines()[-2:] == [
        f"training stopped; the last good checkpoint is {last}: continue with --resume {last}", "interrupted"]
    assert torch.load(last, weights_only=True)["epoch"] == 2


def test_resume_with_another_optimizer_says_that_its_state_starts_afresh(trained_run, tmp_path):
    out, args, _ = trained_run
    args = [a if a != str(out) else str(tmp_path / "sgd") for a in args]
    args[args.index("--epochs") + 1] = "3"
    result = tool("train.py", *args, "--opt", "sgd", "--resume", str(out / "last.pth"))
    assert result.returncode == 0, result.stderr
    assert ("opt adamw -> sgd; the optimizer state starts afresh: --opt changed from adamw to sgd"
            in result.stdout), result.stdout
    state = torch.load(tmp_path / "sgd" / "last.pth", weights_only=True)["optimizer"]
    assert "exp_avg" not in str(state["state"].get(0, {}).keys())


def test_a_folder_holding_a_run_offers_resume_only_when_last_pth_is_there(trained_run, tmp_path):
    out, args, _ = trained_run
    folder = tmp_path / "held"
    shutil.copytree(out, folder)
    args = [a if a != str(out) else str(folder) for a in args]
    assert_one_line_error(tool("train.py", *args), f"continue it with --resume {folder / 'last.pth'}, pick another "
                                                   "--output, or pass --overwrite")
    os.remove(folder / "last.pth")
    result = tool("train.py", *args)
    assert_one_line_error(result, f"{folder} already holds a run (best.pth, metrics.json, curves.png, tensorboard); "
                                  "pick another --output, or pass --overwrite to replace it")
    assert "--resume" not in result.stderr


def test_convert_takes_model_options_and_classes_from_a_training_checkpoint(trained_run, tmp_path):
    from safetensors import safe_open

    from tests.tools._runs import SMALL
    from visattn.tasks.opened import open_model

    out, _, _ = trained_run
    result = tool("convert.py", "--checkpoint", out / "best.pth", "--output", tmp_path / "run.safetensors")
    assert result.returncode == 0, result.stderr
    assert f"for biformer_tiny (classification checkpoint; model options {SMALL}, 2 classes)" in result.stdout
    with safe_open(tmp_path / "run.safetensors", "pt") as f:
        meta = f.metadata()
        weights = {k: f.get_tensor(k) for k in f.keys()}
    assert json.loads(meta["model_kwargs"]) == json.loads(SMALL) and json.loads(meta["classes"]) == ["bright", "dark"]
    import timm

    model = timm.create_model(meta["model"], num_classes=int(meta["num_classes"]), **json.loads(meta["model_kwargs"]))
    model.load_state_dict(weights)
    evaluated = open_model(str(out / "best.pth"), device="cpu").model  # the EMA weights eval scores
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), evaluated(x))
    assert_one_line_error(tool("convert.py", "--checkpoint", out / "best.pth", "--output", tmp_path / "x.safetensors",
                               "--model-kwargs", "{}"), "stores the model options it was trained with", "drop --model")
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    assert_one_line_error(tool("convert.py", "--checkpoint", tmp_path / "bare.pth", "--output",
                               tmp_path / "y.safetensors"),
                          "is not a visattn training checkpoint, so it does not name its model; pass --model NAME")


def test_eval_prints_top1_and_top5(trained_run):
    out, _, _ = trained_run
    result = script("eval.py", "--checkpoint", str(out / "best.pth"), "--workers", "0")
    assert result.returncode == 0, result.stderr
    assert "top-1" in result.stdout and "top-5" in result.stdout
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["count"] == 12 and 0 <= metrics["top1"] <= metrics["top5"] == 100.0


def test_eval_with_another_models_checkpoint_names_the_keys(trained_run):
    out, _, _ = trained_run
    result = tool("eval.py", "--checkpoint", str(out / "best.pth"), "--model", "biformer_small", "--workers", "0")
    assert_one_line_error(result, "does not match the model", "missing (stages.0.blocks.1.", "with other shapes")


def test_unknown_model_suggests_close_matches(image_folder, tmp_path):
    result = tool("train.py", "--data", str(image_folder), "--model", "biformer_tny", "--output", str(tmp_path))
    assert_one_line_error(result, "unknown model 'biformer_tny'", "did you mean biformer_tiny")


def test_missing_data_folder(image_folder, tmp_path):
    result = tool("train.py", "--data", str(tmp_path / "nowhere"), "--model", "biformer_tiny",
                  "--output", str(tmp_path / "out"))
    assert_one_line_error(result, "data folder", "does not exist")
    shutil.copytree(image_folder / "train", tmp_path / "train_only" / "train")
    result = tool("train.py", "--data", str(tmp_path / "train_only"), "--model", "biformer_tiny", "--model-kwargs",
                  SMALL, "--img-size", "32", "--output", str(tmp_path / "out"), "--workers", "0")
    assert_one_line_error(result, f"{tmp_path / 'train_only'} has no val/ folder to pick best.pth on: add "
                                  f"{tmp_path / 'train_only'}/val class folders, or pass --val-split 0.1")


def test_input_too_small_for_the_model(image_folder, tmp_path):
    result = tool("train.py", "--data", str(image_folder), "--model", "biformer_tiny", "--model-kwargs", SMALL,
                  "--img-size", "16", "--output", str(tmp_path), "--workers", "0")
    assert_one_line_error(result, "image size 16 does not work with biformer_tiny", "at least 32")


def test_bad_model_kwargs_are_reported(image_folder, tmp_path):
    result = tool("train.py", "--data", str(image_folder), "--model", "biformer_tiny", "--model-kwargs",
                  '{"n_win": 2}', "--output", str(tmp_path))
    assert_one_line_error(result, "cannot build biformer_tiny", "topk=16 must be between 1 and n_win**2=4")


def test_torchrun_two_processes_with_parameters_only_their_own_loss_trains(image_folder, tmp_path):
    """Classification in two processes, with Sparsifiner outside its phases: the predictors get no gradient from the
    classification loss (DDP must not wait for them); only rank 0 reports and writes."""
    kwargs = json.dumps({"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 4, "img_size": 32})
    result = torchrun_train("--data", str(image_folder), "--output", str(tmp_path), "--model", "sparsifiner_deit_small",
                            "--model-kwargs", kwargs, "--img-size", "32", "--epochs", "1", "--batch-size", "4",
                            "--workers", "0")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["history"]) == 1
    assert result.stdout.count("epoch 1/1:") == 1


@pytest.fixture(scope="module")
def seg_run(vessel_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("seg_run")
    args = ["--task", "medical-seg", "--data", str(vessel_folder), "--output", str(out), "--model", "herseg",
            "--model-kwargs", SEG_SMALL, "--img-size", "32", "--epochs", "2", "--batch-size", "4", "--workers", "0",
            "--inference", "padded"]
    result = tool("train.py", *args)
    assert result.returncode == 0, result.stderr
    return out, args, result


def test_medical_training_writes_checkpoints_metrics_and_curves(seg_run):
    out, _, result = seg_run
    assert "epoch 2/2:" in result.stdout and "Dice" in result.stdout and "best val Dice" in result.stdout
    assert {"last.pth", "best.pth", "metrics.json", "curves.png", "tensorboard"} <= set(os.listdir(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "medical-seg" and [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert {"val_dice", "val_auc", "val_hd95", "val_loss", "train_loss"} <= set(metrics["history"][0])
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_medical_resume_continues_where_training_stopped(seg_run, tmp_path):
    out, args, _ = seg_run
    args = [a if a != str(out) else str(tmp_path) for a in args]
    args[args.index("--epochs") + 1] = "3"
    result = tool("train.py", *args, "--resume", str(out / "last.pth"))
    assert result.returncode == 0, result.stderr
    assert "epoch 2/3" not in result.stdout and "epoch 3/3" in result.stdout
    assert [h["epoch"] for h in json.loads((tmp_path / "metrics.json").read_text())["history"]] == [1, 2, 3]


def test_medical_eval_writes_metrics_and_prediction_pngs(seg_run, tmp_path):
    out, _, _ = seg_run
    result = tool("eval.py", "--task", "medical-seg", "--checkpoint", str(out / "best.pth"), "--output",
                  str(tmp_path), "--inference", "sliding", "--tile", "32", "--workers", "0")
    assert result.returncode == 0, result.stderr
    assert "2 images (val), inside the FOV" in result.stdout and "per image" in result.stdout
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(printed["pooled"]) == {"dice", "iou", "sensitivity", "specificity", "accuracy", "auc", "hd95"}
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["inference"]["mode"] == "sliding" and saved["count"] == 2 and "full_image" in saved
    pngs = sorted(os.listdir(tmp_path / "predictions"))
    assert len(pngs) == 6 and sum(p.endswith("_overlay.png") for p in pngs) == 2
    assert Image.open(tmp_path / "predictions" / pngs[0]).size == (72, 60)  # the original resolution


def test_medical_bad_input_gives_one_line_errors(vessel_folder, tmp_path):
    seg = ["--task", "medical-seg", "--model-kwargs", SEG_SMALL, "--output", str(tmp_path / "out")]
    assert_one_line_error(tool("train.py", *seg, "--data", str(tmp_path / "nowhere")), "data folder", "does not exist")
    broken = tmp_path / "broken"
    shutil.copytree(vessel_folder, broken)
    os.remove(next((broken / "train" / "masks").iterdir()))
    assert_one_line_error(tool("train.py", *seg, "--data", str(broken)), "no mask for", "synthetic_0_0000.png")
    assert_one_line_error(tool("train.py", *seg, "--mixup", "0.2"), "--mixup is a classification option")
    torch.save({"task": "classification", "state_dict": {}}, tmp_path / "cls.pth")
    assert_one_line_error(tool("eval.py", "--task", "medical-seg", "--checkpoint", str(tmp_path / "cls.pth")),
                          "is a classification checkpoint, not medical-seg")
    torch.save({"task": "medical-seg", "model": "herseg", "state_dict": {}}, tmp_path / "seg.pth")
    assert_one_line_error(tool("eval.py", "--task", "classification", "--checkpoint", str(tmp_path / "seg.pth")),
                          "is a medical-seg checkpoint, not classification; pass --task medical-seg")
    assert_one_line_error(tool("eval.py", "--checkpoint", str(tmp_path / "seg.pth")),  # scored as its own task
                          "seg.pth lacks dataset, inference, scale", "not a checkpoint tools/train.py --task medical")


def test_medical_torchrun_two_processes(tmp_path):
    result = torchrun_train("--task", "medical-seg", "--data", "synthetic-vessels:size=48,train=4,val=1", "--output",
                            str(tmp_path), "--model", "herseg", "--model-kwargs", SEG_SMALL, "--img-size", "32",
                            "--epochs", "1", "--batch-size", "2", "--workers", "0")
    assert len(json.loads((tmp_path / "metrics.json").read_text())["history"]) == 1
    assert result.stdout.count("epoch 1/1:") == 1  # only rank 0 validates and reports


@pytest.mark.parametrize(("name", "task", "own", "other"), [
    ("train.py", None, ["--mixup", "--ema-decay"], ["--fov-loss", "--tile"]),
    ("train.py", "medical-seg", ["--fov-loss", "--tile", "--crops-per-image"], ["--mixup", "--smoothing"]),
    ("eval.py", None, ["--no-ema", "--batch-size"], ["--threshold", "--split"]),
    ("eval.py", "medical-seg", ["--threshold", "--split"], ["--no-ema", "--batch-size"]),
    ("train.py", "reid", ["--instances", "--attn", "--milestones", "--rerank"], ["--fov-loss", "--mixup"]),
    ("eval.py", "reid", ["--rerank", "--metric", "--flip-test"], ["--threshold", "--no-ema"]),
])
def test_help_lists_the_shared_options_and_the_tasks_own_only(name, task, own, other):
    result = tool(name, *(["--task", task] if task else []), "--help")
    assert result.returncode == 0, result.stderr
    options = result.stdout.split("\noptions:")[1]  # past the description, which names other tasks' options
    assert "--data" in options and "tasks: classification, medical-seg" in options
    assert f"{task or 'classification'} options:" in options
    assert all(o in options for o in own) and not any(o in options for o in other), options


def test_another_tasks_option_is_a_one_line_error(tmp_path):
    assert_one_line_error(tool("train.py", "--fov-loss", "--output", str(tmp_path)),
                          "--fov-loss is a medical-seg option, not one of --task classification")
    assert_one_line_error(tool("eval.py", "--task", "medical-seg", "--checkpoint", str(tmp_path / "x.pth"), "--no-ema"),
                          "--no-ema is a classification option, not one of --task medical-seg")
    # without --task the checkpoint names the task: when it cannot be read, that is the error, not its task's option
    missing = tmp_path / "gone" / "best.pth"
    assert_one_line_error(tool("eval.py", "--checkpoint", str(missing), "--output", str(tmp_path / "out")),
                          f"checkpoint {missing} does not exist")
    (tmp_path / "garbage.pth").write_text("not a checkpoint")
    assert_one_line_error(tool("train.py", "--resume", str(tmp_path / "garbage.pth"), "--fov-loss"),
                          f"cannot read checkpoint {tmp_path / 'garbage.pth'}: not a PyTorch")


@pytest.fixture(scope="module")
def reid_run(reid_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("reid_run")
    args = [*REID, "--data", reid_folder, "--output", str(out), "--epochs", "2", "--warmup-epochs", "1",
            "--milestones", "1", "--attn", "psa_s", "--attn-at", "3", "--attn-blocks", "last"]
    result = tool("train.py", *args)
    assert result.returncode == 0, result.stderr
    return out, args, result


def test_reid_training_writes_checkpoints_and_retrieval_metrics(reid_run):
    out, _, result = reid_run
    assert "attention after layer3.1" in result.stdout and "epoch 2/2:" in result.stdout
    assert "mAP" in result.stdout and "best val mAP" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "reid" and {"val_mAP", "val_rank1", "val_mINP"} <= set(metrics["history"][0])
    tprs = {"val_TPR@FPR1e-4", "val_TPR@FPR1e-3", "val_TPR@FPR1e-2"}
    assert tprs <= set(metrics["history"][0]) and all(0 <= metrics["history"][0][k] <= 1 for k in tprs)
    assert metrics["eval_dataset"] == metrics["dataset"]
    lrs = [h["lr"] for h in metrics["history"]]
    assert lrs[1] < lrs[0] or lrs[1] == pytest.approx(3.5e-5)  # the step at epoch 1


def test_reid_eval_writes_metrics_ranking_and_features(reid_run, tmp_path):
    out, _, _ = reid_run
    result = tool("eval.py", "--task", "reid", "--checkpoint", str(out / "best.pth"), "--output", str(tmp_path),
                  "--metric", "cosine", "--flip-test", "--rerank", "--workers", "0")
    assert result.returncode == 0, result.stderr
    assert "re-ranked" in result.stdout and "rank-1" in result.stdout
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["metric"] == "cosine" and saved["rerank"] and len(saved["cmc"]) >= 10 and saved["queries"] == 4
    assert "TPR@FPR1e-2" in result.stdout and {"TPR@FPR1e-4", "TPR@FPR1e-3", "TPR@FPR1e-2"} <= set(saved)
    assert (tmp_path / "ranking.png").read_bytes()[:4] == b"\x89PNG"
    from safetensors.torch import load_file

    feats = load_file(str(tmp_path / "features.safetensors"))
    assert feats["query_features"].shape == (4, 512) and len(feats["gallery_pids"]) == saved["gallery"]


def test_reid_bad_input_gives_one_line_errors(reid_folder, tmp_path):
    out = ["--output", str(tmp_path / "out")]
    no_cams = tmp_path / "nocams"
    for split, pids in (("train", ["a", "b"]), ("query", ["c"]), ("gallery", ["c"])):
        for pid in pids:
            (no_cams / split / pid).mkdir(parents=True)
            Image.fromarray(np.zeros((16, 8, 3), np.uint8)).save(no_cams / split / pid / "x.jpg")
    assert_one_line_error(tool("train.py", *REID, *out, "--data", str(no_cams)), "no camera ids",
                          "--distinct-cameras")
    assert_one_line_error(tool("train.py", *REID, *out, "--data", reid_folder, "--attn", "psa_s"),
                          "--attn-at", "give the stages")
    assert_one_line_error(tool("train.py", *REID, *out, "--data", reid_folder, "--batch-size", "64"),
                          "needs 32 identities per process but the training set has 8")
    assert_one_line_error(tool("train.py", *REID, *out, "--data", reid_folder, "--fov-loss"),
                          "--fov-loss is a medical-seg option")
    assert_one_line_error(tool("train.py", *REID, *out, "--data", reid_folder, "--attn", "psa_s", "--attn-at", "2,5"),
                          "--attn-at 2,5: a ResNet's stages are 1-4 (layer1..layer4)")
    assert_one_line_error(tool("train.py", *REID, *out, "--data", reid_folder, "--model", "test_biformer",
                               "--attn", "psa_s", "--attn-at", "2", "--last-stride", "2"),
                          "--attn psa_s goes after the residual blocks of a ResNet's stages (layer1..layer4), and "
                          "test_biformer has none")
    assert_one_line_error(tool("train.py", *REID, *out, "--data", reid_folder, "--attn", "psa_s", "--attn-at", "2",
                               "--attn-blocks", "5"), "--attn-blocks 5: stage 2 has blocks 0..1, so 5 does not exist")


def _duke_copy(market: str, root) -> str:
    """A DukeMTMC-reID-style copy (``PID_cCAM_fFRAME.jpg``) of a synthetic Market-style set."""
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        (root / folder).mkdir(parents=True)
        for name in os.listdir(os.path.join(market, folder)):
            pid, cam, frame = re.match(r"(-?\d+)_c(\d+)s1_(\d+)_00\.jpg", name).groups()
            if pid not in ("-1", "0000"):
                shutil.copy(os.path.join(market, folder, name), root / folder / f"{pid}_c{cam}_f{frame}.jpg")
    return str(root)


def test_reid_cross_dataset_training_and_evaluation(reid_folder, tmp_path, monkeypatch):
    from visattn.tasks.reid.data import write_synthetic_reid

    other = write_synthetic_reid(str(tmp_path / "other"), num_train_ids=2, num_test_ids=3, num_cameras=2,
                                 size=(64, 32), seed=1)
    duke = _duke_copy(other, tmp_path / "duke")
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)  # --eval-data given relative: the run names it absolute, for eval from anywhere
    result = tool("train.py", *REID, "--data", reid_folder, "--eval-data", "duke", "--output", out, "--epochs", "1",
                  "--warmup-epochs", "0", "--attn", "se", "--attn-at", "4", "--attn-blocks", "last", "--model-kwargs",
                  '{"channels": [8, 16, 32, 64]}')
    assert result.returncode == 0, result.stderr
    assert "evaluated on duke (--eval-data), 3 queries" in result.stdout
    assert "se attention after layer4.1" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == reid_folder and metrics["eval_dataset"] == duke
    assert "val_TPR@FPR1e-3" in metrics["history"][0]
    monkeypatch.chdir(out)
    result = tool("eval.py", "--checkpoint", out / "best.pth", "--output", tmp_path / "eval", "--workers", "0")
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["dataset"] == duke and saved["trained_on"] == reid_folder and saved["queries"] == 3
    assert saved["mAP"] == pytest.approx(metrics["history"][0]["val_mAP"])  # what the epoch scored
    assert f"on {duke} " in result.stdout and f"trained on {reid_folder}" in result.stdout
    result = tool("eval.py", "--checkpoint", out / "best.pth", "--data", reid_folder, "--output", tmp_path / "own",
                  "--workers", "0")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "own" / "metrics.json").read_text())["queries"] == 4
    assert "trained on" not in result.stdout
    assert_one_line_error(tool("train.py", *REID, "--data", reid_folder, "--eval-data", tmp_path / "nowhere",
                               "--output", tmp_path / "x"), f"--eval-data {tmp_path / 'nowhere'}: no such folder")
    assert_one_line_error(tool("train.py", *REID, "--data", reid_folder, "--eval-data", out / "best.pth",
                               "--output", tmp_path / "x"), "best.pth: a file; expected a re-id dataset folder")
    assert_one_line_error(tool("eval.py", "--checkpoint", out / "best.pth", "--data", duke, "--layout", "msmt17"),
                          "MSMT17 needs an image folder test/")
    assert_one_line_error(tool("train.py", *REID, "--data", reid_folder, "--eval-layout", "dukemtmc", "--output",
                               tmp_path / "x"), "--eval-layout/eval-distinct-cameras ('dukemtmc', False): they "
                                                "describe --eval-data; give it too")


def test_reid_unreadable_data_folder_is_a_one_line_error(reid_folder, monkeypatch):
    from visattn.errors import UserError
    from visattn.tasks.reid.task import open_data

    monkeypatch.setattr(os, "access", lambda path, mode: path != reid_folder)  # as a folder without read permission
    with pytest.raises(UserError, match=f"^--eval-data {re.escape(reid_folder)}: the folder cannot be read "):
        open_data(reid_folder, "auto", False, option="--eval-data", test_only=True)


def test_reid_torchrun_two_processes(reid_folder, tmp_path):
    result = torchrun_train(*REID, "--data", reid_folder, "--output", str(tmp_path), "--epochs", "1",
                            "--batch-size", "4")
    assert result.stdout.count("epoch 1/1:") == 1
    assert len(json.loads((tmp_path / "metrics.json").read_text())["history"]) == 1
