"""YOLO segmentation labels as instances: one per line, category id k -> label k + 1."""

from __future__ import annotations

from pathlib import Path

from segworks.data import yolo
from segworks.data.instances.records import (
    Instance,
    InstanceRecord,
    InstanceSet,
    Reader,
    image_size_or_none,
)
from segworks.errors import DataError


def read_yolo_instances(source: Path, reader: Reader) -> InstanceSet:
    found = yolo.find_yolo(source)
    if found is None:
        raise DataError(source, "not a YOLO dataset (data.yaml with names, or labels/*.txt)")
    count = yolo.largest_class(found.label_files()) + 1
    names = found.names or [f"class_{i}" for i in range(count)]
    images = dict(pair for pairs in found.splits.values() for pair in pairs)
    records = []
    for image, label in images.items():
        size = image_size_or_none(image)
        if size is None:
            reader.problem(f"{image}: image file is missing or unreadable", fatal=True)
        record = InstanceRecord(image, len(records), *(size or (0, 0)))
        record.instances = _yolo_instances(label, record, len(names), reader)
        records.append(record)
    return InstanceSet(found.root, records, names, list(range(len(names))), reader.problems)


def _yolo_instances(label: Path, record: InstanceRecord, count: int, reader: Reader):
    try:
        polygons = yolo.read_labels(label, count)
    except DataError as error:
        reader.problem(str(error), fatal=True)
        return []
    instances = []
    for number, polygon in enumerate(polygons, start=1):
        size = (record.height, record.width)
        flat = [v for point in yolo.pixel_points(polygon, size) for v in point]
        where = f"{label} polygon {number}"
        checked = reader.polygon(flat, where, record.height, record.width)
        if checked is not None:
            instances.append(Instance(polygon.class_id + 1, polygons=[checked]))
    return instances
