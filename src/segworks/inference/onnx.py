"""Prediction with a model from `segworks export`: ONNX Runtime, numpy and PIL only.

Nothing on this path imports torch (a test runs it with torch blocked), so a deployment needs
only onnxruntime, numpy, pillow and segworks. The model must come from `segworks export`: its
"segworks" metadata entry (JSON) gives the class names, palette, normalisation and which steps
(normalise, resize, argmax) the graph already does; the others are done here in numpy.

Inputs (files, folders, globs) and outputs are those of `segworks predict` with a checkpoint
(`<stem>_index.png`, `_color.png`, `_overlay.png`; binary: `_prob.png`, `_mask.png`,
`_overlay.png`), written by the same `Writer`. A Mask R-CNN model's detections (kept above
--score-threshold) are drawn and saved by the `InstanceWriter` of the checkpoint path: the
drawing, one mask per detection, COCO results JSON. Videos are not supported here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from segworks.errors import DataError, SegworksError
from segworks.inference.inputs import collect_inputs
from segworks.inference.instances import InstanceWriter, keep_confident
from segworks.inference.writer import Writer

__all__ = ["OnnxDetector", "OnnxPrediction", "OnnxSegmenter", "predict_onnx", "read_metadata"]

log = logging.getLogger(__name__)

METADATA_KEY = "segworks"  # the same key as segworks.export.METADATA_KEY (no torch import here)


@dataclass
class OnnxPrediction:
    labels: np.ndarray  # (H, W) int64
    prob: np.ndarray | None = None  # binary: foreground probability (H, W) float32


def predict_onnx(
    model: Path,
    inputs: list[str],
    out: Path,
    *,
    alpha: float = 0.5,
    legend: bool = True,
    threshold: float | None = None,
    skip_bad: bool = False,
    score_threshold: float = 0.5,
    contour: bool = False,
    coco_json: Path | None = None,
) -> int:
    """Predict `inputs` (image files, folders, globs) with the exported `model` into `out`;
    returns the number of images written. A semantic model uses alpha, legend and threshold
    (binary foreground cut, default 0.5); a Mask R-CNN score_threshold, contour and coco_json.
    With skip_bad an unreadable image is logged and skipped instead of raising DataError."""
    session, info = open_session(Path(model))
    items = collect_inputs(list(inputs))
    videos = [str(item.path) for item in items if item.video]
    if videos:
        raise SegworksError(f"--onnx predicts images only; got video(s) {videos}")
    if info.get("task") == "instance":
        detector = OnnxDetector(session, info)
        writer = InstanceWriter(Path(out), detector.meta, contour=contour, coco_json=coco_json)
        done = _predict_instances(detector, items, writer, score_threshold, skip_bad)
        writer.finish()
        return done
    segmenter = OnnxSegmenter(Path(model), session=session, info=info)
    meta = SimpleNamespace(
        task=segmenter.task, palette=segmenter.palette, class_names=segmenter.class_names
    )
    writer = Writer(Path(out), meta, alpha=alpha, legend=legend)
    threshold = 0.5 if threshold is None else float(threshold)
    done = 0
    for item in tqdm(items, desc="predict", unit="img"):
        image = _read_image(item.path, skip_bad)
        if image is not None:
            writer.write(item.out_stem, image, segmenter.predict(image, threshold=threshold))
            done += 1
    return done


def _predict_instances(
    detector: OnnxDetector, items, writer: InstanceWriter, threshold: float, skip_bad: bool
) -> int:
    """Detections of each image, kept above `threshold`, written as the checkpoint path does."""
    done = 0
    for item in tqdm(items, desc="predict", unit="img"):
        image = _read_image(item.path, skip_bad)
        if image is not None:
            writer.write(item.path, image, keep_confident(detector.predict(image), threshold))
            done += 1
    return done


def open_session(path: Path) -> tuple[Any, dict[str, Any]]:
    """An ONNX Runtime session (CPU) of a `segworks export` file and its segworks metadata."""
    import onnxruntime as ort

    if not path.is_file():
        raise DataError(path, "ONNX model not found")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        raise DataError(path, f"not a readable ONNX model ({error})") from error
    custom = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in custom:
        raise DataError(path, "no segworks metadata: export the model with `segworks export`")
    return session, json.loads(custom[METADATA_KEY])


class OnnxDetector:
    """An exported Mask R-CNN: one float32 (3, H, W) image in 0..1 -> boxes, labels, scores,
    masks (N, 1, H, W) probabilities, as numpy arrays."""

    OUTPUTS = ("boxes", "labels", "scores", "masks")

    def __init__(self, session: Any, info: dict[str, Any]):
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.meta = {
            "class_names": list(info["class_names"]),
            "palette": [tuple(int(v) for v in c) for c in info["palette"]],
            "category_ids": info.get("category_ids"),
        }

    def predict(self, image: Image.Image) -> dict[str, np.ndarray]:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        x = np.ascontiguousarray(pixels.transpose(2, 0, 1))
        return dict(zip(self.OUTPUTS, self.session.run(None, {self.input_name: x})))


class OnnxSegmenter:
    """An exported semantic model plus the pre/post-processing its graph does not contain."""

    def __init__(
        self, path: Path, *, session: Any | None = None, info: dict[str, Any] | None = None
    ):
        if session is None:
            session, info = open_session(path)
        self.session = session
        self.info = check_metadata(info, path)
        self.task = self.info.get("task", "semantic")
        if self.task == "instance":
            raise DataError(path, "an instance (Mask R-CNN) model: use OnnxDetector")
        self.class_names = list(self.info["class_names"])
        self.palette = [tuple(int(v) for v in c) for c in self.info["palette"]]
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def predict(self, image: Image.Image, *, threshold: float = 0.5) -> OnnxPrediction:
        """Labels (and binary probability) at the size of `image` (a PIL RGB image).

        Without resize in the graph and without dynamic axes, the image is resized (bilinear)
        to the export size and the logits are resized back (bilinear) before the decision.
        """
        info = self.info
        fixed = not info["include_resize"] and not info["dynamic"]
        rgb = image.convert("RGB")
        if fixed:
            height, width = info["size"]
            rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(rgb)
        results = dict(
            zip(self.outputs, self.session.run(None, {self.input_name: self._input(pixels)}))
        )
        logits = results["logits"][0]
        if fixed:
            logits = _resize_planes(logits, image.size)
        if self.task == "binary":
            prob = _sigmoid(logits[0])
            return OnnxPrediction((prob > threshold).astype(np.int64), prob)
        if "labels" in results and not fixed:
            return OnnxPrediction(results["labels"][0].astype(np.int64))
        return OnnxPrediction(logits.argmax(axis=0).astype(np.int64))

    def _input(self, pixels: np.ndarray) -> np.ndarray:
        if self.info["include_normalize"]:
            if self.info["input_layout"] == "nhwc":
                return np.ascontiguousarray(pixels[None])
            return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])
        mean = np.asarray(self.info["mean"], dtype=np.float32)
        std = np.asarray(self.info["std"], dtype=np.float32)
        x = (pixels.astype(np.float32) / 255.0 - mean) / std
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def read_metadata(session: Any, path: Path) -> dict[str, Any]:
    """The JSON segworks stored in the model's metadata_props at export time."""
    custom = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in custom:
        raise DataError(path, "no segworks metadata: export the model with `segworks export`")
    return check_metadata(json.loads(custom[METADATA_KEY]), path)


def check_metadata(info: dict[str, Any], path: Path) -> dict[str, Any]:
    """A semantic model's metadata holds what prediction needs."""
    needed = ("class_names", "palette", "size", "include_normalize", "include_resize", "dynamic")
    missing = [key for key in needed if key not in info]
    if missing:
        raise DataError(path, f"the segworks metadata lacks {missing}")
    return info


def _resize_planes(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(K, h, w) float logits -> (K, H, W) for size (W, H), bilinear per class plane."""
    planes = [
        np.asarray(
            Image.fromarray(plane.astype(np.float32)).resize(size, Image.Resampling.BILINEAR)
        )
        for plane in logits
    ]
    return np.stack(planes)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def _read_image(path: Path, skip_bad: bool) -> Image.Image | None:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        if not skip_bad:
            raise DataError(path, f"cannot read the image ({error})") from error
        log.warning("skipping %s: cannot read the image (%s)", path, error)
        return None
