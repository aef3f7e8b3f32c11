"""The training engine on tiny synthetic data: exact resume, NaN stop, checkpoint contents,
early stopping and gradient accumulation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from helpers import read_rows, tiny_config

from segworks import losses
from segworks.checkpoint import load_checkpoint
from segworks.config import TrainConfig
from segworks.data.synthetic import SHAPE_CLASSES, write_shapes_dataset
from segworks.engine.train import TrainingDiverged, split_samples, train
from segworks.models import model_from_checkpoint


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=12, num_val=3, size=32)


def interrupt_at(monkeypatch, call: int) -> None:
    """Raise KeyboardInterrupt (as Ctrl-C would) in the `call`-th loss computation."""
    real = losses.criterion
    calls = {"n": 0}

    def criterion(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(losses, "criterion", criterion)


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


DEFAULT_WORKERS = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "workers")


@pytest.fixture(scope="module")
def full_run(shapes, tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run (3 steps per epoch) with the default loader workers."""
    return train(tiny_config(shapes, tmp_path_factory.mktemp("full"), workers=DEFAULT_WORKERS))


@pytest.mark.parametrize("stop_call", [4, 5], ids=["epoch-boundary", "mid-epoch"])
def test_resume_after_interrupt_is_bit_identical(
    shapes, full_run, tmp_path, monkeypatch, stop_call
):
    full = full_run
    with monkeypatch.context() as patch:
        interrupt_at(patch, stop_call)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_config(shapes, tmp_path / "cut", workers=DEFAULT_WORKERS))
    saved = load_checkpoint(tmp_path / "cut" / "interrupt.pt")
    assert saved["step"] == stop_call - 1  # the last finished step, 3 steps per epoch
    resume = str(tmp_path / "cut")
    resumed = train(tiny_config(shapes, tmp_path / "cut", workers=DEFAULT_WORKERS, resume=resume))

    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (3, 9)
    assert_same_tensors(a["model"], b["model"])
    for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert_same_tensors(state_a, state_b)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    rows = read_rows(resumed)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]


def test_loader_workers_do_not_change_the_augmentation(shapes, full_run, tmp_path):
    """Every sample's transforms are seeded by its place in the epoch, not by its worker."""
    assert DEFAULT_WORKERS >= 2
    single = train(tiny_config(shapes, tmp_path / "w0", workers=0))
    a, b = load_checkpoint(full_run / "last.pt"), load_checkpoint(single / "last.pt")
    assert_same_tensors(a["model"], b["model"])


