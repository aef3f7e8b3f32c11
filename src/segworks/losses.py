"""Segmentation losses: pure functions of logits and an integer target.

Shapes: ``logits`` are ``(N, K, H, W)`` (``K = 1`` for a binary task) and ``target`` is a
``LongTensor[N, H, W]`` holding class indices, with ``ignore_index`` (255) marking pixels that
take no part in the loss: changing their logits changes neither the loss nor its gradient.
Every loss is a mean over the non-ignored pixels; a batch whose pixels are all ignored gives a
loss of 0 that is still connected to the graph (so ``backward`` works and adds nothing).

Binary tasks (one output channel) use sigmoid + binary cross-entropy on a 0/1 target.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from segworks import IGNORE_INDEX
from segworks.config import LOSSES  # one list: TrainConfig and the CLI check names against it

__all__ = [
    "LOSSES",
    "binary_cross_entropy",
    "class_pixel_counts",
    "class_presence",
    "criterion",
    "cross_entropy",
    "dice_loss",
    "lovasz_softmax",
    "median_frequency_weights",
    "presence_loss",
    "segmentation_loss",
]


def _check_target(
    logits: Tensor, target: Tensor, ignore_index: int, num_labels: int | None = None
) -> Tensor:
    """Validate shapes and label values; return the boolean mask of counted pixels.

    ``num_labels`` defaults to the channel count, or 2 (0/1) for one-channel logits.
    """
    if logits.ndim != 4:
        raise ValueError(f"logits must be (N, K, H, W), got shape {tuple(logits.shape)}")
    n, k, h, w = logits.shape
    if tuple(target.shape) != (n, h, w):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}; "
            f"expected ({n}, {h}, {w})"
        )
    if target.is_floating_point():
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    valid = target != ignore_index
    if num_labels is None:
        num_labels = max(k, 2)  # one channel = binary: labels 0 and 1
    bad = valid & ((target < 0) | (target >= num_labels))
    if bool(bad.any()):
        values = torch.unique(target[bad])[:10].tolist()
        raise ValueError(
            f"target holds labels {values} outside 0..{num_labels - 1} that are not the ignore "
            f"index {ignore_index} (logits have {k} channel(s))"
        )
    return valid


def _masked_mean(per_pixel: Tensor, weight: Tensor) -> Tensor:
    """sum(per_pixel) / sum(weight); 0 (with a graph) when the total weight is 0."""
    return per_pixel.sum() / weight.sum().clamp_min(torch.finfo(per_pixel.dtype).tiny)


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    class_weights: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Softmax cross-entropy, averaged over non-ignored pixels (weighted mean with weights).

    With ``class_weights`` the mean is ``sum_i w[y_i] * ce_i / sum_i w[y_i]``, as in
    ``torch.nn.functional.cross_entropy``.
    """
    valid = _check_target(logits, target, ignore_index, num_labels=logits.shape[1])
    weight = None
    if class_weights is not None:
        weight = _as_weights(class_weights, logits)
    per_pixel = F.cross_entropy(
        logits, target, weight=weight, ignore_index=ignore_index, reduction="none"
    )
    if weight is None:
        pixel_weight = valid.to(per_pixel.dtype)
    else:
        pixel_weight = weight.to(per_pixel.dtype)[torch.where(valid, target, 0)] * valid
    return _masked_mean(per_pixel, pixel_weight)


def _as_weights(class_weights: Tensor, logits: Tensor) -> Tensor:
    weights = torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
    if weights.shape != (logits.shape[1],):
        raise ValueError(
            f"class_weights must have one entry per class ({logits.shape[1]}), "
            f"got shape {tuple(weights.shape)}"
        )
    if bool((weights < 0).any()) or not bool(torch.isfinite(weights).all()):
        raise ValueError(f"class_weights must be finite and >= 0, got {weights.tolist()}")
    return weights


def binary_cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    pos_weight: float | None = None,
) -> Tensor:
    """Sigmoid BCE for one-channel logits ``(N, 1, H, W)`` and a 0/1 target; ignored excluded.

    ``pos_weight`` multiplies the loss of foreground pixels (as in ``BCEWithLogitsLoss``).
    """
    valid = _check_target(logits, target, ignore_index)
    if logits.shape[1] != 1:
        raise ValueError(f"binary_cross_entropy needs 1-channel logits, got {logits.shape[1]}")
    logits = logits[:, 0]
    truth = torch.where(valid, target, 0).to(logits.dtype)
    weight = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device)
    per_pixel = F.binary_cross_entropy_with_logits(
        logits, truth, pos_weight=weight, reduction="none"
    )
    mask = valid.to(per_pixel.dtype)
    return _masked_mean(per_pixel * mask, mask)


