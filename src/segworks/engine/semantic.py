"""Semantic and binary segmentation as a task of the training loop (`segworks.engine.train`).

`SemanticTask` builds the datasets (any layout `segworks.data.open_source` reads; a val split
or a fixed fraction of train), the model with its starting weights, the per-pixel loss
(cross-entropy, Dice or both, BCE for one binary channel) and validation on one confusion
matrix; the best checkpoint is the one with the highest val mIoU.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset

from segworks import IGNORE_INDEX, losses
from segworks.config import TrainConfig
from segworks.data.meta import DatasetMeta
from segworks.engine.evaluators import SemanticEvaluator
from segworks.engine.tasks import Data
from segworks.errors import SegworksError

log = logging.getLogger(__name__)

VAL_SPLIT_SEED = 0  # carving a val split from train never depends on --seed
VAL_METRICS = ("miou", "pixel_accuracy", "mean_accuracy", "mean_dice", "fwiou")


class SemanticTask:
    """Per-pixel classification: the adapter `segworks.engine.train` drives."""

    name = "semantic"
    best_metric = "miou"
    collate = None
    csv_fields = tuple(f"val_{key}" for key in VAL_METRICS)

    def build_data(self, cfg: TrainConfig) -> Data:
        return build_data(cfg)

    def build_model(self, cfg: TrainConfig, data: Data) -> nn.Module:
        return build_train_model(cfg, data.meta)

    def model_kwargs(self, cfg: TrainConfig, data: Data) -> dict[str, Any]:
        return {"num_classes": data.meta.model_channels, **cfg.model_kwargs}

    def checkpoint_meta(self, cfg: TrainConfig, data: Data) -> dict[str, Any]:
        return data.meta.to_dict() | {"mean": list(cfg.mean), "std": list(cfg.std)}

    def inputs_to(self, images: torch.Tensor, device: torch.device, cfg: TrainConfig):
        images = images.to(device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def targets_to(self, targets: torch.Tensor, device: torch.device) -> torch.Tensor:
        return targets.to(device, non_blocking=True)

    def loss(self, model, images, targets, cfg: TrainConfig, data: Data) -> torch.Tensor:
        return losses.criterion(
            model(images),
            targets,
            loss=cfg.loss,
            aux_weight=cfg.aux_weight,
            presence_weight=cfg.presence_weight,
            class_weights=data.class_weights,
            ignore_index=IGNORE_INDEX,
        )

    def evaluator(self, data: Data, device: torch.device) -> SemanticEvaluator:
        meta = data.meta
        return SemanticEvaluator(meta.num_classes, class_names=meta.class_names, device=device)

    def predict(self, model, images, targets) -> torch.Tensor:
        return predict_labels(model(images)["out"])

    def score(self, metrics: dict[str, Any]) -> float | None:
        return metrics.get("miou")

    def csv_values(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {f"val_{key}": metrics[key] for key in VAL_METRICS if key in metrics}


def predict_labels(logits: torch.Tensor) -> torch.Tensor:
    """Argmax over classes; one channel (binary) thresholds the logit at 0 (p = 0.5)."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


def build_data(cfg: TrainConfig) -> Data:
    """Open the source, pick train/val samples, check the class count, build both datasets."""
    from segworks.data import open_source
    from segworks.data.transforms import eval_transforms, train_transforms

    def opened(class_names):
        return open_source(
            cfg.data if cfg.data is not None else cfg.train_images,
            list_file=cfg.train_list,
            image_dir=cfg.train_images,
            label_dir=cfg.train_annotations,
            mask_format=cfg.mask_format or "auto",
            ignore_index=cfg.ignore_index,
            class_names=class_names,
            task=cfg.task if cfg.task != "instance" else None,
            reduce_zero_label=cfg.reduce_zero_label,
        )

    source = opened(cfg.class_names)
    names = declared_class_names(cfg, source.meta)
    if names != source.meta.class_names:
        source = opened(names)
    meta = source.meta
    train_samples, val_samples = split_samples(cfg, source.splits)
    train_set = source.dataset(
        train_samples,
        transform=train_transforms(
            crop_size=cfg.crop_size,
            scale_range=cfg.scale_range,
            hflip=cfg.hflip,
            jitter=cfg.jitter,
            dihedral=cfg.dihedral,
            long_side=cfg.long_side,
            mean=cfg.mean,
            std=cfg.std,
        ),
        skip_bad=cfg.skip_bad,
    )
    val_set = None
    if val_samples:
        transform = eval_transforms(
            size=cfg.eval_size, long_side=cfg.long_side, mean=cfg.mean, std=cfg.std
        )
        val_set = source.dataset(val_samples, transform=transform, skip_bad=cfg.skip_bad)
    for dataset in (train_set, val_set):
        if dataset is not None:
            dataset.check_headers()  # every pair, before the first step (check-data does too)
    weights = median_weights(train_set, meta) if cfg.class_weights == "median" else None
    if cfg.epoch_repeats > 1:
        train_set = ConcatDataset([train_set] * cfg.epoch_repeats)
    return Data(meta=meta, train_set=train_set, val_set=val_set, class_weights=weights)


