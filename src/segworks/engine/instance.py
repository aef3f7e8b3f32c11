"""Instance segmentation (the Mask R-CNN models) as a task of the one training loop, and
`segworks eval` on instance checkpoints.

`InstanceTask` is the adapter `segworks.engine.train` drives: datasets from COCO / labelme /
VIA / VOC instance annotations (`cfg.data`; validation from `cfg.val_data` or a `val_split`
fraction of it), the model with its starting weights, the summed Mask R-CNN losses of a batch
(crowd regions are not trained on, as in Detectron), and COCO box and mask AP with the mean
validation loss; best.pt is the epoch with the best mask AP. Its settings are TrainConfig
fields like any task's (`gamma`, `roi_size`, `min_size`, `max_size`, `instance_format`,
`bn2affine`, `val_data`); the `instance` recipe holds Detectron's optimiser and schedule.

Checkpoints have the layout of every segworks checkpoint, with meta = {task: "instance",
class_names, palette, category_ids} where class_names[0] is "background", class_names[k] is the
name of label k and category_ids[k - 1] its category id in the training data (used in
predict's COCO results).

`weights` starts from a checkpoint or state dict of the same architecture; with
`reset_classifier` the class-specific layers (box predictor and the mask predictor's last
layer) are left freshly initialised, so the checkpoint may have another class count.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from segworks.checkpoint import load_checkpoint
from segworks.coco_eval import format_metrics
from segworks.config import TrainConfig
from segworks.data.instances import InstanceDataset, InstanceSet, collate_instances, read_instances
from segworks.data.meta import voc_palette
from segworks.devices import device_from_args
from segworks.engine.evaluators import InstanceEvaluator, inference_on_dataset
from segworks.engine.semantic import VAL_SPLIT_SEED
from segworks.engine.tasks import Data
from segworks.errors import DataError, SegworksError
from segworks.fileio import save_json
from segworks.models import build_model, model_from_checkpoint, model_task
from segworks.models.mask_rcnn import CLASSIFIER_PREFIXES, load_weights

log = logging.getLogger(__name__)

DEFAULT_MAX_SIZE = 1333
VAL_COLUMNS = (("bbox", "AP"), ("bbox", "AP50"), ("segm", "AP"), ("segm", "AP50"), ("segm", "AP75"))


class InstanceTask:
    """Mask R-CNN training: the adapter `segworks.engine.train` drives."""

    name = "instance"
    best_metric = "segm_AP"
    collate = staticmethod(collate_instances)
    csv_fields = ("val_loss", *(f"{kind}_{name}" for kind, name in VAL_COLUMNS))

    def build_data(self, cfg: TrainConfig) -> Data:
        return build_instance_data(cfg)

    def build_model(self, cfg: TrainConfig, data: Data) -> nn.Module:
        return build_instance_model(cfg, data.meta.num_classes)

    def model_kwargs(self, cfg: TrainConfig, data: Data) -> dict[str, Any]:
        return instance_model_kwargs(cfg, data.meta.num_classes)

    def checkpoint_meta(self, cfg: TrainConfig, data: Data) -> dict[str, Any]:
        return instance_meta(data.meta.class_names, data.meta.category_ids)

    def inputs_to(self, images: list, device: torch.device, cfg: TrainConfig) -> list:
        return [image.to(device, non_blocking=True) for image in images]

    def targets_to(self, targets: list[dict], device: torch.device) -> list[dict]:
        return targets_for_training(targets, device)

    def loss(self, model, images, targets, cfg: TrainConfig, data: Data) -> torch.Tensor:
        return sum(model(images, targets).values())

    def evaluator(self, data: Data, device: torch.device) -> InstanceEvaluator:
        return InstanceEvaluator(data.val_set)

    def predict(self, model, images, targets) -> dict[str, Any]:
        return predict_with_loss(model, images, targets)

    def score(self, metrics: dict[str, Any]) -> float | None:
        return metrics["segm"]["AP"] if "segm" in metrics else None

    def csv_values(self, metrics: dict[str, Any]) -> dict[str, Any]:
        values = {f"{kind}_{name}": metrics[kind][name] for kind, name in VAL_COLUMNS
                  if kind in metrics}  # fmt: skip
        return values | ({"val_loss": metrics["loss"]} if "loss" in metrics else {})


def predict_with_loss(model, images: list, targets: list[dict] | None) -> dict[str, Any]:
    """Detections of an eval-mode model and, given targets, its summed losses on them."""
    detections = model(images)
    if targets is None:
        return {"detections": detections, "loss": None}
    losses = model.compute_losses(images, targets)
    return {"detections": detections, "loss": float(sum(losses.values()))}


def targets_for_training(targets: list[dict], device: torch.device) -> list[dict]:
    """Crowd regions are not trained on (as in Detectron); tensors move to `device`."""
    moved = []
    for target in targets:
        keep = target["iscrowd"] == 0
        moved.append({k: target[k][keep].to(device) for k in ("boxes", "labels", "masks")})
    return moved


# ---------------------------------------------------------------- data and model


def build_instance_data(cfg: TrainConfig) -> Data:
    """Train and val InstanceDatasets; val from `val_data`, else a `val_split` fraction."""
    if cfg.data is None:
        raise SegworksError("--data is required for instance segmentation")
    instance_set = read_instances(Path(cfg.data), fmt=cfg.instance_format)
    sizes = {"min_size": cfg.min_size, "max_size": cfg.max_size or DEFAULT_MAX_SIZE}
    val_sizes = sizes  # the model resizes again, to its eval size (`min_size_test`)
    if cfg.min_size_test or cfg.max_size_test:
        val_sizes = {"min_size": cfg.min_size_test or cfg.min_size, "max_size": DEFAULT_MAX_SIZE}
    hflip = 0.5 if cfg.hflip else 0.0
    if cfg.val_data:
        val_source = read_instances(Path(cfg.val_data), fmt=cfg.instance_format)
        if val_source.class_names != instance_set.class_names:
            raise DataError(
                cfg.val_data, f"classes {val_source.class_names} differ from the training set"
            )
        train_set = InstanceDataset(instance_set, hflip=hflip, **sizes)
        val_set = InstanceDataset(val_source, **val_sizes)
    else:
        train_idx, val_idx = instance_set.split(cfg.val_split, seed=VAL_SPLIT_SEED)
        train_set = InstanceDataset(instance_set, train_idx, hflip=hflip, **sizes)
        val_set = InstanceDataset(instance_set, val_idx, **val_sizes)
    if cfg.epoch_repeats > 1:
        train_set = ConcatDataset([train_set] * cfg.epoch_repeats)
    return Data(meta=instance_set, train_set=train_set, val_set=val_set if len(val_set) else None)


def instance_model_kwargs(cfg: TrainConfig, num_classes: int) -> dict[str, Any]:
    """Builder kwargs saved in the checkpoint (no file paths: weights travel in the state)."""
    if model_task(cfg.model) != "instance":
        raise SegworksError(f"--task instance needs an instance model, got {cfg.model!r}")
    pretrained = cfg.pretrained not in (None, "none")
    kwargs = {
        "num_classes": num_classes,
        "gamma": float(cfg.gamma),
        "roi_size": int(cfg.roi_size),
        "freeze_bn": bool(cfg.freeze_bn or cfg.bn2affine or cfg.backbone_weights or pretrained),
    }
    for key in ("min_size", "max_size", "min_size_test", "max_size_test"):
        if getattr(cfg, key) is not None:
            kwargs[key] = int(getattr(cfg, key))
    return kwargs | cfg.model_kwargs


def build_instance_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The Mask R-CNN of `cfg` with its starting weights (none loaded when resuming)."""
    kwargs = instance_model_kwargs(cfg, num_classes)
    extra = {}
    if cfg.backbone_weights:
        if cfg.model == "maskrcnn_tiny":
            raise SegworksError("maskrcnn_tiny has no ImageNet backbone; drop --backbone-weights")
        extra["backbone_weights"] = Path(cfg.backbone_weights)
    weights = cfg.weights
    if weights and not cfg.resume:
        from segworks.models.starting import whole_model_file

        weights = whole_model_file(weights, cfg.model, kwargs)
    choice = None if cfg.resume else _pretrained(cfg, kwargs)
    if choice is not None and choice.kind == "encoder":
        extra["backbone_weights"] = choice.path
    elif choice is not None:
        weights = weights or choice.path
    model = build_model(cfg.model, **kwargs, **extra)
    if weights and not cfg.resume:
        reset = cfg.reset_classifier
        if choice is not None and choice.entry is not None and choice.kind == "model":
            reset = reset or len(choice.entry.class_names) != num_classes
        load_initial_weights(model, Path(weights), reset)
    return model


