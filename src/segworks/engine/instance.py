"""Instance segmentation: training, COCO evaluation and prediction for the Mask R-CNN models.

Called lazily by the `train`, `eval` and `predict` commands with their argparse namespace;
every flag is read with getattr and a default, so a command only needs to define the flags it
offers. Flags read:
    train    --data --model --out -e/--epochs -b/--batch-size -l/--lr --optimizer --resume
             --accum-steps --amp --seed --device/-g --workers --val-split --val-data --weights
             --reset-classifier --backbone-weights --gamma --roi-size --freeze-bn --bn2affine
             --min-size --max-size --model-arg --instance-format --images --warmup --tensorboard
             --progress (--no-amp, --no-tensorboard, --no-progress; AMP is on by default on CUDA)
    eval     checkpoint --data --ann --images --json --device --min-size --max-size
    predict  checkpoint inputs --out --score-threshold --contour --coco-json --device

Checkpoints (segworks.checkpoint layout) keep meta = {task: "instance", class_names, palette,
category_ids} where class_names[0] is "background", class_names[k] is the name of label k and
category_ids[k - 1] its category id in the training data (used in predict's COCO results);
`last.pt` holds the training state for --resume, `best.pt` the weights with the best validation
mask AP.

`--weights CKPT` starts from a checkpoint or state dict of the same architecture; with
`--reset-classifier` the class-specific layers (box predictor and the mask predictor's last
layer) are left freshly initialised, so the checkpoint may have another class count.
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader
from tqdm import tqdm

from segworks.checkpoint import load_checkpoint, save_checkpoint
from segworks.coco_eval import CocoEvaluator, format_metrics, outputs_to_coco_results
from segworks.data.instances import (
    IMAGE_SUFFIXES,
    InstanceDataset,
    InstanceSet,
    collate_instances,
    read_instances,
)
from segworks.data.meta import voc_palette
from segworks.devices import gpu_device_name, resolve_device
from segworks.errors import DataError, SegworksError
from segworks.fileio import save_image, save_json, save_text
from segworks.models import build_model, model_from_checkpoint, model_task
from segworks.models.mask_rcnn import CLASSIFIER_PREFIXES, load_weights

log = logging.getLogger(__name__)


def _arg(args, name: str, default):
    value = getattr(args, name, None)
    return default if value is None else value


def _device(args) -> torch.device:
    """--device (auto, cpu, cuda, cuda:N) or -g/--gpu N (-1 = CPU); auto picks CUDA if present."""
    device = getattr(args, "device", None)
    gpu = getattr(args, "gpu", None)
    if device in (None, "auto") and isinstance(gpu, int):
        device = gpu_device_name(gpu)
    return resolve_device(device)


# ---------------------------------------------------------------- building blocks


def read_args_data(args, source_name: str = "data") -> InstanceSet:
    source = getattr(args, source_name, None)
    if source is None:
        raise SegworksError(f"--{source_name} is required for instance segmentation")
    images = getattr(args, "images", None)
    return read_instances(
        Path(source),
        images=Path(images) if images else None,
        fmt=_arg(args, "instance_format", "auto"),
    )


def model_kwargs_from_args(args, num_classes: int) -> dict:
    """Builder kwargs saved in the checkpoint (no file paths: weights travel in the state)."""
    name = _arg(args, "model", "maskrcnn_r50_fpn")
    kwargs = {
        "num_classes": num_classes,
        "gamma": float(_arg(args, "gamma", 1.0)),
        "roi_size": int(_arg(args, "roi_size", 14)),
        "freeze_bn": bool(
            getattr(args, "freeze_bn", False)
            or getattr(args, "bn2affine", False)
            or getattr(args, "backbone_weights", None)
            or getattr(args, "pretrained", None) not in (None, "none")
        ),
    }
    for key in ("min_size", "max_size"):
        if getattr(args, key, None) is not None:
            kwargs[key] = int(getattr(args, key))
    if model_task(name) != "instance":
        raise SegworksError(f"--task instance needs a maskrcnn_* model, got {name!r}")
    if getattr(args, "model_arg", None):
        from segworks.commands.train import parse_model_args

        kwargs |= parse_model_args(list(args.model_arg))
    return kwargs


def build_instance_model(args, num_classes: int) -> tuple[torch.nn.Module, dict]:
    name = _arg(args, "model", "maskrcnn_r50_fpn")
    kwargs = model_kwargs_from_args(args, num_classes)
    extra = {}
    if getattr(args, "backbone_weights", None):
        if name == "maskrcnn_tiny":
            raise SegworksError("maskrcnn_tiny has no ImageNet backbone; drop --backbone-weights")
        extra["backbone_weights"] = Path(args.backbone_weights)
    weights = getattr(args, "weights", None)
    choice = None if getattr(args, "resume", None) else _pretrained(args, name, kwargs)
    if choice is not None and choice.kind == "encoder":
        extra["backbone_weights"] = choice.path
    elif choice is not None:
        weights = weights or choice.path
    model = build_model(name, **kwargs, **extra)
    if weights:
        reset = bool(getattr(args, "reset_classifier", 0))
        if choice is not None and choice.entry is not None and choice.kind == "model":
            reset = reset or len(choice.entry.class_names) != num_classes
        load_initial_weights(model, Path(weights), reset)
    return model, kwargs


def _pretrained(args, name: str, kwargs: dict):
    """--pretrained for an instance model; a file is taken as whole-model weights."""
    from segworks.models.pretrained import choose

    choice = choose(getattr(args, "pretrained", None), model=name, model_kwargs=kwargs)
    if choice is not None and choice.kind == "file":
        return type(choice)("model", choice.path)
    return choice


def load_initial_weights(model: torch.nn.Module, path: Path, reset_classifier: bool) -> None:
    """--weights: all weights, or with `reset_classifier` all but the class-specific layers."""
    try:
        load_weights(model, path, ignore_prefixes=CLASSIFIER_PREFIXES if reset_classifier else ())
    except DataError as error:
        if reset_classifier or "shapes differ" not in error.problem:
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


def _targets_for_training(targets: list[dict], device: torch.device) -> list[dict]:
    """Crowd regions are not trained on (as in Detectron); tensors move to `device`."""
    moved = []
    for target in targets:
        keep = target["iscrowd"] == 0
        moved.append({k: target[k][keep].to(device) for k in ("boxes", "labels", "masks")})
    return moved


def evaluate_model(model, dataset, device, *, desc: str = "eval") -> dict:
    """COCO metrics and the mean validation loss (BatchNorm kept in eval mode)."""
    evaluator = CocoEvaluator(dataset)
    loader = DataLoader(dataset, batch_size=1, collate_fn=collate_instances)
    model.eval()
    losses = []
    with torch.no_grad():
        for images, targets in tqdm(loader, desc=desc, leave=False):
            images = [image.to(device) for image in images]
            outputs = model(images)
            evaluator.update({int(t["image_id"]): o for t, o in zip(targets, outputs)})
            loss = model.compute_losses(images, _targets_for_training(targets, device))
            losses.append(float(sum(loss.values())))
    metrics = evaluator.compute()
    metrics["loss"] = float(np.mean(losses)) if losses else math.nan
    return metrics


# ---------------------------------------------------------------- train


def _datasets(args, instance_set: InstanceSet):
    sizes = {"min_size": _arg(args, "min_size", 800), "max_size": _arg(args, "max_size", 1333)}
    val_data = getattr(args, "val_data", None)
    if val_data:
        val_set = read_instances(Path(val_data), fmt=_arg(args, "instance_format", "auto"))
        if val_set.class_names != instance_set.class_names:
            raise DataError(val_data, f"classes {val_set.class_names} differ from the training set")
        return InstanceDataset(instance_set, hflip=0.5, **sizes), InstanceDataset(val_set, **sizes)
    split = float(_arg(args, "val_split", 0.1))
    train_idx, val_idx = instance_set.split(split, seed=int(_arg(args, "seed", 0)))
    train = InstanceDataset(instance_set, train_idx, hflip=0.5, **sizes)
    return train, InstanceDataset(instance_set, val_idx, **sizes)


def _optimizer(args, model) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    name = str(_arg(args, "optimizer", "sgd")).lower()
    lr = float(_arg(args, "lr", 0.01 if name == "sgd" else 1e-3))
    weight_decay = float(_arg(args, "weight_decay", 1e-4))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name in ("adam", "adamw"):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise SegworksError(f"--optimizer must be sgd, adam or adamw, got {name!r}")


def _scheduler(optimizer, total_steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0.001x, then x0.1 at 75% and again at 90% of the optimizer steps."""

    def factor(step: int) -> float:
        if step < warmup:
            return 0.001 + (1 - 0.001) * step / warmup
        return 0.1 ** sum(step >= m * total_steps for m in (0.75, 0.9))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


