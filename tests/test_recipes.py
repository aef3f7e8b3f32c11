"""Named recipes: valid configs, flags win over them, `segworks train --recipe`, epoch fitting,
and the engine's `epoch_repeats`."""

from __future__ import annotations

import argparse
import csv
import itertools

import pytest

from segworks.commands import train as train_command
from segworks.config import TrainConfig
from segworks.data.synthetic import write_shapes_dataset
from segworks.engine.train import train
from segworks.models import build_model
from segworks.recipes import RECIPES, epochs_for_budget, recipe_config, recipe_settings


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_is_a_valid_config_with_a_buildable_model(name):
    cfg = recipe_config(name, data="somewhere", pretrained="none")
    settings = RECIPES[name].settings
    for key, value in settings.items():
        assert getattr(cfg, key) == value, key
    model = build_model(cfg.model, num_classes=3, **cfg.model_kwargs)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert RECIPES[name].name == name


@pytest.mark.parametrize("name", [n for n in sorted(RECIPES) if RECIPES[n].pretrained])
def test_pretrained_recipes_fine_tune_when_the_weights_are_installed(name, monkeypatch, caplog):
    from segworks.models import pretrained

    extra = RECIPES[name].pretrained
    monkeypatch.setattr(pretrained, "status", lambda entry: "installed")
    cfg = recipe_config(name, data="somewhere")
    for key, value in extra.items():
        assert getattr(cfg, key) == value, key
    assert cfg.mean == pretrained.WEIGHTS[extra["pretrained"]].mean  # normalisation follows
    monkeypatch.setattr(pretrained, "status", lambda entry: "download")
    scratch = recipe_config(name, data="somewhere")
    assert scratch.model == RECIPES[name].settings["model"] and scratch.pretrained is None
    assert "trains from scratch" in caplog.text  # said, not silent
    own = recipe_settings(name, {"pretrained": "mobilenet_v2", "model": "unet_mobilenet_v2"})
    assert own["pretrained"] == "mobilenet_v2" and own["lr"] == extra.get("lr", own["lr"])


def test_given_settings_win_and_epochs_drop_the_time_cap():
    settings = recipe_settings("small", {"lr": 0.05, "data": "d"})
    assert settings["lr"] == 0.05 and settings["max_minutes"] == 10.0
    assert settings["optimizer"] == RECIPES["small"].settings["optimizer"]
    assert "max_minutes" not in recipe_settings("small", {"epochs": 3})
    assert recipe_settings("small", {"epochs": 3, "max_minutes": 2.0})["max_minutes"] == 2.0


def test_another_model_drops_the_recipe_model_keywords():
    settings = recipe_settings("small", {"model": "segnet_basic"})
    assert "model_kwargs" not in settings
    scratch = recipe_settings("small", {"pretrained": "none"})
    assert scratch["model_kwargs"] == {"base_width": 16, "depth": 4}


def test_recipe_settings_are_copies():
    settings = recipe_settings("small", {"pretrained": "none"})
    settings["model_kwargs"]["base_width"] = 99
    assert RECIPES["small"].settings["model_kwargs"]["base_width"] == 16


def test_unknown_recipe_names_the_choices():
    with pytest.raises(ValueError, match="unknown recipe 'nope'; expected one of .*small"):
        recipe_settings("nope")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    return parser.parse_args(argv)


def test_train_flag_recipe_gives_the_recipe_config_with_flags_on_top():
    cfg = train_command.config_from_args(
        parse(["--data", "d", "--recipe", "camvid", "-l", "0.01", "--out", "o"])
    )
    assert cfg.lr == 0.01
    assert cfg.crop_size == RECIPES["camvid"].settings["crop_size"]
    assert cfg.eval_size == (180, 240) and cfg.class_weights == "median"
    plain = train_command.config_from_args(parse(["--data", "d", "--out", "o"]))
    assert plain.crop_size == TrainConfig(data="d").crop_size  # no recipe: the plain defaults


