"""Learning-rate schedules: values at their boundaries, warm-up, and exact resume."""

from __future__ import annotations

import math

import pytest
import torch

from segworks.engine.schedules import build_scheduler, lr_factor, step_drops


def lrs(name: str, iterations: int, **kwargs) -> list[float]:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = build_scheduler(optimizer, name, **kwargs)
    values = []
    for _ in range(iterations):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


@pytest.mark.parametrize(
    ("epochs_done", "drops"),
    [(0, 0), (9, 0), (10, 1), (49, 1), (50, 2), (99, 2), (100, 3), (199, 3), (200, 4), (350, 5)],
)
def test_refinenet_step_schedule_drops_at_10_50_and_every_100(epochs_done, drops):
    assert step_drops(epochs_done) == drops


def test_step_schedule_is_per_epoch_through_lambdalr():
    values = lrs("step", 3 * 51, total_steps=10_000, steps_per_epoch=3)
    assert values[29] == 1.0  # last iteration of epoch 10 (epochs_done = 9)
    assert values[30] == pytest.approx(0.1)  # first iteration after 10 epochs
    assert values[3 * 50 - 1] == pytest.approx(0.1)
    assert values[3 * 50] == pytest.approx(0.01)


def test_poly_starts_at_one_and_ends_at_zero():
    factor = lr_factor("poly", total_steps=100, steps_per_epoch=10)
    assert factor(0) == 1.0
    assert factor(50) == pytest.approx(0.5**0.9)
    assert factor(100) == 0.0 and factor(150) == 0.0


def test_cosine_with_linear_warmup():
    factor = lr_factor("cosine", total_steps=100, steps_per_epoch=10, warmup=5)
    assert [factor(i) for i in range(5)] == pytest.approx(
        [(i + 1) / 5 * 0.5 * (1 + math.cos(math.pi * i / 100)) for i in range(5)]
    )
    assert factor(50) == pytest.approx(0.5)
    assert factor(100) == pytest.approx(0.0, abs=1e-12)
    values = lrs("cosine", 100, total_steps=100, steps_per_epoch=10, warmup=5)
    assert values[0] == pytest.approx(0.2) and max(values) == values[4]
    assert all(a >= b for a, b in zip(values[4:], values[5:]))


def test_scheduler_state_dict_resumes_exactly():
    kwargs = dict(total_steps=40, steps_per_epoch=4, warmup=3)
    reference = lrs("poly", 40, **kwargs)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = build_scheduler(optimizer, "poly", **kwargs)
    for _ in range(17):
        optimizer.step()
        scheduler.step()
    saved_optimizer, saved_scheduler = optimizer.state_dict(), scheduler.state_dict()
    assert "lr_lambdas" not in saved_scheduler or saved_scheduler["lr_lambdas"] == [None]
    fresh = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    resumed = build_scheduler(fresh, "poly", **kwargs)
    fresh.load_state_dict(saved_optimizer)
    resumed.load_state_dict(saved_scheduler)
    continued = []
    for _ in range(23):
        continued.append(fresh.param_groups[0]["lr"])
        fresh.step()
        resumed.step()
    assert continued == reference[17:]


def test_unknown_schedule_is_a_value_error():
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_factor("exp", total_steps=10, steps_per_epoch=1)
