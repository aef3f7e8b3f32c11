"""Writing label arrays in every mask format; decoding the file gives the labels back.

The encoders exist so that tests can write every format and read it back (see
tests/test_data_formats.py); they are also handy to convert a dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from segworks import IGNORE_INDEX
from segworks.data.formats import LABELME_IGNORE, Colour
from segworks.fileio import atomic_path, save_image, save_json


def encode_mask(
    labels: np.ndarray,
    path: str | Path,
    *,
    mask_format: str,
    palette: Sequence[Colour] | None = None,
    colour_map: Mapping[Colour, int] | None = None,
    class_names: Sequence[str] | None = None,
    reduce_zero_label: bool = False,
    void_value: int = IGNORE_INDEX,
) -> Path:
    """Write labels (int, void = 255) in `mask_format`; decoding the file gives `labels` back.

    binary: labels hold 0/1 (+255 only in a 0/1 mask, which is written when 255 is present).
    """
    path = Path(path)
    labels = np.asarray(labels)
    if mask_format == "npy":
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.save(handle, np.where(labels == IGNORE_INDEX, -1, labels).astype(np.int32))
    elif mask_format == "labelme":
        save_json(labelme_document(labels, class_names, path.with_suffix(".png").name), path)
    elif mask_format == "rgb":
        save_image(Image.fromarray(_encode_rgb(labels, colour_map or {})), path)
    else:
        save_image(_encode_gray(labels, mask_format, palette, reduce_zero_label, void_value), path)
    return path


def _encode_gray(labels, mask_format, palette, reduce_zero_label, void_value) -> Image.Image:
    void = labels == IGNORE_INDEX
    if mask_format == "binary":
        values = np.where(void, 255, labels) if void.any() else labels * 255
    elif reduce_zero_label:
        values = np.where(void, 0, labels + 1)
    else:
        values = np.where(void, void_value, labels)
    height, width = values.shape
    mode = "P" if mask_format == "palette" else "L"
    image = Image.frombytes(mode, (width, height), values.astype(np.uint8).tobytes())
    if mask_format == "palette":
        colours = list(palette or [])
        colours += [(0, 0, 0)] * (256 - len(colours))
        image.putpalette([v for colour in colours[:256] for v in colour])
    return image


def _encode_rgb(labels: np.ndarray, colour_map: Mapping[Colour, int]) -> np.ndarray:
    by_class = {c: colour for colour, c in colour_map.items()}
    table = np.zeros((256, 3), dtype=np.uint8)
    for value in np.unique(labels):
        if int(value) not in by_class:
            raise ValueError(f"label {int(value)} has no colour in the colour map")
        table[int(value)] = by_class[int(value)]
    return table[labels]


def labelme_document(
    labels: np.ndarray, class_names: Sequence[str] | None, image_path: str
) -> dict:
    """A labelme file drawing `labels` as one 1-pixel-high rectangle per run of a row."""
    names = list(class_names or [f"class_{i}" for i in range(int(labels.max()) + 1)])
    shapes = []
    for y, row in enumerate(labels):
        edges = np.flatnonzero(np.diff(row)) + 1
        for start, stop in zip(np.r_[0, edges], np.r_[edges, len(row)]):
            value = int(row[start])
            if value == 0:
                continue
            label = LABELME_IGNORE if value == IGNORE_INDEX else names[value]
            points = [[float(start), float(y)], [float(stop - 1), float(y)]]
            shapes.append({"label": label, "points": points, "shape_type": "rectangle"})
    height, width = labels.shape
    return {
        "version": "5.0.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": height,
        "imageWidth": width,
    }
