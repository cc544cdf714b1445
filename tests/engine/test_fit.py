"""The one training engine, driven by a toy task: best tracking (lower is better), checkpoints, resume."""

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import visattn.tasks  # noqa: F401  (registers the tasks)
from visattn.contract import TrainOutput
from visattn.engine.fit import fit, free_run_folder, improves, resumed_config
from visattn.engine.task import TASKS, Step, Task, TrainConfig, get_task, register_task
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
        out = net(x)
        return Step.from_parts({"mse": F.mse_loss(out.output, y), **out.aux_losses}, len(x), out.stats)

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


@pytest.mark.parametrize("name", ["classification", "medical-seg", "reid"])
def test_every_task_is_registered_and_resolves_to_its_class(name):
    assert name in TASKS
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
        step = super().compute_loss(net, batch, device)
        return Step(step.loss * float("nan") if self.epoch == 2 else step.loss, step.samples)

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


class ContractLinear(nn.Linear):
    """A model using the whole model-training contract: an auxiliary loss, a statistic, the per-epoch hook."""

    def __init__(self):
        super().__init__(3, 1)
        self.epochs_started = []

    def set_epoch(self, epoch):
        self.epochs_started.append(epoch)

    def forward_train(self, x):
        out = self(x)
        return TrainOutput(out, aux_losses={"penalty": 0.1 * self.weight.square().sum()},
                           stats={"mean_output": out.detach().mean()})


class ContractTask(ToyRegression):
    def build(self, device, rank, world_size):
        linear, data = super().build(device, rank, world_size)
        self.model = ContractLinear()
        return self.model, data


