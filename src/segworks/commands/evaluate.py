"""segworks eval: score a checkpoint on a dataset split at the images' original resolution.

Prints per-class IoU, Dice and accuracy and the dataset numbers (pixel accuracy, mean class
accuracy, mIoU, frequency-weighted IoU, mean Dice) from one confusion matrix over the split.
Predictions are made at the original size (with --size the input is resized and the logits are
resized back; labels are never resized). Classes absent from ground truth and prediction are
left out of the means (nanmean); a class predicted but absent from ground truth scores IoU 0.
With --tta, or when the checkpoint's run stored TTA (`segworks train --tta-flip`, recipe
`small`), the plain and the augmented numbers are both reported; --no-tta reports plain only.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

from segworks.commands.predict import (
    add_inference_arguments,
    checkpoint_task,
    inference_options,
    resolve_device,
    use_tta,
)
from segworks.errors import SegworksError

log = logging.getLogger(__name__)

ABSENT_POLICY = (
    "classes with no ground-truth and no predicted pixel are left out of mIoU, mean Dice and "
    "mean accuracy (nanmean); a class predicted but absent from ground truth scores IoU 0"
)
CSV_FIELDS = (
    "variant",
    "class",
    "iou",
    "dice",
    "accuracy",
    "precision",
    "gt_pixels",
    "pred_pixels",
    "pixel_accuracy",
    "fwiou",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0] + " Absent classes: " + ABSENT_POLICY + "."
    parser.add_argument("checkpoint", help="a segworks checkpoint (.pt)")
    parser.add_argument("--data", help="dataset folder, spec file (.yaml/.json) or pair list")
    parser.add_argument(
        "--split", help="split to score (default: val, or the only split the data has)"
    )
    parser.add_argument("-tt", "--train-list", help="list of stems (seed RefineNet layout)")
    parser.add_argument("-tr", "--train-images", help="image folder for --train-list")
    parser.add_argument("-ta", "--train-annotations", help="mask folder for --train-list")
    parser.add_argument("--mask-format", help="mask encoding (default: as trained, else auto)")
    parser.add_argument("--ignore-index", type=int, help="the void value in the mask files")
    parser.add_argument("--reduce-zero-label", action="store_true", help="0 is void, k -> k-1")
    parser.add_argument("-b", "--batch-size", type=int, default=4, help="windows per forward")
    parser.add_argument("--max-images", type=int, help="score only the first N images")
    parser.add_argument("--json", metavar="OUT", help="write all numbers as JSON")
    parser.add_argument("--csv", metavar="OUT", help="write per-class numbers as CSV")
    parser.add_argument("--confusion-png", metavar="OUT", help="write the confusion matrix")
    parser.add_argument("--report", metavar="DIR", help="write an HTML report into DIR")
    parser.add_argument(
        "--report-samples", type=int, default=4, help="worst and best images in the report"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_inference_arguments(parser)
    instance = parser.add_argument_group("instance checkpoints")
    instance.add_argument("--ann", metavar="FILE", help="COCO ground-truth JSON")
    instance.add_argument("--score-threshold", type=float, default=0.5)


def run(args: argparse.Namespace) -> int:
    from segworks.checkpoint import load_checkpoint

    check_outputs(args)
    checkpoint = load_checkpoint(args.checkpoint)
    if checkpoint_task(checkpoint, args.checkpoint) == "instance":
        from segworks.engine.instance import run_eval

        return int(run_eval(args) or 0)
    from segworks.models import model_from_checkpoint

    dataset, meta = open_split(args, checkpoint)
    model = model_from_checkpoint(checkpoint, args.checkpoint)
    device = resolve_device(args)
    variants = {"plain": False, "tta": True} if use_tta(args, checkpoint) else {"plain": False}
    results = {}
    for name, tta in variants.items():
        options = inference_options(args, checkpoint, tta=tta)
        results[name] = evaluate_variant(args, checkpoint, model, dataset, options, device, name)
    print_results(results, args, len(dataset))
    write_outputs(args, results, meta, checkpoint)
    return 0


def check_outputs(args: argparse.Namespace) -> None:
    """Every output location is writable before the evaluation runs."""
    from segworks.outputs import check_output_dir, check_output_file

    for flag in ("json", "csv", "confusion_png"):
        if getattr(args, flag, None):
            check_output_file(getattr(args, flag), f"--{flag.replace('_', '-')}")
    if getattr(args, "report", None):
        check_output_dir(args.report, "--report")


def open_split(args: argparse.Namespace, checkpoint: dict):
    """The dataset of --split, opened as the checkpoint was trained; class counts must agree."""
    from segworks.data import DatasetMeta, open_source

    config = checkpoint.get("config") or {}
    trained = DatasetMeta.from_dict(checkpoint["meta"])
    source = args.data if args.data is not None else args.train_images
    if source is None:
        raise SegworksError("name the data: --data DIR|SPEC, or -tt LIST -tr IMAGES -ta LABELS")
    opened = open_source(
        source,
        list_file=args.train_list,
        image_dir=args.train_images,
        label_dir=args.train_annotations,
        mask_format=args.mask_format or config.get("mask_format") or "auto",
        ignore_index=_first(args.ignore_index, config.get("ignore_index")),
        class_names=config.get("class_names"),
        task=trained.task,
        reduce_zero_label=args.reduce_zero_label or bool(config.get("reduce_zero_label")),
    )
    check_classes(trained, opened.meta, args.checkpoint, source)
    dataset = opened.dataset(_pick_split(args, opened.splits))
    if args.max_images is not None:
        dataset.samples = dataset.samples[: max(0, args.max_images)]
    if len(dataset) == 0:
        raise SegworksError(f"split {args.split!r} of {source} holds no image")
    return dataset, trained


def _pick_split(args: argparse.Namespace, splits: dict) -> str:
    """--split; without it "val", or the only split when the data has just one."""
    if args.split is None:
        args.split = "val" if "val" in splits or len(splits) != 1 else next(iter(splits))
    if args.split in splits:
        return args.split
    known = ", ".join(splits) or "none"
    raise SegworksError(
        f"split {args.split!r} not found in the data (splits: {known}); use --split"
    )


def check_classes(trained, data, checkpoint_path, source) -> None:
    """The data's labels must be classes of the checkpoint; a model trained for more classes
    than the data shows (`-n 21` on a VOC subset) scores it by index."""
    if data.num_classes < trained.num_classes:
        log.warning("%s shows %d classes, the checkpoint predicts %d; scoring by index",
                    source, data.num_classes, trained.num_classes)  # fmt: skip
        return
    if trained.num_classes != data.num_classes:
        raise SegworksError(
            f"class count mismatch: checkpoint {checkpoint_path} predicts "
            f"{trained.num_classes} classes ({', '.join(trained.class_names)}) but {source} "
            f"has {data.num_classes} ({', '.join(data.class_names)})"
        )
    if list(trained.class_names) != list(data.class_names):
        log.warning(
            "class names differ (checkpoint: %s; data: %s); scoring by index",
            ", ".join(trained.class_names),
            ", ".join(data.class_names),
        )


def evaluate_variant(
    args, checkpoint, model, dataset, options, device, name: str
) -> dict[str, Any]:
    from segworks.data.meta import IMAGENET_MEAN, IMAGENET_STD
    from segworks.engine.evaluate import evaluate

    meta = checkpoint["meta"]
    return evaluate(
        model,
        dataset,
        meta,
        device=device,
        mean=meta.get("mean", IMAGENET_MEAN),
        std=meta.get("std", IMAGENET_STD),
        channel_order=meta.get("channel_order", "rgb"),
        options=options,
        collect_samples=args.report_samples if args.report else 0,
        progress=not args.no_progress,
        desc=f"eval {name}",
    )


# --------------------------------------------------------------------------- output
def print_results(results: dict[str, dict], args: argparse.Namespace, count: int) -> None:
    from segworks.metrics import metrics_table

    for name, numbers in results.items():
        settings = numbers["settings"]
        title = f"{name}: {count} images of {args.split!r}, mode {settings['mode']}"
        if name == "tta":
            title += f", flip {settings['tta_flip']}, scales {settings['tta_scales']}"
        print(f"\n== {title}")
        print(metrics_table(numbers))
    if "tta" in results:
        plain, tta = results["plain"]["miou"], results["tta"]["miou"]
        print(f"\nmIoU plain {_pct(plain)} -> TTA {_pct(tta)} ({_signed(tta - plain)})")
    print(f"\n(absent classes: {ABSENT_POLICY})")


def write_outputs(
    args: argparse.Namespace, results: dict[str, dict], meta, checkpoint: dict
) -> None:
    from segworks.fileio import save_json, save_text

    main = results["tta"] if "tta" in results else results["plain"]
    if args.json:
        payload = {
            "checkpoint": str(args.checkpoint),
            "data": str(args.data or args.train_images),
            "split": args.split,
            "absent_class_policy": ABSENT_POLICY,
            "variants": {name: _without_samples(r) for name, r in results.items()},
        }
        save_json(payload, args.json)
    if args.csv:
        save_text(csv_text(results), args.csv)
    if args.confusion_png:
        from segworks.fileio import save_image
        from segworks.visualize import confusion_matrix_image

        picture = confusion_matrix_image(main["confusion_matrix"], list(meta.class_names))
        save_image(picture, args.confusion_png)
    if args.report:
        from segworks.report import write_report

        path = write_report(
            args.report,
            _without_samples(main),
            class_names=list(meta.class_names),
            palette=list(meta.palette),
            samples=main.get("samples", []),
            provenance=report_provenance(args, checkpoint, main),
        )
        print(f"report: {path}")


def report_provenance(args: argparse.Namespace, checkpoint: dict, numbers: dict) -> dict:
    """What produced the report's numbers: checkpoint, data, inference settings, versions."""
    from datetime import datetime

    import torch
    import torchvision

    import segworks

    settings = numbers["settings"]
    return {
        "checkpoint": _where(args.checkpoint),
        "model": checkpoint.get("model_name", "unknown"),
        "epoch": _epoch_text(checkpoint),
        "data": _where(args.data or args.train_images),
        "split": f"{args.split} ({numbers.get('num_images', '?')} images)",
        **settings_text(settings),
        "segworks": segworks.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "generated": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def settings_text(settings: dict) -> dict[str, str]:
    """The inference settings of one variant as report rows."""
    mode = settings["mode"]
    if mode == "slide":
        tile = "x".join(str(v) for v in settings["tile"])
        mode += f" (tile {tile}, overlap {settings['overlap']})"
    size = settings.get("size")
    tta = "off"
    if settings["tta_flip"] or list(settings["tta_scales"]) != [1.0]:
        flip = "flip, " if settings["tta_flip"] else ""
        tta = flip + "scales " + " ".join(f"{s:g}" for s in settings["tta_scales"])
    threshold = f"{settings['threshold']:g}"
    if settings.get("task") != "binary":
        threshold += " (binary models only; not used)"
    return {
        "mode": mode,
        "long side": f"{settings['long_side']} px" if settings.get("long_side") else "original",
        "size": "x".join(str(v) for v in size) if size else "original",
        "TTA": tta,
        "threshold": threshold,
    }


def _where(text) -> str:
    """An existing path made absolute; a data spec that is not a path, as given."""
    path = Path(text)
    return str(path.resolve()) if path.exists() else str(text)


def _epoch_text(checkpoint: dict) -> str:
    epoch = checkpoint.get("epoch")
    if epoch is None:
        return "unknown (not recorded in the checkpoint)"
    best = (checkpoint.get("best") or {}).get("epoch")
    return f"{epoch}" + (f" (best mIoU at epoch {best})" if best is not None else "")


def csv_text(results: dict[str, dict]) -> str:
    """Per-class rows per variant, then an "(all)" row holding the dataset-level numbers."""
    buffer = io.StringIO()
    table = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    table.writeheader()
    for name, numbers in results.items():
        for row in numbers["per_class"]:
            table.writerow({"variant": name, **row})
        table.writerow(
            {
                "variant": name,
                "class": "(all)",
                "iou": numbers["miou"],
                "dice": numbers["mean_dice"],
                "accuracy": numbers["mean_accuracy"],
                "gt_pixels": numbers["num_pixels"],
                "pixel_accuracy": numbers["pixel_accuracy"],
                "fwiou": numbers["fwiou"],
            }
        )
    return buffer.getvalue()


def _without_samples(results: dict) -> dict:
    return {key: value for key, value in results.items() if key != "samples"}


def _first(*values):
    return next((v for v in values if v is not None), None)


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.2f}"


def _signed(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:+.2f}"