class _Trainer:
    """State of one training run; the loop reads top to bottom in `fit` and `train_epoch`."""

    def __init__(self, args):
        self.args, self.device = args, _device(args)
        torch.manual_seed(int(_arg(args, "seed", 0)))
        self.out = Path(_arg(args, "out", "runs/instance"))
        instance_set = read_args_data(args)
        self.train_set, self.val_set = _datasets(args, instance_set)
        self.class_names = instance_set.class_names
        self.category_ids = instance_set.category_ids
        self.model, self.model_kwargs = build_instance_model(args, instance_set.num_classes)
        self.model.to(self.device)
        self.accum = max(1, int(_arg(args, "accum_steps", 1)))
        batch_size = int(_arg(args, "batch_size", 2))
        self.loader = DataLoader(
            self.train_set,
            batch_size=batch_size,
            shuffle=True,
            num_workers=int(_arg(args, "workers", 0)),
            collate_fn=collate_instances,
            drop_last=len(self.train_set) > batch_size,
        )
        self.epochs = int(_arg(args, "epochs", 12))
        total = max(1, self.epochs * math.ceil(len(self.loader) / self.accum))
        self.optimizer = _optimizer(args, self.model)
        warmup = int(_arg(args, "warmup", min(200, total // 5)))
        self.scheduler = _scheduler(self.optimizer, total, max(1, warmup))
        self.amp = bool(_arg(args, "amp", True)) and self.device.type == "cuda"  # --no-amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.epoch, self.step, self.best = 0, 0, -math.inf
        if getattr(args, "resume", None):
            resume = Path(args.resume)
            self._resume(resume / "last.pt" if resume.is_dir() else resume)

    def _resume(self, path: Path) -> None:
        checkpoint = load_checkpoint(path)
        if "optimizer" not in checkpoint:
            raise DataError(path, "checkpoint has no training state (use last.pt to resume)")
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch, self.step = checkpoint["epoch"], checkpoint["step"]
        self.best = checkpoint.get("best", -math.inf)
        log.info("resumed from %s at epoch %d", path, self.epoch)

    def config(self) -> dict:
        """The run's settings as given, weight files included (config.json)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()
                if _plain(v) or isinstance(v, Path)}  # fmt: skip

    def checkpoint(self, metrics: dict, *, with_state: bool) -> dict:
        checkpoint = {
            "model": self.model.state_dict(),
            "model_name": _arg(self.args, "model", "maskrcnn_r50_fpn"),
            "model_kwargs": self.model_kwargs,
            "meta": instance_meta(self.class_names, self.category_ids),
            "config": {k: v for k, v in vars(self.args).items() if _plain(v)},
            "metrics": metrics,
            "epoch": self.epoch,
        }
        if with_state:
            checkpoint |= {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": self.step,
                "best": self.best,
            }
        return checkpoint

    def train_epoch(self, writer) -> float:
        self.model.train()
        bar = tqdm(
            self.loader,
            desc=f"epoch {self.epoch + 1}/{self.epochs}",
            disable=not _arg(self.args, "progress", True),
        )
        total = 0.0
        for index, (images, targets) in enumerate(bar):
            images = [image.to(self.device) for image in images]
            targets = _targets_for_training(targets, self.device)
            with torch.autocast(self.device.type, enabled=self.amp):
                losses = self.model(images, targets)
                loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {self.step}; lower --lr")
            self.scaler.scale(loss / self.accum).backward()
            if (index + 1) % self.accum == 0 or index + 1 == len(self.loader):
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.step += 1
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2g}")
            if writer is not None:
                for name, value in losses.items():
                    writer.add_scalar(f"train/{name}", value.item(), self.step)
        return total / max(1, len(self.loader))

    def fit(self) -> dict:
        metrics = {}
        writer = _tensorboard(self.out) if _arg(self.args, "tensorboard", True) else None
        save_json(self.config(), self.out / "config.json")
        rows = _read_rows(self.out / "metrics.csv", upto_epoch=self.epoch)
        while self.epoch < self.epochs:
            started = time.monotonic()
            train_loss = self.train_epoch(writer)
            metrics = {"train_loss": train_loss}
            if len(self.val_set):
                metrics |= evaluate_model(self.model, self.val_set, self.device)
            self.epoch += 1
            score = metrics["segm"]["AP"] if "segm" in metrics else -train_loss
            score = -math.inf if math.isnan(score) else score
            log.info("epoch %d: %s", self.epoch, _summary(metrics))
            rows.append(_csv_row(self.epoch, self.step, metrics, time.monotonic() - started))
            save_text(_csv_text(rows), self.out / "metrics.csv")
            if writer is not None:
                _log_metrics(writer, metrics, self.epoch)
            if score > self.best or not (self.out / "best.pt").exists():
                self.best = max(score, self.best)
                save_checkpoint(self.out / "best.pt", self.checkpoint(metrics, with_state=False))
            save_checkpoint(self.out / "last.pt", self.checkpoint(metrics, with_state=True))
        if writer is not None:
            writer.close()
        return metrics


def _plain(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


CSV_FIELDS = (
    "epoch", "step", "train_loss", "val_loss", "bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50",
    "segm_AP75", "seconds",
)  # fmt: skip


def _csv_row(epoch: int, step: int, metrics: dict, seconds: float) -> dict:
    row = {"epoch": epoch, "step": step, "train_loss": metrics["train_loss"]}
    row["seconds"] = round(seconds, 3)
    if "loss" in metrics:
        row["val_loss"] = metrics["loss"]
    for iou_type, name in (("bbox", "AP"), ("bbox", "AP50"), ("segm", "AP"), ("segm", "AP50"),
                           ("segm", "AP75")):  # fmt: skip
        if iou_type in metrics:
            row[f"{iou_type}_{name}"] = metrics[iou_type][name]
    return row


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    table = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    table.writeheader()
    table.writerows(rows)
    return buffer.getvalue()


def _read_rows(path: Path, *, upto_epoch: int) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if int(row["epoch"]) <= upto_epoch]


def _summary(metrics: dict) -> str:
    parts = [f"train loss {metrics['train_loss']:.4f}"]
    if "segm" in metrics:
        parts += [
            f"val loss {metrics['loss']:.4f}",
            f"box AP {metrics['bbox']['AP']:.4f}",
            f"mask AP {metrics['segm']['AP']:.4f}",
            f"mask AP50 {metrics['segm']['AP50']:.4f}",
        ]
    return ", ".join(parts)


def _log_metrics(writer, metrics: dict, epoch: int) -> None:
    for iou_type in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75"):
            if iou_type in metrics:
                writer.add_scalar(f"val/{iou_type}_{name}", metrics[iou_type][name], epoch)
    if "loss" in metrics:
        writer.add_scalar("val/loss", metrics["loss"], epoch)


def run_train(args) -> int:
    trainer = _Trainer(args)
    metrics = trainer.fit()
    print(_summary(metrics) if metrics else "no epochs to train")
    print(f"checkpoints: {trainer.out / 'best.pt'}, {trainer.out / 'last.pt'}")
    return 0


# ---------------------------------------------------------------- eval


def _load_instance_checkpoint(path) -> tuple[torch.nn.Module, dict]:
    checkpoint = load_checkpoint(path)
    meta = checkpoint.get("meta", {})
    if meta.get("task") != "instance":
        raise DataError(
            path, f"not an instance segmentation checkpoint (task {meta.get('task')!r})"
        )
    return model_from_checkpoint(checkpoint, path), meta


def run_eval(args) -> int:
    model, meta = _load_instance_checkpoint(args.checkpoint)
    device = _device(args)
    ann = getattr(args, "ann", None)
    if ann:
        images = getattr(args, "images", None) or getattr(args, "data", None)
        instance_set = read_instances(
            Path(ann), images=Path(images) if images else None, fmt="coco"
        )
    else:
        instance_set = read_args_data(args)
    if ["background", *instance_set.class_names] != meta["class_names"]:
        raise DataError(
            instance_set.source,
            f"classes {instance_set.class_names} differ from the checkpoint's "
            f"{meta['class_names'][1:]}",
        )
    dataset = InstanceDataset(
        instance_set,
        min_size=getattr(args, "min_size", None),
        max_size=_arg(args, "max_size", 1333),
    )
    metrics = evaluate_model(model.to(device), dataset, device)
    print(format_metrics({k: metrics[k] for k in ("bbox", "segm")}))
    if getattr(args, "json", None):
        save_json(metrics, args.json)
    return 0


# ---------------------------------------------------------------- predict


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their images) and glob patterns, in order, without duplicates."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            paths.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(item))
            if not matches:
                raise DataError(path, "no such file, folder or matching glob")
            paths += matches
    return list(dict.fromkeys(paths))


def _boundary(mask: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Pixels of a boolean mask within `width` of its edge."""
    m = mask[None, None].float()
    eroded = -F.max_pool2d(-m, 2 * width + 1, stride=1, padding=width)
    return (m - eroded)[0, 0] > 0


def draw_instances(
    image: Image.Image, output: dict, meta: dict, *, contour: bool, alpha: float = 0.45
) -> Image.Image:
    """Masks (filled or as contours), boxes, labels and scores drawn over `image`."""
    canvas = np.asarray(image.convert("RGB")).astype(np.float32)
    palette, names = meta["palette"], meta["class_names"]
    masks = output["masks"][:, 0] > 0.5 if len(output["masks"]) else output["masks"]
    for mask, label in zip(masks, output["labels"].tolist()):
        colour = np.array(palette[label % len(palette)], dtype=np.float32)
        region = _boundary(mask) if contour else mask
        weight = 1.0 if contour else alpha
        canvas[region.numpy()] = (1 - weight) * canvas[region.numpy()] + weight * colour
    result = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    for box, label, score in zip(
        output["boxes"].tolist(), output["labels"].tolist(), output["scores"].tolist()
    ):
        colour = tuple(palette[label % len(palette)])
        draw.rectangle(box, outline=colour, width=2)
        name = names[label] if label < len(names) else str(label)
        draw.text((box[0] + 2, max(0, box[1] - 11)), f"{name} {score:.2f}", fill=colour)
    return result


def _select(output: dict, threshold: float) -> dict:
    keep = output["scores"] >= threshold
    return {k: v[keep].cpu() for k, v in output.items()}


def _save_masks(output: dict, meta: dict, folder: Path, stem: str) -> None:
    names = meta["class_names"]
    for index, (mask, label) in enumerate(zip(output["masks"], output["labels"].tolist())):
        name = names[label].replace("/", "_").replace(" ", "_")
        pixels = ((mask[0] > 0.5).numpy() * 255).astype(np.uint8)
        save_image(Image.fromarray(pixels), folder / f"{stem}_{index:03d}_{name}.png")


def run_predict(args) -> int:
    model, meta = _load_instance_checkpoint(args.checkpoint)
    device = _device(args)
    model.to(device)
    out = Path(_arg(args, "out", "predictions"))
    threshold = float(_arg(args, "score_threshold", 0.5))
    category_ids = meta.get("category_ids") or range(1, len(meta["class_names"]))
    label_to_category = dict(enumerate(category_ids, start=1))
    results, images = [], []
    for image_id, path in enumerate(tqdm(expand_inputs(list(args.inputs)), desc="predict")):
        try:
            image = Image.open(path).convert("RGB")
        except OSError as error:
            raise DataError(path, f"cannot read image ({error})") from error
        tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
        with torch.no_grad():
            output = _select(model([tensor.to(device)])[0], threshold)
        drawing = draw_instances(image, output, meta, contour=bool(getattr(args, "contour", False)))
        save_image(drawing, out / f"{path.stem}.png")
        _save_masks(output, meta, out / "masks" / path.stem, path.stem)
        images.append(
            {"id": image_id, "file_name": str(path), "height": image.height, "width": image.width}
        )
        for entry in outputs_to_coco_results(image_id, output, label_to_category):
            results.append(entry | {"file_name": str(path)})
        log.info("%s: %d instances", path, len(output["scores"]))
    save_json(results, Path(_arg(args, "coco_json", out / "results.json")))
    save_json(images, out / "images.json")
    print(f"{len(images)} images, {len(results)} instances -> {out}")
    return 0
