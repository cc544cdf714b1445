"""The training pass shared by the task loops."""

import pytest
import torch

from visattn.engine.loop import NonFiniteLoss, train_one_epoch
from visattn.engine.task import Step


class Recorder:
    def __init__(self):
        self.calls = []

    def step_update(self, step):
        self.calls.append(step)

    def update(self, model):
        self.calls.append("ema")


def _setup():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(5, 3), torch.randn(5, 1)),
                                         batch_size=2)
    return model, loader, torch.optim.SGD(model.parameters(), lr=0.1)


def test_one_pass_steps_schedules_clips_and_averages_per_sample():
    model, loader, optimizer = _setup()
    before = model.weight.detach().clone()
    scheduler, ema = Recorder(), Recorder()
    losses = []

    def compute_loss(net, batch):
        x, y = batch
        loss = torch.nn.functional.mse_loss(net(x), y)
        losses.append((loss.item(), len(x)))
        return Step(loss, len(x), {"twice": 2 * loss})

    loss_sum, seen, parts = train_one_epoch(model, model, loader, optimizer, scheduler, compute_loss, epoch=1, epochs=3,
                                     clip_grad=1e-3, ema=ema, show_progress=False)
    assert seen == 5 and loss_sum == pytest.approx(sum(v * n for v, n in losses))
    assert parts == {"twice": pytest.approx(2 * loss_sum)}  # per-sample sums, as the loss
    assert scheduler.calls == [4, 5, 6] and ema.calls == ["ema"] * 3  # epoch 1 of 3 batches: steps 4..6
    assert 0 < (model.weight - before).norm() <= 3 * 0.1 * 1e-3 + 1e-9  # clipped to norm 1e-3 per step


def test_a_non_finite_loss_names_the_epoch_and_step_and_updates_nothing():
    model, loader, optimizer = _setup()
    before = model.weight.detach().clone()
    with pytest.raises(NonFiniteLoss, match="the loss is nan at epoch 1, step 1$"):
        train_one_epoch(model, model, loader, optimizer, Recorder(),
                        lambda net, batch: Step(net(batch[0]).sum() * float("nan"), 2), epoch=0, epochs=1,
                        clip_grad=None, show_progress=False)
    assert torch.equal(model.weight, before)