def test_named_loss_parts_and_statistics_reach_history_tensorboard_and_curves(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    task = ContractTask(_config(tmp_path, epochs=2))
    history = fit(task)["history"]
    assert task.model.epochs_started == [0, 1]
    for entry in history:
        assert {"mse", "penalty", "mean_output"} <= set(entry)
        assert entry["mse"] + entry["penalty"] == pytest.approx(entry["train_loss"], rel=1e-5)
    saved = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert [h["penalty"] for h in saved] == [h["penalty"] for h in history]
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert {"mse", "penalty", "mean_output", "train_loss", "val_mse"} <= set(events.Tags()["scalars"])


def test_curves_get_one_panel_per_logged_quantity_with_integer_epoch_ticks(tmp_path, monkeypatch):
    import matplotlib.figure

    from visattn.engine.run_log import RunLog

    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    log = RunLog(str(tmp_path), [], {}, (("loss", "loss", ("train_loss", "val_loss")),))
    log.log(1, {"train_loss": 1.0, "val_loss": 2.0, "keep_ratio": 0.3, "matching": 0.1, "lr": 1e-3}, {})
    log.log(2, {"train_loss": 0.5, "val_loss": 1.0, "keep_ratio": 0.3, "matching": 0.2, "lr": 1e-3}, {})
    log.close()
    axes = [ax for ax in saved[-1].axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["loss", "keep_ratio", "matching"]
    ticks = axes[1].xaxis.get_major_locator().tick_values(1, 2)
    assert all(float(t).is_integer() for t in ticks)


def test_curves_are_redrawn_once_their_interval_passed_and_when_the_run_ends(tmp_path, monkeypatch):
    from visattn.engine import run_log

    clock = [100.0]
    monkeypatch.setattr(run_log.time, "monotonic", lambda: clock[0])
    drawn = []
    monkeypatch.setattr(run_log.RunLog, "draw", lambda log: (drawn.append(len(log.history)),
                                                              setattr(log, "drawn_at", clock[0]),
                                                              setattr(log, "drawn_epochs", len(log.history))))
    log = run_log.RunLog(str(tmp_path), [], {}, (("loss", "loss", ("train_loss",)),))
    for epoch, seconds in enumerate((10.0, 10.0, 10.0, 40.0, 5.0), start=1):
        clock[0] += seconds
        log.log(epoch, {"train_loss": 1.0 / epoch}, {})
    assert drawn == [3, 4]  # 30 s after the start, then 40 s after that drawing; epoch 5 came 5 s later
    log.close()
    assert drawn == [3, 4, 5]
    log.close()  # nothing new to draw
    assert drawn == [3, 4, 5]


def test_a_reserved_name_for_a_loss_part_is_refused():
    with pytest.raises(ValueError, match="'train_loss' is reserved"):
        TrainOutput(torch.zeros(1), aux_losses={"train_loss": torch.zeros(())})
    with pytest.raises(ValueError, match="'val_dice' is reserved"):
        TrainOutput(torch.zeros(1), stats={"val_dice": torch.zeros(())})


def test_piped_output_gets_progress_lines_inside_each_epoch(tmp_path, capsys):
    fit(ToyRegression(_config(tmp_path, epochs=2, batch_size=4, log_interval=5)))
    out = capsys.readouterr().out.splitlines()
    for epoch in (1, 2):
        lines = [line for line in out if line.startswith(f"train epoch {epoch}/2  step ")]
        assert [line.split()[4] for line in lines] == ["5/16", "10/16", "15/16", "16/16"]
        assert all(" loss " in line and " lr " in line and "img/s" in line and " eta " in line for line in lines)
        end = out.index(next(line for line in out if line.startswith(f"epoch {epoch}/2:")))
        assert out.index(lines[-1]) < end


def test_register_task_refuses_a_second_task_of_the_same_name():
    class Again(ToyRegression):
        name = "classification"

    with pytest.raises(ValueError, match="registered twice"):
        register_task(Again)


@pytest.mark.parametrize("task_name", ["classification", "medical-seg", "reid"])
def test_a_model_given_without_data_keeps_the_demo_recipe_and_says_so(task_name, tmp_path, capsys):
    from visattn.engine.fit import assemble_config

    task = get_task(task_name)
    demo, full = task.config.demo(""), task.config(output="")
    config = assemble_config(task, {"model": "resnet18", "output": str(tmp_path / "a")})
    assert config.model == "resnet18" and config.epochs == demo.epochs and config.lr == demo.lr
    assert f"{task_name} demo recipe: resnet18 on" in capsys.readouterr().out
    config = assemble_config(task, {"model": "resnet18", "data": "x", "output": str(tmp_path / "b")})
    assert config.epochs == full.epochs and config.lr == full.lr and capsys.readouterr().out == ""
    config = assemble_config(task, {"data": "x", "output": str(tmp_path / "c")}, demo=True)
    assert config.epochs == demo.epochs and config.data == "x"


def test_the_resume_line_names_only_the_options_that_changed():
    import dataclasses

    from visattn.engine.fit import resume_line

    config = get_task("reid").config
    saved = dataclasses.asdict(config(output="o", input_size=(96, 48), milestones=(6,), epochs=9, lr=1e-3))
    given = config(output="o", resume="o/last.pth", input_size=[96, 48], milestones=[6], epochs=12, lr=2e-3)
    assert resume_line(given, {"config": saved, "epoch": 8}) == (
        "resuming o/last.pth after epoch 9 of 12; options changed from the run: epochs 9 -> 12, lr 0.001 -> 0.002")
    assert resume_line(given, {"epoch": 8}) == "resuming o/last.pth after epoch 9 of 12"  # a checkpoint without them


def test_a_run_names_its_data_folder_by_absolute_path(tmp_path, monkeypatch):
    """A --data folder given relative is recorded absolute in the checkpoints and metrics.json, so that
    tools/eval.py, run from another folder, finds it; a built-in data name and a missing path stay as given."""
    (tmp_path / "mine").mkdir()
    monkeypatch.chdir(tmp_path)
    fit(ToyRegression(_config(tmp_path / "run", data="mine", epochs=1)))
    assert torch.load(tmp_path / "run" / "best.pth", weights_only=False)["dataset"] == str(tmp_path / "mine")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["dataset"] == str(tmp_path / "mine")
    assert ToyRegression(_config(tmp_path, data="missing")).dataset == "missing"
    assert ToyRegression(_config(tmp_path)).dataset == "noise"


def test_an_equal_score_is_decided_by_the_tiebreak_in_the_scores_direction():
    """Dice 0 over the first epochs kept epoch 1's weights while the AUC rose; a tie now goes to the tiebreak."""
    best = {"epoch": 1, "val_dice": 0.0, "val_auc": 0.61}
    assert improves({"val_dice": 0.0, "val_auc": 0.7}, best, "val_dice", "val_auc", True)
    assert not improves({"val_dice": 0.0, "val_auc": 0.61}, best, "val_dice", "val_auc", True)
    assert not improves({"val_dice": 0.0, "val_auc": 0.9}, best, "val_dice", None, True)
    assert improves({"val_dice": 0.1, "val_auc": 0.2}, best, "val_dice", "val_auc", True)
    assert not improves({"val_dice": float("nan"), "val_auc": 0.9}, best, "val_dice", "val_auc", True)
    assert not improves({"val_dice": 0.0, "val_auc": float("nan")}, best, "val_dice", "val_auc", True)
    lower = {"epoch": 2, "val_mse": 0.5, "val_mae": 0.3}
    assert improves({"val_mse": 0.5, "val_mae": 0.2}, lower, "val_mse", "val_mae", False)
    assert not improves({"val_mse": 0.5, "val_mae": 0.4}, lower, "val_mse", "val_mae", False)
    # the first evaluation beats the starting record, which holds the score only
    assert improves({"val_dice": 0.0, "val_auc": 0.5}, {"epoch": -1, "val_dice": -1.0}, "val_dice", "val_auc", True)
    assert improves({"val_mse": 9.0, "val_mae": 9.0}, {"epoch": -1, "val_mse": float("inf")}, "val_mse", "val_mae",
                    False)


def test_every_tasks_score_and_tiebreak_are_logged_quantities():
    for task in TASKS.values():
        shown = {key for _, _, keys in task.panels for key in keys}
        assert task.score in shown and (task.tiebreak is None or task.tiebreak in shown), task.name
