"""labelme JSON files: one shape (or one group_id) per instance."""

from __future__ import annotations

import math
from pathlib import Path

from segworks.data.instances.records import (
    IGNORE_LABEL,
    IGNORE_NAME,
    SKIPPED_NAMES,
    Instance,
    InstanceRecord,
    InstanceSet,
    Reader,
    ellipse,
    image_size_or_none,
    load_json,
)


def read_labelme(folder: Path, reader: Reader) -> InstanceSet:
    files = sorted(folder.glob("*.json")) if folder.is_dir() else [folder]
    names = _labels_txt(folder if folder.is_dir() else folder.parent)
    raw = [(file, load_json(file)) for file in files]
    if names is None:
        seen = {str(s["label"]) for _, d in raw for s in d.get("shapes", [])}
        names = sorted(seen - SKIPPED_NAMES)
    label_of = {name: index + 1 for index, name in enumerate(names)}
    records = []
    for image_id, (file, data) in enumerate(raw):
        image = file.parent / str(data.get("imagePath") or file.with_suffix(".jpg").name)
        if not image.is_file():
            reader.problem(f"{image}: image file is missing", fatal=True)
        height, width = data.get("imageHeight"), data.get("imageWidth")
        if not height or not width:
            height, width = image_size_or_none(image) or (0, 0)
        record = InstanceRecord(image, image_id, int(height), int(width))
        record.instances = _labelme_instances(data, file, record, label_of, reader)
        records.append(record)
    return InstanceSet(folder, records, names, list(range(1, len(names) + 1)), reader.problems)


def _labels_txt(folder: Path) -> list[str] | None:
    for candidate in (folder / "labels.txt", folder.parent / "labels.txt"):
        if candidate.is_file():
            lines = candidate.read_text(encoding="utf-8").splitlines()
            return [n.strip() for n in lines if n.strip() and n.strip() not in SKIPPED_NAMES]
    return None


def _labelme_instances(
    data: dict, file: Path, record: InstanceRecord, label_of: dict, reader: Reader
) -> list[Instance]:
    groups: dict[tuple, Instance] = {}
    for index, shape in enumerate(data.get("shapes", [])):
        label, where = str(shape.get("label")), f"{file.name} shape {index}"
        if label in SKIPPED_NAMES - {IGNORE_NAME}:
            continue
        if label not in label_of and label != IGNORE_NAME:
            reader.problem(f"{where}: unknown label {label!r}", fatal=True)
            continue
        flat = _shape_polygon(shape.get("shape_type", "polygon"), shape.get("points", []))
        if flat is None:
            reader.problem(f"{where}: shape type {shape.get('shape_type')!r} is not read")
            continue
        polygon = reader.polygon(flat, where, record.height, record.width)
        if polygon is None:
            continue
        group = shape.get("group_id")
        key = (label, group) if group is not None else (label, "shape", index)
        if key not in groups:
            ignore = label == IGNORE_NAME
            groups[key] = Instance(
                IGNORE_LABEL if ignore else label_of[label], polygons=[], iscrowd=int(ignore)
            )
        groups[key].polygons.append(polygon)
    return list(groups.values())


def _shape_polygon(kind: str, points: list) -> list[float] | None:
    if kind == "polygon":
        return [float(v) for point in points for v in point]
    if kind == "rectangle" and len(points) == 2:
        (x1, y1), (x2, y2) = points
        return [x1, y1, x2, y1, x2, y2, x1, y2]
    if kind == "circle" and len(points) == 2:
        (cx, cy), (px, py) = points
        return ellipse(cx, cy, math.hypot(px - cx, py - cy), math.hypot(px - cx, py - cy))
    return None
