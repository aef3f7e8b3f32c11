"""segworks predict: label images, folders, globs and videos with a checkpoint.

Per image, at the input's original size, into --out (folder inputs keep their sub-folders):
  semantic  <stem>_index.png    'P' PNG: pixel values are class indices, palette = class colours
            <stem>_color.png    the class colours as RGB
            <stem>_overlay.png  the colours alpha-blended over the photo, with a legend of the
                                classes present on a panel at the right (--no-legend: none)
  binary    <stem>_prob.png     foreground probability, 0..255
            <stem>_mask.png     foreground where probability > --threshold: 0 / 255
            <stem>_overlay.png  the foreground blended over the photo
Videos (.mp4 .avi .mov .mkv .webm ...) give <stem>_overlay.mp4 (needs OpenCV). A Mask R-CNN
checkpoint (or ONNX file) gives the files of segworks.inference.instances instead.

Images of the same size (or all images, with --size) are run --batch-size at a time. With
--tile (or --mode slide) large images are predicted window by window (Gaussian-blended), and
--batch-size counts windows instead. This module imports torch only when it runs a checkpoint, so
`--onnx MODEL.onnx` works without torch. The work is done in segworks.inference: `inputs`
(collecting files), `images` (batched prediction), `writer` (the PNGs), `video`, `onnx`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from segworks.errors import DataError, SegworksError
from segworks.outputs import check_output_dir

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- arguments
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="CHECKPOINT INPUTS",
        help="a checkpoint (.pt), then image files, folders (searched recursively), globs "
        "or videos; with --onnx only inputs",
    )
    parser.add_argument(
        "-i", "--input", action="append", default=[], help="one more input (seed predict.py)"
    )
    parser.add_argument(
        "-w", "--weights", metavar="CHECKPOINT",
        help="the checkpoint, as a flag (seed predict.py); then every path is an input",
    )  # fmt: skip
    parser.add_argument(
        "--pretrained", metavar="NAME",
        help="whole-model weights from `segworks weights` (e.g. deeplabv3_resnet101.voc) "
        "instead of a checkpoint: segment with no training; then every path is an input",
    )  # fmt: skip
    parser.add_argument(
        "-n", "--num-classes", type=int, help="class count, checked against the checkpoint (seed)"
    )
    parser.add_argument("-o", "--out", default="predictions", help="output folder")
    parser.add_argument("-b", "--batch-size", type=int, default=4, help="images (or windows)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity, 0..1")
    parser.add_argument("--no-legend", action="store_true", help="overlays without a legend")
    parser.add_argument(
        "--skip-bad", action="store_true", help="warn about unreadable images and go on"
    )
    parser.add_argument("--onnx", metavar="MODEL.onnx", help="run an exported ONNX model")
    add_inference_arguments(parser)
    instance = parser.add_argument_group("instance checkpoints")
    instance.add_argument("--score-threshold", type=float, default=0.5)
    instance.add_argument("--contour", action="store_true", help="draw instance contours")
    instance.add_argument("--coco-json", metavar="OUT", help="write detections as COCO JSON")


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `segworks eval` and `segworks predict`."""
    group = parser.add_argument_group("inference")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    group.add_argument("-g", "--gpu", type=int, help="GPU number, -1 = CPU (seed scripts)")
    group.add_argument(
        "--size", nargs="+", type=int, metavar="N", help="resize input to N (square) or H W"
    )
    group.add_argument(
        "--long-side",
        type=int,
        metavar="N",
        help="resize input to longer side N, aspect kept (default: as trained; 0 = original)",
    )
    group.add_argument("--mode", choices=["whole", "slide"], help="default: slide with --tile")
    group.add_argument(
        "--tile",
        nargs="+",
        type=int,
        metavar="N",
        help="sliding-window size N or H W (default for --mode slide: the training crop)",
    )
    group.add_argument("--overlap", type=float, default=0.5, help="window overlap, 0..<1")
    group.add_argument(
        "--margin",
        type=int,
        default=0,
        help="pixels at inner window edges given no weight (receptive-field radius)",
    )
    group.add_argument(
        "--no-gaussian", action="store_true", help="blend windows uniformly, not Gaussian"
    )
    group.add_argument(
        "--tta", action="store_true", help="test-time augmentation: flip + scales 0.75 1 1.25"
    )
    group.add_argument(
        "--tta-scales", nargs="+", type=float, metavar="S", help="TTA scales (implies --tta)"
    )
    group.add_argument("--no-tta-flip", action="store_true", help="TTA without the flip")
    group.add_argument(
        "--no-tta",
        action="store_true",
        help="plain inference, also when the checkpoint's run stored TTA (e.g. recipe small)",
    )
    group.add_argument(
        "--threshold", type=float, help="binary: foreground probability cut (default 0.5)"
    )


