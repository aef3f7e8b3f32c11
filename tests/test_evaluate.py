"""Evaluation at original resolution (segworks.engine.evaluate) and `segworks eval`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyNet, reference_predictions, write_checkpoint, write_dataset
from PIL import Image

from segworks.cli import main
from segworks.data.meta import DatasetMeta
from segworks.engine.evaluate import evaluate
from segworks.errors import DataError
from segworks.inference import InferenceOptions


def make_model(num_classes: int, seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(num_classes).eval()


class ListDataset:
    """The `read(i)` interface of segworks.data.SegmentationDataset over arrays in memory."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self):
        return len(self.pairs)

    def read(self, index):
        image, labels = self.pairs[index]
        return Image.fromarray(image), labels


def random_pairs(sizes, num_classes, seed=0, void_fraction=0.1):
    rng = np.random.default_rng(seed)
    pairs = []
    for height, width in sizes:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        labels = rng.integers(0, num_classes, (height, width)).astype(np.int64)
        labels[rng.random((height, width)) < void_fraction] = 255
        pairs.append((image, labels))
    return pairs


def brute_force_matrix(predictions, pairs, num_classes):
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for pred, (_, gt) in zip(predictions, pairs):
        keep = gt != 255
        np.add.at(matrix, (gt[keep], pred[keep]), 1)
    return matrix


# --------------------------------------------------------------------------- engine
def test_evaluate_matches_brute_force_and_torchmetrics():
    from torchmetrics.classification import MulticlassJaccardIndex

    pairs = random_pairs([(20, 30), (17, 23), (25, 25)], num_classes=4)
    model = make_model(4)
    meta = DatasetMeta(class_names=["a", "b", "c", "d"])
    results = evaluate(model, ListDataset(pairs), meta, progress=False)

    predictions = reference_predictions(model, pairs)
    expected = brute_force_matrix(predictions, pairs, 4)
    np.testing.assert_array_equal(np.array(results["confusion_matrix"]), expected)
    tp = np.diag(expected)
    iou = tp / (expected.sum(0) + expected.sum(1) - tp)
    assert results["miou"] == pytest.approx(np.nanmean(iou))
    assert results["pixel_accuracy"] == pytest.approx(tp.sum() / expected.sum())
    assert results["num_pixels"] == sum(int((gt != 255).sum()) for _, gt in pairs)

    jaccard = MulticlassJaccardIndex(num_classes=4, ignore_index=255, average="macro")
    for pred, (_, gt) in zip(predictions, pairs):
        jaccard.update(torch.from_numpy(pred)[None], torch.from_numpy(gt)[None])
    assert results["miou"] == pytest.approx(float(jaccard.compute()), abs=1e-6)
    assert results["num_images"] == 3
    assert [row["index"] for row in results["per_image"]] == [0, 1, 2]


def test_resized_inference_is_scored_at_original_resolution():
    pairs = random_pairs([(21, 34), (40, 18)], num_classes=3, seed=2)
    model = make_model(3)
    meta = DatasetMeta(class_names=["a", "b", "c"])
    results = evaluate(
        model, ListDataset(pairs), meta, options=InferenceOptions(size=(16, 16)), progress=False
    )
    assert results["num_pixels"] == sum(int((gt != 255).sum()) for _, gt in pairs)
    assert results["settings"]["size"] == [16, 16]
    whole = evaluate(model, ListDataset(pairs), meta, progress=False)
    assert results["confusion_matrix"] != whole["confusion_matrix"]  # the resize is applied


def test_binary_threshold_maps_to_two_classes():
    pairs = random_pairs([(20, 20), (15, 30)], num_classes=2, seed=3)
    model = make_model(1)
    meta = DatasetMeta(class_names=["background", "foreground"], task="binary")
    for threshold in (0.3, 0.7):
        results = evaluate(
            model,
            ListDataset(pairs),
            meta,
            options=InferenceOptions(threshold=threshold),
            progress=False,
        )
        predictions = reference_predictions(model, pairs, binary_threshold=threshold)
        expected = brute_force_matrix(predictions, pairs, 2)
        np.testing.assert_array_equal(np.array(results["confusion_matrix"]), expected)