def dice_loss(
    logits: Tensor, target: Tensor, *, ignore_index: int = IGNORE_INDEX, smooth: float = 1.0
) -> Tensor:
    """Soft Dice loss, ``1 - mean_c (2 |P_c T_c| + s) / (|P_c| + |T_c| + s)`` over the batch.

    ``P`` is the softmax (K > 1 channels, averaged over all K classes) or the sigmoid (one
    channel: the foreground Dice alone). Sums run over all non-ignored pixels of the batch;
    a class absent from both prediction and target scores 1 thanks to ``smooth``.
    """
    valid = _check_target(logits, target, ignore_index)
    mask = valid.unsqueeze(1).to(logits.dtype)
    labels = torch.where(valid, target, 0)
    if logits.shape[1] == 1:
        prob = torch.sigmoid(logits)
        truth = labels.unsqueeze(1).to(logits.dtype)
    else:
        prob = torch.softmax(logits, dim=1)
        truth = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    prob, truth = prob * mask, truth * mask
    dims = (0, 2, 3)
    intersection = (prob * truth).sum(dims)
    total = prob.sum(dims) + truth.sum(dims)
    dice = (2 * intersection + smooth) / (total + smooth)
    return 1 - dice.mean()


def lovasz_softmax(logits: Tensor, target: Tensor, *, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Lovász-softmax loss (Berman, Triki and Blaschko, CVPR 2018): the convex Lovász extension
    of the Jaccard loss ``1 - IoU_c``, evaluated on the softmax probabilities and averaged over
    the classes present in the target (the paper's default), over all non-ignored pixels of
    the batch. On one-hot probabilities it equals ``1 - mean IoU`` of that hard prediction.
    One channel: the sigmoid gives the two classes ``(1 - p, p)``.
    """
    valid = _check_target(logits, target, ignore_index)
    if logits.shape[1] == 1:
        prob = torch.sigmoid(logits)
        prob = torch.cat([1 - prob, prob], dim=1)
    else:
        prob = torch.softmax(logits, dim=1)
    prob = prob.permute(0, 2, 3, 1)[valid]  # (P, K) counted pixels
    labels = target[valid]
    losses = [_lovasz_class(prob[:, c], labels == c) for c in torch.unique(labels).tolist()]
    if not losses:
        return logits.sum() * 0.0
    return torch.stack(losses).mean()


def _lovasz_class(prob: Tensor, truth: Tensor) -> Tensor:
    """The Lovász extension of one class's Jaccard loss at the errors ``|truth - prob|``."""
    truth = truth.to(prob.dtype)
    errors, order = (truth - prob).abs().sort(descending=True)
    truth = truth[order]
    total = truth.sum()
    intersection = total - truth.cumsum(0)
    union = total + (1 - truth).cumsum(0)
    jaccard = 1 - intersection / union
    steps = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return torch.dot(errors, steps.detach())


def segmentation_loss(
    logits: Tensor,
    target: Tensor,
    *,
    loss: str = "ce",
    class_weights: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """``loss`` in "ce", "dice", "ce+dice", "lovasz", "ce+lovasz" (sums). One-channel logits
    use BCE in place of CE.

    For one channel, ``class_weights`` (if given) are ``[background, foreground]`` and become
    ``pos_weight = w[1] / w[0]``.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}")
    terms = loss.split("+")
    total = logits.new_zeros(())
    if "ce" in terms:
        total = total + _ce_or_bce(logits, target, class_weights, ignore_index)
    if "dice" in terms:
        total = total + dice_loss(logits, target, ignore_index=ignore_index)
    if "lovasz" in terms:
        total = total + lovasz_softmax(logits, target, ignore_index=ignore_index)
    return total


def _ce_or_bce(logits: Tensor, target: Tensor, class_weights, ignore_index: int) -> Tensor:
    if logits.ndim == 4 and logits.shape[1] == 1:
        pos_weight = None
        if class_weights is not None:
            weights = torch.as_tensor(class_weights, dtype=torch.float64).flatten()
            if weights.numel() != 2 or weights[0] <= 0:
                raise ValueError(
                    "class_weights for a binary (1-channel) model must be [background, "
                    f"foreground] with background > 0, got {weights.tolist()}"
                )
            pos_weight = float(weights[1] / weights[0])
        return binary_cross_entropy(
            logits, target, ignore_index=ignore_index, pos_weight=pos_weight
        )
    return cross_entropy(logits, target, class_weights=class_weights, ignore_index=ignore_index)


def criterion(
    outputs: dict[str, Tensor],
    target: Tensor,
    *,
    loss: str = "ce",
    aux_weight: float = 0.4,
    presence_weight: float = 0.2,
    class_weights: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Loss of a model's output dict: ``loss(out) + aux_weight * loss(aux)`` (aux if present)
    ``+ presence_weight * presence_loss(presence)`` (if the model has a class-presence head)."""
    if "out" not in outputs:
        raise ValueError(f"model outputs must contain 'out', got keys {sorted(outputs)}")
    kwargs = {"loss": loss, "class_weights": class_weights, "ignore_index": ignore_index}
    total = segmentation_loss(outputs["out"], target, **kwargs)
    if "aux" in outputs and aux_weight:
        total = total + aux_weight * segmentation_loss(outputs["aux"], target, **kwargs)
    if "presence" in outputs and presence_weight:
        presence = presence_loss(outputs["presence"], target, ignore_index=ignore_index)
        total = total + presence_weight * presence
    return total


def class_presence(target: Tensor, num_classes: int, *, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``float[B, K]``: 1 where class k has at least one (non-ignored) pixel in image b."""
    labels = target.reshape(target.shape[0], -1).long()
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    present = torch.zeros(target.shape[0], num_classes + 1, device=target.device)
    present.scatter_(1, torch.where(valid, labels, num_classes), 1.0)
    return present[:, :num_classes]


def presence_loss(logits: Tensor, target: Tensor, *, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Binary cross-entropy of per-image class-presence logits ``[B, K]`` against the classes
    present in the label maps ``[B, H, W]`` (the "semantic encoding loss" of EncNet, Zhang et
    al., CVPR 2018): a mean over images and classes. One logit (a binary model) is "the
    foreground (label 1) occurs"."""
    if logits.shape[1] == 1:
        truth = class_presence(target, 2, ignore_index=ignore_index)[:, 1:]
    else:
        truth = class_presence(target, logits.shape[1], ignore_index=ignore_index)
    return F.binary_cross_entropy_with_logits(logits.float(), truth)


def class_pixel_counts(
    targets: Iterable[Tensor], num_classes: int, *, ignore_index: int = IGNORE_INDEX
) -> tuple[Tensor, Tensor]:
    """Statistics for `median_frequency_weights` from an iterable of label maps (one per image).

    Returns ``(pixel_counts, image_counts)``, both ``float64[K]``: ``pixel_counts[c]`` = pixels
    of class c; ``image_counts[c]`` = non-ignored pixels of all images in which c appears.
    """
    pixel_counts = torch.zeros(num_classes, dtype=torch.float64)
    image_counts = torch.zeros(num_classes, dtype=torch.float64)
    for target in targets:
        labels = torch.as_tensor(target).reshape(-1)
        labels = labels[labels != ignore_index].to(torch.long)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(
                f"label map holds values outside 0..{num_classes - 1} besides {ignore_index}"
            )
        counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
        pixel_counts += counts
        image_counts += (counts > 0) * float(labels.numel())
    return pixel_counts, image_counts


def median_frequency_weights(pixel_counts, image_counts) -> Tensor:
    """Median-frequency class weights (Eigen & Fergus 2015, used by SegNet).

    ``freq_c = pixel_counts[c] / image_counts[c]`` where ``image_counts[c]`` is the total pixel
    count of the images in which class c is present (see `class_pixel_counts`), and
    ``w_c = median(freq) / freq_c``, the median taken over the classes present (the usual
    median: mean of the two middle values for an even count). Classes that never occur
    (``pixel_counts[c] == 0``) get weight 0: they have no frequency and no pixel to weigh.
    Returns ``float32[K]``.
    """
    pixels = torch.as_tensor(pixel_counts, dtype=torch.float64).flatten()
    images = torch.as_tensor(image_counts, dtype=torch.float64).flatten()
    if pixels.shape != images.shape:
        raise ValueError(
            f"pixel_counts ({pixels.numel()}) and image_counts ({images.numel()}) differ in length"
        )
    present = pixels > 0
    if bool((present & (images < pixels)).any()) or bool((pixels < 0).any()):
        raise ValueError("image_counts[c] must be >= pixel_counts[c] >= 0 for every class")
    if not bool(present.any()):
        raise ValueError("no class has any pixel: cannot compute median-frequency weights")
    freq = torch.where(present, pixels / images.clamp_min(1), torch.zeros_like(pixels))
    median = torch.quantile(freq[present], 0.5)
    weights = torch.where(present, median / freq.where(present, torch.ones_like(freq)), 0.0)
    return weights.to(torch.float32)
