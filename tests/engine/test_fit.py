"""The one training engine, driven by a toy task: best tracking (lower is better), checkpoints, resume."""

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from visattn.engine.fit import TASKS, Task, TrainConfig, fit, free_run_folder, get_task, resumed_config
from visattn.errors import UserError


@dataclass
class ToyConfig(TrainConfig):
    model: str = "linear"


class ToyRegression(Task):
    name = "toy"
    config = ToyConfig
    default_data = "noise"
    score = "val_mse"
    higher_is_better = False
    panels = (("loss", "loss", ("train_loss", "val_loss")),)

    def build(self, device, rank, world_size):
        x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
        y = (x @ torch.tensor([1.0, -2.0, 0.5]))[:, None]
        self.val = (x[:16], y[:16])
        return nn.Linear(3, 1), TensorDataset(x, y)

    def check_input(self, model):
        pass

    def compute_loss(self, net, batch, device):
        x, y = (t.to(device) for t in batch)
        return F.mse_loss(net(x), y), len(x)

    @torch.no_grad()
    def evaluate(self, model, device):
        x, y = self.val
        return {"mse": F.mse_loss(model(x.to(device)), y.to(device)).item()}

    def val_scalars(self, metrics):
        return {"val_loss": metrics["mse"], "val_mse": metrics["mse"]}

    def checkpoint_extra(self):
        return {"note": "toy"}

    def epoch_line(self, metrics, scalars):
        return f"mse {metrics['mse']:.4f}"

    def summary(self, best):
        return f"best mse {best['val_mse']:.4f}"

    @classmethod
    def run_eval(cls, args):
        return str(cls.load_checkpoint(args.checkpoint)["best"])


def _config(output, **kwargs):
    return ToyConfig(output=str(output), **{"epochs": 3, "batch_size": 16, "lr": 0.05, "warmup_epochs": 0,
                                            "workers": 0, "opt": "sgd", "weight_decay": 0.0, **kwargs})


