"""Telling the instance formats apart and reading any of them."""

from __future__ import annotations

import logging
from pathlib import Path

from segworks.data import yolo
from segworks.data.instances.coco import read_coco
from segworks.data.instances.labelme import read_labelme
from segworks.data.instances.records import (
    InstanceSet,
    Reader,
    load_json,
)
from segworks.data.instances.via import read_via
from segworks.data.instances.voc import read_voc_instances
from segworks.data.instances.yolo import read_yolo_instances
from segworks.errors import DataError, SegworksError

log = logging.getLogger(__name__)

FORMATS = ("coco", "labelme", "via", "voc", "yolo")
FORMAT_NAMES = {"coco": "COCO", "labelme": "labelme", "via": "VIA", "voc": "VOC", "yolo": "YOLO"}


def detect_format(source: Path) -> tuple[str, Path]:
    """The format of `source` and the path its reader takes."""
    if yolo.is_yolo_yaml(source) or (source.is_dir() and yolo.find_yolo(source) is not None):
        return "yolo", source
    if source.is_dir():
        if (source / "SegmentationObject").is_dir():
            return "voc", source
        if (source / "via_region_data.json").is_file():
            return "via", source / "via_region_data.json"
        jsons = sorted(source.glob("*.json"))
        if jsons and all("shapes" in load_json(j) for j in jsons[:3]):
            return "labelme", source
        if len(jsons) == 1:
            return detect_format(jsons[0])
        raise DataError(source, "cannot tell the instance format (coco/labelme/via/voc/yolo)")
    data = load_json(source)
    if isinstance(data, dict) and "annotations" in data and "images" in data:
        return "coco", source
    if isinstance(data, dict) and "shapes" in data:
        return "labelme", source
    values = list(data.get("_via_img_metadata", data).values()) if isinstance(data, dict) else []
    if values and isinstance(values[0], dict) and "regions" in values[0]:
        return "via", source
    raise DataError(source, "cannot tell the instance format (coco/labelme/via/voc/yolo)")


def read_instances(
    source: str | Path, *, images: Path | None = None, fmt: str = "auto", strict: bool = True
) -> InstanceSet:
    """Read any supported instance source; with `strict`, unknown ids or missing files raise."""
    source = Path(source)
    if not source.exists():
        raise DataError(source, "instance annotations not found")
    if fmt == "auto":
        fmt, source = detect_format(source)
    elif fmt not in FORMATS:
        raise SegworksError(f"instance format must be 'auto' or one of {FORMATS}, got {fmt!r}")
    reader = Reader(source)
    if fmt == "coco":
        result = read_coco(source, Path(images) if images else None, reader)
    elif fmt == "labelme":
        result = read_labelme(source, reader)
    elif fmt == "yolo":
        result = read_yolo_instances(source, reader)
    elif fmt == "via":
        result = read_via(source if source.is_file() else source / "via_region_data.json", reader)
    else:
        result = read_voc_instances(source, reader)
    if strict and reader.fatal:
        more = f" (and {len(reader.fatal) - 1} more)" if len(reader.fatal) > 1 else ""
        raise DataError(source, reader.fatal[0] + more)
    if reader.problems:
        log.warning("%s: %d annotation problems (run check-data)", source, len(reader.problems))
    return result