# --------------------------------------------------------------------------- shared helpers
def tta_requested(args: argparse.Namespace) -> bool:
    """--tta or --tta-scales given (refused next to --no-tta)."""
    asked = bool(args.tta or args.tta_scales)
    if asked and getattr(args, "no_tta", False):
        raise SegworksError("--no-tta turns test-time augmentation off; drop it or --tta")
    return asked


def use_tta(args: argparse.Namespace, checkpoint: dict) -> bool:
    """Whether to run the augmented variant: asked for by the flags, or stored by the
    checkpoint's run (`TrainConfig.tta_flip` / `tta_scales`) and not turned off by --no-tta."""
    from segworks.inference.predictor import stored_tta

    if tta_requested(args):
        return True
    flip, scales = stored_tta(checkpoint)
    flip = flip and not args.no_tta_flip  # what tta_fields will run
    return (flip or scales != (1.0,)) and not getattr(args, "no_tta", False)


def tta_fields(args: argparse.Namespace, tta: bool) -> dict:
    """tta_flip / tta_scales for options_from_checkpoint: plain; the flags' TTA (flip and
    scales 0.75 1 1.25 unless given); or, with no TTA flag, the checkpoint's (None)."""
    if not tta:
        return {"tta_flip": False, "tta_scales": (1.0,)}
    if tta_requested(args):
        scales = tuple(args.tta_scales or (0.75, 1.0, 1.25))
        return {"tta_flip": not args.no_tta_flip, "tta_scales": scales}
    return {"tta_flip": False if args.no_tta_flip else None, "tta_scales": None}


def inference_options(args: argparse.Namespace, checkpoint: dict, *, tta: bool):
    """InferenceOptions from the flags and the checkpoint (`options_from_checkpoint`, which
    `Predictor.from_checkpoint` uses too); `tta` picks the augmented or the plain variant."""
    from segworks.inference.predictor import options_from_checkpoint

    return options_from_checkpoint(
        checkpoint,
        mode=args.mode,
        tile=_pair_flag(args.tile, "--tile"),
        long_side=getattr(args, "long_side", None),
        threshold=args.threshold,
        overlap=args.overlap,
        margin=args.margin,
        tile_batch=args.batch_size,
        gaussian=not args.no_gaussian,
        **tta_fields(args, tta),
        size=_pair_flag(args.size, "--size"),
    )


def resolve_device(args: argparse.Namespace):
    """--device and -g/--gpu by the rule of every command (`segworks.devices.device_name`)."""
    from segworks import devices

    return devices.device_from_args(args)


def checkpoint_task(checkpoint: dict, path: str | Path) -> str:
    meta = checkpoint.get("meta")
    if not isinstance(meta, dict) or "class_names" not in meta:
        raise DataError(path, "not a segworks checkpoint: no meta with class_names")
    return meta.get("task", "semantic")


def build_predictor(checkpoint: dict, path: str | Path, options, device):
    """(Predictor, DatasetMeta) of a semantic or binary checkpoint."""
    from segworks.inference import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, device=device, options=options)
    return predictor, predictor.meta


def _pair_flag(values, name: str) -> tuple[int, int] | None:
    if values is None:
        return None
    values = [values] if isinstance(values, int) else list(values)
    if len(values) not in (1, 2) or min(values) < 1:
        raise SegworksError(f"{name}: expected N or H W (positive), got {values}")
    return (values[0], values[-1])


