"""Class names: class-name files, the CamVid classes and colours, names when nothing gives them."""

from __future__ import annotations

import json
from pathlib import Path

from segworks import IGNORE_INDEX
from segworks.data import yolo
from segworks.data.formats import BACKGROUND_NAMES, LABELME_IGNORE
from segworks.errors import SegworksError

CLASS_FILES = ("labels.txt", "class_names.txt", "classes.txt")
CAMVID_CLASSES = [
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
    "Pedestrian", "Bicyclist",
]  # fmt: skip
# The SegNet tutorial's colours for those classes.
CAMVID_PALETTE = [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
]  # fmt: skip


def read_class_names(path: Path) -> list[str]:
    """One name per line; labelme's `__ignore__` is dropped, `_background_` -> background."""
    names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n and n != LABELME_IGNORE]
    return ["background" if n in BACKGROUND_NAMES else n for n in names]


def default_names(listing, fmt, task, probe, colour_map, masks) -> tuple[list[str], str]:
    if task == "binary":
        return ["background", "foreground"], "binary"
    if fmt == "labelme":
        return _labelme_names(masks), "labelme labels"
    if fmt == "yolo":
        count = yolo.largest_class(masks) + 1
        return ["background", *(f"class_{i}" for i in range(count))], "YOLO labels"
    if listing.segnet and fmt == "index" and max(probe["values"], default=0) <= 11:
        return list(CAMVID_CLASSES), "SegNet CamVid layout"
    if fmt == "rgb":
        count = max((c for c in colour_map.values() if c != IGNORE_INDEX), default=0) + 1
    else:
        values = [v for v in probe["values"] if 0 <= v != IGNORE_INDEX]
        count = max(values, default=0) + 1
    return [f"class_{i}" for i in range(count)], "inferred"


def binary_names(names: list[str], names_from: str) -> tuple[list[str], str]:
    if len(names) == 2:
        return names, names_from
    if names_from == "given":
        raise SegworksError(
            f"a binary task has 2 class names (background, foreground), got {names}"
        )
    return ["background", "foreground"], "binary"


def _labelme_names(masks: list[Path]) -> list[str]:
    labels: set[str] = set()
    for path in masks:
        try:
            shapes = json.loads(Path(path).read_text(encoding="utf-8")).get("shapes", [])
        except (OSError, ValueError):
            continue
        for shape in shapes:
            label = str(shape.get("label", ""))
            base, _, suffix = label.rpartition("-")
            labels.add(base if base and suffix.isdigit() else label)
    labels -= {LABELME_IGNORE, *BACKGROUND_NAMES}
    return ["background", *sorted(labels)]