def test_tta_and_slide_settings_are_applied():
    pairs = random_pairs([(24, 36)], num_classes=3, seed=4)
    model, meta = make_model(3), DatasetMeta(class_names=["a", "b", "c"])
    plain = evaluate(model, ListDataset(pairs), meta, progress=False)
    tiled = evaluate(
        model,
        ListDataset(pairs),
        meta,
        options=InferenceOptions(mode="slide", tile=(16, 16), margin=2),
        progress=False,
    )
    assert tiled["confusion_matrix"] == plain["confusion_matrix"]  # margin >= receptive field
    tta = evaluate(
        model, ListDataset(pairs), meta, options=InferenceOptions(tta_flip=True), progress=False
    )
    assert tta["settings"]["tta_flip"] is True
    assert tta["confusion_matrix"] != plain["confusion_matrix"]


def test_worst_and_best_samples_follow_the_report_contract():
    pairs = random_pairs([(12, 12)] * 7, num_classes=3, seed=5)
    model, meta = make_model(3), DatasetMeta(class_names=["a", "b", "c"])
    results = evaluate(model, ListDataset(pairs), meta, collect_samples=2, progress=False)
    samples = results["samples"]
    scores = sorted(row["miou"] for row in results["per_image"])
    assert [s["group"] for s in samples] == ["worst", "worst", "best", "best"]
    assert [s["miou"] for s in samples] == [scores[0], scores[1], scores[-1], scores[-2]]
    first = samples[0]
    assert {"name", "image", "gt", "pred", "miou", "image_path", "index"} <= set(first)
    assert first["gt"].dtype == np.int64 and first["pred"].dtype == np.int64
    assert first["image"].size == (12, 12) and first["pred"].shape == (12, 12)
    few = evaluate(model, ListDataset(pairs[:3]), meta, collect_samples=2, progress=False)
    assert [s["group"] for s in few["samples"]] == ["worst", "worst", "best"]
    assert len({s["index"] for s in few["samples"]}) == 3


def test_all_ignore_image_is_not_ranked_and_absent_class_is_nan():
    pairs = random_pairs([(10, 10), (10, 10)], num_classes=2, seed=6)
    pairs[1] = (pairs[1][0], np.full((10, 10), 255, np.int64))
    model, meta = make_model(3), DatasetMeta(class_names=["a", "b", "c"])
    results = evaluate(model, ListDataset(pairs), meta, collect_samples=1, progress=False)
    assert math.isnan(results["per_image"][1]["miou"])
    assert [s["index"] for s in results["samples"]] == [0]
    assert math.isnan(results["accuracy"][2])  # class c never in the ground truth


def test_labels_outside_the_classes_name_the_image():
    pairs = random_pairs([(8, 8)], num_classes=5, seed=7, void_fraction=0)
    dataset = ListDataset(pairs)
    dataset.samples = [type("S", (), {"image": Path("bad_image.png")})()]
    with pytest.raises(DataError, match="bad_image.png"):
        evaluate(make_model(3), dataset, DatasetMeta(class_names=["a", "b", "c"]), progress=False)


# --------------------------------------------------------------------------- CLI
def test_cli_eval_prints_table_and_writes_json_csv_png(registered, tmp_path, capsys):
    data = write_dataset(tmp_path / "data", num_classes=3)
    checkpoint = write_checkpoint(tmp_path / "model.pt", num_classes=3)
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            str(checkpoint),
            "--data",
            str(data),
            "--tta",
            "--tta-scales",
            "1",
            "0.5",
            "--json",
            str(out / "r.json"),
            "--csv",
            str(out / "r.csv"),
            "--confusion-png",
            str(out / "cm.png"),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "== plain" in printed and "== tta" in printed and "mIoU plain" in printed
    for name in ("sky", "road", "car", "mIoU", "fwIoU", "mean Dice", "pixel accuracy"):
        assert name in printed
    report = json.loads((out / "r.json").read_text())
    assert set(report["variants"]) == {"plain", "tta"}
    plain = report["variants"]["plain"]
    assert plain["num_images"] == 3 and report["split"] == "val"
    assert plain["num_pixels"] == 20 * 24 + 18 * 30 + 22 * 22
    assert report["variants"]["tta"]["settings"]["tta_scales"] == [1.0, 0.5]
    rows = (out / "r.csv").read_text().splitlines()
    assert rows[0].startswith("variant,class,iou") and len(rows) == 1 + 2 * 4
    assert Image.open(out / "cm.png").mode == "RGB"