# --------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    _split_paths(args)
    check_output_dir(args.out, "--out")
    if not 0 <= args.alpha <= 1:
        raise SegworksError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.onnx:
        return run_onnx(args)
    from segworks.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(args.checkpoint)
    task = checkpoint_task(checkpoint, args.checkpoint)
    check_num_classes(args.num_classes, checkpoint, args.checkpoint)
    if task == "instance":
        from segworks.inference.instance_predict import run_predict

        return int(run_predict(args) or 0)
    options = inference_options(args, checkpoint, tta=use_tta(args, checkpoint))
    if options.long_side and options.size is None:
        print(f"inputs are resized to a longer side of {options.long_side} px (the checkpoint's "
              "training scale) and the labels resized back; --long-side 0 keeps the original "
              "size")  # fmt: skip
    predictor, meta = build_predictor(checkpoint, args.checkpoint, options, resolve_device(args))
    done = predict_items(predictor, meta, options, args)
    print(f"wrote predictions of {done} input(s) to {args.out}")
    return 0


def run_onnx(args: argparse.Namespace) -> int:
    """`--onnx MODEL`: segworks.inference.onnx, which needs no torch."""
    from segworks.inference.onnx import predict_onnx

    done = predict_onnx(
        Path(args.onnx),
        args.inputs,
        Path(args.out),
        alpha=args.alpha,
        legend=not args.no_legend,
        threshold=args.threshold,
        skip_bad=args.skip_bad,
        score_threshold=args.score_threshold,
        contour=args.contour,
        coco_json=Path(args.coco_json) if args.coco_json else None,
    )
    print(f"wrote predictions of {done} input(s) to {args.out}")
    return 0


def predict_items(predictor, meta, options, args: argparse.Namespace) -> int:
    """Images in size-grouped batches, then each video; the number of inputs written."""
    from segworks.inference.images import large_images, predict_images
    from segworks.inference.inputs import collect_inputs
    from segworks.inference.writer import Writer

    items = collect_inputs(args.inputs)
    writer = Writer(Path(args.out), meta, alpha=args.alpha, legend=not args.no_legend)
    images = [item for item in items if not item.video]
    with large_images(options.mode):
        done = predict_images(
            predictor, images, writer, batch_size=args.batch_size, skip_bad=args.skip_bad
        )
    for item in items:
        if item.video:
            from segworks.inference.video import predict_video

            predict_video(predictor, item, writer, batch_size=args.batch_size)
            done += 1
    return done


def check_num_classes(given: int | None, checkpoint: dict, path: str | Path) -> None:
    """-n/--num-classes (the seed's predict.py flag) must be the checkpoint's class count."""
    if given is None:
        return
    names = checkpoint["meta"]["class_names"]
    binary = checkpoint["meta"].get("task") == "binary"
    accepted = {len(names), 1} if binary else {len(names)}
    if given not in accepted:
        raise DataError(
            path, f"-n/--num-classes {given}, but the checkpoint predicts {len(names)} classes "
            f"({', '.join(names)})",
        )  # fmt: skip


def _split_paths(args: argparse.Namespace) -> None:
    """args.checkpoint and args.inputs from the positional paths (and -i)."""
    paths = list(args.paths)
    if args.onnx:
        args.checkpoint = None
    elif args.weights:
        args.checkpoint = args.weights
    elif args.pretrained:
        from segworks.models.starting import pretrained_checkpoint

        args.checkpoint = str(pretrained_checkpoint(args.pretrained))
    else:
        if not paths:
            raise SegworksError("expected a checkpoint and at least one input")
        args.checkpoint = paths.pop(0)
    args.inputs = paths + list(args.input)
    if not args.inputs:
        raise SegworksError("no input given: name image files, folders, globs or videos")
    if args.batch_size < 1:
        raise SegworksError(f"--batch-size must be >= 1, got {args.batch_size}")
