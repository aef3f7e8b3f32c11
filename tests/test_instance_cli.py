"""`segworks train/eval/predict/check-data` on a COCO instance set, end to end through cli.main.

The data is written by the test: squares and triangles as COCO polygons (category ids 3 and 7,
so a label -> category id mix-up shows), one RLE annotation and one empty image.
"""

import csv
import json

import numpy as np
import pytest
import torch
from helpers import CATEGORIES, COCO_SIZE, write_coco
from PIL import Image
from pycocotools.coco import COCO

from segworks.checkpoint import load_checkpoint
from segworks.cli import main
from segworks.config import TrainConfig
from segworks.engine.instance import build_instance_model
from segworks.errors import DataError

SIZE = COCO_SIZE
TINY = ["--model", "maskrcnn_tiny", "--min-size", str(SIZE), "--max-size", str(SIZE)]
# A low score threshold so that a model trained for one epoch still detects something.
LOOSE = ["--model-arg", "box_score_thresh=0.0", "--model-arg", "width=8"]
RUNTIME = ["--device", "cpu", "--workers", "0", "--no-tensorboard", "--seed", "0"]


def _one_line_error(capsys, argv: list[str], *words: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    for word in words:
        assert word in err[0]
    return err[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """12 training images, 4 validation images, and one epoch of maskrcnn_tiny."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    root = tmp_path_factory.mktemp("cli")
    train = write_coco(root / "train", 12, seed=0)
    val = write_coco(root / "val", 4, seed=1)
    argv = ["train", "--task", "instance", *TINY, *LOOSE, "--data", str(train), "-e", "1"]
    argv += ["-b", "4", "-l", "0.002", "--optimizer", "adamw", "--val-split", "0.25"]
    assert main([*argv, *RUNTIME, "--out", str(root / "run")]) == 0
    return {"root": root, "train": train, "val": val, "checkpoint": root / "run" / "best.pt"}


def test_train_writes_checkpoints_with_category_ids(run):
    best = load_checkpoint(run["checkpoint"])
    assert best["meta"]["class_names"] == ["background", "square", "triangle"]
    assert best["meta"]["category_ids"] == [3, 7]
    assert best["model_kwargs"]["min_size"] == SIZE and best["model_kwargs"]["width"] == 8
    assert (run["root"] / "run" / "last.pt").is_file()
    assert not (run["root"] / "run" / "tb").exists()  # --no-tensorboard


def test_instance_run_folder_has_config_json_and_metrics_csv(run):
    folder = run["root"] / "run"
    config = json.loads((folder / "config.json").read_text())
    assert config["task"] == "instance" and config["epochs"] == 1 and config["data"]
    with open(folder / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1"]
    assert float(rows[0]["train_loss"]) > 0 and rows[0]["segm_AP"] != ""


def test_eval_prints_and_writes_box_and_mask_ap(run, capsys, tmp_path):
    capsys.readouterr()
    out = tmp_path / "metrics.json"
    assert (
        main(["eval", str(run["checkpoint"]), "--data", str(run["val"]), "--json", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    metrics = json.loads(out.read_text())
    for iou_type in ("bbox", "segm"):
        assert set(metrics[iou_type]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"}
        assert set(metrics[iou_type]["per_class"]) == {"square", "triangle"}
        assert 0.0 <= metrics[iou_type]["AP50"] <= 1.0
        row = next(line for line in printed.splitlines() if line.startswith(iou_type + " "))
        assert float(row.split()[1]) == pytest.approx(metrics[iou_type]["AP"], abs=1e-4)
    assert "segm AP[triangle]" in printed


def test_predict_writes_overlay_masks_and_coco_results(run, tmp_path, capsys):
    image = run["val"].parent / "img0.png"
    out, results_file = tmp_path / "pred", tmp_path / "results.json"
    argv = ["predict", str(run["checkpoint"]), str(image), "--out", str(out), "--contour"]
    argv += ["--coco-json", str(results_file), "--score-threshold", "0.0", "--device", "cpu"]
    assert main(argv) == 0
    overlay = Image.open(out / "img0.png")
    assert overlay.size == (SIZE, SIZE)
    assert not np.array_equal(np.asarray(overlay.convert("RGB")), np.asarray(Image.open(image)))
    results = json.loads(results_file.read_text())
    assert results and {r["category_id"] for r in results} <= {3, 7}  # ids, not labels 1, 2
    masks = sorted((out / "masks" / "img0").glob("*.png"))
    assert len(masks) == len(results)
    assert np.asarray(Image.open(masks[0])).shape == (SIZE, SIZE)
    gt = COCO()
    gt.dataset = {
        "images": json.loads((out / "images.json").read_text()),
        "annotations": [],
        "categories": CATEGORIES,
    }
    gt.createIndex()
    detections = gt.loadRes(str(results_file))  # pycocotools accepts the file as it is
    assert len(detections.getAnnIds()) == len(results)
    assert detections.annToMask(detections.loadAnns(1)[0]).shape == (SIZE, SIZE)


def test_check_data_reports_instances_per_class(run, capsys):
    data = json.loads(run["train"].read_text())
    capsys.readouterr()
    assert main(["check-data", str(run["train"]), "--task", "instance"]) == 0
    out = capsys.readouterr().out
    for category, name in ((3, "square"), (7, "triangle")):
        count = sum(a["category_id"] == category for a in data["annotations"])
        assert f"{name}: {count}" in out
    assert "empty images: 1" in out and "problems: 0" in out


def test_bad_inputs_exit_2_with_one_line(run, tmp_path, capsys):
    base = ["train", "--task", "instance", *TINY, "-e", "1", *RUNTIME, "--out", str(tmp_path)]
    missing = tmp_path / "nothing.json"
    _one_line_error(capsys, [*base, "--data", str(missing)], str(missing), "not found")
    data = json.loads(run["train"].read_text())
    data["annotations"][2]["category_id"] = 9
    bad_category = run["train"].parent / "bad_category.json"
    bad_category.write_text(json.dumps(data))
    _one_line_error(capsys, [*base, "--data", str(bad_category)], "unknown category id 9")
    capsys.readouterr()
    assert main(["check-data", str(bad_category), "--task", "instance"]) == 2
    assert "unknown category id 9" in capsys.readouterr().out
    data = json.loads(run["train"].read_text())
    data["images"][1]["file_name"] = "gone.png"
    no_image = run["train"].parent / "no_image.json"
    no_image.write_text(json.dumps(data))
    _one_line_error(capsys, [*base, "--data", str(no_image)], "gone.png", "missing")
    _one_line_error(capsys, ["eval", str(run["checkpoint"]), "--data", str(no_image)], "gone.png")


def test_reset_classifier_fine_tunes_to_another_class_count(run, tmp_path, capsys):
    three = [*CATEGORIES, {"id": 9, "name": "disc"}]  # the source checkpoint has 2 classes
    data = write_coco(tmp_path / "three", 4, seed=2, categories=three, empty_last=False)
    base = ["train", "--task", "instance", *TINY, "--model-arg", "width=8", "--data", str(data)]
    base += ["--weights", str(run["checkpoint"]), "-e", "1", "--val-split", "0", *RUNTIME]
    line = _one_line_error(
        capsys, [*base, "--out", str(tmp_path / "a")], "shape mismatches", "--reset-classifier"
    )
    assert "cls_score" in line and "--reset-classifier" in line
    assert main([*base, "--reset-classifier", "--out", str(tmp_path / "b")]) == 0
    assert load_checkpoint(tmp_path / "b" / "last.pt")["model_kwargs"]["num_classes"] == 4


def test_reset_classifier_keeps_all_but_the_class_layers(run):
    source = load_checkpoint(run["checkpoint"])["model"]
    args = {
        "model": "maskrcnn_tiny",
        "model_kwargs": {"width": 8},
        "weights": str(run["checkpoint"]),
    }
    torch.manual_seed(0)
    model = build_instance_model(_config(**args, reset_classifier=True), num_classes=4)
    state = model.state_dict()
    reset = {
        "roi_heads.box_predictor.cls_score.weight": (4, 128),
        "roi_heads.box_predictor.bbox_pred.weight": (16, 128),
        "roi_heads.mask_predictor.mask_fcn_logits.weight": (4, 32, 1, 1),
    }
    for key, shape in reset.items():
        assert tuple(state[key].shape) == shape and state[key].shape != source[key].shape
    kept = [k for k in state if not k.startswith(("roi_heads.box_predictor", "roi_heads.mask_p"))]
    assert "roi_heads.mask_predictor.conv5_mask.weight" in state
    for key in [*kept, "roi_heads.mask_predictor.conv5_mask.weight"]:
        torch.testing.assert_close(state[key], source[key], msg=key)
    with pytest.raises(DataError, match="reset-classifier"):  # the control: without the flag
        build_instance_model(_config(**args, reset_classifier=False), num_classes=4)
    model = build_instance_model(_config(**args), num_classes=3)  # same classes: all loaded
    torch.testing.assert_close(
        model.state_dict()["roi_heads.box_predictor.cls_score.weight"],
        source["roi_heads.box_predictor.cls_score.weight"],
    )


def _config(**values) -> TrainConfig:
    return TrainConfig(task="instance", data="unused", min_size=SIZE, max_size=SIZE, **values)


def test_min_size_test_reaches_the_checkpoint_and_bad_values_exit_2(run, tmp_path, capsys):
    """`--min-size-test N` is a builder keyword saved with the model, so eval and predict
    rebuild it at that size; 0 is refused in one line before any training."""
    from segworks.engine.instance import instance_model_kwargs
    from segworks.models import model_from_checkpoint

    cfg = TrainConfig(data=str(run["train"]), task="instance", model="maskrcnn_tiny",
                      min_size=SIZE, max_size=SIZE, min_size_test=2 * SIZE)  # fmt: skip
    kwargs = instance_model_kwargs(cfg, num_classes=3)
    assert kwargs["min_size_test"] == 2 * SIZE
    saved = load_checkpoint(run["checkpoint"])
    saved["model_kwargs"] = saved["model_kwargs"] | {"min_size_test": 2 * SIZE}
    model = model_from_checkpoint(saved).eval()
    assert model.transform.min_size == (2 * SIZE,) and model.transform.max_size == 2 * SIZE
    base = ["train", "--task", "instance", *TINY, "-e", "1", *RUNTIME, "--out", str(tmp_path)]
    _one_line_error(capsys, [*base, "--data", str(run["train"]), "--min-size-test", "0"],
                    "min_size_test must be a positive number of pixels, got 0")  # fmt: skip
