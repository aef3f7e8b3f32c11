"""Instance segmentation data: readers, a torchvision-style dataset and the instance doctor.

Public API:
    read_instances(source, *, images=None, fmt="auto", strict=True) -> InstanceSet
    InstanceDataset(instance_set, indices=None, *, min_size=800, max_size=1333, hflip=0.0)
    collate_instances(batch) -> (list of images, list of targets)
    semantic_from_instances(target, *, height=None, width=None) -> LongTensor[H, W]
    check_instances(source: Path, *, images: Path | None = None) -> tuple[str, list[str]]
        (report text, problems); used by `segworks check-data` for instance sources.

Formats (`fmt`, "auto" tells them apart):
    coco     COCO instances JSON: polygons, RLE (compressed or not), iscrowd. Image files are
             looked up under `images`, else beside the JSON, else in `images/` beside it.
             Category ids (any integers, strings of digits accepted) map to labels 1..K in
             increasing id order; categories named _background_/__background__ are dropped
             (labelme's COCO export writes one); annotations of a category named __ignore__
             become ignore regions (below).
    labelme  a folder of labelme JSON files, one shape per instance; shapes with the same
             (label, group_id) are one instance. polygon, rectangle and circle shapes are read.
             Class names come from labels.txt beside or above the folder (labelme's convention),
             else from the labels seen. _background_ shapes are skipped; __ignore__ shapes
             (labelme's convention) become ignore regions (below).
    via      VIA region JSON (the Matterport balloon set): `regions` a dict or a list; polygon,
             rect, circle and ellipse shapes. The class is the region attribute "name", "class"
             or "label" when present, else the dataset's folder name (balloon/train -> balloon).
    voc      a VOC-style folder: JPEGImages/*.jpg, SegmentationObject/*.png (instance ids,
             0 = background, 255 = void), SegmentationClass/*.png (class index per pixel),
             class_names.txt (first line the background). Each instance id is one instance
             whose class is the most frequent class index under it.

Targets follow torchvision's contract: boxes (N, 4) float xyxy, labels int64 1..K, masks uint8
(N, H, W), image_id, iscrowd, area. Images are float 0..1 (3, H, W).

Crowd regions (iscrowd=1) are left out of training and count as crowd in COCO evaluation
(a detection on them is neither a hit nor a miss). An ignore region is a crowd region with
label 0: it belongs to no class, so evaluation treats it as crowd of every class.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch import Tensor
from torch.utils.data import Dataset

from segworks import IGNORE_INDEX
from segworks.data.formats import IMAGE_SUFFIXES
from segworks.errors import DataError, SegworksError

log = logging.getLogger(__name__)

FORMATS = ("coco", "labelme", "via", "voc")
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


class _Reader:
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


# ---------------------------------------------------------------- format readers


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


def _image_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, ValueError):
        return None


def read_coco(path: Path, images: Path | None, reader: _Reader) -> InstanceSet:
    data = _load_json(path)
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
            height, width = _image_size(file) or (0, 0)
        by_id[image_id] = InstanceRecord(file, image_id, int(height), int(width))
        records.append(by_id[image_id])
    for ann in data["annotations"]:
        _coco_annotation(ann, by_id, label_of, reader)
    names = [name for _, name in categories]
    return InstanceSet(path, records, names, [cid for cid, _ in categories], reader.problems)


def _coco_annotation(ann: dict, by_id: dict, label_of: dict, reader: _Reader) -> None:
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


def _check_bbox(bbox, record: InstanceRecord, where: str, reader: _Reader) -> None:
    if isinstance(bbox, str):
        bbox = json.loads(bbox)
    if not bbox or len(bbox) != 4:
        return
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        reader.problem(f"{where}: empty box {bbox}")
    if x < -1 or y < -1 or x + w > record.width + 1 or y + h > record.height + 1:
        reader.problem(f"{where}: box {bbox} outside the {record.width}x{record.height} image")


def read_labelme(folder: Path, reader: _Reader) -> InstanceSet:
    files = sorted(folder.glob("*.json")) if folder.is_dir() else [folder]
    names = _labels_txt(folder if folder.is_dir() else folder.parent)
    raw = [(file, _load_json(file)) for file in files]
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
            height, width = _image_size(image) or (0, 0)
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
    data: dict, file: Path, record: InstanceRecord, label_of: dict, reader: _Reader
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
        return _ellipse(cx, cy, math.hypot(px - cx, py - cy), math.hypot(px - cx, py - cy))
    return None


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 32) -> list[float]:
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], 1).ravel().tolist()


def read_via(path: Path, reader: _Reader, class_name: str | None = None) -> InstanceSet:
    data = _load_json(path)
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
        size = _image_size(image)
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
        return _ellipse(shape["cx"], shape["cy"], shape["r"], shape["r"])
    if kind == "ellipse":
        return _ellipse(shape["cx"], shape["cy"], shape["rx"], shape["ry"])
    return None


def read_voc_instances(root: Path, reader: _Reader) -> InstanceSet:
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


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(path, f"cannot read JSON ({error})") from error


def detect_format(source: Path) -> tuple[str, Path]:
    """The format of `source` and the path its reader takes."""
    if source.is_dir():
        if (source / "SegmentationObject").is_dir():
            return "voc", source
        if (source / "via_region_data.json").is_file():
            return "via", source / "via_region_data.json"
        jsons = sorted(source.glob("*.json"))
        if jsons and all("shapes" in _load_json(j) for j in jsons[:3]):
            return "labelme", source
        if len(jsons) == 1:
            return detect_format(jsons[0])
        raise DataError(source, "cannot tell the instance format (coco/labelme/via/voc)")
    data = _load_json(source)
    if isinstance(data, dict) and "annotations" in data and "images" in data:
        return "coco", source
    if isinstance(data, dict) and "shapes" in data:
        return "labelme", source
    values = list(data.get("_via_img_metadata", data).values()) if isinstance(data, dict) else []
    if values and isinstance(values[0], dict) and "regions" in values[0]:
        return "via", source
    raise DataError(source, "cannot tell the instance format (coco/labelme/via/voc)")


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
    reader = _Reader(source)
    if fmt == "coco":
        result = read_coco(source, Path(images) if images else None, reader)
    elif fmt == "labelme":
        result = read_labelme(source, reader)
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


# ---------------------------------------------------------------- dataset


def _resized(height: int, width: int, min_size: int | None, max_size: int) -> tuple[int, int]:
    """Shrink so the short side is min_size and the long side at most max_size; never enlarge."""
    if min_size is None:
        return height, width
    scale = min(min_size / min(height, width), max_size / max(height, width), 1.0)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _instance_mask(instance: Instance, record: InstanceRecord, size: tuple[int, int]) -> Tensor:
    height, width = size
    if instance.polygons is not None:
        sy, sx = height / record.height, width / record.width
        scaled = [
            [v * (sx if i % 2 == 0 else sy) for i, v in enumerate(p)] for p in instance.polygons
        ]
        rle = mask_utils.merge(mask_utils.frPyObjects(scaled, height, width))
        return torch.from_numpy(mask_utils.decode(rle))
    rle = instance.rle
    if isinstance(rle["counts"], list):
        rle = mask_utils.frPyObjects(rle, *rle["size"])
    mask = torch.from_numpy(mask_utils.decode(rle))
    if tuple(mask.shape) != (height, width):
        mask = torch.nn.functional.interpolate(mask[None, None].float(), size=size, mode="nearest")
        mask = mask[0, 0].to(torch.uint8)
    return mask


def build_target(record: InstanceRecord, size: tuple[int, int]) -> dict[str, Tensor]:
    """torchvision's target dict for `record` rasterised at `size` (height, width)."""
    masks, labels, crowd = [], [], []
    for instance in record.instances:
        mask = _instance_mask(instance, record, size)
        if mask.any():
            masks.append(mask)
            labels.append(instance.label)
            crowd.append(instance.iscrowd)
    masks_t = torch.stack(masks) if masks else torch.zeros((0, *size), dtype=torch.uint8)
    return {
        "boxes": masks_to_boxes(masks_t),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": masks_t,
        "image_id": record.image_id,
        "iscrowd": torch.tensor(crowd, dtype=torch.int64),
        "area": masks_t.flatten(1).sum(1).float(),
    }


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Pixel-extent boxes (x1, y1, x2 + 1, y2 + 1) of binary masks (N, H, W)."""
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32)
    for index, mask in enumerate(masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        boxes[index] = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    return boxes


def hflip_target(target: dict[str, Tensor], width: int) -> dict[str, Tensor]:
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return target | {"boxes": boxes, "masks": target["masks"].flip(-1)}


class InstanceDataset(Dataset):
    """Images and torchvision targets of an InstanceSet (optionally a subset of its records).

    Large images are shrunk so the short side is `min_size` and the long side at most
    `max_size` (None: original size); `hflip` is the horizontal flip probability.
    """

    def __init__(
        self,
        instance_set: InstanceSet,
        indices: list[int] | None = None,
        *,
        min_size: int | None = 800,
        max_size: int = 1333,
        hflip: float = 0.0,
    ):
        self.instance_set = instance_set
        self.records = (
            [instance_set.records[i] for i in indices]
            if indices is not None
            else list(instance_set.records)
        )
        self.min_size, self.max_size, self.hflip = min_size, max_size, hflip

    @property
    def class_names(self) -> list[str]:
        return self.instance_set.class_names

    def __len__(self) -> int:
        return len(self.records)

    def size(self, index: int) -> tuple[int, int]:
        record = self.records[index]
        return _resized(record.height, record.width, self.min_size, self.max_size)

    def target(self, index: int) -> dict[str, Tensor]:
        """The unflipped target of record `index` without reading its pixels."""
        return build_target(self.records[index], self.size(index))

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        record = self.records[index]
        try:
            image = Image.open(record.image).convert("RGB")
        except OSError as error:
            raise DataError(record.image, f"cannot read image ({error})") from error
        if (image.height, image.width) != (record.height, record.width):
            raise DataError(
                record.image,
                f"image is {image.width}x{image.height}, annotations say "
                f"{record.width}x{record.height}",
            )
        height, width = self.size(index)
        if (height, width) != (image.height, image.width):
            image = image.resize((width, height), Image.BILINEAR)
        tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div_(255)
        target = self.target(index)
        if self.hflip > 0 and torch.rand(()) < self.hflip:
            tensor, target = tensor.flip(-1), hflip_target(target, width)
        return tensor, target


def collate_instances(batch: list) -> tuple[list[Tensor], list[dict]]:
    images, targets = zip(*batch)
    return list(images), list(targets)


def semantic_from_instances(
    target: dict[str, Tensor], *, height: int | None = None, width: int | None = None
) -> Tensor:
    """A semantic label map (H, W) int64 from an instance target: 0 background, label k for
    class k, crowd regions IGNORE_INDEX; where instances overlap the smaller one wins."""
    masks = target["masks"]
    if masks.ndim == 4:  # model outputs (N, 1, H, W) probabilities
        masks = masks[:, 0] > 0.5
    if masks.shape[0] == 0 and (height is None or width is None):
        raise SegworksError("semantic_from_instances needs height and width for an empty target")
    shape = masks.shape[-2:] if masks.shape[0] else (height, width)
    semantic = torch.zeros(shape, dtype=torch.int64)
    crowd = target.get("iscrowd", torch.zeros(len(masks), dtype=torch.int64))
    areas = masks.flatten(1).sum(1)
    for index in torch.argsort(areas, descending=True).tolist():
        value = IGNORE_INDEX if int(crowd[index]) else int(target["labels"][index])
        semantic[masks[index].bool()] = value
    return semantic


# ---------------------------------------------------------------- doctor


def check_instances(source: Path, *, images: Path | None = None) -> tuple[str, list[str]]:
    """Inspect an instance source of any format: (report text, list of problems).

    Reports images, instances per class, crowd instances and empty images; problems are
    degenerate polygons, boxes/polygons outside images, unknown category ids or labels and
    missing image files (one line each).
    """
    instance_set = read_instances(source, images=images, strict=False)
    per_class = Counter(i.label for r in instance_set.records for i in r.instances)
    ignore = per_class.pop(IGNORE_LABEL, 0)
    crowd = sum(i.iscrowd for r in instance_set.records for i in r.instances) - ignore
    empty = [r.image.name for r in instance_set.records if not r.instances]
    lines = [
        f"instance source: {instance_set.source}",
        f"images: {len(instance_set.records)}, instances: {sum(per_class.values())}"
        f" (crowd {crowd}), ignore regions: {ignore}, empty images: {len(empty)}",
        "instances per class:",
    ]
    for label, name in enumerate(instance_set.class_names, start=1):
        lines.append(f"  {label:3d} {name}: {per_class.get(label, 0)}")
    if empty:
        lines.append("empty images: " + ", ".join(empty[:20]) + (" ..." if len(empty) > 20 else ""))
    lines.append(f"problems: {len(instance_set.problems)}")
    lines += [f"  {p}" for p in instance_set.problems]
    return "\n".join(lines), list(instance_set.problems)


# ---------------------------------------------------------------- synthetic


def synthetic_shapes(
    count: int, *, size: int = 128, seed: int = 0, max_objects: int = 3
) -> list[tuple[Tensor, dict[str, Tensor]]]:
    """Images of non-overlapping discs (label 1) and squares (label 2) in random colours on a
    noisy background, with torchvision targets: a small task where only shape tells the class."""
    generator = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    samples = []
    for _ in range(count):
        image = torch.rand(3, 1, 1, generator=generator) * 0.3
        image = image + torch.rand(3, size, size, generator=generator) * 0.15
        masks, labels = [], []
        for _ in range(int(torch.randint(1, max_objects + 1, (), generator=generator))):
            shape = _random_shape(generator, rows, cols, size, masks)
            if shape is not None:
                colour = 0.5 + 0.5 * torch.rand(3, 1, 1, generator=generator)
                image = torch.where(shape[0], colour, image)
                masks.append(shape[0])
                labels.append(shape[1])
        stacked = torch.stack(masks).to(torch.uint8)
        target = {
            "boxes": masks_to_boxes(stacked),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": stacked,
            "image_id": len(samples),
            "iscrowd": torch.zeros(len(labels), dtype=torch.int64),
            "area": stacked.flatten(1).sum(1).float(),
        }
        samples.append((image.clamp(0, 1), target))
    return samples


def _random_shape(generator, rows, cols, size, others) -> tuple[Tensor, int] | None:
    for _ in range(20):
        radius = int(torch.randint(size // 13, size // 5, (), generator=generator))
        cx, cy = (int(v) for v in torch.randint(radius, size - radius, (2,), generator=generator))
        label = int(torch.randint(1, 3, (), generator=generator))
        if label == 1:
            mask = (cols - cx) ** 2 + (rows - cy) ** 2 <= radius**2
        else:
            mask = ((cols - cx).abs() <= 0.8 * radius) & ((rows - cy).abs() <= 0.8 * radius)
        if all(not (mask & other).any() for other in others):
            return mask, label
    return None
