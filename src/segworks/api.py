"""The Python API: what each command does, in a few lines.

    import segworks

    model = segworks.get_model("unet", num_classes=3)          # an untrained nn.Module
    result = segworks.train(data="newts/", epochs=20, out="runs/newts")
    metrics = segworks.evaluate(result.checkpoint, "newts/", split="test")
    predictor = segworks.Predictor.from_checkpoint(result.checkpoint)
    labels = predictor.predict("photo.jpg").labels              # (H, W) at the photo's size

Each function runs the same code as its command (`segworks train`, `eval`, `predict`), reading
the same settings from a checkpoint, so Python and the command line give the same numbers.
"""

from __future__ import annotations

import argparse
import csv
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from segworks.config import TrainConfig
from segworks.errors import DataError, SegworksError

__all__ = ["TrainResult", "evaluate", "get_model", "train"]


def get_model(
    name: str, *, num_classes: int, pretrained: str | Path | None = None, **kwargs
) -> nn.Module:
    """The registered model `name` (see `segworks models`) with `num_classes` outputs (1 for a
    binary model). `pretrained` is a weight file for the backbone (the builder's
    `backbone_weights`); `kwargs` are the builder's other keywords."""
    from segworks.models import MODELS, build_model

    if name not in MODELS:
        raise SegworksError(f"unknown model {name!r}; expected one of {', '.join(sorted(MODELS))}")
    if pretrained is not None:
        if not _takes_keyword(MODELS[name], "backbone_weights"):
            raise SegworksError(f"model {name!r} has no pretrained backbone to load {pretrained}")
        if not Path(pretrained).is_file():
            raise DataError(pretrained, "pretrained weight file not found")
        kwargs["backbone_weights"] = Path(pretrained)
    return build_model(name, num_classes=num_classes, **kwargs)


def _takes_keyword(builder, keyword: str) -> bool:
    parameters = inspect.signature(builder).parameters.values()
    return any(p.name == keyword or p.kind is p.VAR_KEYWORD for p in parameters)


@dataclass
class TrainResult:
    """What a finished training run left: its folder and the last epoch's metrics."""

    run_dir: Path
    metrics: dict[str, float]  # the last row of metrics.csv: epoch, train_loss, val_miou, ...

    @property
    def checkpoint(self) -> Path:
        """best.pt (best validation mIoU) when the run had a validation split, else last.pt."""
        best = self.run_dir / "best.pt"
        return best if best.is_file() else self.run_dir / "last.pt"


def train(config: TrainConfig | dict[str, Any] | None = None, **fields) -> TrainResult:
    """Train as `segworks train` does. Give a TrainConfig, a dict of its fields, or the fields
    as keywords (``segworks.train(data="newts/", model="unet", epochs=20, out="runs/x")``);
    keywords win over the dict. Semantic and binary tasks; instance models train with
    `segworks train --task instance`."""
    from segworks.engine.train import train as run_training

    if isinstance(config, TrainConfig):
        if fields:
            raise SegworksError("give either a TrainConfig or keyword fields, not both")
        cfg = config
    else:
        cfg = _config(dict(config or {}), fields)
    if cfg.task == "instance":
        raise SegworksError(
            "segworks.train runs semantic and binary tasks; use segworks train --task instance"
        )
    run_dir = Path(run_training(cfg))
    return TrainResult(run_dir=run_dir, metrics=_last_metrics(run_dir / "metrics.csv"))


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    *,
    split: str | None = None,
    device: str = "cpu",
    max_images: int | None = None,
    progress: bool = False,
    **option_fields,
) -> dict[str, Any]:
    """The metrics `segworks eval CHECKPOINT --data DATA --split SPLIT` prints and writes with
    --json (miou, pixel_accuracy, per_class, confusion_matrix, per_image, settings ...).
    `option_fields` are InferenceOptions fields (``long_side=0``, ``mode="slide"`` ...)."""
    from segworks.checkpoint import load_checkpoint
    from segworks.commands import evaluate as eval_command
    from segworks.commands.predict import checkpoint_task
    from segworks.data.meta import IMAGENET_MEAN, IMAGENET_STD
    from segworks.devices import resolve_device
    from segworks.engine.evaluate import evaluate as run_evaluation
    from segworks.inference.predictor import options_from_checkpoint
    from segworks.models import model_from_checkpoint

    loaded = load_checkpoint(checkpoint)
    if checkpoint_task(loaded, checkpoint) == "instance":
        raise SegworksError("segworks.evaluate scores semantic and binary checkpoints; "
                            "score instance ones with segworks eval")  # fmt: skip
    parser = argparse.ArgumentParser()
    eval_command.add_arguments(parser)
    args = parser.parse_args([str(checkpoint), "--data", str(data)])
    args.split, args.max_images = split, max_images
    dataset, _ = eval_command.open_split(args, loaded)
    meta = loaded["meta"]
    results = run_evaluation(
        model_from_checkpoint(loaded, checkpoint),
        dataset,
        meta,
        device=resolve_device(device),
        mean=meta.get("mean", IMAGENET_MEAN),
        std=meta.get("std", IMAGENET_STD),
        options=options_from_checkpoint(loaded, **option_fields),
        progress=progress,
    )
    results["split"] = args.split
    return results


def _config(given: dict[str, Any], fields: dict[str, Any]) -> TrainConfig:
    given.update(fields)
    given = {key: str(v) if isinstance(v, Path) else v for key, v in given.items()}
    try:
        return TrainConfig(**given)
    except TypeError as error:  # an unknown keyword
        raise SegworksError(f"not a training setting: {error}") from None


def _last_metrics(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return {}
    return {key: float(value) for key, value in rows[-1].items() if value not in ("", None)}
