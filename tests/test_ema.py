"""The moving average of the weights (`--ema-decay`): its update rule, that averaging removes
gradient noise (with the raw weights as the control), and the engine's use of it: validated,
saved as the checkpoints' "model", resumed bit-identically."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_config
from torch import nn

import segworks
from segworks import losses
from segworks.checkpoint import load_checkpoint
from segworks.config import TrainConfig
from segworks.data.synthetic import write_shapes_dataset
from segworks.engine.ema import ema_copy, ema_decay_at, ema_update
from segworks.engine.train import train
from segworks.errors import SegworksError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=12, num_val=3, size=32)


def test_decay_warms_up_then_holds():
    assert ema_decay_at(0.999, 1) == pytest.approx(2 / 11)
    assert ema_decay_at(0.999, 90) == pytest.approx(91 / 100)
    assert ema_decay_at(0.9, 10_000) == 0.9


def test_update_averages_floats_and_copies_counters():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    average = ema_copy(model)
    assert not any(p.requires_grad for p in average.parameters()) and not average.training
    before = {k: v.clone() for k, v in average.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    model.train()(torch.randn(4, 1, 3, 3))  # moves running stats and the batch counter
    ema_update(average, model, decay=0.9, step=1000)
    now = model.state_dict()
    for name, value in average.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.9 * before[name] + 0.1 * now[name])
        else:
            assert torch.equal(value, now[name]), name  # num_batches_tracked


def test_average_of_noisy_sgd_is_closer_to_the_optimum_than_the_weights():
    """SGD at a constant learning rate on noisy gradients jitters around the optimum; the
    average of its weights sits much nearer (the raw weights are the control)."""
    torch.manual_seed(0)
    target = torch.randn(16)
    model = nn.Linear(16, 1, bias=False)
    average = ema_copy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    for step in range(1, 801):
        optimizer.zero_grad()
        noisy = model.weight[0] - target + torch.randn(16)  # gradient of |w - t|^2 / 2 + noise
        model.weight.grad = noisy.detach()[None]
        optimizer.step()
        ema_update(average, model, decay=0.995, step=step)
    raw_error = (model.weight.detach()[0] - target).norm()
    average_error = (average.weight.detach()[0] - target).norm()
    assert average_error < 0.5 * raw_error, (float(average_error), float(raw_error))


def test_the_run_validates_and_saves_the_average(shapes, tmp_path):
    run_dir = train(tiny_config(shapes, tmp_path / "ema", epochs=2, ema_decay=0.9))
    last, best = load_checkpoint(run_dir / "last.pt"), load_checkpoint(run_dir / "best.pt")
    assert "train_model" in last and "train_model" not in best
    assert any(not torch.equal(last["model"][k], last["train_model"][k]) for k in last["model"])
    scored = segworks.evaluate(run_dir / "last.pt", shapes, split="val")
    assert scored["miou"] == pytest.approx(last["metrics"]["miou"], abs=1e-6)
    plain = load_checkpoint(train(tiny_config(shapes, tmp_path / "plain", epochs=2)) / "last.pt")
    assert "train_model" not in plain  # control: without the flag, one set of weights
    for key in plain["model"]:  # the trained weights are those of a run without the average
        torch.testing.assert_close(last["train_model"][key], plain["model"][key])


def test_resume_with_the_average_is_bit_identical(shapes, tmp_path, monkeypatch):
    full = load_checkpoint(train(tiny_config(shapes, tmp_path / "full", ema_decay=0.9)) / "last.pt")
    real, calls = losses.criterion, {"n": 0}

    def criterion(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # mid-epoch 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(losses, "criterion", criterion)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_config(shapes, tmp_path / "cut", ema_decay=0.9))
    cut = str(tmp_path / "cut")
    resumed = train(tiny_config(shapes, tmp_path / "cut", ema_decay=0.9, resume=cut))
    again = load_checkpoint(resumed / "last.pt")
    for name in ("model", "train_model"):
        for key in full[name]:
            assert torch.equal(full[name][key], again[name][key]), (name, key)


def test_decay_out_of_range_is_refused():
    with pytest.raises(SegworksError, match="ema_decay must be in"):
        TrainConfig(data="d", ema_decay=1.0)
