"""YOLO segmentation labels (ultralytics): one polygon per line of a `labels/` text file.

Layout: `images/<split>/x.jpg` with `labels/<split>/x.txt` (the last `images` folder of an
image's path becomes `labels`), class names in a data.yaml / dataset.yaml:

    path: .                # the dataset root, relative to the yaml file (else the yaml's folder)
    train: images/train    # a folder, a .txt list of images, or a list of these
    val: images/val
    names: [cat, dog]      # or {0: cat, 1: dog}

Without a yaml file, a folder holding `images/` and `labels/*.txt` is read too (class names
from classes.txt beside them, else class_0, class_1, ...).

A label line is `class x1 y1 x2 y2 ...`: a class id 0..K-1 and at least 3 points normalised to
0..1 by the image size. An image without a label file holds no object (ultralytics' background
image). Readers: `rasterize` (semantic labels, class k -> k + 1) and `read_labels` (polygons).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from segworks.errors import DataError
from segworks.suffixes import IMAGE_SUFFIXES

YAML_NAMES = ("data.yaml", "dataset.yaml", "data.yml", "dataset.yml")
SPLIT_KEYS = ("train", "val", "test")
SPLIT_ALIASES = {"training": "train", "valid": "val", "validation": "val", "testing": "test"}
CLASS_FILES = ("classes.txt", "class_names.txt", "labels.txt")
SLACK = 0.01  # coordinates may overshoot 0..1 by this much (rounding in exporters)


@dataclass
class YoloSource:
    """The (image, label file) pairs of each split; a label file may be absent (no objects).
    `names` are the class names of ids 0..K-1 (no background), None when nothing names them."""

    root: Path
    splits: dict[str, list[tuple[Path, Path]]]
    names: list[str] | None
    names_from: str

    def label_files(self) -> list[Path]:
        return [label for pairs in self.splits.values() for _, label in pairs]


@dataclass
class Polygon:
    class_id: int
    points: list[tuple[float, float]]  # normalised x, y


# --------------------------------------------------------------------------- finding a dataset
def find_yolo(path: Path) -> YoloSource | None:
    """The YOLO dataset at `path` (a data.yaml file or a folder), or None when it is not one."""
    path = Path(path)
    if path.is_file():
        return from_yaml(path) if is_yolo_yaml(path) else None
    for name in YAML_NAMES:
        if is_yolo_yaml(path / name):
            return from_yaml(path / name)
    return from_folders(path)


def is_yolo_yaml(path: Path) -> bool:
    """An ultralytics data.yaml: a mapping with `names` and no segworks `splits`."""
    if not path.is_file() or path.suffix.lower() not in (".yaml", ".yml"):
        return False
    data = _load_yaml(path)
    return isinstance(data, dict) and "names" in data and "splits" not in data


def _load_yaml(path: Path):
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(path, f"cannot read the yaml file ({error})") from None
    except yaml.YAMLError as error:
        raise DataError(path, f"cannot parse the yaml file ({error})") from None


def from_yaml(path: Path) -> YoloSource:
    data = _load_yaml(path)
    root = _yaml_root(path, data.get("path"))
    splits = {}
    for key in SPLIT_KEYS:
        if data.get(key):
            splits[key] = _split_pairs(path, key, root, data[key])
    if not splits:
        raise DataError(path, "a YOLO data.yaml names its images: train: images/train, val: ...")
    return YoloSource(root, splits, _yaml_names(path, data["names"]), str(path))


def _yaml_root(path: Path, given) -> Path:
    if not given:
        return path.parent
    root = Path(str(given))
    root = root if root.is_absolute() else path.parent / root
    return root.resolve() if root.is_dir() else path.parent  # ultralytics' datasets_dir form


def _yaml_names(path: Path, names) -> list[str]:
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(names, dict):
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except ValueError:
            raise DataError(path, f"names: ids must be integers, got {list(names)}") from None
        return [by_id.get(i, f"class_{i}") for i in range(max(by_id, default=-1) + 1)]
    raise DataError(path, f"names: expected a list or an {{id: name}} mapping, got {names!r}")


def _split_pairs(path: Path, key: str, root: Path, entry) -> list[tuple[Path, Path]]:
    pairs = []
    for item in entry if isinstance(entry, list) else [entry]:
        where = root / str(item)
        if not where.exists() and str(item).startswith("../"):
            where = root / str(item)[3:]  # Roboflow's exports point one folder too high
        if where.is_dir():
            images = _images_in(where)
        elif where.is_file() and where.suffix.lower() == ".txt":
            images = _listed_images(where)
        else:
            raise DataError(path, f"{key}: {where} is neither an image folder nor a .txt list")
        pairs += [(image, label_path(image)) for image in images]
    return pairs


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def _listed_images(list_path: Path) -> list[Path]:
    lines = list_path.read_text(encoding="utf-8").splitlines()
    return [list_path.parent / line.strip() for line in lines if line.strip()]


def label_path(image: Path) -> Path:
    """labels/.../x.txt for images/.../x.jpg (the last `images` folder), else x.txt beside it."""
    parts = list(image.parts)
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def from_folders(root: Path) -> YoloSource | None:
    """`images/` + `labels/*.txt` without a yaml file; split subfolders become splits."""
    images, labels = root / "images", root / "labels"
    if not (images.is_dir() and labels.is_dir() and any(labels.rglob("*.txt"))):
        return None
    children = sorted(p for p in images.iterdir() if p.is_dir())
    named = {SPLIT_ALIASES.get(p.name, p.name): p for p in children if _is_split(p.name)}
    folders = named or {"train": images}
    splits = {
        split: [(image, label_path(image)) for image in _images_in(folder)]
        for split, folder in folders.items()
    }
    for name in CLASS_FILES:
        for folder in (root, labels):
            if (folder / name).is_file():
                return YoloSource(root, splits, _class_file(folder / name), str(folder / name))
    return YoloSource(root, splits, None, "inferred")


def _is_split(name: str) -> bool:
    return name in SPLIT_KEYS or name in SPLIT_ALIASES


def _class_file(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


# --------------------------------------------------------------------------- label files
def read_labels(path: Path, num_classes: int | None = None) -> list[Polygon]:
    """The polygons of a label file in order; no file means no object. A malformed line raises
    DataError naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(path, f"cannot read the YOLO label file ({error})") from None
    polygons = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            polygons.append(_parse_line(path, f"line {number}", line.split(), num_classes))
    return polygons


