"""COCO instances JSON: polygons, RLE (compressed or not), iscrowd, __ignore__ categories."""

from __future__ import annotations

import json
from pathlib import Path

from segworks.data.instances.records import (
    IGNORE_LABEL,
    IGNORE_NAME,
    SKIPPED_NAMES,
    Instance,
    InstanceRecord,
    InstanceSet,
    Reader,
    image_size_or_none,
    load_json,
)
from segworks.errors import DataError


def _int_id(value, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as error:
        raise DataError(where, f"expected an integer id, got {value!r}") from error


def _find_image(name: str, roots: list[Path]) -> Path:
    for root in roots:
        if (root / name).is_file():
            return root / name
    return roots[0] / name


def read_coco(path: Path, images: Path | None, reader: Reader) -> InstanceSet:
    data = load_json(path)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DataError(path, "not a COCO instances file (needs 'images' and 'annotations')")
    categories = sorted(
        (_int_id(c["id"], path), str(c.get("name", c["id"]))) for c in data.get("categories", [])
    )
    ignored = {cid for cid, name in categories if name == IGNORE_NAME}
    skipped = {cid for cid, name in categories if name in SKIPPED_NAMES} - ignored
    categories = [(cid, name) for cid, name in categories if name not in SKIPPED_NAMES]
    label_of = {cid: index + 1 for index, (cid, _) in enumerate(categories)}
    label_of |= {cid: IGNORE_LABEL for cid in ignored} | {cid: None for cid in skipped}
    roots = [images] if images else [path.parent, path.parent / "images"]
    records, by_id = [], {}
    for entry in data["images"]:
        image_id = _int_id(entry["id"], path)
        file = _find_image(str(entry["file_name"]), roots)
        if not file.is_file():
            reader.problem(f"{file}: image file is missing", fatal=True)
        height, width = entry.get("height"), entry.get("width")
        if not height or not width:
            height, width = image_size_or_none(file) or (0, 0)
        by_id[image_id] = InstanceRecord(file, image_id, int(height), int(width))
        records.append(by_id[image_id])
    for ann in data["annotations"]:
        _coco_annotation(ann, by_id, label_of, reader)
    names = [name for _, name in categories]
    return InstanceSet(path, records, names, [cid for cid, _ in categories], reader.problems)


def _coco_annotation(ann: dict, by_id: dict, label_of: dict, reader: Reader) -> None:
    where = f"annotation {ann.get('id')}"
    record = by_id.get(_int_id(ann.get("image_id"), where))
    if record is None:
        reader.problem(f"{where}: unknown image id {ann.get('image_id')!r}", fatal=True)
        return
    category = _int_id(ann.get("category_id"), where)
    if category not in label_of:
        reader.problem(f"{where}: unknown category id {category}", fatal=True)
        return
    if label_of[category] is None:  # a background category: nothing to learn
        return
    iscrowd = int(_int_id(ann.get("iscrowd", 0), where))
    iscrowd = 1 if label_of[category] == IGNORE_LABEL else iscrowd
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, str):
        segmentation = json.loads(segmentation)
    instance = Instance(label_of[category], iscrowd=iscrowd)
    if isinstance(segmentation, list):
        polygons = [reader.polygon(p, where, record.height, record.width) for p in segmentation]
        instance.polygons = [p for p in polygons if p is not None]
        if not instance.polygons:
            return
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        instance.rle = segmentation
    else:
        reader.problem(f"{where}: no polygon or RLE segmentation")
        return
    _check_bbox(ann.get("bbox"), record, where, reader)
    record.instances.append(instance)


def _check_bbox(bbox, record: InstanceRecord, where: str, reader: Reader) -> None:
    if isinstance(bbox, str):
        bbox = json.loads(bbox)
    if not bbox or len(bbox) != 4:
        return
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        reader.problem(f"{where}: empty box {bbox}")
    if x < -1 or y < -1 or x + w > record.width + 1 or y + h > record.height + 1:
        reader.problem(f"{where}: box {bbox} outside the {record.width}x{record.height} image")