def test_eval_size_takes_one_or_two_numbers():
    assert (
        train_command.config_from_args(parse(["--data", "d", "--eval-size", "96"])).eval_size == 96
    )
    cfg = train_command.config_from_args(parse(["--data", "d", "--eval-size", "90", "120"]))
    assert cfg.eval_size == (90, 120)
    with pytest.raises(ValueError, match="--eval-size takes N or H W"):
        train_command.config_from_args(parse(["--data", "d", "--eval-size", "1", "2", "3"]))


def test_epochs_for_budget_fits_whole_epochs_to_the_clock():
    ticks = itertools.count()
    cfg = TrainConfig(data="d", model="unet", model_kwargs={"base_width": 2, "depth": 1},
                      batch_size=2, crop_size=16, device="cpu")  # fmt: skip
    # a clock that advances 1 s per reading: every step takes 1 s, 1.15 s with the margin
    epochs = epochs_for_budget(cfg, 2.0, train_images=10, clock=lambda: float(next(ticks)))
    assert epochs == int(120 / (1.15 * 5))
    assert epochs_for_budget(cfg, 0.01, train_images=10, clock=lambda: float(next(ticks))) == 1
    with pytest.raises(ValueError, match="minutes must be > 0"):
        epochs_for_budget(cfg, 0, train_images=10)


def test_epoch_repeats_visit_the_train_images_several_times_per_epoch(tmp_path):
    data = write_shapes_dataset(tmp_path / "data", num_train=4, num_val=1, size=32)

    def steps_after_one_epoch(repeats: int) -> int:
        out = tmp_path / f"run{repeats}"
        cfg = TrainConfig(data=str(data), model="unet", model_kwargs={"base_width": 2, "depth": 1},
                          epochs=1, epoch_repeats=repeats, batch_size=2, crop_size=32, workers=0,
                          device="cpu", out=str(out), tensorboard=False, progress=False)  # fmt: skip
        train(cfg)
        with open(out / "metrics.csv", newline="") as handle:
            return int(next(csv.DictReader(handle))["step"])

    assert steps_after_one_epoch(1) == 2
    assert steps_after_one_epoch(3) == 6
    with pytest.raises(ValueError, match="epoch_repeats must be >= 1"):
        TrainConfig(data="d", epoch_repeats=0)


def test_long_side_and_dihedral_flags_reach_the_config():
    args = argparse.Namespace()
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    args = parser.parse_args(["--data", "d", "--long-side", "96", "--dihedral"])
    settings = train_command._given_fields(args)
    assert settings["long_side"] == 96 and settings["dihedral"] is True
    with pytest.raises(ValueError, match="long_side"):
        TrainConfig(data="d", long_side=4)


def test_another_model_without_weights_takes_the_from_scratch_recipe(monkeypatch):
    from segworks.models import pretrained

    monkeypatch.setattr(pretrained, "status", lambda entry: "installed")
    mine = recipe_settings("small", {"model": "unet"})
    assert mine["model"] == "unet" and "pretrained" not in mine
    assert recipe_settings("small", {"model": "unet_efficientnet_lite2"})["pretrained"] == (
        "efficientnet_lite2"
    )


def test_tta_flags_are_stored_and_checked():
    cfg = train_command.config_from_args(
        parse(["--data", "d", "--tta-flip", "--tta-scales", "1", "1.25", "--out", "o"])
    )
    assert cfg.tta_flip is True and cfg.tta_scales == (1.0, 1.25)
    assert cfg.to_dict()["tta_scales"] == [1.0, 1.25]  # what eval and predict read back
    plain = train_command.config_from_args(parse(["--data", "d", "--out", "o"]))
    assert plain.tta_flip is False and plain.tta_scales == (1.0,)
    with pytest.raises(ValueError, match="tta_scales must be numbers > 0, got \\[0.0\\]"):
        TrainConfig(data="d", tta_scales=(0.0,))
    with pytest.raises(ValueError, match="--tta-flip .* does not apply to --task instance"):
        TrainConfig(data="d", task="instance", tta_flip=True)
