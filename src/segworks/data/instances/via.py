"""VIA region JSON (the Matterport balloon set): polygon, rect, circle and ellipse regions."""

from __future__ import annotations

import logging
from pathlib import Path

from segworks.data.instances.records import (
    Instance,
    InstanceRecord,
    InstanceSet,
    Reader,
    ellipse,
    image_size_or_none,
    load_json,
)
from segworks.errors import DataError

log = logging.getLogger(__name__)


def read_via(path: Path, reader: Reader, class_name: str | None = None) -> InstanceSet:
    data = load_json(path)
    entries = data.get("_via_img_metadata", data) if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise DataError(path, "not a VIA region file (expected a dict of image entries)")
    default = class_name or _folder_class(path)
    parsed = []
    for image_id, entry in enumerate(entries.values()):
        regions = entry.get("regions", [])
        regions = list(regions.values()) if isinstance(regions, dict) else list(regions)
        parsed.append((image_id, entry, regions))
    names = sorted({_via_class(r, default) for _, _, regions in parsed for r in regions})
    if default in names and class_name is None:
        log.warning("%s: VIA regions without a name/class/label attribute are class %r, "
                    "named after the folder %s", path, default, path.parent)  # fmt: skip
    names = names or [default]
    label_of = {name: index + 1 for index, name in enumerate(names)}
    records = []
    for image_id, entry, regions in parsed:
        image = path.parent / str(entry.get("filename"))
        size = image_size_or_none(image)
        if size is None:
            reader.problem(f"{image}: image file is missing or unreadable", fatal=True)
        record = InstanceRecord(image, image_id, *(size or (0, 0)))
        for index, region in enumerate(regions):
            where = f"{image.name} region {index}"
            flat = _via_polygon(region.get("shape_attributes", {}))
            polygon = None if flat is None else reader.polygon(flat, where, *size or (0, 0))
            if flat is None:
                reader.problem(f"{where}: shape {region.get('shape_attributes')} is not read")
            if polygon is not None:
                label = label_of[_via_class(region, default)]
                record.instances.append(Instance(label, polygons=[polygon]))
        records.append(record)
    return InstanceSet(path, records, names, list(range(1, len(names) + 1)), reader.problems)


def _folder_class(path: Path) -> str:
    folder = path.parent
    splits = ("train", "training", "val", "valid", "validation", "test", "testing")
    if folder.name.lower() in splits and folder.parent.name:
        folder = folder.parent
    return folder.name or "object"


def _via_class(region: dict, default: str) -> str:
    attributes = region.get("region_attributes") or {}
    for key in ("name", "class", "label"):
        if isinstance(attributes.get(key), str) and attributes[key]:
            return attributes[key]
    return default


def _via_polygon(shape: dict) -> list[float] | None:
    kind = shape.get("name")
    if kind in ("polygon", "polyline"):
        return [float(v) for xy in zip(shape["all_points_x"], shape["all_points_y"]) for v in xy]
    if kind == "rect":
        x, y, w, h = (float(shape[k]) for k in ("x", "y", "width", "height"))
        return [x, y, x + w, y, x + w, y + h, x, y + h]
    if kind == "circle":
        return ellipse(shape["cx"], shape["cy"], shape["r"], shape["r"])
    if kind == "ellipse":
        return ellipse(shape["cx"], shape["cy"], shape["rx"], shape["ry"])
    return None
