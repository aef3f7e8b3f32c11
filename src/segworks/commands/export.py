"""`segworks export CKPT --format onnx|torchscript --out FILE`: export with a parity check.

Prints the parity report as JSON. Exit 0 when the exported file matches PyTorch, 1 when the
parity check fails (nothing is written then), 2 for a bad checkpoint or bad flags.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from segworks.errors import SegworksError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="segworks checkpoint (.pt)")
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    parser.add_argument("--out", type=Path, required=True, help="output file (.onnx / .pt)")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input size the model runs at (default: the checkpoint's eval or crop size)",
    )
    parser.add_argument(
        "--normalize", action="store_true", help="take uint8 images, normalise in the graph"
    )
    parser.add_argument(
        "--nhwc", action="store_true", help="with --normalize: input is (N, H, W, 3)"
    )
    parser.add_argument(
        "--resize", action="store_true", help="resize any input to --size and back in the graph"
    )
    parser.add_argument("--argmax", action="store_true", help="add a 'labels' output (argmax)")
    parser.add_argument(
        "--dynamic",
        action="store_true",
        help="ONNX: dynamic batch, height and width (TorchScript always is)",
    )
    parser.add_argument(
        "--opset", type=int, default=None, help="ONNX opset (default 17; 11 for Mask R-CNN)"
    )
    parser.add_argument(
        "--sample", type=Path, help="image for the parity check (default: synthetic)"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="allowed max abs logit difference, relative to max(1, max |logit|)",
    )


def run(args: argparse.Namespace) -> int:
    from segworks.checkpoint import load_checkpoint
    from segworks.errors import DataError
    from segworks.export import ParityError, export_instance_model, export_model
    from segworks.models import model_from_checkpoint
    from segworks.outputs import check_output_file

    check_output_file(args.out, "--out")
    checkpoint = load_checkpoint(args.checkpoint)
    meta = checkpoint.get("meta")
    if not isinstance(meta, dict):
        raise DataError(args.checkpoint, "not a segworks checkpoint: key 'meta' is missing")
    try:
        model = model_from_checkpoint(checkpoint, args.checkpoint)
    except (RuntimeError, TypeError, KeyError) as error:  # state_dict / builder mismatch
        raise DataError(args.checkpoint, f"cannot rebuild the model ({error})") from error
    size = tuple(args.size) if args.size else _default_size(checkpoint)
    sample = _read_sample(args.sample) if args.sample else None
    metadata = _metadata(checkpoint)
    try:
        if _is_instance(checkpoint):
            if args.format != "onnx":
                raise SegworksError("Mask R-CNN export supports --format onnx only")
            report = export_instance_model(
                model,
                args.out,
                size=size,
                opset=args.opset or 11,
                metadata=metadata,
                sample=sample,
                tolerance=args.tolerance,
            )
        else:
            report = export_model(
                model,
                args.out,
                format=args.format,
                size=size,
                include_normalize=args.normalize,
                include_resize=args.resize,
                include_argmax=args.argmax,
                mean=meta.get("mean") or metadata["mean"],
                std=meta.get("std") or metadata["std"],
                opset=args.opset or 17,
                dynamic=args.dynamic,
                input_layout="nhwc" if args.nhwc else "nchw",
                metadata=metadata,
                sample=sample,
                tolerance=args.tolerance,
            )
    except ParityError as error:
        print(json.dumps(error.report, indent=2))
        print(f"segworks export: parity check failed: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    log.info("wrote %s (parity passed)", args.out)
    return 0


def _metadata(checkpoint: dict[str, Any]) -> dict[str, Any]:
    from segworks.data.meta import IMAGENET_MEAN, IMAGENET_STD

    meta = checkpoint["meta"]
    return {
        "model_name": checkpoint.get("model_name"),
        "task": meta.get("task", "semantic"),
        "class_names": list(meta.get("class_names", [])),
        "palette": [list(c) for c in meta.get("palette", [])],
        "ignore_index": meta.get("ignore_index", 255),
        "mean": list(meta.get("mean") or IMAGENET_MEAN),
        "std": list(meta.get("std") or IMAGENET_STD),
        "category_ids": meta.get("category_ids"),
    }


def _is_instance(checkpoint: dict[str, Any]) -> bool:
    from segworks.models import TASKS

    name = checkpoint.get("model_name")
    return checkpoint["meta"].get("task") == "instance" or TASKS.get(name) == "instance"


def _default_size(checkpoint: dict[str, Any]) -> tuple[int, int]:
    config = checkpoint.get("config") or {}
    side = config.get("eval_size") or config.get("crop_size") or 512
    if isinstance(side, list | tuple):
        return int(side[0]), int(side[1])
    return int(side), int(side)


def _read_sample(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    from segworks.errors import DataError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(path, f"cannot read the sample image ({error})") from error