def _pretrained(cfg: TrainConfig, kwargs: dict):
    """--pretrained for an instance model; a file is taken as whole-model weights."""
    from segworks.models.starting import choose

    choice = choose(cfg.pretrained, model=cfg.model, model_kwargs=kwargs)
    if choice is not None and choice.kind == "file":
        return type(choice)("model", choice.path)
    return choice


def load_initial_weights(model: nn.Module, path: Path, reset_classifier: bool) -> None:
    """--weights: all weights, or with `reset_classifier` all but the class-specific layers."""
    try:
        load_weights(model, path, ignore_prefixes=CLASSIFIER_PREFIXES if reset_classifier else ())
    except DataError as error:
        if reset_classifier or "shape mismatches" not in error.problem:
            raise
        hint = "; for another class count add --reset-classifier"
        raise DataError(path, error.problem + hint) from None
    if reset_classifier:
        log.info("%s: loaded all but the class-specific layers %s", path, CLASSIFIER_PREFIXES)


def instance_meta(class_names: list[str], category_ids: list[int] | None = None) -> dict:
    names = ["background", *class_names]
    return {
        "task": "instance",
        "class_names": names,
        "palette": [list(c) for c in voc_palette(len(names))],
        "category_ids": [int(c) for c in category_ids or range(1, len(names))],
    }


