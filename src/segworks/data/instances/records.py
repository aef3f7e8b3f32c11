"""Instance records, the set a reader returns and the problem collector readers share."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segworks.errors import DataError, SegworksError

IGNORE_NAME = "__ignore__"
SKIPPED_NAMES = {"_background_", "__background__", IGNORE_NAME}
IGNORE_LABEL = 0  # the label of an ignore region (always iscrowd=1)


@dataclass
class Instance:
    """One object: polygons (flat x, y lists in image pixels) or a COCO RLE, and its label."""

    label: int
    polygons: list[list[float]] | None = None
    rle: dict | None = None
    iscrowd: int = 0


@dataclass
class InstanceRecord:
    image: Path
    image_id: int
    height: int
    width: int
    instances: list[Instance] = field(default_factory=list)


@dataclass
class InstanceSet:
    """The records of one source, its class names (background excluded) and what was wrong.

    `category_ids[k - 1]` is the source's category id of label k (k for non-COCO sources).
    """

    source: Path
    records: list[InstanceRecord]
    class_names: list[str]
    category_ids: list[int]
    problems: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        """Classes of the model's box predictor: the objects plus the background."""
        return len(self.class_names) + 1

    def split(self, val_fraction: float, *, seed: int = 0) -> tuple[list[int], list[int]]:
        """Random (train, val) record indices; at least one of each when there are 2 records."""
        if not 0.0 <= val_fraction < 1.0:
            raise SegworksError(f"val_fraction must be in [0, 1), got {val_fraction}")
        order = torch.randperm(len(self.records), generator=torch.Generator().manual_seed(seed))
        n_val = round(len(self.records) * val_fraction)
        if val_fraction > 0 and len(self.records) > 1:
            n_val = min(max(n_val, 1), len(self.records) - 1)
        return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


class Reader:
    """Collects problems while reading; `fatal` ones stop a strict read."""

    def __init__(self, source: Path):
        self.source = source
        self.problems: list[str] = []
        self.fatal: list[str] = []

    def problem(self, text: str, *, fatal: bool = False) -> None:
        self.problems.append(text)
        if fatal:
            self.fatal.append(text)

    def polygon(self, flat: list, where: str, height: int, width: int) -> list[float] | None:
        """A valid flat polygon, or None (with a problem) when it is degenerate."""
        coords = [float(v) for v in flat]
        if len(coords) < 6 or len(coords) % 2:
            self.problem(f"{where}: degenerate polygon with {len(coords) // 2} points (< 3)")
            return None
        xs, ys = np.array(coords[0::2]), np.array(coords[1::2])
        area = 0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))
        if area <= 0:
            self.problem(f"{where}: degenerate polygon with zero area")
            return None
        outside = xs.min() < -1 or ys.min() < -1 or xs.max() > width + 1 or ys.max() > height + 1
        if height and width and outside:
            self.problem(f"{where}: polygon reaches outside the {width}x{height} image")
        return coords


def image_size_or_none(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, ValueError):
        return None


def load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(path, f"cannot read JSON ({error})") from error


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 32) -> list[float]:
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], 1).ravel().tolist()
