"""The seeds' own command lines mean what they meant: the RefineNet seed's schedule for its data
flags, its predict.py's `-w WEIGHTS -n CLASSES -i IMAGE`, and predict saying what scale it used."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

import segworks
from segworks.cli import main
from segworks.commands import train as train_command

SEED_DATA = ["-tt", "train.txt", "-tr", "images", "-ta", "annotations"]


def train_config(*flags: str):
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    return train_command.config_from_args(parser.parse_args(list(flags)))


def test_seed_flags_train_with_the_seed_schedule_and_snapshots():
    seed = train_config(*SEED_DATA, "-e", "500", "-n", "21", "-l", "0.0001")
    assert seed.schedule == "step" and seed.snapshot_every == 10
    assert train_config(*SEED_DATA, "--schedule", "cosine").schedule == "cosine"
    assert train_config(*SEED_DATA, "--snapshot-every", "5").snapshot_every == 5
    assert train_config("--data", "d").schedule == "poly"  # control: other runs keep poly


def test_train_help_names_the_seed_schedule(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "x0.1 at epochs 10, 50, then every 100" in text


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    kwargs = {"num_classes": 3, "base_width": 4, "depth": 2}
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(
        {
            "model": segworks.get_model("unet", **kwargs).state_dict(),
            "model_name": "unet",
            "model_kwargs": kwargs,
            "meta": {"class_names": ["bg", "a", "b"], "task": "semantic"},
            "config": {"long_side": 32},
        },
        path,
    )
    return path


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(path)
    return path


def test_seed_predict_flags_name_the_weights_classes_and_image(checkpoint, image, tmp_path):
    out = tmp_path / "out"
    argv = ["predict", "-w", str(checkpoint), "-n", "3", "-i", str(image), "--out", str(out)]
    assert main(argv) == 0
    assert Image.open(out / "photo_index.png").size == (60, 40)


def test_seed_predict_num_classes_is_checked_against_the_checkpoint(
    checkpoint, image, tmp_path, capsys
):
    argv = ["predict", "-w", str(checkpoint), "-n", "21", "-i", str(image), "-o", str(tmp_path)]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert "-n/--num-classes 21, but the checkpoint predicts 3 classes (bg, a, b)" in error
    assert len(error.splitlines()) == 1


def test_predict_says_the_scale_it_uses_and_how_to_turn_it_off(checkpoint, image, tmp_path, capsys):
    assert main(["predict", str(checkpoint), str(image), "--out", str(tmp_path / "a")]) == 0
    said = capsys.readouterr().out
    assert "longer side of 32 px" in said and "--long-side 0" in said
    argv = ["predict", str(checkpoint), str(image), "--out", str(tmp_path / "b")]
    assert main([*argv, "--long-side", "0"]) == 0
    assert "longer side" not in capsys.readouterr().out  # control: no resize, nothing said
