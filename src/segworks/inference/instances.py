"""Drawing and saving Mask R-CNN predictions: `segworks predict` on instance checkpoints.

Writes, per input image, an overlay (masks filled or as contours, boxes, labels, scores), one
PNG per instance mask, and for all images a COCO results JSON (category ids of the training
data, not labels) and images.json (ids, file names, sizes) that pycocotools loads as is.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm import tqdm

from segworks.coco_eval import outputs_to_coco_results
from segworks.devices import device_from_args
from segworks.errors import DataError
from segworks.fileio import save_image, save_json
from segworks.suffixes import IMAGE_SUFFIXES

log = logging.getLogger(__name__)


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
    from segworks.engine.instance import load_instance_checkpoint

    model, meta = load_instance_checkpoint(args.checkpoint)
    device = device_from_args(args)
    model.to(device)
    out = Path(getattr(args, "out", None) or "predictions")
    threshold = getattr(args, "score_threshold", None)
    threshold = 0.5 if threshold is None else float(threshold)
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
    save_json(results, Path(getattr(args, "coco_json", None) or out / "results.json"))
    save_json(images, out / "images.json")
    print(f"{len(images)} images, {len(results)} instances -> {out}")
    return 0
