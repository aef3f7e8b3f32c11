"""CocoEvaluator against pycocotools' COCOeval run directly on the same data."""

import contextlib
import copy
import io
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segworks.coco_eval import CocoEvaluator, encode_mask, outputs_to_coco_results

H, W = 64, 80


def _box_mask(x1, y1, x2, y2):
    mask = torch.zeros(H, W, dtype=torch.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask


def _ground_truth():
    """Three images: two objects, one object of class 2, and an image with no objects."""
    objects = {1: [(1, (5, 5, 30, 25)), (2, (40, 10, 70, 50))], 2: [(2, (10, 20, 35, 60))], 3: []}
    images, annotations = [], []
    for image_id, items in objects.items():
        images.append({"id": image_id, "height": H, "width": W, "file_name": f"{image_id}.png"})
        for label, (x1, y1, x2, y2) in items:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                    "segmentation": encode_mask(_box_mask(x1, y1, x2, y2).numpy()),
                }
            )
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    return {"images": images, "annotations": annotations, "categories": categories}, objects


def _coco(dataset):
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _output(items):
    boxes = torch.tensor([box for _, box, _ in items], dtype=torch.float32).reshape(-1, 4)
    masks = [_box_mask(*box)[None].float() for _, box, _ in items]
    return {
        "boxes": boxes,
        "labels": torch.tensor([label for label, _, _ in items], dtype=torch.int64),
        "scores": torch.tensor([score for _, _, score in items], dtype=torch.float32),
        "masks": torch.stack(masks) if masks else torch.zeros(0, 1, H, W),
    }


def _direct(dataset, predictions, iou_type):
    """pycocotools on its own: stats and per-class AP (catIds restricted to one class)."""
    results = []
    for image_id, output in predictions.items():
        results += outputs_to_coco_results(image_id, output)
    if iou_type == "segm":
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = _coco(dataset)
        evaluation = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iou_type)
        evaluation.params.imgIds = sorted(predictions)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        per_class = {}
        for cat in dataset["categories"]:
            single = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iou_type)
            single.params.imgIds, single.params.catIds = sorted(predictions), [cat["id"]]
            single.evaluate()
            single.accumulate()
            single.summarize()
            per_class[cat["name"]] = single.stats[0]
    return evaluation.stats, per_class


def test_perfect_predictions_give_ap_one():
    dataset, objects = _ground_truth()
    evaluator = CocoEvaluator(_coco(dataset))
    evaluator.update(
        {i: _output([(lbl, box, 0.9) for lbl, box in objs]) for i, objs in objects.items()}
    )
    metrics = evaluator.compute()
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(1.0)
        assert metrics[iou_type]["AP50"] == pytest.approx(1.0)
        assert metrics[iou_type]["per_class"] == {
            "cat": pytest.approx(1.0),
            "dog": pytest.approx(1.0),
        }
        assert math.isnan(metrics[iou_type]["APl"])  # no large objects: pycocotools says -1


def test_shifted_and_missing_predictions_match_pycocotools():
    dataset, _ = _ground_truth()
    predictions = {
        1: _output([(1, (8, 7, 33, 27), 0.9), (1, (40, 10, 70, 50), 0.6)]),  # shift; wrong class
        2: _output([(2, (10, 28, 35, 68), 0.8), (2, (0, 0, 10, 10), 0.95)]),  # shift; false pos.
        3: _output([(1, (20, 20, 40, 40), 0.3)]),  # a false positive on the empty image
    }
    evaluator = CocoEvaluator(_coco(dataset))
    evaluator.update(predictions)
    metrics = evaluator.compute()
    for iou_type in ("bbox", "segm"):
        stats, per_class = _direct(dataset, predictions, iou_type)
        got = [metrics[iou_type][k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
        expected = [math.nan if v < 0 else v for v in stats[:6]]
        np.testing.assert_allclose(got, expected)
        assert 0.0 < metrics[iou_type]["AP"] < 1.0
        for name, value in per_class.items():
            assert metrics[iou_type]["per_class"][name] == pytest.approx(value)


def test_unknown_ids_are_errors_not_zero_ap():
    dataset, _ = _ground_truth()
    evaluator = CocoEvaluator(_coco(dataset))
    with pytest.raises(ValueError, match="image id 7"):
        evaluator.update({7: _output([(1, (5, 5, 30, 25), 0.9)])})
    with pytest.raises(ValueError, match=r"category ids \[5\]"):
        evaluator.update({1: _output([(5, (5, 5, 30, 25), 0.9)])})
    mapped = CocoEvaluator(_coco(dataset), label_to_category={1: 2, 2: 1})
    mapped.update({2: _output([(1, (10, 20, 35, 60), 0.9)])})  # label 1 -> category 2 (dog)
    assert mapped.compute()["segm"]["per_class"]["dog"] == pytest.approx(1.0)
    wrong_size = _output([(1, (5, 5, 30, 25), 0.9)])
    wrong_size["masks"] = torch.zeros(1, 1, H + 1, W)
    with pytest.raises(ValueError, match="masks of image 1"):
        evaluator.update({1: wrong_size})


def test_empty_predictions_give_zero_and_reset_clears():
    dataset, objects = _ground_truth()
    evaluator = CocoEvaluator(_coco(dataset))
    evaluator.update({i: _output([]) for i in objects})
    metrics = evaluator.compute()
    assert metrics["bbox"]["AP"] == 0.0 and metrics["segm"]["AP50"] == 0.0
    evaluator.reset()
    evaluator.update({1: _output([(1, (5, 5, 30, 25), 1.0), (2, (40, 10, 70, 50), 1.0)])})
    assert evaluator.compute()["segm"]["AP"] == pytest.approx(1.0)  # only image 1 evaluated
