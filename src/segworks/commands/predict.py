"""segworks predict: label images, folders, globs and videos with a checkpoint.

Per image, at the input's original size, into --out (folder inputs keep their sub-folders):
  semantic  <stem>_index.png    'P' PNG: pixel values are class indices, palette = class colours
            <stem>_color.png    the class colours as RGB
            <stem>_overlay.png  the colours alpha-blended over the photo, with a legend of the
                                classes present on a panel at the right (--no-legend: none)
  binary    <stem>_prob.png     foreground probability, 0..255
            <stem>_mask.png     foreground where probability > --threshold: 0 / 255
            <stem>_overlay.png  the foreground blended over the photo
Videos (.mp4 .avi .mov .mkv .webm ...) give <stem>_overlay.mp4 (needs OpenCV).

Images of the same size (or all images, with --size) are run --batch-size at a time. With
--tile (or --mode slide) large images are predicted window by window (Gaussian-blended), and
--batch-size counts windows instead. This module imports torch only when it runs a checkpoint, so
`--onnx MODEL.onnx` works without torch.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segworks.errors import DataError, SegworksError
from segworks.outputs import check_output_dir
from segworks.suffixes import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
GLOB_CHARS = set("*?[")


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
        "--threshold", type=float, help="binary: foreground probability cut (default 0.5)"
    )


# --------------------------------------------------------------------------- shared helpers
def tta_requested(args: argparse.Namespace) -> bool:
    return bool(args.tta or args.tta_scales)


def inference_options(args: argparse.Namespace, checkpoint: dict, *, tta: bool):
    """InferenceOptions from the flags and the checkpoint (`options_from_checkpoint`, which
    `Predictor.from_checkpoint` uses too); `tta` picks the augmented or the plain variant."""
    from segworks.inference.predictor import options_from_checkpoint

    scales = tuple(args.tta_scales or (0.75, 1.0, 1.25)) if tta else (1.0,)
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
        tta_flip=tta and not args.no_tta_flip,
        tta_scales=scales,
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
    if args.onnx:
        from segworks.onnx_predict import predict_onnx

        return int(predict_onnx(args) or 0)
    from segworks.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(args.checkpoint)
    task = checkpoint_task(checkpoint, args.checkpoint)
    check_num_classes(args.num_classes, checkpoint, args.checkpoint)
    if task == "instance":
        from segworks.engine.instance import run_predict

        return int(run_predict(args) or 0)
    if not 0 <= args.alpha <= 1:
        raise SegworksError(f"--alpha must be in [0, 1], got {args.alpha}")
    options = inference_options(args, checkpoint, tta=tta_requested(args))
    if options.long_side and options.size is None:
        print(f"inputs are resized to a longer side of {options.long_side} px (the checkpoint's "
              "training scale) and the labels resized back; --long-side 0 keeps the original "
              "size")  # fmt: skip
    predictor, meta = build_predictor(checkpoint, args.checkpoint, options, resolve_device(args))
    items = collect_inputs(args.inputs)
    writer = Writer(Path(args.out), meta, alpha=args.alpha, legend=not args.no_legend)
    with large_images(options.mode):
        done = _predict_items(predictor, items, writer, args)
    print(f"wrote predictions of {done} input(s) to {args.out}")
    return 0


def large_images(mode: str):
    """Sliding-window prediction is for large images: PIL's 179-megapixel guard is raised."""
    from contextlib import nullcontext

    from segworks.data.formats import SLIDE_MAX_PIXELS, pixel_limit

    return pixel_limit(SLIDE_MAX_PIXELS) if mode == "slide" else nullcontext()


def _predict_items(predictor, items, writer, args: argparse.Namespace) -> int:
    images = [item for item in items if not item.video]
    done = predict_images(
        predictor, images, writer, batch_size=args.batch_size, skip_bad=args.skip_bad
    )
    for item in items:
        if item.video:
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
        from segworks.models.pretrained import pretrained_checkpoint

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


# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class InputItem:
    path: Path
    out_stem: Path  # relative to --out, without the _index.png etc. suffix
    video: bool = False


def collect_inputs(inputs: list[str]) -> list[InputItem]:
    """Expand files, folders (recursive) and globs; output stems are made unique."""
    items: list[InputItem] = []
    seen: set[Path] = set()
    for text in inputs:
        for path, stem in _expand(text):
            unique, number = stem, 1
            while unique in seen:
                number += 1
                unique = stem.with_name(f"{stem.name}_{number}")
            if unique != stem:
                log.warning("%s: output name %s is taken, writing %s", path, stem, unique)
            seen.add(unique)
            items.append(InputItem(path, unique, path.suffix.lower() in VIDEO_SUFFIXES))
    return items


def _expand(text: str) -> Iterator[tuple[Path, Path]]:
    path = Path(text)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and _is_media(p))
        if not found:
            raise DataError(path, "folder holds no image or video files")
        for file in found:
            yield file, file.relative_to(path).with_suffix("")
    elif path.is_file():
        yield path, Path(path.stem)
    elif GLOB_CHARS & set(text):
        found = sorted(Path(p) for p in glob.glob(text, recursive=True))
        found = [p for p in found if p.is_file() and _is_media(p)]
        if not found:
            raise DataError(text, "the pattern matches no image or video file")
        for file in found:
            yield file, Path(file.stem)
    else:
        raise DataError(path, "no such file or folder")


