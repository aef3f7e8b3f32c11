"""The instance engine end to end: train (with an empty image), resume, eval and predict."""

import json
from argparse import Namespace

import numpy as np
import pytest
import torch
from PIL import Image

from segworks.checkpoint import load_checkpoint
from segworks.coco_eval import encode_mask
from segworks.data.instances import synthetic_shapes
from segworks.engine.instance import run_eval, run_predict, run_train
from segworks.errors import DataError


def _write_coco(folder, samples):
    """Synthetic shapes as PNG files and a COCO JSON (RLE masks); the last image is empty."""
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index, (image, target) in enumerate(samples):
        pixels = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        empty = index == len(samples) - 1
        if empty:
            pixels[:] = 40
        Image.fromarray(pixels).save(folder / f"{index}.png")
        images.append({"id": index, "file_name": f"{index}.png", "height": 64, "width": 64})
        for mask, label in zip(target["masks"], target["labels"].tolist()):
            if not empty:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": index,
                        "category_id": label,
                        "segmentation": encode_mask(mask.numpy()),
                        "iscrowd": 0,
                    }
                )
    categories = [{"id": 1, "name": "disc"}, {"id": 2, "name": "square"}]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "ann.json").write_text(json.dumps(data))
    return folder / "ann.json"


def _train_args(ann, out, **extra):
    args = {
        "data": str(ann),
        "model": "maskrcnn_tiny",
        "out": str(out),
        "epochs": 1,
        "batch_size": 2,
        "lr": 2e-3,
        "optimizer": "adamw",
        "val_split": 0.25,
        "seed": 0,
        "device": "cpu",
        "min_size": 64,
        "max_size": 64,
        "gamma": 1.0,
        "resume": None,
    }
    return Namespace(**(args | extra))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("instance")
    torch.manual_seed(0)
    ann = _write_coco(root / "data", synthetic_shapes(8, size=64, seed=3))
    assert run_train(_train_args(ann, root / "run")) == 0
    return root, ann


def test_train_writes_instance_checkpoints(trained):
    root, _ = trained
    best = load_checkpoint(root / "run" / "best.pt")
    last = load_checkpoint(root / "run" / "last.pt")
    assert best["model_name"] == "maskrcnn_tiny" and "optimizer" not in best
    assert best["meta"]["task"] == "instance"
    assert best["meta"]["class_names"] == ["background", "disc", "square"]
    assert best["model_kwargs"]["num_classes"] == 3 and last["epoch"] == 1
    assert set(last["metrics"]["segm"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"}
    assert np.isfinite(last["metrics"]["loss"])


def test_resume_continues_from_last(trained):
    root, ann = trained
    args = _train_args(ann, root / "run", epochs=2, resume=str(root / "run" / "last.pt"))
    assert run_train(args) == 0
    assert load_checkpoint(root / "run" / "last.pt")["epoch"] == 2


def test_only_empty_images_train(tmp_path):
    samples = synthetic_shapes(1, size=64, seed=0)
    ann = _write_coco(tmp_path / "data", samples)  # one image, and it is the empty one
    assert run_train(_train_args(ann, tmp_path / "run", val_split=0.0)) == 0
    assert (tmp_path / "run" / "best.pt").is_file()


def test_eval_and_predict(trained, tmp_path, capsys):
    root, ann = trained
    checkpoint = str(root / "run" / "best.pt")
    eval_args = Namespace(checkpoint=checkpoint, data=str(ann), json=str(tmp_path / "m.json"))
    assert run_eval(eval_args) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) >= {"bbox", "segm", "loss"} and "disc" in metrics["segm"]["per_class"]
    assert "AP50" in capsys.readouterr().out
    out = tmp_path / "pred"
    inputs = [str(ann.parent / "0.png"), str(ann.parent / "7.png")]  # 7.png has no objects
    args = Namespace(
        checkpoint=checkpoint, inputs=inputs, out=str(out), score_threshold=0.0, contour=True
    )
    assert run_predict(args) == 0
    assert (out / "0.png").is_file() and (out / "7.png").is_file()
    results = json.loads((out / "results.json").read_text())
    assert all(
        {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(r) for r in results
    )
    masks = sorted((out / "masks").rglob("*.png"))
    assert len(masks) == len(results)


def test_eval_rejects_other_classes(trained, tmp_path):
    root, ann = trained
    data = json.loads(ann.read_text())
    data["categories"][1]["name"] = "triangle"
    (ann.parent / "other.json").write_text(json.dumps(data))
    args = Namespace(checkpoint=str(root / "run" / "best.pt"), data=str(ann.parent / "other.json"))
    with pytest.raises(DataError, match="differ from the checkpoint"):
        run_eval(args)
