"""One evaluation loop for every task: detectron2's evaluator interface.

    evaluator.reset()
    for inputs, targets in batches:
        evaluator.process(targets, predict(inputs, targets))  # targets: e.g. a validation loss
    metrics = evaluator.evaluate()

`inference_on_dataset` is that loop (with a progress bar and an optional deadline); training
validation, `segworks eval`, `segworks demo` and instance runs all call it with one of:

* `SemanticEvaluator`: one dataset-level confusion matrix; `process(targets, labels)` takes
  ground-truth and predicted label maps (255 = ignore), `evaluate()` returns
  `segworks.metrics.segmentation_metrics` of the counts.
* `InstanceEvaluator`: COCO box and mask AP (`segworks.coco_eval.CocoEvaluator`) and the mean
  validation loss; `process(targets, outputs)` takes torchvision targets (their `image_id`) and
  `{"detections": [torchvision outputs], "loss": float | None}`.

`synchronize(info)` combines the evaluator's state over the ranks of a distributed run before
`evaluate()` (a no-op on one process).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
import torch.distributed as dist
from tqdm import tqdm

from segworks.coco_eval import CocoEvaluator
from segworks.engine import distributed as ddp
from segworks.metrics import ConfusionMatrix


class Evaluator(Protocol):
    def reset(self) -> None: ...

    def process(self, inputs: Any, outputs: Any) -> None: ...

    def evaluate(self) -> dict[str, Any]: ...


class SemanticEvaluator:
    """mIoU and friends from one confusion matrix over every processed label map."""

    def __init__(self, num_classes: int, *, class_names=None, device=None):
        self.matrix = ConfusionMatrix(num_classes, class_names=class_names, device=device)

    def reset(self) -> None:
        self.matrix.reset()

    def process(self, inputs: torch.Tensor, outputs: torch.Tensor) -> None:
        """`inputs`: ground-truth labels; `outputs`: predicted labels of the same shape."""
        self.matrix.update(outputs, inputs.to(outputs.device))

    def synchronize(self, info: ddp.DistInfo) -> None:
        ddp.all_reduce_sum(self.matrix.matrix, info)

    def evaluate(self) -> dict[str, Any]:
        return self.matrix.compute()


class InstanceEvaluator:
    """COCO box and mask AP of the detections, and the mean of the losses processed."""

    def __init__(self, dataset):
        self.coco = CocoEvaluator(dataset)
        self.reset()

    def reset(self) -> None:
        self.coco.reset()
        self.losses: list[float] = []

    def process(self, inputs: list[dict], outputs: dict[str, Any]) -> None:
        detections = outputs["detections"]
        self.coco.update({int(t["image_id"]): o for t, o in zip(inputs, detections)})
        if outputs.get("loss") is not None:
            self.losses.append(float(outputs["loss"]))

    def synchronize(self, info: ddp.DistInfo) -> None:
        if not info.enabled:
            return
        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, (self.coco.results, self.coco.seen, self.losses))
        self.coco.results = [r for results, _, _ in gathered for r in results]
        self.coco.seen = set().union(*(seen for _, seen, _ in gathered))
        self.losses = [value for _, _, losses in gathered for value in losses]

    def evaluate(self) -> dict[str, Any]:
        metrics: dict[str, Any] = self.coco.compute()
        metrics["loss"] = sum(self.losses) / len(self.losses) if self.losses else math.nan
        metrics["num_images"] = len(self.coco.seen)
        return metrics


def inference_on_dataset(
    predict: Callable[[Any, Any], Any],
    batches: Iterable[tuple[Any, Any]],
    evaluator: Evaluator,
    *,
    progress: bool = False,
    desc: str = "eval",
    stop: Callable[[], bool] | None = None,
    info: ddp.DistInfo | None = None,
) -> dict[str, Any]:
    """`evaluator.process(targets, predict(inputs, targets))` for each batch, then
    `evaluator.evaluate()` (after combining the ranks of `info`). Stops early, scoring what it
    saw, once `stop()` is true (a time limit; one process only: ranks must agree)."""
    evaluator.reset()
    with torch.no_grad():
        for inputs, targets in tqdm(batches, desc=desc, leave=False, disable=not progress):
            evaluator.process(targets, predict(inputs, targets))
            if stop is not None and stop():
                break
    if info is not None:
        evaluator.synchronize(info)
    return evaluator.evaluate()
