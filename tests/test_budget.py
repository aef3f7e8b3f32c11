"""`fit_minutes`: the run's epochs are refitted from the first epoch's measured time, and the
schedule continues as if the run had been planned with that length from the start."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from helpers import read_rows, tiny_config

import segworks.engine.train as engine
from segworks.checkpoint import load_checkpoint
from segworks.cli import main
from segworks.data.synthetic import write_shapes_dataset
from segworks.engine.budget import budget_epochs
from segworks.errors import SegworksError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=12, num_val=3, size=32)


def fake_clock(monkeypatch, seconds_per_call: float) -> None:
    """Every reading of the budget clock is `seconds_per_call` later than the one before."""
    ticks = itertools.count()
    monkeypatch.setattr(engine, "budget_clock", lambda cfg: lambda: seconds_per_call * next(ticks))


def test_budget_epochs_are_whole_epochs_never_fewer_than_done():
    assert budget_epochs(10.0, 60.0, 1) == 10
    assert budget_epochs(10.0, 61.0, 1) == 9
    assert budget_epochs(0.5, 60.0, 1) == 1
    assert budget_epochs(1.0, 60.0, 3) == 3


def test_a_fitted_run_has_the_schedule_of_a_run_planned_that_long(shapes, tmp_path, monkeypatch):
    planned = train_rows(tiny_config(shapes, tmp_path / "planned", epochs=6, schedule="cosine"))
    fake_clock(monkeypatch, 10.0)  # the first epoch "takes" 10 s: 1 minute holds 6 epochs
    cfg = tiny_config(shapes, tmp_path / "fitted", epochs=2, schedule="cosine", fit_minutes=1.0)
    fitted = train_rows(cfg)
    assert [row["epoch"] for row in fitted] == [str(e) for e in range(1, 7)]
    assert [row["lr"] for row in fitted] == [row["lr"] for row in planned]
    assert float(fitted[-1]["lr"]) == pytest.approx(0.0, abs=1e-12)  # decayed as time ran out
    assert load_checkpoint(tmp_path / "fitted" / "last.pt")["config"]["epochs"] == 6


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
