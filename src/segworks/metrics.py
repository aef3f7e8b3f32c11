r"""Semantic segmentation metrics from one dataset-level confusion matrix.

`ConfusionMatrix` accumulates counts over a whole dataset (update/compute/reset, no I/O, CPU or
CUDA); `segmentation_metrics` turns a matrix into numbers. The matrix ``M`` is ``(K, K)`` with
rows = ground truth and columns = prediction, so ``M[g, p]`` counts the pixels of class ``g``
predicted as ``p``. Pixels whose ground truth is the ignore index (255) are not counted at all.

Definitions (``tp_c = M[c, c]``, ``gt_c = sum_p M[c, p]``, ``pred_c = sum_g M[g, c]``,
``N = sum M``):

    pixel_accuracy  = sum_c tp_c / N
    accuracy_c      = tp_c / gt_c                          (recall of class c)
    mean_accuracy   = nanmean_c accuracy_c
    iou_c           = tp_c / (gt_c + pred_c - tp_c)
    miou            = nanmean_c iou_c
    fwiou           = sum_c (gt_c / N) * iou_c             (classes with gt_c = 0 weigh 0)
    dice_c          = 2 tp_c / (gt_c + pred_c)             (F1 of class c)
    mean_dice       = nanmean_c dice_c

Policy for classes that do not occur (the choice changes mIoU, so it is fixed here):

* a class with no ground-truth pixels and no predicted pixels has ``iou_c = dice_c = NaN``
  and is left out of ``miou`` and ``mean_dice`` (nanmean);
* a class with no ground-truth pixels but some predicted pixels has ``iou_c = dice_c = 0``:
  the false positives count against the model;
* ``accuracy_c`` is NaN whenever ``gt_c = 0`` (recall is undefined) and is left out of
  ``mean_accuracy``;
* with no counted pixels at all (an all-ignore dataset) every number is NaN.

This is torchmetrics' ``MulticlassJaccardIndex(average="macro")`` policy for mIoU; its
``average="none"`` reports 0 instead of NaN for a class absent from both.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from segworks import IGNORE_INDEX

__all__ = ["ConfusionMatrix", "segmentation_metrics", "metrics_table"]

# Fast path: ignored pixels go to their own row of the histogram (row `ignore_index`) instead of
# being masked out, as long as that keeps the histogram this small.
_MAX_FAST_BINS = 1 << 20


class ConfusionMatrix:
    """Dataset-level confusion matrix, ``matrix[gt, pred]``, accumulated with one bincount.

    ``device=None`` keeps the counts on the device of the first update (so a CUDA evaluation
    never copies label maps to the CPU); ``reset`` keeps that device.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_index: int = IGNORE_INDEX,
        device: torch.device | str | None = None,
        class_names: list[str] | None = None,
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names given for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = class_names
        self._device_fixed = device is not None
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Count one batch of integer label maps of equal shape (any leading dimensions)."""
        if pred.shape != target.shape:
            raise ValueError(
                f"pred and target must have the same shape, got {tuple(pred.shape)} "
                f"and {tuple(target.shape)} (pass argmax labels, not logits)"
            )
        for name, labels in (("pred", pred), ("target", target)):
            if labels.is_floating_point() or labels.is_complex():
                raise ValueError(f"{name} must hold integer labels, got dtype {labels.dtype}")
        if not self._device_fixed:
            self.matrix = self.matrix.to(target.device)
            self._device_fixed = True
        counts = _count_pairs(
            pred.reshape(-1), target.reshape(-1), self.num_classes, self.ignore_index
        )
        self.matrix += counts.to(self.matrix.device)

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another matrix's counts (e.g. from a worker)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.matrix += other.matrix.to(self.matrix.device)

    def all_reduce(self) -> None:
        """Sum the counts over all processes of an initialised torch.distributed group."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix)

    def compute(self) -> dict[str, Any]:
        """The metrics of `segmentation_metrics` for the counts so far."""
        return segmentation_metrics(self.matrix, self.class_names)


