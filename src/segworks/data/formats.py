"""Mask encodings on disk and how to turn each into a label array.

Every decoder returns an int64 (H, W) array with the dataset's void value mapped to
segworks.IGNORE_INDEX (255). Reading the files (images, labelme JSON, raw mask values) is in
segworks.data.reading; writing every format (for tests and dataset conversion) in
segworks.data.encoding.

Formats:
- "palette": a PNG in P mode; the palette index is the label (Pascal VOC); the palette is kept.
- "index":   a grayscale PNG whose values are the labels (ADE20K, CamVid); optional
             reduce_zero_label (0 -> void, k -> k - 1).
- "binary":  a grayscale PNG holding 0 and 255 (or 0 and 1); 255 (or 1) is the foreground.
- "rgb":     an RGB PNG whose colours name classes through a colour -> class map.
- "npy":     a NumPy array of labels (negative values are void, as labelme writes -1).
- "labelme": a labelme JSON file whose polygons are rasterised on load.
- "yolo":    a YOLO label file (`class x1 y1 ...` normalised polygons) drawn at the image size;
             class k becomes k + 1 (0 is the background), see segworks.data.yolo.
- "trimap":  an Oxford-IIIT Pet trimap: 1 foreground -> 1, 2 background -> 0, 3 border -> void.

A region-of-interest mask (a retinal field of view) voids the labels where it is 0: apply_roi.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from segworks import IGNORE_INDEX
from segworks.data import yolo
from segworks.data.reading import PIL_ERRORS, open_image, read_labelme, read_raw
from segworks.errors import DataError

MASK_FORMATS = ("palette", "index", "binary", "rgb", "npy", "labelme", "yolo", "trimap")
DRAWN_FORMATS = ("labelme", "yolo")  # shapes drawn at the image size (the caller passes it)
TRIMAP_VALUES = {1: 1, 2: 0, 3: IGNORE_INDEX}  # foreground, background, border
Colour = tuple[int, int, int]

LABELME_IGNORE = "__ignore__"
BACKGROUND_NAMES = ("_background_", "background", "__background__")


def read_palette(path: Path) -> list[Colour]:
    """The colour table of a P-mode PNG (256 entries), or [] when the image has none."""
    with Image.open(path) as image:
        flat = image.getpalette() if image.mode == "P" else None
    if not flat:
        return []
    return [tuple(flat[i : i + 3]) for i in range(0, len(flat) - 2, 3)]


# --------------------------------------------------------------------------- labelme
def labelme_class_ids(class_names: Sequence[str]) -> dict[str, int]:
    """labelme label -> class id: the class's index in class_names; __ignore__ -> 255."""
    ids = {name: index for index, name in enumerate(class_names)}
    if class_names and class_names[0] in BACKGROUND_NAMES:
        ids.update(dict.fromkeys(BACKGROUND_NAMES, 0))
    ids[LABELME_IGNORE] = IGNORE_INDEX
    return ids


