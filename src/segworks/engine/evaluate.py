"""Evaluate a semantic or binary model on a dataset at the images' original resolution.

`evaluate` runs the model on every image of a dataset (anything with ``len()`` and
``read(i) -> (PIL RGB image, int64 (H, W) labels with 255 = void)`` at the original size, e.g.
`segworks.data.SegmentationDataset`), turns the logits into labels at the image's original size
(`options`, a `segworks.inference.InferenceOptions`, may resize the input, slide a window or
add TTA; logits are resized back, labels never are) and counts one dataset-level confusion
matrix. Binary models (one logit channel) are scored as the two
classes {0: background, 1: foreground} with foreground where sigmoid(logit) > ``options.threshold``.

Absent classes: the numbers follow `segworks.metrics` (its module docstring). A class with no
ground-truth and no predicted pixel has IoU/Dice NaN and is left out of mIoU and mean Dice
(nanmean); a class predicted but absent from ground truth scores IoU 0.

Returned dict: everything `segworks.metrics.segmentation_metrics` returns (pixel_accuracy,
mean_accuracy, miou, fwiou, mean_dice, num_pixels, iou, dice, accuracy, class_names, per_class)
plus
    confusion_matrix  nested list [gt][pred] of pixel counts (K x K)
    num_images        images evaluated
    per_image         one dict per image, in dataset order: {"index", "name", "image_path",
                      "miou", "pixel_accuracy", "num_pixels"} (miou NaN when the image has no
                      counted pixel)
    settings          the inference options used (JSON-able)
    samples           (only when ``collect_samples > 0``) the per-image dicts that
                      `segworks.report.write_report(out_dir, results, *, class_names, palette,
                      samples)` takes: the ``collect_samples`` worst and the ``collect_samples``
                      best images by per-image mIoU (images with NaN mIoU are not ranked; an
                      image is never in both groups), each
                      {"name": str (file name), "image_path": str | None, "index": int,
                       "image": PIL RGB image at original size, "gt": np.int64 (H, W) with
                       255 = ignore, "pred": np.int64 (H, W), "miou": float,
                       "pixel_accuracy": float, "group": "worst" | "best"},
                      worst first (ascending mIoU), then best (descending mIoU). Not JSON-able:
                      drop it before writing JSON.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn

from segworks.data.meta import IMAGENET_MEAN, IMAGENET_STD, DatasetMeta
from segworks.engine.evaluators import SemanticEvaluator, inference_on_dataset
from segworks.errors import DataError
from segworks.inference import InferenceOptions, Predictor
from segworks.metrics import ConfusionMatrix, segmentation_metrics

log = logging.getLogger(__name__)

__all__ = ["EvalDataset", "evaluate"]


class EvalDataset(Protocol):
    def __len__(self) -> int: ...

    def read(self, index: int) -> tuple[Image.Image, np.ndarray]: ...


def evaluate(
    model: nn.Module,
    dataset: EvalDataset,
    meta: DatasetMeta | dict,
    *,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    channel_order: str = "rgb",
    options: InferenceOptions | None = None,
    collect_samples: int = 0,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, Any]:
    """Metrics of `model` on every image of `dataset`; see the module docstring."""
    meta = meta if isinstance(meta, DatasetMeta) else DatasetMeta.from_dict(meta)
    options = options or InferenceOptions()
    predictor = Predictor(
        model,
        task=meta.task,
        mean=mean,
        std=std,
        device=device,
        options=options,
        channel_order=channel_order,
    )
    scores = _ImageScores(meta, dataset, collect_samples)

    def batches():
        for index in range(len(dataset)):
            image, gt = dataset.read(index)
            yield image, (index, image, gt)

    predict = lambda image, _: predictor.predict(image).labels  # noqa: E731
    results = inference_on_dataset(predict, batches(), scores, progress=progress, desc=desc)
    results["settings"] = {"task": meta.task, **_jsonable(dataclasses.asdict(options))}
    return results


class _ImageScores:
    """The evaluator of `evaluate`: a `SemanticEvaluator` over the dataset, each image's own
    mIoU and pixel accuracy, and the worst and best images for the report."""

    def __init__(self, meta: DatasetMeta, dataset, collect_samples: int):
        self.meta, self.dataset, self.collect = meta, dataset, collect_samples
        names = list(meta.class_names)
        self.total = SemanticEvaluator(meta.num_classes, class_names=names, device="cpu")
        self.reset()

    def reset(self) -> None:
        self.total.reset()
        self.per_image: list[dict[str, Any]] = []
        self.ranking = _Ranking(self.collect)

    def process(self, inputs: tuple, outputs: np.ndarray) -> None:
        index, image, gt = inputs
        path = _image_path(self.dataset, index)
        where = path or f"image {index}"
        scores = _score_image(self.total.matrix, outputs, gt, self.meta.num_classes, where)
        name = path.name if path else f"image_{index}"
        self.per_image.append({"index": index, "name": name, "image_path": _str(path), **scores})
        self.ranking.offer(self.per_image[-1], image, gt, outputs)

    def evaluate(self) -> dict[str, Any]:
        results = self.total.evaluate()
        results["confusion_matrix"] = self.total.matrix.matrix.tolist()
        results["num_images"] = len(self.per_image)
        results["per_image"] = self.per_image
        if self.collect > 0:
            results["samples"] = self.ranking.samples()
        return results


def _score_image(
    total: ConfusionMatrix, pred: np.ndarray, gt: np.ndarray, num_classes: int, where
) -> dict[str, Any]:
    """Count one image into `total`; its own mIoU and pixel accuracy."""
    if pred.shape != gt.shape:
        raise DataError(where, f"prediction {pred.shape} and labels {gt.shape} differ in size")
    single = ConfusionMatrix(num_classes, device="cpu")
    try:
        single.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(gt))
    except ValueError as error:
        raise DataError(where, str(error)) from None
    total.merge(single)
    scores = segmentation_metrics(single.matrix)
    return {
        "miou": scores["miou"],
        "pixel_accuracy": scores["pixel_accuracy"],
        "num_pixels": scores["num_pixels"],
    }


class _Ranking:
    """Keeps the `count` worst and `count` best images by mIoU with their arrays."""

    def __init__(self, count: int):
        self.count = count
        self.ranked = 0
        self.worst: list[tuple] = []  # max-heap on miou via negation
        self.best: list[tuple] = []  # min-heap on miou

    def offer(self, record: dict, image: Image.Image, gt: np.ndarray, pred: np.ndarray) -> None:
        if self.count <= 0 or math.isnan(record["miou"]):
            return
        self.ranked += 1
        item = (record, image, gt, pred)
        key = record["miou"]
        tie = record["index"]
        _push_bounded(self.worst, (-key, -tie, item), self.count)
        _push_bounded(self.best, (key, tie, item), self.count)

    def samples(self) -> list[dict[str, Any]]:
        """Worst (ascending mIoU) then best (descending); with at most 2 * count ranked images,
        the lower half (rounded up) is "worst" and the rest "best"."""
        worst = sorted((entry[2] for entry in self.worst), key=_miou)
        best = sorted((entry[2] for entry in self.best), key=_miou, reverse=True)
        if self.ranked <= 2 * self.count:
            ranked = sorted({it[0]["index"]: it for it in worst + best}.values(), key=_miou)
            half = (len(ranked) + 1) // 2
            worst, best = ranked[:half], ranked[half:][::-1]
        return [_sample(item, "worst") for item in worst] + [_sample(item, "best") for item in best]


def _miou(item: tuple) -> float:
    return item[0]["miou"]


def _push_bounded(heap: list, entry: tuple, count: int) -> None:
    if len(heap) < count:
        heapq.heappush(heap, entry)
    elif entry[:2] > heap[0][:2]:
        heapq.heapreplace(heap, entry)


def _sample(item: tuple, group: str) -> dict[str, Any]:
    record, image, gt, pred = item
    return {
        "name": record["name"],
        "image_path": record["image_path"],
        "index": record["index"],
        "image": image,
        "gt": np.asarray(gt, dtype=np.int64),
        "pred": pred.astype(np.int64),
        "miou": record["miou"],
        "pixel_accuracy": record["pixel_accuracy"],
        "group": group,
    }


def _image_path(dataset, index: int) -> Path | None:
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return None
    try:
        return Path(samples[index].image)
    except (IndexError, AttributeError, TypeError):
        return None


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _jsonable(options: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