def _is_media(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES


# --------------------------------------------------------------------------- images
def predict_images(
    predictor, items: list[InputItem], writer: Writer, *, batch_size: int, skip_bad: bool
) -> int:
    """Predict and write every image; same-size images go through the model together."""
    from tqdm import tqdm

    batches = list(_batches(predictor, items, batch_size, skip_bad))
    done = 0
    with tqdm(total=sum(len(b) for b in batches), desc="predict", unit="img") as bar:
        for batch in batches:
            loaded = [(item, image) for item in batch if (image := _load(item, skip_bad))]
            if loaded:
                predictions = predictor.predict_batch([image for _, image in loaded])
                for (item, image), prediction in zip(loaded, predictions):
                    writer.write(item.out_stem, image, prediction)
                done += len(loaded)
            bar.update(len(batch))
    return done


def _batches(predictor, items, batch_size: int, skip_bad: bool) -> Iterator[list[InputItem]]:
    """Items grouped by the size the model sees, in chunks of `batch_size`."""
    from segworks.data.formats import image_size

    options = predictor.options
    groups: dict[Any, list[InputItem]] = {}
    for index, item in enumerate(items):
        try:
            size = image_size(item.path)
        except DataError as error:
            if not skip_bad:
                raise
            log.warning("skipping %s", error)
            continue
        if options.mode == "slide":
            key = ("single", index)  # windows are batched instead
        else:
            key = options.size or size
        groups.setdefault(key, []).append(item)
    for group in groups.values():
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


def _load(item: InputItem, skip_bad: bool):
    from segworks.data.formats import open_image

    try:
        return open_image(item.path).convert("RGB")
    except DataError as error:
        if not skip_bad:
            raise
        log.warning("skipping %s", error)
        return None


class Writer:
    """Writes the PNGs of one prediction (see the module docstring)."""

    def __init__(self, out_dir: Path, meta, *, alpha: float, legend: bool):
        self.out_dir = out_dir
        self.meta = meta
        self.alpha = alpha
        self.legend = legend

    def write(self, stem: Path, image, prediction) -> None:
        from PIL import Image

        from segworks import visualize
        from segworks.fileio import save_image

        base = self.out_dir / stem
        files = {"overlay": self.overlay(image, prediction, legend=self.legend)}
        if self.meta.task == "binary":
            files["prob"] = visualize.probability_image(prediction.prob)
            files["mask"] = Image.fromarray(prediction.labels * 255)
        else:
            files["index"] = visualize.index_image(prediction.labels, self.meta.palette)
            files["color"] = visualize.colorize(prediction.labels, self.meta.palette)
        for kind, picture in files.items():
            save_image(picture, base.with_name(f"{base.name}_{kind}.png"))

    def overlay(self, image, prediction, *, legend: bool):
        """Binary: only the foreground is coloured (background shows the photo unchanged)."""
        import numpy as np

        from segworks import IGNORE_INDEX, visualize

        labels = prediction.labels
        if self.meta.task == "binary":
            labels = np.where(labels == 1, 1, IGNORE_INDEX).astype(np.uint8)
        return visualize.overlay(
            image,
            labels,
            self.meta.palette,
            class_names=self.meta.class_names,
            alpha=self.alpha,
            legend=legend,
        )


# --------------------------------------------------------------------------- video
def predict_video(predictor, item: InputItem, writer: Writer, *, batch_size: int) -> Path:
    """Write ``<stem>_overlay.mp4``: every frame with its prediction blended in (no legend, so
    every frame keeps the video's size). Needs OpenCV (`pip install opencv-python-headless`)."""
    cv2 = _import_cv2()
    capture = cv2.VideoCapture(str(item.path))
    if not capture.isOpened():
        raise DataError(item.path, "cannot open the video (unknown codec or not a video)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    out = writer.out_dir / item.out_stem
    out = out.with_name(f"{out.name}_overlay.mp4")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.partial.mp4")
    video = None
    try:
        for frames in _frame_batches(cv2, capture, batch_size, item.path, total):
            video = video or _open_writer(cv2, partial, fps, frames[0].size)
            for frame, prediction in zip(frames, predictor.predict_batch(frames)):
                blended = writer.overlay(frame, prediction, legend=False)
                video.write(cv2.cvtColor(_array(blended), cv2.COLOR_RGB2BGR))
        if video is None:
            raise DataError(item.path, "the video has no readable frame")
        video.release()
        os.replace(partial, out)
    finally:
        capture.release()
        if video is not None:
            video.release()
        partial.unlink(missing_ok=True)
    return out


def _import_cv2():
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is None:
        raise SegworksError(
            "video input needs OpenCV, which is not installed: "
            "pip install opencv-python-headless (or segworks[video])"
        )
    return cv2


def _frame_batches(cv2, capture, batch_size: int, path: Path, total: int | None):
    from PIL import Image
    from tqdm import tqdm

    batch = []
    with tqdm(total=total, desc=f"video {path.name}", unit="frame") as bar:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            batch.append(Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
            bar.update(1)
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def _open_writer(cv2, path: Path, fps: float, size: tuple[int, int]):
    video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not video.isOpened():
        raise DataError(path, "OpenCV cannot write an mp4v video here")
    return video


def _array(image):
    import numpy as np

    return np.asarray(image)
