"""COCO box and mask AP through pycocotools' COCOeval, as an update/compute/reset object.

    evaluator = CocoEvaluator(dataset)            # or CocoEvaluator(coco_gt, label_to_category=...)
    evaluator.update({image_id: output, ...})     # torchvision detection outputs
    metrics = evaluator.compute()                 # {"bbox": {...}, "segm": {...}}

Each entry of compute() holds AP, AP50, AP75, APs, APm, APl (pycocotools' first six stats; nan
where pycocotools reports -1, i.e. no ground truth in that area range) and per_class
{class name: AP}. Predicted labels map to category ids (identity for a dataset-built ground
truth); image ids and category ids are validated in update(), so a mismatch raises a ValueError
naming the ids instead of quietly giving AP 0. Predicted masks must have the ground-truth
image's size.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "CocoEvaluator",
    "coco_from_dataset",
    "encode_mask",
    "format_metrics",
    "outputs_to_coco_results",
]

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")


def _quiet(function, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args)


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    _quiet(coco.createIndex)
    return coco


def encode_mask(mask: np.ndarray) -> dict:
    """COCO RLE of a binary (H, W) mask with `counts` as str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def coco_from_dataset(dataset) -> COCO:
    """A COCO ground truth from an InstanceDataset at its (resized) image size.

    Category ids are the labels 1..K; image ids are the records' image ids. An ignore region
    (label 0, iscrowd 1) becomes one crowd annotation per category.
    """
    images, annotations = [], []
    category_ids = list(range(1, len(dataset.class_names) + 1))
    for index in range(len(dataset)):
        target = dataset.target(index)
        height, width = target["masks"].shape[-2:]
        images.append({"id": int(target["image_id"]), "height": height, "width": width})
        for box, label, mask, crowd in zip(
            target["boxes"].tolist(), target["labels"], target["masks"], target["iscrowd"]
        ):
            x1, y1, x2, y2 = box
            rle = encode_mask(mask.numpy())
            for category in [int(label)] if int(label) else category_ids:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": int(target["image_id"]),
                        "category_id": category,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": float(mask.sum()),
                        "iscrowd": int(crowd) if int(label) else 1,
                        "segmentation": rle,
                    }
                )
    categories = [{"id": k, "name": n} for k, n in zip(category_ids, dataset.class_names)]
    return _coco({"images": images, "annotations": annotations, "categories": categories})


def outputs_to_coco_results(
    image_id: int, output: Mapping[str, Tensor], label_to_category: Mapping[int, int] | None = None
) -> list[dict]:
    """COCO result entries (bbox xywh, score, category_id, segmentation RLE) of one output.

    The output's values may be tensors or numpy arrays (an ONNX model's outputs)."""
    boxes = _numpy(output["boxes"]).astype(np.float32)
    labels = _numpy(output["labels"]).tolist()
    scores = _numpy(output["scores"]).tolist()
    masks = output.get("masks")
    if masks is not None:
        masks = _numpy(masks)
        masks = (masks[:, 0] > 0.5) if masks.ndim == 4 else masks.astype(bool)
    results = []
    for index, (box, label, score) in enumerate(zip(boxes.tolist(), labels, scores)):
        category = label_to_category[label] if label_to_category else label
        entry = {
            "image_id": int(image_id),
            "category_id": int(category),
            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
            "score": float(score),
        }
        if masks is not None:
            entry["segmentation"] = encode_mask(masks[index])
        results.append(entry)
    return results


def _numpy(values) -> np.ndarray:
    """A tensor (any device) or array as a numpy array."""
    if hasattr(values, "detach"):
        return values.detach().cpu().numpy()
    return np.asarray(values)


