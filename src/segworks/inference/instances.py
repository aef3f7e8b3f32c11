"""Instance predictions drawn and saved, with numpy and PIL only (no torch).

`segworks predict` with a Mask R-CNN checkpoint and `segworks predict --onnx` with an exported
Mask R-CNN both write through `InstanceWriter`, so their outputs match. A detection set is a
dict of numpy arrays in torchvision's layout: boxes (N, 4) xyxy, labels (N,), scores (N,) and
masks (N, 1, H, W) probabilities. Into the output folder go:

    <stem>.png                        the image with masks (or contours), boxes, names, scores
    masks/<stem>/<stem>_<i>_<name>.png one 0/255 mask per detection
    results.json (or --coco-json)     COCO results: bbox xywh, score, category_id, RLE mask
    images.json                       id, file_name, height, width of each image
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from segworks.fileio import save_image, save_json

__all__ = ["InstanceWriter", "draw_instances", "keep_confident", "mask_boundary"]

log = logging.getLogger(__name__)


def keep_confident(detections: dict[str, Any], threshold: float) -> dict[str, np.ndarray]:
    """The detections scoring at least `threshold`, as numpy arrays."""
    arrays = {key: np.asarray(value) for key, value in detections.items()}
    keep = arrays["scores"] >= threshold
    return {key: value[keep] for key, value in arrays.items()}


def mask_boundary(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels of a boolean (H, W) mask within `width` of its edge (the image border is not an
    edge)."""
    padded = np.pad(mask, width, constant_values=True)
    window = (2 * width + 1, 2 * width + 1)
    eroded = np.lib.stride_tricks.sliding_window_view(padded, window).all(axis=(-2, -1))
    return mask & ~eroded


def draw_instances(
    image: Image.Image,
    detections: dict[str, np.ndarray],
    meta: dict[str, Any],
    *,
    contour: bool,
    alpha: float = 0.45,
) -> Image.Image:
    """Masks (filled or as contours), boxes, class names and scores drawn over `image`."""
    canvas = np.asarray(image.convert("RGB")).astype(np.float32)
    palette, names = meta["palette"], meta["class_names"]
    labels = [int(v) for v in detections["labels"]]
    for mask, label in zip(_binary_masks(detections), labels):
        colour = np.array(palette[label % len(palette)], dtype=np.float32)
        region = mask_boundary(mask) if contour else mask
        weight = 1.0 if contour else alpha
        canvas[region] = (1 - weight) * canvas[region] + weight * colour
    result = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    boxes = np.asarray(detections["boxes"], dtype=np.float32).tolist()
    for box, label, score in zip(boxes, labels, np.asarray(detections["scores"]).tolist()):
        colour = tuple(palette[label % len(palette)])
        draw.rectangle(box, outline=colour, width=2)
        name = names[label] if label < len(names) else str(label)
        draw.text((box[0] + 2, max(0, box[1] - 11)), f"{name} {score:.2f}", fill=colour)
    return result


def _binary_masks(detections: dict[str, np.ndarray]) -> np.ndarray:
    masks = np.asarray(detections["masks"])
    if masks.ndim == 4:
        masks = masks[:, 0]
    return masks > 0.5


class InstanceWriter:
    """Writes the files of the module docstring; call `write` per image, then `finish`."""

    def __init__(
        self, out_dir: Path, meta: dict[str, Any], *, contour: bool, coco_json: Path | None
    ):
        self.out_dir = Path(out_dir)
        self.meta = meta
        self.contour = contour
        self.coco_json = Path(coco_json) if coco_json else self.out_dir / "results.json"
        category_ids = meta.get("category_ids") or range(1, len(meta["class_names"]))
        self.label_to_category = dict(enumerate(category_ids, start=1))
        self.results: list[dict] = []
        self.images: list[dict] = []

    def write(self, path: Path, image: Image.Image, detections: dict[str, np.ndarray]) -> None:
        from segworks.coco_eval import outputs_to_coco_results

        image_id = len(self.images)
        drawing = draw_instances(image, detections, self.meta, contour=self.contour)
        save_image(drawing, self.out_dir / f"{path.stem}.png")
        self._save_masks(detections, path.stem)
        self.images.append(
            {"id": image_id, "file_name": str(path), "height": image.height, "width": image.width}
        )
        entries = outputs_to_coco_results(image_id, detections, self.label_to_category)
        self.results += [entry | {"file_name": str(path)} for entry in entries]
        log.info("%s: %d instances", path, len(detections["scores"]))

    def finish(self) -> None:
        save_json(self.results, self.coco_json)
        save_json(self.images, self.out_dir / "images.json")
        print(f"{len(self.images)} images, {len(self.results)} instances -> {self.out_dir}")

    def _save_masks(self, detections: dict[str, np.ndarray], stem: str) -> None:
        folder = self.out_dir / "masks" / stem
        names = self.meta["class_names"]
        for index, (mask, label) in enumerate(zip(_binary_masks(detections), detections["labels"])):
            name = names[int(label)].replace("/", "_").replace(" ", "_")
            picture = Image.fromarray(mask.astype(np.uint8) * 255)
            save_image(picture, folder / f"{stem}_{index:03d}_{name}.png")
