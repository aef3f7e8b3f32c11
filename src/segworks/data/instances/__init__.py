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
    yolo     YOLO segmentation labels (a data.yaml with `names`, or images/ + labels/*.txt; see
             segworks.data.yolo): one instance per line, category id k -> label k + 1. Every
             split the yaml names is read; an image without a label file has no instance.

Targets follow torchvision's contract: boxes (N, 4) float xyxy, labels int64 1..K, masks uint8
(N, H, W), image_id, iscrowd, area. Images are float 0..1 (3, H, W).

Crowd regions (iscrowd=1) are left out of training and count as crowd in COCO evaluation
(a detection on them is neither a hit nor a miss). An ignore region is a crowd region with
label 0: it belongs to no class, so evaluation treats it as crowd of every class.
"""

from segworks.data.instances.dataset import (
    InstanceDataset,
    build_target,
    collate_instances,
    hflip_target,
    masks_to_boxes,
    semantic_from_instances,
)
from segworks.data.instances.doctor import check_instances
from segworks.data.instances.read import FORMATS, detect_format, read_instances
from segworks.data.instances.records import (
    IGNORE_LABEL,
    Instance,
    InstanceRecord,
    InstanceSet,
)
from segworks.data.instances.synthetic import synthetic_shapes

__all__ = [
    "FORMATS",
    "IGNORE_LABEL",
    "Instance",
    "InstanceDataset",
    "InstanceRecord",
    "InstanceSet",
    "build_target",
    "check_instances",
    "collate_instances",
    "detect_format",
    "hflip_target",
    "masks_to_boxes",
    "read_instances",
    "semantic_from_instances",
    "synthetic_shapes",
]