def test_resume_without_rng_restore_would_differ(shapes, tmp_path, monkeypatch):
    """Control for the test above: the comparison does catch a resume that loses state."""
    full = train(tiny_config(shapes, tmp_path / "full", epochs=2))
    train(tiny_config(shapes, tmp_path / "cut", epochs=1))
    monkeypatch.setattr("segworks.engine.train.set_rng_state", lambda rng, info: None)
    torch.manual_seed(123)
    resumed = train(tiny_config(shapes, tmp_path / "cut", epochs=2, resume=str(tmp_path / "cut")))
    a, b = load_checkpoint(full / "last.pt")["model"], load_checkpoint(resumed / "last.pt")["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(shapes, tmp_path, monkeypatch):
    real = losses.criterion
    calls = {"n": 0}

    def criterion(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(losses, "criterion", criterion)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 5 \(epoch 2, batch 2\)"):
        train(tiny_config(shapes, tmp_path / "run"))
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 1 and last["step"] == 3
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())


def test_checkpoint_holds_everything_needed_to_predict(shapes, tmp_path):
    run_dir = train(tiny_config(shapes, tmp_path / "run", epochs=2, snapshot_every=1))
    for name in ("last.pt", "best.pt", "epoch_0001.pt", "epoch_0002.pt", "config.json"):
        assert (run_dir / name).is_file(), name
    checkpoint = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    assert checkpoint["model_name"] == "unet"
    assert checkpoint["model_kwargs"] == {"num_classes": 3, "base_width": 4, "depth": 2}
    meta = checkpoint["meta"]
    assert meta["class_names"] == SHAPE_CLASSES
    assert meta["task"] == "semantic" and meta["ignore_index"] == 255
    assert len(meta["palette"]) == 3
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert checkpoint["config"]["epochs"] == 2 and checkpoint["config"]["weights"] is None
    assert 0.0 <= checkpoint["metrics"]["miou"] <= 1.0
    model = model_from_checkpoint(checkpoint)
    assert model(torch.zeros(1, 3, 20, 24))["out"].shape == (1, 3, 20, 24)
    rows = read_rows(run_dir)
    assert len(rows) == 2 and float(rows[-1]["val_miou"]) == pytest.approx(
        load_checkpoint(run_dir / "last.pt")["metrics"]["miou"]
    )


def test_best_is_slim_and_last_keeps_what_resuming_needs(shapes, tmp_path):
    run_dir = train(tiny_config(shapes, tmp_path / "run", epochs=1))
    best, last = load_checkpoint(run_dir / "best.pt"), load_checkpoint(run_dir / "last.pt")
    assert "optimizer" in last and "rng" in last and "scheduler" in last
    assert not {"optimizer", "scheduler", "scaler", "rng"} & set(best)
    assert_same_tensors(best["model"], last["model"])
    assert (run_dir / "best.pt").stat().st_size < 0.6 * (run_dir / "last.pt").stat().st_size
    with pytest.raises(ValueError, match="not a resumable segworks checkpoint"):
        train(tiny_config(shapes, tmp_path / "run", epochs=2, resume=str(run_dir / "best.pt")))


def test_config_json_names_the_weights_the_run_started_from(shapes, full_run, tmp_path):
    start = str(full_run / "last.pt")
    run_dir = train(tiny_config(shapes, tmp_path / "run", epochs=1, weights=start))
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["weights"] == start and saved["epochs"] == 1
    assert load_checkpoint(run_dir / "last.pt")["config"]["weights"] is None  # travels without
    train(tiny_config(shapes, tmp_path / "run", epochs=2, resume=str(run_dir)))
    assert json.loads((run_dir / "config.json").read_text())["weights"] == start
    plain = json.loads((full_run / "config.json").read_text())  # control: no weights given
    assert plain["weights"] is None


def test_config_in_checkpoints_never_names_weight_files():
    cfg = TrainConfig(
        data="d", weights="/w/init.pt", backbone_weights="/w/r50.pth",
        model_kwargs={"backbone_weights": "/w/r50.pth", "output_stride": 8},
    )  # fmt: skip
    saved = cfg.to_dict()
    assert saved["weights"] is None and saved["backbone_weights"] is None
    assert saved["model_kwargs"] == {"output_stride": 8}
    assert TrainConfig.from_dict(saved).model_kwargs == {"output_stride": 8}


def test_early_stopping_after_patience_epochs(shapes, tmp_path):
    # lr so small that the val mIoU cannot move: epoch 1 sets the best, epochs 2-3 do not beat it
    run_dir = train(tiny_config(shapes, tmp_path / "run", epochs=6, lr=1e-12, patience=2))
    rows = read_rows(run_dir)
    assert len(rows) == 3
    saved = load_checkpoint(run_dir / "last.pt")
    assert saved["bad_epochs"] == 2 and saved["best"]["epoch"] == 1


def test_accumulation_equals_a_bigger_batch(shapes, tmp_path):
    common = dict(
        epochs=1,
        model_kwargs={"base_width": 4, "depth": 2, "batch_norm": False},
        crop_size=32,
        scale_range=(1.0, 1.0),
        jitter=0.0,
        optimizer="sgd",
        lr=0.5,
        val_split=0.0,
    )

    def weights(name: str, **kwargs) -> dict:
        run_dir = train(tiny_config(shapes, tmp_path / name, **{**common, **kwargs}))
        return load_checkpoint(run_dir / "last.pt")["model"]

    big = weights("big", batch_size=4)
    accumulated = weights("accum", batch_size=2, accum_steps=2)
    small = weights("small", batch_size=2)  # control: more, smaller steps end elsewhere
    for key in big:
        torch.testing.assert_close(accumulated[key], big[key], rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose(small[k], big[k], atol=1e-4) for k in big)


def test_val_split_is_carved_with_a_fixed_seed(tmp_path):
    samples = list(range(20))
    cfg = TrainConfig(data="x", val_split=0.25, seed=1)
    train_a, val_a = split_samples(cfg, {"train": samples})
    train_b, val_b = split_samples(
        TrainConfig(data="x", val_split=0.25, seed=2), {"train": samples}
    )
    assert val_a == val_b and len(val_a) == 5 and sorted(train_a + val_a) == samples
    assert split_samples(cfg, {"train": samples, "val": [99]})[1] == [99]
    assert len(split_samples(TrainConfig(data="x", val_split=0.01), {"train": samples})[1]) == 1
    with pytest.raises(ValueError, match="no 'train' split"):
        split_samples(cfg, {"test": samples})


def test_num_classes_below_the_data_is_a_clear_error(shapes, tmp_path):
    with pytest.raises(ValueError, match="num-classes 2 is below what the data holds: it has 3"):
        train(tiny_config(shapes, tmp_path / "run", num_classes=2))


def test_num_classes_above_the_data_trains_the_declared_count(shapes, tmp_path, caplog):
    """The RefineNet seed's `-n 21` on a VOC subset that lacks some classes."""
    run_dir = train(tiny_config(shapes, tmp_path / "run", epochs=1, num_classes=5))
    saved = load_checkpoint(run_dir / "last.pt")
    assert saved["model_kwargs"]["num_classes"] == 5
    assert saved["meta"]["class_names"] == [*SHAPE_CLASSES, "class_3", "class_4"]
    assert len(saved["meta"]["palette"]) == 5
    assert "classes 3..4 are absent" in caplog.text
    plain = train(tiny_config(shapes, tmp_path / "plain", epochs=1))  # control: the data's 3
    assert load_checkpoint(plain / "last.pt")["model_kwargs"]["num_classes"] == 3