def _parse_line(path: Path, where: str, parts: list[str], num_classes: int | None) -> Polygon:
    try:
        values = [float(v) for v in parts]
    except ValueError:
        shown = " ".join(parts)[:60]
        raise DataError(
            path, f"{where}: expected numbers 'class x1 y1 x2 y2 ...', got {shown!r}"
        ) from None
    class_id, coords = values[0], values[1:]
    if class_id != int(class_id) or class_id < 0:
        raise DataError(path, f"{where}: the class id must be an integer >= 0, got {parts[0]}")
    if num_classes is not None and class_id >= num_classes:
        raise DataError(
            path,
            f"{where}: class {int(class_id)} outside the {num_classes} classes 0..{num_classes - 1}",
        )
    if len(coords) % 2:
        raise DataError(path, f"{where}: {len(coords)} coordinates; a polygon is x y pairs")
    if len(coords) < 6:
        box = " (class cx cy w h is a detection box, not a polygon)" if len(coords) == 4 else ""
        raise DataError(path, f"{where}: {len(coords) // 2} points; a polygon needs 3 or more{box}")
    if min(coords) < -SLACK or max(coords) > 1 + SLACK:
        raise DataError(
            path, f"{where}: coordinate {max(coords, key=abs):g} outside 0..1 (YOLO coordinates "
            "are divided by the image width and height)"
        )  # fmt: skip
    return Polygon(int(class_id), list(zip(coords[0::2], coords[1::2])))


def pixel_points(polygon: Polygon, size: tuple[int, int]) -> list[tuple[float, float]]:
    height, width = size
    return [(x * width, y * height) for x, y in polygon.points]


def rasterize(path: Path, size: tuple[int, int], num_classes: int | None = None) -> np.ndarray:
    """Semantic labels (H, W) int64: class k -> k + 1 drawn in file order (later lines over
    earlier ones), 0 where no polygon lies. num_classes counts the YOLO classes only."""
    canvas = Image.new("I", (size[1], size[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in read_labels(path, num_classes):
        draw.polygon(pixel_points(polygon, size), fill=polygon.class_id + 1)
    return np.asarray(canvas, dtype=np.int64)


def largest_class(paths: list[Path]) -> int:
    """The highest class id in the label files (-1 when there is none)."""
    return max((p.class_id for path in paths for p in read_labels(path)), default=-1)