# ---------------------------------------------------------------- eval


def evaluate_model(model, dataset, device, *, desc: str = "eval", progress: bool = True) -> dict:
    """COCO metrics and the mean loss of `model` on an InstanceDataset (BatchNorm in eval)."""
    model.eval()
    loader = DataLoader(dataset, batch_size=1, collate_fn=collate_instances)

    def predict(images, targets):
        images = [image.to(device) for image in images]
        return predict_with_loss(model, images, targets_for_training(targets, device))

    evaluator = InstanceEvaluator(dataset)
    return inference_on_dataset(predict, loader, evaluator, progress=progress, desc=desc)


def load_instance_checkpoint(path) -> tuple[nn.Module, dict]:
    checkpoint = load_checkpoint(path)
    meta = checkpoint.get("meta", {})
    if meta.get("task") != "instance":
        raise DataError(
            path, f"not an instance segmentation checkpoint (task {meta.get('task')!r})"
        )
    return model_from_checkpoint(checkpoint, path), meta


def run_eval(args) -> int:
    """`segworks eval` of an instance checkpoint: box and mask AP (and --json) of --data or
    --ann, the first --max-images images only when given."""
    model, meta = load_instance_checkpoint(args.checkpoint)
    device = device_from_args(args)
    instance_set = eval_instances(args)
    if ["background", *instance_set.class_names] != meta["class_names"]:
        raise DataError(
            instance_set.source,
            f"classes {instance_set.class_names} differ from the checkpoint's "
            f"{meta['class_names'][1:]}",
        )
    dataset = InstanceDataset(instance_set, min_size=None, max_size=DEFAULT_MAX_SIZE)
    max_images = getattr(args, "max_images", None)
    if max_images is not None:
        dataset.records = dataset.records[: max(0, max_images)]
    if not len(dataset):
        raise SegworksError(f"{instance_set.source} holds no image to evaluate")
    progress = not getattr(args, "no_progress", False)
    metrics = evaluate_model(model.to(device), dataset, device, progress=progress)
    print(format_metrics({k: metrics[k] for k in ("bbox", "segm")}))
    if getattr(args, "json", None):
        save_json(metrics, args.json)
    return 0


def eval_instances(args) -> InstanceSet:
    """The annotations to score: --ann (COCO, images under --images or --data) or --data."""
    ann = getattr(args, "ann", None)
    if ann:
        images = getattr(args, "images", None) or getattr(args, "data", None)
        return read_instances(Path(ann), images=Path(images) if images else None, fmt="coco")
    if getattr(args, "data", None) is None:
        raise SegworksError("--data is required for instance segmentation")
    return read_instances(Path(args.data), fmt="auto")