def rasterize_labelme(
    path: Path, class_ids: Mapping[str, int], size: tuple[int, int] | None = None
) -> np.ndarray:
    """Draw the shapes of a labelme file in order (later shapes cover earlier ones).

    size (H, W) defaults to the file's imageHeight/imageWidth. A label missing from class_ids
    raises DataError; "name-2" style instance suffixes fall back to "name".
    """
    path = Path(path)
    data = read_labelme(path)
    if size is None:
        if not data.get("imageHeight") or not data.get("imageWidth"):
            raise DataError(path, "labelme file has no imageHeight/imageWidth")
        size = (int(data["imageHeight"]), int(data["imageWidth"]))
    canvas = Image.new("I", (size[1], size[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for shape in data["shapes"]:
        value = _labelme_value(path, str(shape.get("label", "")), class_ids)
        _draw_shape(path, draw, canvas, shape, value)
    return np.asarray(canvas, dtype=np.int64)


def _labelme_value(path: Path, label: str, class_ids: Mapping[str, int]) -> int:
    if label in class_ids:
        return class_ids[label]
    base = label.rsplit("-", 1)[0]
    if base != label and label.rsplit("-", 1)[1].isdigit() and base in class_ids:
        return class_ids[base]
    known = ", ".join(sorted(k for k in class_ids if k != LABELME_IGNORE))
    raise DataError(path, f"labelme label {label!r} is not a declared class ({known})")


def _draw_shape(path: Path, draw, canvas: Image.Image, shape: dict, value: int) -> None:
    points = [tuple(float(v) for v in point) for point in shape.get("points", [])]
    kind = shape.get("shape_type") or "polygon"
    if kind == "polygon" and len(points) >= 3:
        draw.polygon(points, outline=value, fill=value)
    elif kind == "rectangle" and len(points) == 2:
        (x0, y0), (x1, y1) = points
        draw.rectangle(
            [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=value, fill=value
        )
    elif kind == "circle" and len(points) == 2:
        (cx, cy), (px, py) = points
        r = ((cx - px) ** 2 + (cy - py) ** 2) ** 0.5
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=value, fill=value)
    elif kind in ("line", "linestrip") and len(points) >= 2:
        draw.line(points, fill=value, width=1)
    elif kind == "mask" and shape.get("mask") and len(points) == 2:
        _paste_mask(path, canvas, shape, points, value)
    elif kind != "point":
        raise DataError(path, f"cannot rasterise labelme shape {kind!r} with {len(points)} points")


def _paste_mask(path: Path, canvas: Image.Image, shape: dict, points, value: int) -> None:
    try:
        with Image.open(io.BytesIO(base64.b64decode(shape["mask"]))) as image:
            mask = np.asarray(image.convert("L")) > 0
    except (PIL_ERRORS, base64.binascii.Error) as error:
        raise DataError(path, f"cannot decode a labelme mask shape ({error})") from None
    x0, y0 = (int(round(v)) for v in points[0])
    stamp = Image.fromarray((mask * 255).astype(np.uint8))
    canvas.paste(Image.new("I", stamp.size, value), (x0, y0), stamp)


# --------------------------------------------------------------------------- decoding
@dataclass
class MaskDecoder:
    """Turns one mask file into int64 labels with void = 255.

    void_value is the dataset's own void on disk (CamVid: 11), mapped to 255. binary=True
    yields 0/1 targets: a "binary" mask's `foreground` value (255 or 1; None: per file) is the
    foreground; for any other format every non-void class above 0 becomes foreground.
    num_classes (when known) bounds the valid values.
    """

    mask_format: str
    num_classes: int | None = None
    void_value: int = IGNORE_INDEX
    reduce_zero_label: bool = False
    binary: bool = False
    colour_map: dict[Colour, int] = field(default_factory=dict)
    class_ids: dict[str, int] = field(default_factory=dict)
    foreground: int | None = None
    threshold: int | None = None  # lossy (JPEG) binary masks: grey >= threshold is foreground

    def __post_init__(self) -> None:
        if self.mask_format not in MASK_FORMATS:
            raise ValueError(
                f"mask format must be one of {', '.join(MASK_FORMATS)}, got {self.mask_format!r}"
            )
        self.colour_map = {tuple(int(v) for v in k): int(c) for k, c in self.colour_map.items()}

    def __call__(self, path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
        """Decode and check the values: anything outside the classes and 255 raises DataError."""
        labels = self.decode(path, size)
        self.check_values(path, labels)
        return labels

    def decode(self, path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
        """Decode without checking the value range (check-data uses it to count every value)."""
        path = Path(path)
        if self.threshold is not None and self.mask_format == "binary":
            return read_thresholded(path, self.threshold)
        if self.mask_format == "labelme":
            labels = rasterize_labelme(path, self.class_ids, size)
        elif self.mask_format == "yolo":
            labels = _rasterize_yolo(path, size, self.num_classes)
        elif self.mask_format == "trimap":
            return decode_trimap(path, read_raw(path, "index"))
        elif self.mask_format == "rgb":
            labels = decode_rgb(path, read_raw(path, "rgb"), self.colour_map)
        else:
            labels = read_raw(path, self.mask_format).astype(np.int64)
        return self._map_values(labels)

    def _map_values(self, labels: np.ndarray) -> np.ndarray:
        if self.mask_format == "binary":
            return decode_binary(labels, self.foreground)
        void = labels < 0
        if self.mask_format not in ("labelme", "rgb", "yolo") and self.void_value != IGNORE_INDEX:
            void |= labels == self.void_value
        if self.reduce_zero_label:
            labels = labels - 1
            void |= labels < 0
        labels = np.where(void, IGNORE_INDEX, labels)
        if self.binary:
            labels = np.where(labels == IGNORE_INDEX, IGNORE_INDEX, (labels > 0).astype(np.int64))
        return labels

    @property
    def valid_count(self) -> int | None:
        binary = self.binary or self.mask_format in ("binary", "trimap")
        return 2 if binary else self.num_classes

    def check_values(self, path: Path, labels: np.ndarray) -> None:
        count = self.valid_count
        if count is None:
            return
        bad = (labels >= count) & (labels != IGNORE_INDEX)
        if bad.any():
            values = np.unique(labels[bad])
            shown = ", ".join(str(v) for v in values[:8]) + (" ..." if len(values) > 8 else "")
            raise DataError(
                path,
                f"label values {shown} outside the {count} classes 0..{count - 1} (255 = ignore)",
            )


def _rasterize_yolo(path: Path, size: tuple[int, int] | None, num_classes: int | None):
    if size is None:
        raise DataError(path, "YOLO labels are drawn at the image size, and none was given")
    return yolo.rasterize(path, size, None if num_classes is None else num_classes - 1)


def decode_trimap(path: Path, values: np.ndarray) -> np.ndarray:
    """1 (foreground) -> 1, 2 (background) -> 0, 3 (border) -> 255; other values raise."""
    found = set(np.unique(values).tolist())
    if not found <= set(TRIMAP_VALUES):
        other = ", ".join(str(v) for v in sorted(found - set(TRIMAP_VALUES))[:8])
        raise DataError(path, f"trimap values are 1, 2 and 3 (fg, bg, border), found {other}")
    lookup = np.array([0] + [TRIMAP_VALUES[v] for v in (1, 2, 3)], dtype=np.int64)
    return lookup[values]


def apply_roi(labels: np.ndarray, roi_path: Path) -> np.ndarray:
    """Labels with every pixel outside the region of interest (ROI mask value 0) made void."""
    roi = np.asarray(open_image(roi_path).convert("L"))
    if roi.shape != labels.shape:
        raise DataError(
            roi_path,
            f"ROI mask is {roi.shape[1]}x{roi.shape[0]}, the labels {labels.shape[1]}x"
            f"{labels.shape[0]} (W x H)",
        )
    return np.where(roi == 0, IGNORE_INDEX, labels)


def read_thresholded(path: Path, threshold: int) -> np.ndarray:
    """A binary mask saved lossily (JPEG): grey >= threshold -> 1 (foreground), else 0."""
    grey = np.asarray(open_image(Path(path)).convert("L"))
    return (grey >= threshold).astype(np.int64)


def decode_binary(values: np.ndarray, foreground: int | None = None) -> np.ndarray:
    """0/255 or 0/1 masks -> 0/1; in a 0/1 mask 255 stays ignore. Other values are kept so that
    the range check reports them (never thresholded silently).

    foreground (255 or 1) is best settled once per dataset: a 0/1/255 mask without any 1 reads
    the same as a 0/255 mask. When None, a mask holding 1 is taken as 0/1, else as 0/255.
    """
    if foreground is None:
        foreground = 1 if (values == 1).any() or not (values == 255).any() else 255
    out = values.copy()
    out[values == foreground] = 1
    if foreground == 1:
        out[values == 255] = IGNORE_INDEX
    return out


def decode_rgb(path: Path, rgb: np.ndarray, colour_map: Mapping[Colour, int]) -> np.ndarray:
    """Map each colour of an (H, W, 3) array to its class; an unmapped colour raises DataError."""
    if not colour_map:
        raise DataError(path, "RGB mask needs a colour -> class map (palette in a spec file)")
    packed = (
        (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    )
    colours, inverse = np.unique(packed, return_inverse=True)
    lookup = {(r << 16) | (g << 8) | b: c for (r, g, b), c in colour_map.items()}
    classes = np.empty(len(colours), dtype=np.int64)
    for i, colour in enumerate(colours.tolist()):
        if colour not in lookup:
            rgb_tuple = (colour >> 16, (colour >> 8) & 255, colour & 255)
            count = int((inverse == i).sum())
            raise DataError(
                path, f"unknown mask colour {rgb_tuple} ({count} pixels) not in the colour map"
            )
        classes[i] = lookup[colour]
    return classes[inverse.reshape(packed.shape)]


def colour_map_from_palette(
    palette: Sequence[Colour], void_colour: Colour | None = None
) -> dict[Colour, int]:
    """Class k has colour palette[k]; void_colour (if given) maps to 255."""
    mapping: dict[Colour, int] = {}
    for index, colour in enumerate(palette):
        mapping.setdefault(tuple(int(v) for v in colour), index)
    if void_colour is not None:
        mapping[tuple(void_colour)] = IGNORE_INDEX
    return mapping