def _count_pairs(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """(K, K) counts of (target, pred) pairs of two flat label tensors, ignored targets skipped."""
    k = num_classes
    if target.numel() == 0:
        return torch.zeros(k, k, dtype=torch.long, device=target.device)
    pred_min, pred_max = (int(v) for v in torch.aminmax(pred))
    if pred_min < 0 or pred_max >= k:
        raise ValueError(f"pred labels must lie in [0, {k - 1}], found {pred_min}..{pred_max}")
    gt_min, gt_max = (int(v) for v in torch.aminmax(target))
    if gt_min < 0 and gt_min != ignore_index:
        raise ValueError(f"target holds label {gt_min}; expected 0..{k - 1} or {ignore_index}")
    rows = gt_max + 1
    ignore_is_class = 0 <= ignore_index < k
    if gt_min >= 0 and not ignore_is_class and rows * k <= _MAX_FAST_BINS:
        # One pass, no masking: ignored pixels land in row `ignore_index`, dropped below.
        flat = target.to(torch.long) * k
        flat += pred
        table = torch.bincount(flat, minlength=rows * k).reshape(rows, k)
        _check_no_stray_rows(table, k, ignore_index)
        return table[:k] if rows >= k else _pad_rows(table, k)
    keep = target != ignore_index
    gt = target[keep].to(torch.long)
    if gt.numel() and (int(gt.min()) < 0 or int(gt.max()) >= k):
        raise ValueError(
            f"target holds labels outside 0..{k - 1} (found {int(gt.min())}..{int(gt.max())}) "
            f"that are not the ignore index {ignore_index}"
        )
    flat = gt * k + pred[keep]
    return torch.bincount(flat, minlength=k * k).reshape(k, k)


def _check_no_stray_rows(table: Tensor, k: int, ignore_index: int) -> None:
    if table.shape[0] <= k:
        return
    stray = table[k:].sum(dim=1)
    if ignore_index < table.shape[0]:
        stray[ignore_index - k] = 0
    if bool(stray.any()):
        bad = (torch.nonzero(stray).flatten() + k).tolist()
        raise ValueError(
            f"target holds labels {bad[:10]} outside 0..{k - 1} that are not the ignore index "
            f"{ignore_index} (a dataset void value not mapped to {ignore_index}, or the wrong "
            "number of classes?)"
        )


def _pad_rows(table: Tensor, k: int) -> Tensor:
    padded = table.new_zeros(k, k)
    padded[: table.shape[0]] = table
    return padded


def segmentation_metrics(matrix: Tensor, class_names: list[str] | None = None) -> dict[str, Any]:
    """Metrics of a (K, K) confusion matrix (rows ground truth); definitions in the module doc.

    Returns plain Python numbers (NaN where undefined), ready for JSON/CSV:
    ``pixel_accuracy, mean_accuracy, miou, fwiou, mean_dice, num_pixels`` (floats / int),
    ``iou, dice, accuracy`` (lists, one per class), ``class_names`` and ``per_class``: a list
    of dicts ``{class, iou, dice, accuracy, precision, gt_pixels, pred_pixels}``.
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got {tuple(matrix.shape)}")
    k = matrix.shape[0]
    if class_names is None:
        class_names = [str(index) for index in range(k)]
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class_names for a {k}x{k} confusion matrix")
    m = matrix.detach().to("cpu", torch.float64)
    tp, gt, pr = m.diagonal(), m.sum(dim=1), m.sum(dim=0)
    total = m.sum()
    iou = _divide(tp, gt + pr - tp)
    dice = _divide(2 * tp, gt + pr)
    accuracy = _divide(tp, gt)
    precision = _divide(tp, pr)
    fwiou = (gt * iou.nan_to_num(0.0)).sum() / total if total > 0 else torch.tensor(math.nan)
    per_class = [
        {
            "class": name,
            "iou": float(iou[c]),
            "dice": float(dice[c]),
            "accuracy": float(accuracy[c]),
            "precision": float(precision[c]),
            "gt_pixels": int(gt[c]),
            "pred_pixels": int(pr[c]),
        }
        for c, name in enumerate(class_names)
    ]
    return {
        "pixel_accuracy": float(_divide(tp.sum(), total)),
        "mean_accuracy": _nanmean(accuracy),
        "miou": _nanmean(iou),
        "fwiou": float(fwiou),
        "mean_dice": _nanmean(dice),
        "num_pixels": int(total),
        "iou": iou.tolist(),
        "dice": dice.tolist(),
        "accuracy": accuracy.tolist(),
        "class_names": list(class_names),
        "per_class": per_class,
    }


def _divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator with NaN where the denominator is 0."""
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, numerator / safe, torch.full_like(safe, math.nan))


def _nanmean(values: Tensor) -> float:
    finite = values[~values.isnan()]
    return float(finite.mean()) if finite.numel() else math.nan


def metrics_table(metrics: dict[str, Any]) -> str:
    """A plain-text table of `segmentation_metrics` output for the terminal."""
    width = max([5] + [len(row["class"]) for row in metrics["per_class"]])
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Dice':>6}  {'Acc':>6}  {'GT px':>12}"]
    for row in metrics["per_class"]:
        lines.append(
            f"{row['class']:<{width}}  {_pct(row['iou'])}  {_pct(row['dice'])}  "
            f"{_pct(row['accuracy'])}  {row['gt_pixels']:>12d}"
        )
    lines.append("")
    for key, label in (
        ("pixel_accuracy", "pixel accuracy"),
        ("mean_accuracy", "mean accuracy"),
        ("miou", "mIoU"),
        ("fwiou", "fwIoU"),
        ("mean_dice", "mean Dice"),
    ):
        lines.append(f"{label:<15} {_pct(metrics[key]).strip()}")
    return "\n".join(lines)


def _pct(value: float) -> str:
    return f"{'-':>6}" if math.isnan(value) else f"{100 * value:6.2f}"
