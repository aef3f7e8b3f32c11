"""VOC SegmentationObject PNGs: each instance id is one instance of its majority class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from segworks import IGNORE_INDEX
from segworks.data.instances.records import (
    SKIPPED_NAMES,
    Instance,
    InstanceRecord,
    InstanceSet,
    Reader,
)
from segworks.errors import DataError
from segworks.suffixes import IMAGE_SUFFIXES


def read_voc_instances(root: Path, reader: Reader) -> InstanceSet:
    names_file = root / "class_names.txt"
    if not names_file.is_file():
        raise DataError(root, "VOC instance folder needs class_names.txt")
    lines = [n.strip() for n in names_file.read_text(encoding="utf-8").splitlines() if n.strip()]
    names = [n for n in lines[1:] if n not in SKIPPED_NAMES]
    records = []
    for image_id, object_png in enumerate(sorted((root / "SegmentationObject").glob("*.png"))):
        image = _find_stem(root / "JPEGImages", object_png.stem)
        if image is None:
            reader.problem(f"{object_png}: no image in JPEGImages", fatal=True)
            continue
        objects = np.array(Image.open(object_png))
        classes = np.array(Image.open(root / "SegmentationClass" / object_png.name))
        record = InstanceRecord(image, image_id, *objects.shape[:2])
        for object_id in np.unique(objects):
            if object_id in (0, IGNORE_INDEX):
                continue
            mask = objects == object_id
            label = int(np.bincount(classes[mask]).argmax())
            if not 1 <= label <= len(names):
                reader.problem(f"{object_png}: instance {object_id} has class {label}", fatal=True)
                continue
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            record.instances.append(Instance(label, rle=rle))
        records.append(record)
    return InstanceSet(root, records, names, list(range(1, len(names) + 1)), reader.problems)


def _find_stem(folder: Path, stem: str) -> Path | None:
    return next(
        (folder / (stem + s) for s in IMAGE_SUFFIXES if (folder / (stem + s)).is_file()), None
    )