def test_fit_tracks_the_lowest_score_saves_checkpoints_and_resumes(tmp_path, capsys):
    result = fit(ToyRegression(_config(tmp_path, epochs=2)))
    history = result["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    lowest = min(history, key=lambda h: h["val_mse"])
    assert result["best"] == {"epoch": lowest["epoch"], "val_mse": lowest["val_mse"]}
    assert "epoch 2/2: train loss" in capsys.readouterr().out
    last = torch.load(tmp_path / "last.pth", weights_only=True)
    assert (last["task"], last["model"], last["dataset"], last["note"], last["epoch"]) == ("toy", "linear", "noise",
                                                                                          "toy", 1)
    assert torch.load(tmp_path / "best.pth", weights_only=True)["epoch"] == lowest["epoch"] - 1

    resumed = fit(ToyRegression(_config(tmp_path, resume=str(tmp_path / "last.pth"))))
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert json.loads((tmp_path / "metrics.json").read_text())["task"] == "toy"
    with pytest.raises(UserError, match="was trained as toy / 'linear', not toy / 'mlp'; pass --task toy --model"):
        fit(ToyRegression(_config(tmp_path, model="mlp", resume=str(tmp_path / "last.pth"))))


def test_eval_every_evaluates_on_its_epochs_and_the_last_only(tmp_path, capsys):
    evaluated = []

    class Counting(ToyRegression):
        def evaluate(self, model, device):
            evaluated.append(True)
            return super().evaluate(model, device)

    result = fit(Counting(_config(tmp_path, epochs=5, eval_every=2)))
    assert len(evaluated) == 3
    history = result["history"]
    assert [h["epoch"] for h in history if "val_mse" in h] == [2, 4, 5]
    assert all("train_loss" in h and "lr" in h for h in history)
    lowest = min((h for h in history if "val_mse" in h), key=lambda h: h["val_mse"])
    assert result["best"] == {"epoch": lowest["epoch"], "val_mse": lowest["val_mse"]}
    assert torch.load(tmp_path / "best.pth", weights_only=True)["epoch"] == lowest["epoch"] - 1
    out = capsys.readouterr().out
    assert "epoch 1/5: train loss" in out and "not evaluated (every 2)" in out and "epoch 5/5" in out
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_load_checkpoint_names_the_task_of_another_tasks_checkpoint(tmp_path):
    torch.save({"task": "medical-seg", "state_dict": {}}, tmp_path / "seg.pth")
    with pytest.raises(UserError, match="is a medical-seg checkpoint, not toy; pass --task medical-seg$"):
        ToyRegression.load_checkpoint(str(tmp_path / "seg.pth"))


@pytest.mark.parametrize("name", list(TASKS))
def test_every_registered_task_resolves_to_its_class(name):
    task = get_task(name)
    assert issubclass(task, Task) and task.name == name and issubclass(task.config, TrainConfig)


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    fit(ToyRegression(_config(tmp_path, epochs=1)))
    first = (tmp_path / "last.pth").read_bytes()
    with pytest.raises(UserError, match=r"already holds a run \(last.pth, best.pth, metrics.json, curves.png, "
                                        r"tensorboard\); continue it with --resume .*--overwrite to replace it"):
        fit(ToyRegression(_config(tmp_path, epochs=1)))
    assert (tmp_path / "last.pth").read_bytes() == first
    (tmp_path / "tensorboard" / "stale-events").write_text("from the first run")
    fit(ToyRegression(_config(tmp_path, epochs=1, overwrite=True)))
    assert not (tmp_path / "tensorboard" / "stale-events").exists()  # the old run's logs are not mixed in
    assert free_run_folder(str(tmp_path)) == f"{tmp_path}2"
    assert free_run_folder(str(tmp_path / "fresh")) == str(tmp_path / "fresh")


def test_resume_removes_a_killed_writes_temporary_file_and_needs_epochs_left(tmp_path):
    fit(ToyRegression(_config(tmp_path, epochs=2)))
    stale = tmp_path / ".last.pth.k1ll3d.tmp"
    stale.write_bytes(b"\0" * 1000)  # what SIGKILL during atomic_save leaves
    with pytest.raises(UserError, match="has done 2 epochs and --epochs is 2: nothing to train; pass --epochs above 2"):
        fit(ToyRegression(_config(tmp_path, epochs=2, resume=str(tmp_path / "last.pth"))))
    fit(ToyRegression(_config(tmp_path, epochs=3, resume=str(tmp_path / "last.pth"))))
    assert not stale.exists()
    assert resumed_config(str(tmp_path / "last.pth"), ToyConfig)["epochs"] == 3


class NaNInEpoch2(ToyRegression):
    """The toy task whose loss turns NaN in its second epoch."""

    epoch = 1

    def compute_loss(self, net, batch, device):
        loss, count = super().compute_loss(net, batch, device)
        return (loss * float("nan") if self.epoch == 2 else loss), count

    def evaluate(self, model, device):
        self.epoch += 1
        return super().evaluate(model, device)


def test_a_non_finite_loss_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path):
    task = NaNInEpoch2(_config(tmp_path, epochs=3))
    with pytest.raises(UserError, match=r"the loss is nan at epoch 2, step 1; the last good checkpoint is "
                                        r".*last.pth; lower --lr"):
        fit(task)
    assert torch.load(tmp_path / "last.pth", weights_only=True)["epoch"] == 0


def test_non_finite_weights_are_never_saved_over_a_good_checkpoint(tmp_path, monkeypatch):
    fit(ToyRegression(_config(tmp_path, epochs=1)))
    good = (tmp_path / "last.pth").read_bytes()

    class Poisoned(ToyRegression):
        def evaluate(self, model, device):
            with torch.no_grad():
                model.weight[0, 0] = float("inf")
            return super().evaluate(model, device)

    with pytest.raises(UserError, match=r"the weights became non-finite in epoch 2 \(weight\); nothing was saved"):
        fit(Poisoned(_config(tmp_path, epochs=2, resume=str(tmp_path / "last.pth"))))
    assert (tmp_path / "last.pth").read_bytes() == good


def test_same_seed_same_run_and_another_seed_another(tmp_path):
    runs = [fit(ToyRegression(_config(tmp_path / name, seed=seed, workers=1)))["history"]
            for name, seed in (("a", 5), ("b", 5), ("c", 6))]
    losses = [[h["train_loss"] for h in run] for run in runs]
    assert losses[0] == losses[1] != losses[2]
