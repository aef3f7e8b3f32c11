"""`fit_minutes`: the run's length is refitted from the first epoch's measured training and
validation times (whole epochs, then a partial one), and the schedule continues as if the run
had been planned with that length from the start; `max_steps` ends a run inside an epoch."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from helpers import read_rows, tiny_config

import segworks.engine.train as engine
from segworks.checkpoint import load_checkpoint
from segworks.cli import main
from segworks.data.synthetic import write_shapes_dataset
from segworks.engine.budget import budget_steps
from segworks.errors import SegworksError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=12, num_val=3, size=32)


def fake_clock(monkeypatch, seconds_per_call: float) -> None:
    """Every reading of the budget clock is `seconds_per_call` later than the one before."""
    ticks = itertools.count()
    monkeypatch.setattr(engine, "budget_clock", lambda cfg: lambda: seconds_per_call * next(ticks))


def test_budget_steps_are_whole_epochs_then_what_fits_before_the_last_validation():
    # 60 s epochs (50 training + 10 validation) of 10 steps: 10 minutes hold 10 whole epochs
    assert budget_steps(10.0, 50.0, 10.0, 10, 10) == 100
    # 650 s: 10 epochs (600 s), then 50 s less 10 s validation = 40 s of training = 8 steps
    assert budget_steps(650 / 60, 50.0, 10.0, 10, 10) == 108
    assert budget_steps(0.5, 50.0, 10.0, 10, 10) == 10  # never fewer than the steps done
    assert budget_steps(100.0, 1.0, 0.0, 10, 10) == 60_000


def scripted_clock(monkeypatch, train_seconds: float, val_seconds: float) -> None:
    """The budget clock moves only while training (`train_seconds` per whole epoch, in
    proportion for a partial one) and validating (`val_seconds` each time)."""
    now = [0.0]
    train_epoch, validate = engine.train_one_epoch, engine.validate

    def timed_train(run):
        now[0] += train_seconds * engine.epoch_steps(run) / run.steps_per_epoch
        return train_epoch(run)

    def timed_validate(run):
        now[0] += val_seconds
        return validate(run)

    monkeypatch.setattr(engine, "budget_clock", lambda cfg: lambda: now[0])
    monkeypatch.setattr(engine, "train_one_epoch", timed_train)
    monkeypatch.setattr(engine, "validate", timed_validate)


def test_a_fitted_run_ends_with_the_steps_that_fit_before_its_last_validation(
    shapes, tmp_path, monkeypatch
):
    planned = train_rows(
        tiny_config(shapes, tmp_path / "planned", epochs=3, max_steps=8, schedule="cosine")
    )
    # 3 steps per epoch (12 images, batch 4); 60 s hold 2 epochs of 20 + 2 s, then 16 s of
    # which the last validation takes 2: 14 s of training = 2.1 steps, so 2 more steps
    scripted_clock(monkeypatch, train_seconds=20.0, val_seconds=2.0)
    cfg = tiny_config(shapes, tmp_path / "fitted", epochs=9, schedule="cosine", fit_minutes=1.0)
    fitted = train_rows(cfg)
    assert [row["lr"] for row in fitted] == [row["lr"] for row in planned]
    assert len(fitted) == 3
    last = load_checkpoint(tmp_path / "fitted" / "last.pt")
    assert (last["step"], last["config"]["epochs"], last["config"]["max_steps"]) == (8, 3, 8)
    assert float(fitted[-1]["lr"]) == pytest.approx(0.0, abs=1e-12)  # decayed as time ran out


def test_max_steps_ends_the_run_and_its_schedule_inside_an_epoch(shapes, tmp_path):
    rows = train_rows(tiny_config(shapes, tmp_path / "run", epochs=4, max_steps=5,
                                  schedule="cosine"))  # fmt: skip
    assert len(rows) == 2
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 5
    assert float(rows[-1]["lr"]) == pytest.approx(0.0, abs=1e-12)


def test_resuming_with_more_epochs_drops_the_fitted_step_limit(shapes, tmp_path):
    out = tmp_path / "run"
    engine.train(tiny_config(shapes, out, epochs=2, max_steps=5))
    args = ["train", "--resume", str(out), "--epochs", "3", "--no-progress"]
    assert main(args) == 0
    last = load_checkpoint(out / "last.pt")  # the third epoch is a whole one
    assert (last["step"], last["config"]["max_steps"]) == (8, None)


def test_a_slow_first_epoch_shortens_the_run(shapes, tmp_path, monkeypatch):
    fake_clock(monkeypatch, 40.0)  # 40 s per epoch: 1 minute holds one
    cfg = tiny_config(shapes, tmp_path / "run", epochs=5, fit_minutes=1.0, budget_clock="cpu")
    rows = train_rows(cfg)
    assert len(rows) == 1
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["epochs"] == 1


@pytest.mark.parametrize("field, value", [("fit_minutes", 0.0), ("budget_clock", "gpu")])
def test_bad_budget_settings_are_refused(shapes, tmp_path, field, value):
    with pytest.raises(SegworksError, match=field):
        tiny_config(shapes, tmp_path, **{field: value}).validate()


def train_rows(cfg) -> list[dict]:
    return read_rows(engine.train(cfg))


def test_the_cli_refuses_a_budget_below_zero_before_writing(shapes, tmp_path, capsys):
    args = ["train", "--data", str(shapes), "--out", str(tmp_path / "run"), "--fit-minutes", "-1"]
    assert main(args) == 2
    assert "fit_minutes must be > 0, got -1.0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_max_minutes_follows_the_budget_clock(shapes, tmp_path, monkeypatch):
    fake_clock(monkeypatch, 40.0)  # past the 1-minute limit by the end of the first epoch
    cfg = tiny_config(shapes, tmp_path / "run", epochs=5, max_minutes=1.0, budget_clock="cpu")
    assert len(train_rows(cfg)) == 1
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["epochs"] == 5