def test_cli_eval_reports_the_tta_the_run_stored(registered, tmp_path, capsys):
    """A checkpoint whose run set `tta_flip` is scored plain and with flip TTA, the TTA figure
    equal to `--tta --tta-scales 1` on the same weights; `--no-tta` scores plain only."""
    data = write_dataset(tmp_path / "data", num_classes=3)
    plain_checkpoint = write_checkpoint(tmp_path / "plain.pt", num_classes=3)
    state = torch.load(plain_checkpoint, weights_only=True)
    state["config"]["tta_flip"] = True
    stored = tmp_path / "stored.pt"
    torch.save(state, stored)

    def report(checkpoint: Path, *flags: str) -> dict:
        out = tmp_path / f"{checkpoint.stem}{len(flags)}.json"
        argv = ["eval", str(checkpoint), "--data", str(data), "--no-progress", "--json", str(out)]
        assert main(argv + list(flags)) == 0
        return json.loads(out.read_text())["variants"]

    by_default = report(stored)
    asked = report(plain_checkpoint, "--tta", "--tta-scales", "1")
    assert set(by_default) == {"plain", "tta"}
    assert by_default["tta"]["settings"]["tta_flip"] is True
    assert by_default["tta"]["confusion_matrix"] == asked["tta"]["confusion_matrix"]
    assert by_default["tta"]["confusion_matrix"] != by_default["plain"]["confusion_matrix"]
    assert set(report(stored, "--no-tta")) == {"plain"}
    assert set(report(stored, "--no-tta-flip")) == {"plain"}  # nothing stored is left to run
    capsys.readouterr()
    assert main(["eval", str(stored), "--data", str(data), "--no-tta", "--tta"]) == 2
    assert "--no-tta" in capsys.readouterr().err


def test_cli_eval_binary_and_report(registered, tmp_path, monkeypatch):
    calls = {}

    def fake_report(out_dir, results, *, class_names, palette, samples, provenance):
        calls.update(results=results, class_names=class_names, samples=samples)
        calls.update(provenance=provenance)
        return Path(out_dir) / "report.html"

    import segworks.report

    monkeypatch.setattr(segworks.report, "write_report", fake_report)
    data = write_dataset(tmp_path / "data", num_classes=2, binary=True)
    checkpoint = write_checkpoint(tmp_path / "model.pt", num_classes=2, task="binary")
    code = main(
        ["eval", str(checkpoint), "--data", str(data), "--report", str(tmp_path / "rep")]
        + ["--report-samples", "1", "--threshold", "0.4", "--no-progress"]
    )
    assert code == 0
    assert calls["class_names"] == ["background", "foreground"]
    assert len(calls["results"]["iou"]) == 2 and "samples" not in calls["results"]
    assert [s["group"] for s in calls["samples"]] == ["worst", "best"]
    assert calls["provenance"]["threshold"] == "0.4"


def test_cli_eval_class_count_mismatch_exits_2(registered, tmp_path, capsys):
    data = write_dataset(tmp_path / "data", num_classes=4)
    checkpoint = write_checkpoint(tmp_path / "model.pt", num_classes=3)
    assert main(["eval", str(checkpoint), "--data", str(data), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "class count mismatch" in error and "3 classes" in error and "has 4" in error


def test_cli_eval_scores_data_with_fewer_classes_than_the_checkpoint(registered, tmp_path):
    """A model trained with `-n 4` on data that shows only 3 classes scores that data."""
    data = write_dataset(tmp_path / "data", num_classes=3)
    checkpoint = write_checkpoint(tmp_path / "model.pt", num_classes=4)
    out = tmp_path / "m.json"
    argv = ["eval", str(checkpoint), "--data", str(data), "--no-progress", "--json", str(out)]
    assert main(argv) == 0
    assert len(json.loads(out.read_text())["variants"]["plain"]["iou"]) == 4


def test_cli_eval_unknown_split_exits_2(registered, tmp_path, capsys):
    data = write_dataset(tmp_path / "data", num_classes=3)
    checkpoint = write_checkpoint(tmp_path / "model.pt", num_classes=3)
    assert main(["eval", str(checkpoint), "--data", str(data), "--split", "test"]) == 2
    assert "split 'test' not found" in capsys.readouterr().err
