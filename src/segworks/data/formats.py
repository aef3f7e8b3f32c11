"""Mask encodings on disk and how to turn each into a label array.

Every decoder returns an int64 (H, W) array with the dataset's void value mapped to
segworks.IGNORE_INDEX (255). The encoders exist so that tests can write every format and read it
back (see tests/test_data_formats.py); they are also handy to convert a dataset.

Formats:
- "palette": a PNG in P mode; the palette index is the label (Pascal VOC); the palette is kept.
- "index":   a grayscale PNG whose values are the labels (ADE20K, CamVid); optional
             reduce_zero_label (0 -> void, k -> k - 1).
- "binary":  a grayscale PNG holding 0 and 255 (or 0 and 1); 255 (or 1) is the foreground.
- "rgb":     an RGB PNG whose colours name classes through a colour -> class map.
- "npy":     a NumPy array of labels (negative values are void, as labelme writes -1).
- "labelme": a labelme JSON file whose polygons are rasterised on load.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from segworks import IGNORE_INDEX
from segworks.errors import DataError
from segworks.fileio import atomic_path, save_image, save_json

MASK_FORMATS = ("palette", "index", "binary", "rgb", "npy", "labelme")
# Photo files segworks reads (prediction inputs, instance datasets), in lookup order.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif")
SLIDE_MAX_PIXELS = 2_000_000_000  # sliding-window prediction reads images up to this size
Colour = tuple[int, int, int]

LABELME_IGNORE = "__ignore__"
BACKGROUND_NAMES = ("_background_", "background", "__background__")

# Errors PIL raises for a missing, truncated or corrupt file.
PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


# --------------------------------------------------------------------------- reading raw files
def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image file; a labelme JSON yields its embedded imageData."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return _labelme_image(path)
    try:
        image = Image.open(path)
        image.load()  # PIL closes the file it opened once the pixels are loaded
        return image
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except Image.DecompressionBombError:
        raise DataError(path, _too_large()) from None
    except PIL_ERRORS as error:
        raise DataError(path, f"cannot decode image ({error})") from None


def _too_large() -> str:
    limit = (Image.MAX_IMAGE_PIXELS or 0) * 2 // 1_000_000
    if limit >= SLIDE_MAX_PIXELS // 1_000_000:
        return f"the image is over the {limit}-megapixel cap of sliding-window prediction"
    return (
        f"the image is over the {limit}-megapixel limit for reading it whole; predict it with "
        f"--mode slide --tile H W (up to {SLIDE_MAX_PIXELS // 1_000_000} megapixels)"
    )


@contextmanager
def pixel_limit(pixels: int) -> Iterator[None]:
    """Let PIL open images of up to `pixels` (its own guard stops at 2 x MAX_IMAGE_PIXELS)."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max(saved or 0, pixels // 2)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image from its header only (labelme JSON: imageHeight/imageWidth)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = read_labelme(path)
        return int(data["imageHeight"]), int(data["imageWidth"])
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except Image.DecompressionBombError:
        raise DataError(path, _too_large()) from None
    except PIL_ERRORS as error:
        raise DataError(path, f"cannot read image header ({error})") from None
    return height, width


def read_palette(path: Path) -> list[Colour]:
    """The colour table of a P-mode PNG (256 entries), or [] when the image has none."""
    with Image.open(path) as image:
        flat = image.getpalette() if image.mode == "P" else None
    if not flat:
        return []
    return [tuple(flat[i : i + 3]) for i in range(0, len(flat) - 2, 3)]


def read_labelme(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(path, f"not a readable labelme JSON file ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise DataError(path, "not a labelme file (no 'shapes' list)")
    return data


def _labelme_image(path: Path) -> Image.Image:
    data = read_labelme(path)
    image_path = path.parent / str(data.get("imagePath") or "")
    if data.get("imagePath") and image_path.is_file():
        return open_image(image_path)
    if not data.get("imageData"):
        raise DataError(path, "labelme file has no imageData and its imagePath does not exist")
    try:
        with Image.open(io.BytesIO(base64.b64decode(data["imageData"]))) as image:
            image.load()
            return image.copy()
    except (PIL_ERRORS, base64.binascii.Error) as error:
        raise DataError(path, f"cannot decode the embedded imageData ({error})") from None


def read_raw(path: Path, mask_format: str) -> np.ndarray:
    """The values stored in a mask file, before any class mapping: (H, W) for every format
    except "rgb", which gives (H, W, 3) uint8. labelme files are not raw arrays: use
    rasterize_labelme."""
    path = Path(path)
    if mask_format == "npy":
        return _read_npy(path)
    image = open_image(path)
    if mask_format == "rgb":
        return np.asarray(image.convert("RGB"))
    if mask_format == "palette" and image.mode not in ("P", "L"):
        raise DataError(path, f"expected a palette (P mode) PNG, found mode {image.mode}")
    if image.mode in ("RGB", "RGBA"):
        rgb = np.asarray(image.convert("RGB"))
        if not (
            np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        ):
            raise DataError(path, f"{mask_format} mask is a colour image; use mask format 'rgb'")
        return rgb[..., 0]
    if image.mode in ("LA", "PA"):
        image = image.getchannel(0)
    return np.asarray(image)


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, ValueError, EOFError) as error:
        raise DataError(path, f"cannot load .npy array ({error})") from None
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[0], -1) if array.shape[-1] == 1 else array[0]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            path, f"expected a 2-D integer label array, got {array.dtype} {array.shape}"
        )
    return array


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
        elif self.mask_format == "rgb":
            labels = decode_rgb(path, read_raw(path, "rgb"), self.colour_map)
        else:
            labels = read_raw(path, self.mask_format).astype(np.int64)
        return self._map_values(labels)

    def _map_values(self, labels: np.ndarray) -> np.ndarray:
        if self.mask_format == "binary":
            return decode_binary(labels, self.foreground)
        void = labels < 0
        if self.mask_format not in ("labelme", "rgb") and self.void_value != IGNORE_INDEX:
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
        return 2 if self.binary or self.mask_format == "binary" else self.num_classes

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


# --------------------------------------------------------------------------- encoding
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