class CocoEvaluator:
    """Collects detection outputs and computes COCO box/mask AP with pycocotools."""

    def __init__(
        self,
        gt,
        *,
        label_to_category: Mapping[int, int] | None = None,
        iou_types: tuple[str, ...] = IOU_TYPES,
    ):
        self.gt = gt if isinstance(gt, COCO) else coco_from_dataset(gt)
        for iou_type in iou_types:
            if iou_type not in IOU_TYPES:
                raise ValueError(f"iou_types must be among {IOU_TYPES}, got {iou_type!r}")
        self.iou_types = iou_types
        self.label_to_category = dict(label_to_category) if label_to_category else None
        self.images = {img["id"]: img for img in self.gt.dataset["images"]}
        self.categories = {cat["id"]: cat["name"] for cat in self.gt.dataset["categories"]}
        self.reset()

    def reset(self) -> None:
        self.results: list[dict] = []
        self.seen: set[int] = set()

    def update(self, predictions: Mapping[int, Mapping[str, Tensor]]) -> None:
        """Add `{image_id: torchvision output}`; ids are checked against the ground truth."""
        for image_id, output in predictions.items():
            image_id = int(image_id)
            if image_id not in self.images:
                raise ValueError(
                    f"image id {image_id} is not in the ground truth "
                    f"(it has {len(self.images)} images, e.g. ids {sorted(self.images)[:5]})"
                )
            entries = outputs_to_coco_results(image_id, output, self.label_to_category)
            self._check(image_id, entries, output)
            self.results += entries
            self.seen.add(image_id)

    def _check(self, image_id: int, entries: list[dict], output: Mapping[str, Tensor]) -> None:
        unknown = sorted({e["category_id"] for e in entries} - set(self.categories))
        if unknown:
            raise ValueError(
                f"predicted category ids {unknown} are not in the ground truth categories "
                f"{sorted(self.categories)}"
            )
        image = self.images[image_id]
        masks = output.get("masks")
        size = (image["height"], image["width"])
        if masks is not None and len(masks) and tuple(masks.shape[-2:]) != size:
            raise ValueError(
                f"masks of image {image_id} are {tuple(masks.shape[-2:])}, the ground truth "
                f"image is {size} (height, width)"
            )

    def compute(self) -> dict[str, dict]:
        image_ids = sorted(self.seen) if self.seen else sorted(self.images)
        return {iou_type: self._evaluate(iou_type, image_ids) for iou_type in self.iou_types}

    def _evaluate(self, iou_type: str, image_ids: list[int]) -> dict:
        key = "bbox" if iou_type == "bbox" else "segmentation"
        results = [
            {k: v for k, v in r.items() if k != "bbox" or key == "bbox"} for r in self.results
        ]
        if results and key in results[0]:
            detections = _quiet(self.gt.loadRes, results)
        else:  # no predictions: an empty result set, so every ground truth is a miss
            empty = {k: self.gt.dataset[k] for k in ("images", "categories")}
            detections = _coco(empty | {"annotations": []})
        evaluation = COCOeval(self.gt, detections, iou_type)
        evaluation.params.imgIds = image_ids
        for step in (evaluation.evaluate, evaluation.accumulate, evaluation.summarize):
            _quiet(step)
        metrics = {name: _nan(v) for name, v in zip(STAT_NAMES, evaluation.stats[:6])}
        metrics["per_class"] = self._per_class(evaluation)
        return metrics

    def _per_class(self, evaluation: COCOeval) -> dict[str, float]:
        precision = evaluation.eval["precision"]  # (iou, recall, class, area, max dets)
        per_class = {}
        for k, category in enumerate(evaluation.params.catIds):
            values = precision[:, :, k, 0, -1]
            values = values[values > -1]
            per_class[str(self.categories[category])] = (
                float(values.mean()) if values.size else math.nan
            )
        return per_class


def _nan(value: float) -> float:
    return math.nan if value < 0 else float(value)


def format_metrics(metrics: dict[str, dict]) -> str:
    """A small text table of compute()'s result."""
    lines = [f"{'':6s}" + "".join(f"{n:>8s}" for n in STAT_NAMES)]
    for iou_type, values in metrics.items():
        lines.append(f"{iou_type:6s}" + "".join(f"{values[n]:8.4f}" for n in STAT_NAMES))
    for iou_type, values in metrics.items():
        for name, ap in values["per_class"].items():
            lines.append(f"{iou_type} AP[{name}] = {ap:.4f}")
    return "\n".join(lines)