def declared_class_names(cfg: TrainConfig, meta: DatasetMeta) -> list[str]:
    """The class names to train with: the data's, extended to -n/--num-classes when that is
    more (a subset of VOC lacks some of its 21 classes). Fewer than the data has is an error."""
    wanted = cfg.num_classes
    if wanted is None or wanted in (meta.num_classes, meta.model_channels):
        return list(meta.class_names)
    if meta.task == "binary" or wanted < meta.num_classes:
        raise SegworksError(
            f"-n/--num-classes {wanted} is below what the data holds: it has "
            f"{meta.num_classes} classes ({', '.join(meta.class_names)}); give at least "
            f"{meta.num_classes}"
        )
    log.warning("-n/--num-classes %d: the data has labels up to %d; classes %d..%d are absent",
                wanted, meta.num_classes - 1, meta.num_classes, wanted - 1)  # fmt: skip
    extra = range(meta.num_classes, wanted)
    return list(meta.class_names) + [f"class_{index}" for index in extra]


def split_samples(cfg: TrainConfig, splits: dict[str, list]) -> tuple[list, list]:
    """The train samples and the val samples: the data's own val split, or a carved fraction."""
    if cfg.train_split not in splits:
        raise SegworksError(
            f"the data has no {cfg.train_split!r} split; it has: {', '.join(sorted(splits))}"
        )
    train_samples = list(splits[cfg.train_split])
    if not train_samples:
        raise SegworksError(f"the {cfg.train_split!r} split is empty")
    if cfg.val_name in splits and cfg.val_name != cfg.train_split and splits[cfg.val_name]:
        return train_samples, list(splits[cfg.val_name])
    if cfg.val_split <= 0 or len(train_samples) < 2:
        log.warning("no validation split: best.pt and early stopping are off")
        return train_samples, []
    count = min(len(train_samples) - 1, max(1, round(cfg.val_split * len(train_samples))))
    generator = torch.Generator().manual_seed(VAL_SPLIT_SEED)
    order = torch.randperm(len(train_samples), generator=generator).tolist()
    val = sorted(order[:count])
    keep = sorted(order[count:])
    log.info("validation: %d of %d train images held out (--val-split %.2f)",
             count, len(train_samples), cfg.val_split)  # fmt: skip
    return [train_samples[i] for i in keep], [train_samples[i] for i in val]


def median_weights(train_set, meta: DatasetMeta) -> torch.Tensor:
    labels = (torch.from_numpy(train_set.read(i)[1]) for i in range(len(train_set)))
    if meta.task == "binary":
        labels = (torch.where(t == IGNORE_INDEX, t, (t > 0).long()) for t in labels)
    pixels, images = losses.class_pixel_counts(labels, meta.num_classes)
    weights = losses.median_frequency_weights(pixels, images)
    log.info("median-frequency class weights: %s", [round(float(w), 3) for w in weights])
    return weights


def build_train_model(cfg: TrainConfig, meta: DatasetMeta) -> nn.Module:
    """The registered model with its starting weights: `--pretrained` (a name or a file), or
    the precise forms `--backbone-weights` / `--weights`. Nothing is loaded when resuming."""
    from segworks.models import build_model
    from segworks.models.starting import choose, whole_model_file
    from segworks.models.weights import load_weights, looks_like_whole_model

    kwargs = dict(cfg.model_kwargs)
    choice = None if cfg.resume else choose(cfg.pretrained, model=cfg.model, model_kwargs=kwargs)
    if cfg.backbone_weights:
        kwargs["backbone_weights"] = cfg.backbone_weights
    weights = whole_model_file(cfg.weights, cfg.model, kwargs) if cfg.weights else None
    if choice is not None and choice.kind == "encoder":
        kwargs["backbone_weights"] = choice.path  # known up front: build the model once
    model = build_model(cfg.model, num_classes=meta.model_channels, **kwargs)
    if choice is not None:
        whole = choice.kind == "model" or (
            choice.kind == "file" and looks_like_whole_model(model, choice.path)
        )
        if whole:
            weights = weights or choice.path
        elif choice.kind == "file":
            kwargs["backbone_weights"] = choice.path
            model = build_model(cfg.model, num_classes=meta.model_channels, **kwargs)
        log.info("pretrained %s: %s (%s)", "model" if whole else "encoder", cfg.pretrained,
                 choice.path)  # fmt: skip
    if weights:
        load_weights(model, weights, reset_classifier=cfg.reset_classifier, auto_reset=True)
    return model
